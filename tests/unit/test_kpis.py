"""The commissioner's KPIs for the scripted locality month equal the figures worked out by hand
(tests/locality_month.py, EXPECTED_KPIS), for every KPI the issue lists, in any partition order."""

from __future__ import annotations

import copy
import csv
import random
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from typer.testing import CliRunner

from hub import cli, kpi_report
from hub.core.coordination import tick
from hub.core.kpis import KpiFold, Row
from hub.core.ports import RecordEvent
from hub.kpi_report import write_csv, write_html
from schemas.events import coordination as co
from tests import locality_month as month


def figures(events: list[RecordEvent]) -> dict[tuple[str, str], float]:
    fold = KpiFold(service=month.SERVICE)
    for event in events:
        fold.add(event)
    return {(r.kpi, r.breakdown): r.value for r in fold.report("2026-11")}


def test_every_kpi_equals_the_hand_computed_figure() -> None:
    assert figures(month.script()) == month.EXPECTED_KPIS


def test_the_figures_do_not_depend_on_the_order_partitions_are_read_in() -> None:
    events = month.script()
    by_person: dict[str, list[RecordEvent]] = {}
    for event in events:
        by_person.setdefault(event.subject, []).append(event)
    rng = random.Random(7)
    for _ in range(20):
        queues = [list(q) for q in by_person.values()]
        shuffled: list[RecordEvent] = []
        while any(queues):
            queue = rng.choice([q for q in queues if q])
            shuffled.append(queue.pop(0))
        assert figures(shuffled) == month.EXPECTED_KPIS


def test_events_seen_twice_count_once_and_other_months_are_empty() -> None:
    events = month.script()
    assert figures(events + events) == month.EXPECTED_KPIS
    fold = KpiFold(service=month.SERVICE)
    for event in events:
        fold.add(event)
    october = {(r.kpi, r.breakdown): r.value for r in fold.report("2026-10")}
    assert october[("referrals", "")] == 0
    assert october[("huddles held", "")] == 0


# --- reviewed defects: each test below fails on the fold and report before the review's fixes -------

OCTOBER_00_30_BST = datetime(2026, 9, 30, 23, 30, tzinfo=UTC)  # 00:30 on 1 October in the UK


def fold_of(*events: RecordEvent) -> KpiFold:
    fold = KpiFold(service=month.SERVICE)
    for event in events:
        fold.add(event)
    return fold


def report(fold: KpiFold, of: str) -> dict[tuple[str, str], float | None]:
    return {(r.kpi, r.breakdown): r.value for r in fold.report(of)}


def edited(event: RecordEvent, *, event_id: str | None = None, **changes: Any) -> RecordEvent:
    """The event again, as a re-send with a new event id; `changes` edit its first ServiceRequest
    (or Patient, for keys starting patient_; None removes the key)."""
    payload = copy.deepcopy(event.payload)
    for entry in payload.get("entry", []):
        resource = entry["resource"]
        prefix = "patient_" if resource["resourceType"] == "Patient" else ""
        for key, value in changes.items():
            if key.startswith("patient_") == bool(prefix):
                name = key.removeprefix(prefix)
                if value is None:
                    resource.pop(name, None)
                else:
                    resource[name] = value
    return RecordEvent(
        id=event_id or f"{event.id}-again",
        type=event.type,
        source=event.source,
        time=event.time,
        subject=event.subject,
        payload=payload,
    )


def test_a_referral_at_half_past_midnight_bst_on_1_october_counts_in_october() -> None:
    # UTC months put it in September, and its birthday (1 October, UK) a day late: 64, not 65
    referral = edited(month.referral("P3", OCTOBER_00_30_BST, "gp"), patient_birthDate="1961-10-01")
    huddle = month.huddle(3, attended=True)
    huddle = RecordEvent(
        id=huddle.id,
        type=huddle.type,
        source=huddle.source,
        time=huddle.time,
        subject=huddle.subject,
        payload=huddle.payload | {"date": OCTOBER_00_30_BST.isoformat()},
    )
    fold = fold_of(referral, huddle)
    october, september = report(fold, "2026-10"), report(fold, "2026-09")
    assert october[("referrals", "")] == 1
    assert september[("referrals", "")] == 0
    assert october[("age at referral", "65-74")] == 1
    assert october[("huddles held", "")] == 1
    assert september[("huddles held", "")] == 0


def test_a_corrected_resend_of_a_referral_is_one_referral_saying_what_the_correction_says() -> None:
    first = month.referral("P3", month.at(3, 10), "gp")
    source = {"url": co.SOURCE_EXTENSION, "valueCodeableConcept": {"coding": [{"code": "huddle"}]}}
    corrected = edited(first, extension=[source])
    onward = month.referral("P6", month.at(20, 11), "care-coordination", to="LA123", by=month.SERVICE)
    figures = report(fold_of(first, corrected, onward, edited(onward)), "2026-11")
    assert figures[("referrals", "")] == 1
    assert figures[("referrals by source", "huddle")] == 1
    assert ("referrals by source", "gp") not in figures
    assert figures[("onward referrals", "")] == 1


def test_one_visit_is_the_first_visit_of_one_referral_and_a_later_one_is_a_follow_up() -> None:
    # the MDS counts visits; two referrals waiting for the same visit (a GP's and a huddle's) share it,
    # and its wait runs from the earlier referral: 3 Nov 10:00 -> 10 Nov 10:00 = 7 days
    gp = month.referral("P3", month.at(3, 10), "gp")
    huddle = edited(month.referral("P3", month.at(5, 10), "huddle"), id="a-second-request")
    visits = [
        month.contact("P3", month.at(10, 10), "face-to-face"),
        month.contact("P3", month.at(20, 10), "face-to-face"),
    ]
    figures = report(fold_of(gp, huddle, *visits), "2026-11")
    assert figures[("referrals", "")] == 2
    assert figures[("first visits", "")] == 1
    assert figures[("days from referral to first visit", "mean")] == 7.0
    assert figures[("days from referral to first contact", "mean")] == 7.0


def test_a_partner_saying_it_contacted_the_person_is_a_first_contact_not_a_visit() -> None:
    # P3 referred 3 Nov 10:00; the voluntary organisation says "contacted" on 5 Nov 10:00 (2 days)
    # and "attended" on 10 Nov 10:00 (7 days): each answers what it is, once
    gp = month.referral("P3", month.at(3, 10), "gp")
    contacted = month.outcome("P3", month.at(5, 10), "contacted")
    figures = report(fold_of(gp, contacted), "2026-11")
    assert figures[("days from referral to first contact", "mean")] == 2.0
    assert figures[("first visits", "")] == 0
    attended = month.outcome("P3", month.at(10, 10), "attended")
    figures = report(fold_of(gp, contacted, attended), "2026-11")
    assert figures[("days from referral to first contact", "mean")] == 2.0
    assert figures[("days from referral to first visit", "mean")] == 7.0


def test_a_wait_across_the_clocks_going_forward_is_the_time_that_passed() -> None:
    # referred 10 March 10:00 GMT, visited 7 April 10:30 BST, both written without an offset (as
    # files may): 27 days 23.5 hours passed, within 4 weeks; as clock times it was 28 days 0.5 hours
    referral = edited(month.referral("P3", datetime(2027, 3, 10, 10, tzinfo=UTC), "gp"), authoredOn="2027-03-10T10:00")
    visit = month.contact("P3", datetime(2027, 4, 7, 9, 30, tzinfo=UTC), "face-to-face")
    for entry in visit.payload["entry"]:
        entry["resource"]["period"] = {"start": "2027-04-07T10:30"}
    figures = report(fold_of(referral, visit), "2027-04")
    assert figures[("first visits", "")] == 1
    assert figures[("first visits within 4 weeks", "%")] == 100.0


def test_a_referral_whose_episode_closed_without_a_visit_waits_no_more() -> None:
    # P3 referred 3 Nov, on the caseload 4-10 Nov, discharged unvisited; referred again 20 Nov and
    # visited 24 Nov: that visit answers the second referral (4 days), not the first (21 days)
    first = month.referral("P3", month.at(3, 10), "gp")
    opened = month.episode("P3", month.at(4, 10), "c-ann")
    closed = month.episode("P3", month.at(10, 10), "c-ann", closed=True)
    closed.payload["entry"][0]["resource"]["period"] = {
        "start": month.at(4, 10).isoformat(),
        "end": month.at(10, 10).isoformat(),
    }
    again = edited(
        month.referral("P3", month.at(20, 10), "huddle"), id="a-second-request", authoredOn=month.at(20, 10).isoformat()
    )
    visit = month.contact("P3", month.at(24, 10), "face-to-face")
    figures = report(fold_of(first, opened, closed, again, visit), "2026-11")
    assert figures[("first visits", "")] == 1
    assert figures[("days from referral to first visit", "mean")] == 4.0


def test_declines_count_referrals_to_the_service_once_and_no_one_elses() -> None:
    # P5's referral is addressed to the council (LA123): its decline is not this service declined
    # (it showed as practice "unknown"); P4's decline re-sent with a new event id is still one decline
    declined = month.outcome("P4", month.at(13, 11), "declined")
    events = [*month.script(), edited(declined), month.outcome("P5", month.at(6, 9), "declined")]
    figures = report(fold_of(*events), "2026-11")
    assert {k: v for k, v in figures.items() if k[0].startswith("declined")} == {
        ("declined by practice", month.PRACTICE): 1,
        ("declined", "% of referrals"): 33.3,
    }


def test_the_declined_percentage_is_of_the_months_referrals_so_it_never_exceeds_100() -> None:
    # P3 and P4 referred in October, both declined in November; P6 referred in November, declined
    # in December. November's declines (2) were over November's referrals (1): 200%. The % is now of
    # the month's referrals, those declined (whenever, as the log stands); the count by practice is
    # still of the declines made in the month
    def declines(events: list[RecordEvent], of: str) -> dict[tuple[str, str], tuple[float | None, int | None]]:
        return {
            (r.kpi, r.breakdown): (r.value, r.of) for r in fold_of(*events).report(of) if r.kpi.startswith("declined")
        }

    events = [
        month.referral("P3", month.at(20, 10, month=10), "gp"),
        month.referral("P4", month.at(21, 10, month=10), "adult-social-care"),
        month.outcome("P3", month.at(2, 11), "declined"),
        month.outcome("P4", month.at(3, 11), "declined"),
        month.referral("P6", month.at(9, 9), "huddle"),
    ]
    assert declines(events, "2026-11") == {
        ("declined by practice", month.PRACTICE): (2, None),
        ("declined", "% of referrals"): (0.0, 1),
    }
    assert declines(events, "2026-10") == {("declined", "% of referrals"): (100.0, 2)}
    events.append(month.outcome("P6", month.at(2, 10, month=12), "declined"))
    assert declines(events, "2026-11")[("declined", "% of referrals")] == (100.0, 1)
    assert declines(events, "2026-12") == {
        ("declined by practice", month.PRACTICE): (1, None),
        ("declined", "% of referrals"): (None, 0),
    }


def test_an_outcome_that_names_no_code_leaves_the_referrals_outcome_as_it_was() -> None:
    # P4 declined (in the scripted month); a later update whose outcome extension has no valueCode
    # (a note, say) says no outcome: the decline still counts
    blank = month.outcome("P4", month.at(20, 9), "declined")
    blank.payload["entry"][0]["resource"]["extension"] = [{"url": co.OUTCOME_EXTENSION}]
    figures = report(fold_of(*month.script(), blank), "2026-11")
    assert figures[("declined by practice", month.PRACTICE)] == 1


def test_referrals_without_a_birth_date_have_an_age_band_so_the_bands_add_up() -> None:
    # as the API's referrals are: its Patient stub carries no birthDate
    unknown = edited(month.referral("P3", month.at(3, 10), "gp"), patient_birthDate=None)
    figures = report(fold_of(unknown, month.referral("P4", month.at(4, 10), "gp")), "2026-11")
    assert figures[("age at referral", "unknown")] == 1
    assert sum(v or 0 for (kpi, _), v in figures.items() if kpi == "age at referral") == figures[("referrals", "")]


def test_an_empty_month_has_no_percentages_or_means_rather_than_zero(tmp_path: Path) -> None:
    rows = fold_of(*month.script()).report("2026-10")
    empty = {(r.kpi, r.breakdown): r.value for r in rows if r.breakdown in ("%", "mean", "% of referrals")}
    assert empty and all(value is None for value in empty.values()), empty
    write_csv(rows, tmp_path / "kpi.csv")
    with (tmp_path / "kpi.csv").open() as out:
        written = {(r["kpi"], r["breakdown"]): r["value"] for r in csv.DictReader(out)}
    assert written[("first visits within 4 weeks", "%")] == ""
    assert written[("hours from discharge to GP letter", "mean")] == ""
    chart = [Row("caseload", "c-ann", None), Row("caseload", "c-bob", 2)]
    write_html([*rows, *chart], tmp_path / "kpi.html", month="2026-10", title="PIC")
    html = (tmp_path / "kpi.html").read_text()
    assert '<td class="n">n/a</td><td>95%</td>' in html
    assert "<title>c-bob: 2</title></rect>" in html
    assert "<title>c-ann" not in html  # no bar for no value


def test_text_cells_that_start_a_formula_are_quoted_and_numbers_are_not(tmp_path: Path) -> None:
    starts = ["=HYPERLINK(1)", "+1", "-1+2", "@SUM(A1)", "\tx", "\rx"]
    rows = [Row("referrals by practice", text, -2.5) for text in starts] + [Row("=kpi", "Y01", -3, "-1")]
    write_csv(rows, tmp_path / "kpi.csv")
    with (tmp_path / "kpi.csv").open(newline="") as out:
        written = list(csv.DictReader(out))
    assert [r["breakdown"] for r in written[:-1]] == [f"'{text}" for text in starts]
    assert {r["value"] for r in written[:-1]} == {"-2.5"}
    assert (written[-1]["kpi"], written[-1]["value"], written[-1]["target"]) == ("'=kpi", "-3", "-1")


def test_an_event_the_fold_cannot_read_is_skipped_counted_and_the_rest_still_count() -> None:
    no_id = edited(month.referral("P2", month.at(2, 10), "gp"), event_id="no-id", id=None)
    bad_shape = edited(month.referral("P1", month.at(2, 10), "gp"), event_id="bad-shape", requester="Y01")
    fold = fold_of(no_id, bad_shape, *month.script())
    assert {(r.kpi, r.breakdown): r.value for r in fold.report("2026-11")} == month.EXPECTED_KPIS
    assert sum(fold.skipped.values()) == 2
    assert any("has no resourceType and id" in reason for reason in fold.skipped)


def test_the_kpi_command_says_how_many_records_were_skipped_and_why(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def record(event: RecordEvent) -> SimpleNamespace:
        envelope = event.envelope()
        return SimpleNamespace(
            value=envelope.data, headers=[(k, v.encode()) for k, v in envelope.kafka_headers().items()]
        )

    no_id = edited(month.referral("P2", month.at(2, 10), "gp"), event_id="no-id", id=None)
    log = [record(e) for e in [*month.script(), no_id]] + [SimpleNamespace(value=b"{}", headers=[])]

    async def read_in_time_order(bootstrap: str) -> AsyncIterator[list[Any]]:
        yield log

    monkeypatch.setattr(kpi_report, "read_in_time_order", read_in_time_order)
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "kafka.invalid:9092")
    out = tmp_path / "kpi"
    done = CliRunner().invoke(cli.app, ["kpi", "--month", "2026-11", "--out", str(out), "--data-dir", str(tmp_path)])
    assert done.exit_code == 0, done.output
    said = " ".join(done.output.split())
    assert "2 events on the log could not be read" in said
    assert "has no resourceType and id" in said
    assert "not a CareHub CloudEvent" in said
    assert "2 events on the log could not be read" in (out / "kpi-2026-11.html").read_text()
    with (out / "kpi-2026-11.csv").open() as report_:
        skipped = [r for r in csv.DictReader(report_) if r["kpi"] == kpi_report.SKIPPED]
    assert sorted(int(r["value"]) for r in skipped) == [1, 1]


def test_a_discharge_whose_48_hours_have_not_run_out_on_the_log_is_pending_not_a_missed_letter() -> None:
    # P3 discharged from the service 30 Nov 17:00, the log's last event the clock's tick at 23:59: no
    # letter yet, and none due until 2 Dec 17:00. P6's letter (23 h) is the only one decided
    closed = month.episode("P3", month.at(30, 17), "c-ann", closed=True)
    events = [*month.script(), closed, tick(0, month.at(30, 23, 59))]
    figures = report(fold_of(*events), "2026-11")
    assert figures[("discharges", "")] == 2
    assert figures[("GP letters within 48 hours", "%")] == 100.0
    assert figures[("GP letters within 48 hours", "pending")] == 1
    # the log reaches 2 Dec 17:00 with no letter: its 48 hours ran out, a miss
    late = report(fold_of(*events, tick(0, month.at(2, 17, month=12))), "2026-11")
    assert (late[("GP letters within 48 hours", "%")], late[("GP letters within 48 hours", "pending")]) == (50.0, 0)
    # or the letter comes the next morning (16 h): on time
    sent = report(fold_of(*events, month.receipt("P3", month.at(1, 9, month=12))), "2026-11")
    assert (sent[("GP letters within 48 hours", "%")], sent[("GP letters within 48 hours", "pending")]) == (100.0, 0)
    assert sent[("hours from discharge to GP letter", "mean")] == 19.5  # (23 + 16) / 2


def person_ordered(events: list[RecordEvent], rng: random.Random) -> list[RecordEvent]:
    """The events as a reader of partitions may see them: each person's in order, people interleaved."""
    queues: dict[str, list[RecordEvent]] = {}
    for event in events:
        queues.setdefault(event.subject, []).append(event)
    shuffled: list[RecordEvent] = []
    while any(queues.values()):
        shuffled.append(rng.choice([q for q in queues.values() if q]).pop(0))
    return shuffled


def test_a_referral_without_a_birth_date_is_aged_by_the_latest_one_said_of_the_person_before_it() -> None:
    # the API's referrals carry no birth date; the hospital's ADT said P3 was born in 1940, then 1950
    # (76 at the referral); what it says after the referral is not what was known of it
    said = [
        month.discharge("P3", month.at(1, 9)),
        edited(month.discharge("P3", month.at(2, 9)), patient_birthDate="1950-03-01"),
        # neither a date that is no day nor someone else's Patient (a merge's retired record) says one
        edited(month.discharge("P3", month.at(2, 10)), patient_birthDate="1960-02-30"),
        edited(month.discharge("P3", month.at(2, 11)), patient_birthDate="1990-01-01", patient_id="retired"),
        edited(month.referral("P3", month.at(3, 10), "gp"), patient_birthDate=None),
        edited(month.discharge("P3", month.at(4, 9)), patient_birthDate="1930-03-01"),
        # P4: nothing says a birth date; P6: the referral's own (65 on 9 Nov) over the ADT's
        edited(month.referral("P4", month.at(4, 10), "gp"), patient_birthDate=None),
        month.discharge("P6", month.at(1, 9)),
        edited(month.referral("P6", month.at(9, 9), "huddle"), patient_birthDate="1961-10-01"),
    ]
    expected = {"<65": 0, "65-74": 1, "75-84": 1, "85+": 0, "unknown": 1}
    rng = random.Random(11)
    for _ in range(10):
        figures = report(fold_of(*person_ordered(said, rng)), "2026-11")
        assert {band: figures[("age at referral", band)] for band in expected} == expected


def test_a_cancelled_huddle_is_not_counted_as_held_until_a_later_agenda_says_it_was_held() -> None:
    def agenda(n: int, *flags: str) -> RecordEvent:
        """The 17 November agenda published again (n hours on), with these extensions true."""
        first = month.huddle(17, attended=False)
        extensions = [{"url": url, "valueBoolean": True} for url in flags]
        return RecordEvent(
            id=f"{first.id}-{n}",
            type=first.type,
            source=first.source,
            time=first.time + timedelta(hours=n),
            subject=first.subject,
            payload=first.payload | {"extension": extensions},
        )

    def held(*events: RecordEvent) -> tuple[float | None, float | None]:
        figures = report(fold_of(month.huddle(10, attended=True), *events), "2026-11")
        return figures[("huddles held", "")], figures[("huddles attended", "%")]

    assert held(agenda(0)) == (2, 50.0)  # published ahead of the meeting: held unless said otherwise
    cancelled = agenda(1, co.CANCELLED_EXTENSION)
    assert held(agenda(0), cancelled) == (1, 100.0)
    assert held(agenda(0), cancelled, agenda(2)) == (1, 100.0)  # a plain re-publish leaves it cancelled
    assert held(agenda(0), cancelled, agenda(3, co.ATTENDED_EXTENSION)) == (2, 100.0)  # it was held after all
    assert held(agenda(3, co.ATTENDED_EXTENSION), agenda(4, co.CANCELLED_EXTENSION)) == (1, 100.0)


def test_a_referral_counts_under_its_source_in_carehubs_code_system_whatever_else_it_is_coded_as() -> None:
    first = month.referral("P3", month.at(3, 10), "gp")
    source = {
        "url": co.SOURCE_EXTENSION,
        "valueCodeableConcept": {
            "coding": [
                {"system": "http://snomed.info/sct", "code": "123"},
                {"system": co.REFERRAL_SOURCE_SYSTEM, "code": "adult-social-care"},
            ]
        },
    }
    figures = report(fold_of(edited(first, extension=[source])), "2026-11")
    assert figures[("referrals by source", "adult-social-care")] == 1
    assert ("referrals by source", "123") not in figures


# --- a commissioner's analyst's review (2026-12-06): each test below fails on the fold before it -------


def test_a_partners_referral_counts_under_the_persons_practice_never_under_the_partner() -> None:
    # a voluntary organisation's referral through the API names no practice: it counted under the
    # organisation itself (VCS001) as if it were a practice. P3's practice is what the hospital said
    # before (PD1 by reference to the Organization it carries); P4's what a register row said only
    # after the referral; P6's is said by nothing, so unknown.
    hospital = month.discharge("P3", month.at(1, 9))
    for entry in hospital.payload["entry"]:
        if entry["resource"]["resourceType"] == "Patient":
            entry["resource"]["generalPractitioner"] = [{"reference": "Organization/gp-y90003"}]
    ods = {"system": "https://fhir.nhs.uk/Id/ods-organization-code", "value": "Y90003"}
    hospital.payload["entry"].append(
        {"resource": {"resourceType": "Organization", "id": "gp-y90003", "identifier": [ods]}}
    )

    def partners(who: str, day: int) -> RecordEvent:
        said = month.referral(who, month.at(day, 10), "voluntary-sector", by="VCS001")
        return edited(said, event_id=said.id, patient_generalPractitioner=None, id=month.referral_id(who))

    later = edited(
        month.register_row("P4", month.at(20, 9), 1, 1),
        patient_generalPractitioner=[{"identifier": ods | {"value": "Y90004"}}],
    )
    events = [
        hospital,
        partners("P3", 3),
        partners("P4", 4),
        later,
        partners("P6", 9),
        month.outcome("P3", month.at(13, 11), "declined"),
    ]
    figures = report(fold_of(*events), "2026-11")
    assert {k[1]: v for k, v in figures.items() if k[0] == "referrals by practice"} == {
        "Y90003": 1,
        "Y90004": 1,
        "unknown": 1,
    }
    assert {k[1]: v for k, v in figures.items() if k[0] == "declined by practice"} == {"Y90003": 1}


def test_four_weeks_is_28_days_by_the_calendar_not_672_hours() -> None:
    # referred 6 July 09:00 BST, visited 3 August 17:00 BST: the 28th day, within 4 weeks (it was a
    # miss by 8 hours); a visit on the 29th day is not within
    referred = edited(
        month.referral("P3", datetime(2026, 7, 6, 8, tzinfo=UTC), "gp"), authoredOn="2026-07-06T09:00:00+01:00"
    )
    on_time = month.contact("P3", datetime(2026, 8, 3, 16, tzinfo=UTC), "face-to-face")
    late_referral = edited(
        month.referral("P4", datetime(2026, 7, 6, 8, tzinfo=UTC), "gp"), authoredOn="2026-07-06T09:00:00+01:00"
    )
    late = month.contact("P4", datetime(2026, 8, 4, 7, tzinfo=UTC), "face-to-face")
    figures = report(fold_of(referred, on_time), "2026-08")
    assert figures[("first visits within 4 weeks", "%")] == 100.0
    figures = report(fold_of(referred, on_time, late_referral, late), "2026-08")
    assert figures[("first visits", "")] == 2
    assert figures[("first visits within 4 weeks", "%")] == 50.0


def test_a_referral_without_a_birth_date_is_aged_by_one_said_after_it_when_none_was_before() -> None:
    # the API's referrals carry no birth date; a hospital's ADT a week later says 1940-03-01 (86)
    referral = edited(month.referral("P3", month.at(3, 10), "gp"), patient_birthDate=None)
    figures = report(fold_of(referral, month.discharge("P3", month.at(10, 9))), "2026-11")
    assert figures[("age at referral", "85+")] == 1
    assert figures[("age at referral", "unknown")] == 0


def test_a_huddle_the_log_has_not_reached_yet_is_not_counted_as_held() -> None:
    # the agenda for 24 November published on 20 November, and nothing on the log after it
    ahead = month.huddle(24, attended=False)
    ahead = RecordEvent(
        id=ahead.id, type=ahead.type, source=ahead.source, time=month.at(20, 9), subject=ahead.subject,
        payload=ahead.payload,
    )  # fmt: skip
    figures = report(fold_of(month.huddle(10, attended=True), ahead), "2026-11")
    assert (figures[("huddles held", "")], figures[("huddles attended", "%")]) == (1, 100.0)
    later = month.contact("P3", month.at(25, 9), "follow-up")  # the log goes past the meeting: it was held
    figures = report(fold_of(month.huddle(10, attended=True), ahead, later), "2026-11")
    assert (figures[("huddles held", "")], figures[("huddles attended", "%")]) == (2, 50.0)


def test_onward_referrals_named_in_a_pic_summary_count_once_each_and_their_words_are_never_shown() -> None:
    # the summary is the coordinator's free text: "Age UK for Mrs J Smith" must not become a row of an
    # aggregate report; a destination said twice (any case, any bullet) is one, "None" is none, and a
    # ';' inside brackets does not split one
    from hub.core.pic_summary import composition

    closed = month.episode("P6", month.at(27, 10), "c-bob", closed=True)
    summary = composition(
        episode={"id": month.episode_id("P6")},
        person=month.PEOPLE["P6"],
        at=month.at(27, 10),
        author=month.SERVICE,
        author_name="PIC",
        sections={"onward": "- Age UK befriending; falls clinic (Tue; Thu)\n 2. age uk  befriending \nNone"},
    )
    closed.payload["entry"].append({"resource": summary})
    nothing = month.episode("P3", month.at(28, 10), "c-ann", closed=True)
    nothing.payload["entry"].append(
        {
            "resource": composition(
                episode={"id": "e"}, person="p", at=month.at(28, 10), author="A", author_name="A", sections={}
            )
        }
    )
    events = [
        month.episode("P6", month.at(10, 9), "c-bob"),
        month.episode("P3", month.at(6, 9), "c-ann"),
        closed,
        nothing,
    ]
    events.append(month.referral("P6", month.at(20, 11), "care-coordination", to="LA123", by=month.SERVICE))
    figures = report(fold_of(*events), "2026-11")
    assert {k[1]: v for k, v in figures.items() if k[0] == "onward referrals by destination"} == {
        "LA123": 1,  # made through the hub: a performer's code
        "named in a PIC summary": 2,  # Age UK befriending, the falls clinic
    }
    assert figures[("onward referrals", "")] == 3
    assert figures[("people referred on", "")] == 1  # P6, both ways; P3's summary names none


def test_a_log_with_no_events_gives_a_report_not_an_overflow() -> None:
    figures = report(KpiFold(service=month.SERVICE), "2026-11")
    assert figures[("huddles held", "")] == 0
    assert figures[("referrals", "")] == 0


def test_referrals_still_waiting_past_their_4_weeks_at_the_months_end_are_counted() -> None:
    # the % within 4 weeks is of visits made: someone never visited never counted as a miss.
    # P3 referred 1 Oct, visited only 3 Dec: waiting at the end of November (60 days). P4 referred
    # 5 Nov: 25 days at the end of November, not yet over 4 weeks. P6 referred 1 Oct, declined 10 Oct.
    events = [
        edited(month.referral("P3", month.at(1, 10, month=10), "gp"), event_id="p3"),
        month.referral("P4", month.at(5, 10), "gp"),
        month.referral("P6", month.at(1, 10, month=10), "huddle"),
        month.outcome("P6", month.at(10, 10, month=10), "declined"),
        month.contact("P3", month.at(3, 10, month=12), "face-to-face"),
    ]
    figures = report(fold_of(*events), "2026-11")
    assert figures[("referrals waiting over 4 weeks for a first visit", "at month end")] == 1
    # December, the log up to P3's visit on 3 Dec: P3 visited, P4 on its 28th day, not yet over
    figures = report(fold_of(*events), "2026-12")
    assert figures[("referrals waiting over 4 weeks for a first visit", "at month end")] == 0
    assert figures[("first visits within 4 weeks", "%")] == 0.0
    # and once the log reaches 4 Dec, P4 is
    figures = report(fold_of(*events, month.contact("P1", month.at(4, 9, month=12), "follow-up")), "2026-12")
    assert figures[("referrals waiting over 4 weeks for a first visit", "at month end")] == 1


def test_a_referral_answered_by_a_visit_that_counts_as_another_referrals_first_is_not_still_waiting() -> None:
    # P3 referred by the GP on 1 Nov and by social care on 2 Nov; one visit on 5 Nov answers both
    # (and is the first visit of the earlier): in December neither is waiting
    gp = month.referral("P3", month.at(1, 10), "gp")
    council = edited(month.referral("P3", month.at(2, 10), "adult-social-care"), id="the-councils-referral")
    visit = month.contact("P3", month.at(5, 10), "face-to-face")
    later = month.contact("P1", month.at(10, 10, month=12), "follow-up")  # the log reaches 10 December
    figures = report(fold_of(gp, council, visit, later), "2026-12")
    assert figures[("referrals waiting over 4 weeks for a first visit", "at month end")] == 0


def test_a_huddle_later_on_the_day_the_log_has_reached_is_not_held_yet() -> None:
    # the 24 November agenda (13:00), and the log up to 09:00 that day
    morning = month.contact("P3", month.at(24, 9), "follow-up")
    ahead = month.huddle(24, attended=False)
    ahead = RecordEvent(ahead.id, ahead.type, ahead.source, month.at(20, 9), ahead.subject, ahead.payload)
    figures = report(fold_of(ahead, morning), "2026-11")
    assert figures[("huddles held", "")] == 0
    figures = report(fold_of(ahead, morning, month.contact("P3", month.at(24, 14), "follow-up")), "2026-11")
    assert figures[("huddles held", "")] == 1


def test_a_stay_ends_the_referrals_before_it_on_the_log_not_those_that_say_they_were_made_before_it() -> None:
    # P3 referred 3 Nov 10:00, on the caseload 4-10 Nov, discharged unvisited; a GP's letter dated
    # 3 Nov 12:00, before the stay, is posted on 8 Nov, during it: it still waits (as its tasks do),
    # and a visit on 12 Nov 10:00 is its first visit, 8 days 22 hours on
    first = month.referral("P3", month.at(3, 10), "gp")
    opened = month.episode("P3", month.at(4, 10), "c-ann")
    late = edited(month.referral("P3", month.at(3, 12), "huddle"), id="the-letter-posted-late")
    late = RecordEvent(late.id, late.type, late.source, month.at(8, 10), late.subject, late.payload)
    closed = month.episode("P3", month.at(10, 10), "c-ann", closed=True)
    closed.payload["entry"][0]["resource"]["period"] = {
        "start": month.at(4, 10).isoformat(),
        "end": month.at(10, 10).isoformat(),
    }
    visit = month.contact("P3", month.at(12, 10), "face-to-face")
    figures = report(fold_of(first, opened, late, closed, visit), "2026-11")
    assert figures[("first visits", "")] == 1
    assert figures[("days from referral to first visit", "mean")] == 8.92


def test_a_referral_whose_person_died_is_not_waiting_and_a_referrals_form_says_nothing_of_a_death() -> None:
    # P3 referred 1 Oct and never visited; the hospital says they died on 20 Oct (an A08's Patient)
    from schemas.events.patient import PATIENT_UPDATED

    referral = month.referral("P3", month.at(1, 10, month=10), "gp")
    died = month.patient("P3") | {"deceasedDateTime": "2026-10-20T06:00:00+01:00"}
    death = RecordEvent(
        "p3-died", PATIENT_UPDATED.type, "urn:ods:RXX", month.at(20, 9, month=10), referral.subject, died
    )
    later = month.contact("P1", month.at(30, 9), "follow-up")  # the log reaches 30 November
    figures = report(fold_of(referral, later), "2026-11")
    assert figures[("referrals waiting over 4 weeks for a first visit", "at month end")] == 1
    figures = report(fold_of(referral, death, later), "2026-11")
    assert figures[("referrals waiting over 4 weeks for a first visit", "at month end")] == 0
    # a referral's own Patient saying so is a partner's form, not the hospital's word
    form = edited(month.referral("P4", month.at(1, 10, month=10), "gp"), event_id="p4")
    [patient] = [e["resource"] for e in form.payload["entry"] if e["resource"]["resourceType"] == "Patient"]
    patient["deceasedBoolean"] = True
    figures = report(fold_of(referral, form, later), "2026-11")
    assert figures[("referrals waiting over 4 weeks for a first visit", "at month end")] == 2
