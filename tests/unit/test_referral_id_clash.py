"""A referral_id its referrer already used for another person: moved as a correction of the NHS number,
refused naming the row and the field only when the referrer itself gave two different birth dates (the
record's Patient, from whichever source came first, is never read: no answer tells what the hub holds)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson
import pytest

from adapters.referrals.rows import Format
from adapters.referrals.service import ACCEPTED, REJECTED, ReferralIntake
from adapters.referrals.to_fhir import BIRTH_DATE_SAID
from hub.core.identity import person_key
from hub.core.ports import Json, RecordEvent
from hub.core.record import apply_events
from hub.store.memory import MemoryRecordStore
from schemas.envelope import Envelope
from schemas.events.rejected import OUTCOME_HEADER
from schemas.topics import DEAD_LETTER, EVENTS
from tests.unit.test_referral_adapters import SECRET, FakeBroker

NOW = datetime(2026, 12, 7, 12, tzinfo=UTC)
FIRST, SECOND, THIRD = "9434765919", "9990000018", "9993103411"
REFERRAL = {
    "referral_id": "AC-5002",
    "nhs_number": FIRST,
    "birth_date": "1942-02-20",
    "gp_practice_ods": "Y90001",
    "referred_on": "2026-12-03",
    "referrer": "VCS001",
    "addressed_to": "Y0PIC",
    "needs": ["financial-support"],
}
ASC = (
    "referral_id,nhs_number,birth_date,gp_practice_ods,referred_on,referrer,addressed_to,reason\n"
    "WCC-2026-1004,{nhs},1941-06-30,Y90002,2026-12-04,E10000023,Y0PIC,Self-neglect concerns\n"
)


class RecordingBroker(FakeBroker):
    """Kafka and the record consumer in one: each event published is applied to a memory record."""

    def __init__(self) -> None:
        super().__init__()
        self.record = MemoryRecordStore()

    async def publish(self, value: bytes, topic: str, *, key: bytes, headers: dict[str, str]) -> None:
        await super().publish(value, topic, key=key, headers=headers)
        if topic == EVENTS.name:
            e = Envelope.from_kafka(value, headers)
            event = RecordEvent(e.id, e.type, e.source, e.time, e.subject, orjson.loads(e.data))
            with self.record.unit_of_work() as uow:
                apply_events(uow, [event])
                uow.commit()


def intake(broker: RecordingBroker) -> ReferralIntake:
    return ReferralIntake(broker, key_secret=SECRET, clock=lambda: NOW, record=broker.record.reader())  # type: ignore[arg-type]


def json_of(*docs: dict[str, Any]) -> bytes:
    return orjson.dumps(list(docs))


def holder(broker: RecordingBroker, referral_id: str = "AC-5002") -> str:
    """The person the referral is filed under in the record."""
    (request,) = [
        r
        for r in broker.record.reader().search("ServiceRequest", None)
        if r.get("identifier", [{}])[0].get("value") == referral_id
    ]
    return str(request["subject"]["reference"]).removeprefix("Patient/")


def key(nhs: str) -> str:
    return person_key(SECRET, nhs, None)


async def sent_first(broker: RecordingBroker, **changes: Any) -> None:
    (first,) = await intake(broker).ingest(json_of(REFERRAL | changes), "file:first.json", Format.VCSE_JSON)
    assert first.status == ACCEPTED
    assert holder(broker) == key(FIRST)


REFUSED = (
    "row {row}, field referral_id: 'AC-5002' is already used by VCS001 for a different person; it was sent for "
    "another NHS number with another birth_date, so this row is not a correction of the NHS number"
)
REGISTER = (
    "nhs_number,practice_ods,non_elective_admissions_12m,long_term_conditions,frailty,birth_date,extracted_on\n"
    "{nhs},Y90001,0,1,mild,{born},2026-11-01\n"
)


async def in_one_command(broker: RecordingBroker, *docs: dict[str, Any]) -> list[Any]:
    return await intake(broker).ingest(json_of(*docs), "file:both.json", Format.VCSE_JSON)


async def in_two_commands(broker: RecordingBroker, *docs: dict[str, Any]) -> list[Any]:
    return [
        (await intake(broker).ingest(json_of(d), f"file:{n}.json", Format.VCSE_JSON))[0] for n, d in enumerate(docs)
    ]


SENDINGS = [pytest.param(in_one_command, id="one-command"), pytest.param(in_two_commands, id="two-commands")]


@pytest.mark.parametrize("send", SENDINGS)
async def test_a_referral_id_used_again_for_another_person_with_another_birth_date_is_refused(send: Any) -> None:
    broker = RecordingBroker()
    again = REFERRAL | {"nhs_number": SECOND, "birth_date": "1950-01-01"}
    first, second = await send(broker, REFERRAL, again)

    assert (first.status, second.status) == (ACCEPTED, REJECTED) and second.dead_lettered
    row = 2 if send is in_one_command else 1
    assert second.reason.startswith(REFUSED.format(row=row))
    assert "the referral stays as it was" in second.reason
    assert "1942" not in second.reason and FIRST not in second.reason  # nothing of the first person told
    assert holder(broker) == key(FIRST)
    assert not broker.record.reader().search("ServiceRequest", key(SECOND))
    (_, kept, _, headers) = broker.on(DEAD_LETTER.name)[-1]
    assert orjson.loads(kept)["nhs_number"] == SECOND
    (issue,) = orjson.loads(headers[OUTCOME_HEADER])["issue"]
    assert issue["expression"] == [f"row {row}", "referral_id", "birth_date"]


@pytest.mark.parametrize("send", SENDINGS)
@pytest.mark.parametrize(
    ("first", "corrected"),
    [
        pytest.param({}, {}, id="same-birth-date"),
        pytest.param({}, {"birth_date": None}, id="none-on-the-correction"),
        pytest.param({"birth_date": None}, {}, id="none-on-the-first"),
        pytest.param({"birth_date": None}, {"birth_date": None}, id="none-on-either"),
    ],
)
async def test_a_correction_of_the_nhs_number_moves_the_referral_unless_two_birth_dates_differ(
    send: Any, first: dict[str, Any], corrected: dict[str, Any]
) -> None:
    broker = RecordingBroker()
    outcomes = await send(broker, REFERRAL | first, REFERRAL | {"nhs_number": SECOND} | corrected)
    assert [o.status for o in outcomes] == [ACCEPTED, ACCEPTED]
    assert holder(broker) == key(SECOND)


@pytest.mark.parametrize("register_says", ["1950-03-04", "1942-02-20", None])
async def test_what_a_practice_holds_of_either_number_never_decides_nor_shows_in_the_answer(
    register_says: str | None,
) -> None:
    """The wrong number is usually another real person's, whose GP register date differs; and a referrer
    cannot test a guessed date of birth against it: the answer is the same whatever the register says."""
    broker = RecordingBroker()
    for nhs in (FIRST, SECOND):
        if register_says:
            register = REGISTER.format(nhs=nhs, born=register_says).encode()
            (row,) = await intake(broker).ingest(register, f"file:{nhs}.csv", Format.REGISTER)
            assert row.status == ACCEPTED
    outcomes = await in_two_commands(broker, REFERRAL, REFERRAL | {"nhs_number": SECOND})
    assert [(o.status, o.reason) for o in outcomes] == [(ACCEPTED, None), (ACCEPTED, None)]
    assert holder(broker) == key(SECOND)


async def test_an_adult_social_care_row_corrected_with_its_referral_id_still_moves_the_referral() -> None:
    broker = RecordingBroker()
    (wrong,) = await intake(broker).ingest(ASC.format(nhs=FIRST).encode(), "file:asc-03.csv")
    (right,) = await intake(broker).ingest(ASC.format(nhs=SECOND).encode(), "file:asc-04.csv")
    assert (wrong.status, right.status) == (ACCEPTED, ACCEPTED)
    assert holder(broker, "WCC-2026-1004") == key(SECOND)


async def test_a_council_export_without_birth_dates_corrects_as_before() -> None:
    broker = RecordingBroker()
    no_birth_date = ASC.replace(",birth_date", "").replace(",1941-06-30", "")
    (wrong,) = await intake(broker).ingest(no_birth_date.format(nhs=FIRST).encode(), "file:asc-03.csv")
    (right,) = await intake(broker).ingest(no_birth_date.format(nhs=SECOND).encode(), "file:asc-04.csv")
    assert (wrong.status, right.status) == (ACCEPTED, ACCEPTED)
    assert holder(broker, "WCC-2026-1004") == key(SECOND)


@pytest.mark.parametrize("send", SENDINGS)
async def test_the_referrers_last_word_on_the_birth_date_is_the_one_compared(send: Any) -> None:
    """The record keeps a referral as its referrer last sent it: sent again with a birth date added or
    changed, that is what a correction is compared with, in one command as in two."""
    broker = RecordingBroker()
    outcomes = await send(
        broker,
        REFERRAL | {"birth_date": None},
        REFERRAL | {"birth_date": "1941-06-30"},
        REFERRAL | {"nhs_number": SECOND, "birth_date": "1942-02-20"},
        REFERRAL | {"nhs_number": SECOND, "birth_date": "1941-06-30"},
    )
    assert [o.status for o in outcomes] == [ACCEPTED, ACCEPTED, REJECTED, ACCEPTED]
    assert holder(broker) == key(SECOND)


async def test_the_referral_carries_the_birth_date_its_referrer_gave() -> None:
    broker = RecordingBroker()
    await sent_first(broker)
    (request,) = broker.record.reader().search("ServiceRequest", key(FIRST))
    assert {"url": BIRTH_DATE_SAID, "valueDate": "1942-02-20"} in request["extension"]


async def test_an_outcome_naming_another_person_than_its_referral_is_applied_to_the_referral_as_before() -> None:
    """An outcome carries no birth date, so nothing shows it is about someone else: it says what became
    of the referral its referral_id names, which stays with its person."""
    broker = RecordingBroker()
    await sent_first(broker)
    update = {"referral_id": "AC-5002", "referrer": "VCS001", "nhs_number": SECOND, "outcome": "contacted"}
    (outcome,) = await intake(broker).ingest(json_of(update | {"on": "2026-12-05"}), "file:o.json")
    assert outcome.status == ACCEPTED
    assert holder(broker) == key(FIRST)
    assert not broker.record.reader().search("ServiceRequest", key(SECOND))


async def test_the_same_person_sent_again_with_other_content_is_a_correction_as_before() -> None:
    broker = RecordingBroker()
    await sent_first(broker)
    (outcome,) = await intake(broker).ingest(
        json_of(REFERRAL | {"birth_date": "1942-02-21", "needs": ["carer-support"]}),
        "file:again.json",
        Format.VCSE_JSON,
    )
    assert outcome.status == ACCEPTED
    request: Json = broker.record.reader().search("ServiceRequest", key(FIRST))[0]
    assert request["reasonCode"] == [{"text": "Carer support"}]
