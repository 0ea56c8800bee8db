"""The follow-up after a hospital discharge is due 48 h after the discharge itself (the Encounter's
period.end, from PV1-45), not after the hospital got round to sending the A03; and no one who died
is put on a case list by a register row that comes after the news.

P1 is referred by their GP on 4 Nov 2026 and on c-ann's caseload from 6 Nov. They are discharged on
Saturday 21 Nov at 10:00; the hospital's A03 (EVN-2, MSH-7) is recorded on Monday 23 Nov at 20:00
(UTC = UK time in November). Rules version 4 (hub/rules/croydon-pic.v4.yaml); a log replayed under
version 3 makes what it always made."""

from __future__ import annotations

from datetime import datetime

import orjson
import pytest

from adapters.hl7v2.to_fhir import map_message
from hub.core.coordination import tick
from hub.core.ports import RecordEvent
from hub.core.tasks import Engine
from hub.rules import DEFAULT, load_rules
from hub.store.memory import MemoryCoordinationStore
from schemas.events import coordination as co
from tests import locality_month as month
from tests.builders import an_adt
from tests.unit.test_coordination_deaths import died
from tests.unit.test_coordination_rules import engine as rules_engine
from tests.unit.test_coordination_rules import run

P1 = month.PEOPLE["P1"]
engine = rules_engine  # (the shipped rules' engine, a module fixture)
SATURDAY = month.at(21, 10)
MONDAY = month.at(23, 20)


def a03(*, discharge: str | None, sent: str = "202611232000") -> RecordEvent:
    """A real A03 through the hospital adapter's mapping, about P1 (its person key made P1's)."""
    raw = an_adt(trigger="A03", control_id="D1", event_time=sent, admit="202611180900", discharge=discharge)
    [mapped] = map_message(raw, key_secret=b"k")
    payload = orjson.loads(orjson.dumps(mapped.payload).replace(mapped.person_key.encode(), P1.encode()))
    return RecordEvent(mapped.event_id, mapped.event_type, mapped.source, mapped.event_time, P1, payload)


def on_the_caseload() -> list[RecordEvent]:
    return [month.referral("P1", month.at(4, 10), "gp"), month.episode("P1", month.at(6, 9), "c-ann")]


def follow_ups(derived: list[RecordEvent]) -> list[dict[str, object]]:
    """Each version of P1's discharge follow-up Task, in the order derived."""
    return [
        e.payload
        for e in derived
        if e.payload.get("resourceType") == "Task" and e.payload["code"]["coding"][0]["code"] == "discharge-follow-up"
    ]


def period(task: dict[str, object]) -> tuple[datetime, datetime]:
    said = task["restriction"]["period"]  # type: ignore[index]
    return datetime.fromisoformat(said["start"]), datetime.fromisoformat(said["end"])


def test_a_discharge_sent_late_is_due_48_hours_after_the_person_left_and_goes_overdue_then(engine: Engine) -> None:
    store = MemoryCoordinationStore()
    derived = run(engine, [*on_the_caseload(), a03(discharge="202611211000")], store)
    [opened] = follow_ups(derived)
    assert period(opened) == (SATURDAY, month.at(23, 10))
    # the hub's clock reaches Monday 20:00 as the A03 comes in: the follow-up was due at 10:00
    [overdue] = follow_ups(run(engine, [tick(0, MONDAY)], store))
    assert overdue["status"] == "requested" and overdue["owner"]["identifier"]["value"] == "team-lead"  # type: ignore[index]


def test_a_contact_dated_after_the_discharge_answers_it_though_recorded_after_the_a03(engine: Engine) -> None:
    store = MemoryCoordinationStore()
    run(engine, [*on_the_caseload(), a03(discharge="202611211000")], store)
    sunday_call = month.contact("P1", month.at(22, 11), "non-face-to-face")
    [done] = follow_ups(run(engine, [sunday_call], store))
    assert done["status"] == "completed"


def test_a_contact_before_the_discharge_does_not_answer_it(engine: Engine) -> None:
    store = MemoryCoordinationStore()
    run(engine, [*on_the_caseload(), a03(discharge="202611211000")], store)
    assert follow_ups(run(engine, [month.contact("P1", month.at(21, 9), "non-face-to-face")], store)) == []


def test_without_a_discharge_time_or_with_one_after_the_message_the_clock_runs_from_the_message(
    engine: Engine,
) -> None:
    for discharge in (None, "202611240900"):  # PV1-45 empty; PV1-45 after EVN-2 (a clock ahead: not taken)
        derived = run(engine, [*on_the_caseload(), a03(discharge=discharge)], MemoryCoordinationStore())
        [opened] = follow_ups(derived)
        assert period(opened) == (MONDAY, month.at(25, 20)), discharge


def test_a_register_row_after_the_news_of_a_death_puts_no_one_on_the_case_list(engine: Engine) -> None:
    """P1 is on no caseload; the hospital says they died on 6 Dec; their practice's register row of 7
    Dec meets the criteria (3 admissions, 2 long-term conditions)."""
    row = month.register_row("P1", month.at(7, 9, month=12), admissions=3, conditions=2)
    derived = run(engine, [died(), row], MemoryCoordinationStore())
    assert [e for e in derived if e.type == co.CASELIST_ADDED.type] == []
    alive = run(engine, [row], MemoryCoordinationStore())  # the same row for someone alive: listed
    assert [e.type for e in alive if e.type == co.CASELIST_ADDED.type] == [co.CASELIST_ADDED.type]


def test_under_rules_version_3_the_clock_runs_from_the_message_and_the_dead_are_listed_as_they_were() -> None:
    v3 = Engine(load_rules(DEFAULT.with_name("croydon-pic.v3.yaml")))
    [opened] = follow_ups(run(v3, [*on_the_caseload(), a03(discharge="202611211000")], MemoryCoordinationStore()))
    assert period(opened) == (MONDAY, month.at(25, 20))
    row = month.register_row("P1", month.at(7, 9, month=12), admissions=3, conditions=2)
    derived = run(v3, [died(), row], MemoryCoordinationStore())
    assert [e.type for e in derived if e.type == co.CASELIST_ADDED.type] == [co.CASELIST_ADDED.type]


@pytest.mark.parametrize(
    ("discharge", "why"),
    [
        ("202611", "a month alone"),
        ("20261121", "a day alone: a ward call that morning would answer it"),
        ("202611210000", "midnight, as the adapter writes a day alone"),
        ("202611151000", "more than a week before the message"),
    ],
)
def test_a_discharge_time_that_says_too_little_or_cannot_be_runs_the_clock_from_the_message(
    engine: Engine, discharge: str, why: str
) -> None:
    admitted = "202611140900" if discharge == "202611151000" else "202611180900"
    raw = an_adt(trigger="A03", control_id="D1", event_time="202611232000", admit=admitted, discharge=discharge)
    [mapped] = map_message(raw, key_secret=b"k")
    payload = orjson.loads(orjson.dumps(mapped.payload).replace(mapped.person_key.encode(), P1.encode()))
    sent = RecordEvent(mapped.event_id, mapped.event_type, mapped.source, mapped.event_time, P1, payload)
    [opened] = follow_ups(run(engine, [*on_the_caseload(), sent], MemoryCoordinationStore()))
    assert period(opened) == (MONDAY, month.at(25, 20)), why


def test_a_discharge_cancelled_and_sent_again_with_its_true_time_moves_the_clock(engine: Engine) -> None:
    store = MemoryCoordinationStore()
    run(engine, [*on_the_caseload(), a03(discharge="202611211000")], store)
    raw = an_adt(
        trigger="A03", control_id="D2", event_time="202611242100", admit="202611180900", discharge="202611241400"
    )
    [mapped] = map_message(raw, key_secret=b"k")
    payload = orjson.loads(orjson.dumps(mapped.payload).replace(mapped.person_key.encode(), P1.encode()))
    corrected = RecordEvent(mapped.event_id, mapped.event_type, mapped.source, mapped.event_time, P1, payload)

    [moved] = follow_ups(run(engine, [corrected], store))

    assert period(moved) == (month.at(24, 14), month.at(26, 14))
    assert follow_ups(run(engine, [corrected], store)) == []  # (the same again: nothing)
