"""A referrer withdraws its own referral: the asc-outcome layouts (detected, checked row by row and
field by field), a withdrawal only of a referral its referrer sent, for its person, not ended already;
the rules engine cancels the referral's tasks, and the first-visit KPI stops counting it as waiting."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson
import pytest

from adapters.referrals.rows import Format, Row, detect, read_rows
from adapters.referrals.service import ACCEPTED, REJECTED, ReferralIntake
from adapters.referrals.to_fhir import LOCAL_AUTHORITY_SYSTEM, map_row
from hub.core.errors import InvalidMessageError
from hub.core.ports import RecordEvent
from hub.core.tasks import Engine, new_state
from hub.rules import load_rules
from hub.store.memory import MemoryRecordStore
from schemas.events import coordination as co
from schemas.events.rejected import OUTCOME_HEADER
from schemas.topics import DEAD_LETTER, EVENTS
from tests import locality_month as month
from tests.unit.test_kpis import fold_of, report
from tests.unit.test_referral_adapters import (
    ASC_HEADER,
    NHS,
    NOW,
    OTHER_NHS,
    SECRET,
    FakeBroker,
    asc_referral,
    csv_of,
    one,
    rejection,
    resources,
    vcse_referral,
)
from tests.unit.test_referral_id_clash import RecordingBroker, intake, key

WITHDRAWAL_HEADER = "referral_id,referrer,nhs_number,outcome,on,reason"


def withdrawal(**changes: str) -> dict[str, str]:
    row = {
        "referral_id": "ASC-1",
        "referrer": "E10000023",
        "nhs_number": NHS,
        "outcome": "withdrawn",
        "on": "2026-11-20",
        "reason": "Moved out of the area",
    }
    return row | changes


def withdrawals(*rows: dict[str, str]) -> bytes:
    return csv_of(list(rows), WITHDRAWAL_HEADER)


def request_of(event: Any) -> dict[str, Any]:
    (request,) = resources(event, "ServiceRequest")
    return request


# --- the layout -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "fmt"),
    [
        (withdrawals(withdrawal()), Format.ASC_OUTCOME_CSV),
        (orjson.dumps([withdrawal()]), Format.ASC_OUTCOME_JSON),
        (orjson.dumps(withdrawal()), Format.ASC_OUTCOME_JSON),
        (orjson.dumps([withdrawal(referrer="VCS001")]), Format.VCSE_OUTCOME),
        (csv_of([asc_referral()], ASC_HEADER + ",outcome"), Format.ASC_CSV),  # a referral with an outcome column
    ],
)
def test_a_councils_outcome_file_is_detected_from_its_columns_and_referrer(raw: bytes, fmt: Format) -> None:
    assert detect(raw) is fmt


def test_a_councils_withdrawal_revokes_the_very_referral_it_sent() -> None:
    referral = one(Format.ASC_CSV, asc_referral())
    withdrawn = one(Format.ASC_OUTCOME_CSV, withdrawal())
    request = request_of(withdrawn)
    assert withdrawn.event_type == co.REFERRAL_OUTCOME.type
    assert request["id"] == request_of(referral)["id"]
    assert request["status"] == "revoked"
    assert {"url": co.OUTCOME_EXTENSION, "valueCode": "withdrawn"} in request["extension"]
    assert request["requester"]["identifier"] == {"system": LOCAL_AUTHORITY_SYSTEM, "value": "E10000023"}
    assert request["note"] == [{"text": "Moved out of the area"}]
    assert withdrawn.source == "urn:ods:E10000023"
    assert withdrawn.event_time == datetime(2026, 11, 20, tzinfo=UTC)  # the start of its UK day
    assert one(Format.ASC_OUTCOME_JSON, withdrawal()).event_id == withdrawn.event_id  # the same row, the same event


def test_a_voluntary_organisation_withdraws_its_own_referral_too() -> None:
    row = {"referral_id": "VCS-1", "referrer": "VCS001", "nhs_number": NHS, "outcome": "Withdrawn", "on": "2026-11-20"}
    request = request_of(one(Format.VCSE_OUTCOME, row))
    assert request["id"] == request_of(one(Format.VCSE_JSON, vcse_referral()))["id"]
    assert request["status"] == "revoked"


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"outcome": "declined"}, "row 2, field outcome: 'declined' is not withdrawn: a council says of the referral"),
        ({"referrer": "VCS001"}, "row 2, field referrer: 'VCS001' is not a local-authority (ONS) code"),
        ({"referral_id": ""}, "row 2, field referral_id: is required"),
        ({"nhs_number": "9434765918"}, "row 2, field nhs_number: fails the Modulus 11 check"),
        ({"on": "2026-11-26"}, "row 2, field on: 2026-11-26 is in the future"),
        ({"on": "20/11/2026"}, "row 2, field on: '20/11/2026' is not an ISO 8601 date"),
    ],
)
def test_a_bad_withdrawal_is_rejected_naming_row_and_field(changes: dict[str, str], reason: str) -> None:
    assert rejection(Format.ASC_OUTCOME_CSV, withdrawal(**changes)).startswith(reason)


def test_a_withdrawal_file_without_an_outcome_column_is_refused_whole_naming_it() -> None:
    raw = b"referral_id,referrer,nhs_number,status,on\nASC-1,E10000023,9434765919,withdrawn,2026-11-20\n"
    assert "row 1 (the header) lacks the column(s) outcome" in rejection_of_file(raw)


def rejection_of_file(raw: bytes) -> str:
    with pytest.raises(InvalidMessageError) as caught:
        read_rows(raw, Format.ASC_OUTCOME_CSV)
    return caught.value.diagnostics


# --- only its own referral, for its person, not ended -------------------------------------------------------


async def test_a_council_withdraws_its_referral_sent_in_an_earlier_command_and_again_changes_nothing() -> None:
    broker = RecordingBroker()
    (sent,) = await intake(broker).ingest(csv_of([asc_referral()], ASC_HEADER), "file:r.csv")
    assert sent.status == ACCEPTED
    (first,) = await intake(broker).ingest(withdrawals(withdrawal()), "file:w.csv")
    (again,) = await intake(broker).ingest(withdrawals(withdrawal()), "file:w.csv")
    assert (first.status, again.status, first.event_id) == (ACCEPTED, ACCEPTED, again.event_id)
    (request,) = broker.record.reader().search("ServiceRequest", key(NHS))
    assert request["status"] == "revoked"
    assert request["reasonCode"] == [{"text": "Lives alone after a fall"}]  # what the referral said stays


async def test_a_withdrawal_of_a_referral_never_sent_or_another_referrers_is_dead_lettered_and_the_rest_go_on() -> None:
    broker = RecordingBroker()
    raw = csv_of([asc_referral(), asc_referral(referral_id="ASC-2", nhs_number=OTHER_NHS)], ASC_HEADER)
    await intake(broker).ingest(raw, "file:r.csv")
    rows = [withdrawal(referrer="E10000099"), withdrawal(referral_id="ASC-9"), withdrawal()]
    outcomes = await intake(broker).ingest(withdrawals(*rows), "file:/data/w.csv")
    assert [(o.row, o.status) for o in outcomes] == [(2, REJECTED), (3, REJECTED), (4, ACCEPTED)]
    assert outcomes[0].reason and outcomes[0].reason.startswith(
        "row 2, field referral_id: E10000099 has sent no referral 'ASC-1' that the hub holds: a referrer "
        "withdraws only a referral it sent itself"
    )
    assert outcomes[1].reason and outcomes[1].reason.startswith("row 3, field referral_id: E10000023 has sent no")
    letters = broker.on(DEAD_LETTER.name)
    assert [orjson.loads(h[OUTCOME_HEADER])["issue"][0]["expression"] for _, _, _, h in letters] == [
        ["row 2", "referral_id"],
        ["row 3", "referral_id"],
    ]
    assert (
        letters[0][1]
        == f"{WITHDRAWAL_HEADER}\nASC-1,E10000099,{NHS},withdrawn,2026-11-20,Moved out of the area\n".encode()
    )
    statuses = {r["identifier"][0]["value"]: r["status"] for r in broker.record.reader().search("ServiceRequest", None)}
    assert statuses == {"ASC-1": "revoked", "ASC-2": "active"}


async def test_a_referral_the_record_has_not_applied_yet_is_withdrawn_in_the_command_that_sent_it() -> None:
    empty = MemoryRecordStore().reader()  # the record has applied nothing yet: the intake remembers what it sent
    council = ReferralIntake(FakeBroker(), key_secret=SECRET, clock=lambda: NOW, record=empty)  # type: ignore[arg-type]
    (sent,) = await council.ingest(csv_of([asc_referral()], ASC_HEADER), "file:r.csv")
    (withdrawn,) = await council.ingest(withdrawals(withdrawal()), "file:w.csv")
    assert (sent.status, withdrawn.status) == (ACCEPTED, ACCEPTED)
    (not_sent,) = await council.ingest(withdrawals(withdrawal(referral_id="ASC-2")), "file:w2.csv")
    assert not_sent.status == REJECTED


async def test_a_withdrawal_naming_another_person_than_the_referral_is_refused_naming_nhs_number() -> None:
    broker = RecordingBroker()
    await intake(broker).ingest(csv_of([asc_referral()], ASC_HEADER), "file:r.csv")
    (refused,) = await intake(broker).ingest(withdrawals(withdrawal(nhs_number=OTHER_NHS)), "file:w.csv")
    assert refused.status == REJECTED
    assert refused.reason and refused.reason.startswith(
        "row 2, field nhs_number: referral 'ASC-1' from E10000023 is for another person than this NHS number"
    )
    assert OTHER_NHS not in refused.reason
    (request,) = broker.record.reader().search("ServiceRequest", key(NHS))
    assert request["status"] == "active"


async def test_a_referral_declined_already_is_not_withdrawn() -> None:
    broker = RecordingBroker()
    await intake(broker).ingest(orjson.dumps([vcse_referral()]), "file:r.json")
    declined = {"referral_id": "VCS-1", "referrer": "VCS001", "nhs_number": NHS, "outcome": "declined"}
    await intake(broker).ingest(orjson.dumps([declined | {"on": "2026-11-12"}]), "file:d.json")
    (refused,) = await intake(broker).ingest(
        orjson.dumps([declined | {"outcome": "withdrawn", "on": "2026-11-20"}]), "file:w.json"
    )
    assert refused.status == REJECTED
    assert refused.reason and refused.reason.startswith(
        "row 1, field outcome: referral 'VCS-1' from VCS001 was declined already (status revoked): it has ended"
    )
    assert len(broker.on(EVENTS.name)) == 2


# --- what the coordination service does with it ------------------------------------------------------------


def as_event(fmt: Format, values: dict[str, Any]) -> RecordEvent:
    m = map_row(fmt, Row(2, values, b""), key_secret=SECRET, now=NOW)
    return RecordEvent(m.event_id, m.event_type, m.source, m.event_time, m.person_key, m.payload)


def test_the_shipped_rules_cancel_the_triage_and_first_visit_tasks_of_a_withdrawn_referral() -> None:
    engine, state = Engine(load_rules()), new_state()
    engine.handle(state, as_event(Format.ASC_CSV, asc_referral()))
    assert {t["rule"]: t["status"] for t in state["tasks"].values()} == {
        "referral-triage": "requested",
        "first-visit": "requested",
    }
    out = engine.handle(state, as_event(Format.ASC_OUTCOME_CSV, withdrawal()))
    assert {t["rule"]: t["status"] for t in state["tasks"].values()} == {
        "referral-triage": "cancelled",
        "first-visit": "cancelled",
    }
    assert len(out.cleared) == 2  # both clocks stop


def test_a_withdrawn_referral_is_not_counted_as_waiting_over_4_weeks() -> None:
    events = [
        month.referral("P3", month.at(1, 10, month=10), "adult-social-care"),
        month.outcome("P3", month.at(10, 10, month=10), "withdrawn"),
        month.contact("P1", month.at(4, 9, month=12), "follow-up"),  # the log reaches December
    ]
    figures = report(fold_of(*events), "2026-11")
    assert figures[("referrals waiting over 4 weeks for a first visit", "at month end")] == 0
    still_waiting = [events[0], events[2]]  # without the withdrawal, 60 days at the end of November
    assert (
        report(fold_of(*still_waiting), "2026-11")[("referrals waiting over 4 weeks for a first visit", "at month end")]
        == 1
    )


# --- dated after what it withdraws; not once the service has answered; nothing after it -------------------


def vcse_outcome(outcome: str, on: str, ref: str = "VCS-1", **more: str) -> dict[str, str]:
    return {"referral_id": ref, "referrer": "VCS001", "nhs_number": NHS, "outcome": outcome, "on": on} | more


async def test_a_withdrawal_dated_before_its_referral_was_made_is_refused_naming_on_in_one_command_or_two() -> None:
    broker = RecordingBroker()
    await intake(broker).ingest(csv_of([asc_referral(referred_on="2026-11-03")], ASC_HEADER), "file:r.csv")
    (early,) = await intake(broker).ingest(withdrawals(withdrawal(on="2026-10-01")), "file:w.csv")
    assert early.status == REJECTED
    assert early.reason and early.reason.startswith(
        "row 2, field on: 2026-10-01 is before the referral was made (2026-11-03)"
    )
    assert len(broker.on(EVENTS.name)) == 1  # nothing withdrawn: the record, the engine and the KPIs agree
    (same_day,) = await intake(broker).ingest(withdrawals(withdrawal(on="2026-11-03")), "file:w2.csv")
    assert same_day.status == ACCEPTED  # a date alone on the referral's UK day answers it (hub.core.days)

    empty = MemoryRecordStore().reader()  # the record has applied nothing yet: the intake remembers what it sent
    council = ReferralIntake(FakeBroker(), key_secret=SECRET, clock=lambda: NOW, record=empty)  # type: ignore[arg-type]
    await council.ingest(csv_of([asc_referral(referred_on="2026-11-03")], ASC_HEADER), "file:r.csv")
    (refused,) = await council.ingest(withdrawals(withdrawal(on="2026-11-02")), "file:w.csv")
    assert refused.status == REJECTED
    assert refused.reason and refused.reason.startswith("row 2, field on: 2026-11-02 is before the referral was made")


async def test_a_withdrawal_dated_before_the_outcome_the_record_holds_is_refused_naming_on() -> None:
    broker = RecordingBroker()
    await intake(broker).ingest(orjson.dumps([vcse_referral()]), "file:r.json")
    await intake(broker).ingest(orjson.dumps([vcse_outcome("contacted", "2026-11-14")]), "file:c.json")
    (early,) = await intake(broker).ingest(orjson.dumps([vcse_outcome("withdrawn", "2026-11-12")]), "file:w.json")
    assert early.status == REJECTED
    assert early.reason and early.reason.startswith(
        "row 1, field on: 2026-11-12 is before the outcome the record holds for it (contacted, 2026-11-14)"
    )
    (later,) = await intake(broker).ingest(orjson.dumps([vcse_outcome("withdrawn", "2026-11-14")]), "file:w2.json")
    assert later.status == ACCEPTED


async def test_a_referral_the_service_accepted_is_not_withdrawn_and_the_referrer_is_told_to_contact_it() -> None:
    broker = RecordingBroker()
    await intake(broker).ingest(orjson.dumps([vcse_referral()]), "file:r.json")
    await intake(broker).ingest(orjson.dumps([vcse_outcome("accepted", "2026-11-10")]), "file:a.json")
    (refused,) = await intake(broker).ingest(orjson.dumps([vcse_outcome("withdrawn", "2026-11-20")]), "file:w.json")
    assert refused.status == REJECTED
    assert refused.reason and refused.reason.startswith(
        "row 1, field outcome: referral 'VCS-1' from VCS001 was accepted by the service it was sent to: once the "
        "service has accepted or declined a referral, its referrer no longer withdraws it; contact the service"
    )
    assert record_outcome(broker) == ("active", "accepted")


@pytest.mark.parametrize("later", ["accepted", "declined", "attended", "contacted"])
async def test_no_other_outcome_of_a_withdrawn_referral_is_taken(later: str) -> None:
    broker = RecordingBroker()
    await intake(broker).ingest(orjson.dumps([vcse_referral()]), "file:r.json")
    await intake(broker).ingest(orjson.dumps([vcse_outcome("withdrawn", "2026-11-12")]), "file:w.json")
    (refused,) = await intake(broker).ingest(orjson.dumps([vcse_outcome(later, "2026-11-14")]), "file:o.json")
    assert refused.status == REJECTED
    assert refused.reason and refused.reason.startswith(
        f"row 1, field outcome: referral 'VCS-1' from VCS001 was withdrawn by its referrer: it is not {later} now"
    )
    assert record_outcome(broker) == ("revoked", "withdrawn")


async def test_an_outcome_alone_of_a_referral_never_sent_does_not_make_it_one_to_withdraw() -> None:
    broker = RecordingBroker()
    (said,) = await intake(broker).ingest(orjson.dumps([vcse_outcome("contacted", "2026-11-10", "VCS-9")]), "o.json")
    (refused,) = await intake(broker).ingest(orjson.dumps([vcse_outcome("withdrawn", "2026-11-12", "VCS-9")]), "w.json")
    assert said.status == ACCEPTED
    assert refused.status == REJECTED
    assert refused.reason and refused.reason.startswith("row 1, field referral_id: VCS001 has sent no referral 'VCS-9'")


def record_outcome(broker: RecordingBroker) -> tuple[str, str]:
    (request,) = broker.record.reader().search("ServiceRequest", key(NHS))
    (said,) = [e["valueCode"] for e in request["extension"] if e["url"] == co.OUTCOME_EXTENSION]
    return request["status"], said


def test_a_vcse_outcome_other_than_a_withdrawal_has_the_event_id_it_had_before_a_reason_was_read() -> None:
    # (the id before 8bfafb9 read `reason`: stable_id of these five, whatever reason the row carried)
    from hub.core.identity import stable_id

    for outcome in ("contacted", "attended", "declined", "accepted"):
        mapped = one(Format.VCSE_OUTCOME, vcse_outcome(outcome, "2026-11-16", reason="Person declined"))
        rid = request_of(mapped)["id"]
        assert mapped.event_id == stable_id("referral-outcome", rid, outcome, "2026-11-16", mapped.person_key)
    first = one(Format.VCSE_OUTCOME, vcse_outcome("withdrawn", "2026-11-16", reason="Moved away"))
    second = one(Format.VCSE_OUTCOME, vcse_outcome("withdrawn", "2026-11-16", reason="Sent in error"))
    assert first.event_id != second.event_id  # a withdrawal's second reason stands over its first


def test_a_withdrawal_ends_the_wait_of_a_referral_never_accepted_and_not_of_one_a_stay_was_opened_for() -> None:
    def figures(*events: RecordEvent) -> dict[tuple[str, str], Any]:
        return report(fold_of(*events, month.contact("P1", month.at(4, 9, month=12), "follow-up")), "2026-11")

    referred = month.referral("P3", month.at(2, 10), "adult-social-care")
    withdrawn, visit = (
        month.outcome("P3", month.at(10, 10), "withdrawn"),
        month.contact("P3", month.at(12, 10), "face-to-face"),
    )
    never_accepted = figures(referred, withdrawn, visit)
    assert never_accepted[("first visits", "")] == 0  # a visit after it is no first visit of a referral withdrawn
    assert never_accepted[("referrals waiting over 4 weeks for a first visit", "at month end")] == 0
    # a log from before a withdrawal of an accepted referral was refused: the stay's first visit stands
    accepted = (month.outcome("P3", month.at(4, 10), "accepted"), month.episode("P3", month.at(4, 10), "c-ann"))
    on_a_stay = figures(referred, *accepted, withdrawn, visit)
    assert on_a_stay[("first visits", "")] == figures(referred, *accepted, visit)[("first visits", "")] == 1
