"""The coordination rules over a scripted locality month, against answers worked out by hand
(tests/locality_month.py), on the pure engine and the in-memory store; and the clocks that run
past the month (a long stay on a caseload)."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest
import yaml
from fhir.resources.R4B.flag import Flag
from fhir.resources.R4B.task import Task

from adapters.hl7v2.to_fhir import map_message
from hub.core.coordination import Positioned, process, tick
from hub.core.pic_summary import OUTPUT_SYSTEM, PRACTICE_OUTPUT, practice_output
from hub.core.ports import RecordEvent
from hub.core.tasks import Engine
from hub.rules import DEFAULT
from hub.store.memory import MemoryCoordinationStore
from schemas.coordination_rules import CoordinationRules
from schemas.events import coordination as co
from tests import locality_month as month
from tests.builders import an_adt

RULES = DEFAULT  # the shipped rules (hub/rules/croydon-pic.v4.yaml)


@pytest.fixture(scope="module")
def engine() -> Engine:
    return Engine(CoordinationRules.model_validate(yaml.safe_load(RULES.read_text())))


def run(engine: Engine, events: list[RecordEvent], store: MemoryCoordinationStore) -> list[RecordEvent]:
    derived: list[RecordEvent] = []
    for event in events:
        with store.unit_of_work() as uow:
            derived += process(engine, uow, [Positioned(event, 0)])
            uow.commit()
    return derived


def month_with_ticks() -> list[RecordEvent]:
    timeline = [(e.time, 1, e) for e in month.script()] + [(t, 0, tick(0, t)) for t in month.tick_times()]
    return [e for _, _, e in sorted(timeline, key=lambda x: (x[0], x[1]))]


def final_tasks(derived: list[RecordEvent]) -> dict[str, dict[str, tuple[str, datetime, str, bool]]]:
    people = {key: who for who, key in month.PEOPLE.items()}
    latest: dict[str, dict[str, object]] = {}
    for event in derived:
        if event.payload["resourceType"] == "Task":
            latest[event.payload["id"]] = event.payload
    found: dict[str, dict[str, tuple[str, datetime, str, bool]]] = {}
    for task in latest.values():
        who = people[str(task["for"]["reference"]).removeprefix("Patient/")]  # type: ignore[index]
        owner = task["owner"]["identifier"]["value"]  # type: ignore[index]
        due = datetime.fromisoformat(task["restriction"]["period"]["end"])  # type: ignore[index]
        found.setdefault(who, {})[task["code"]["coding"][0]["code"]] = (  # type: ignore[index]
            str(task["status"]),
            due,
            owner,
            "businessStatus" in task,
        )
    return found


def test_the_month_gives_the_hand_computed_tasks(engine: Engine) -> None:
    derived = run(engine, month_with_ticks(), MemoryCoordinationStore())
    assert final_tasks(derived) == month.EXPECTED_TASKS


def test_exactly_the_hand_computed_tasks_go_overdue_once_each(engine: Engine) -> None:
    derived = run(engine, month_with_ticks(), MemoryCoordinationStore())
    people = {key: who for who, key in month.PEOPLE.items()}
    overdue = [
        (people[e.subject], e.payload["code"]["coding"][0]["code"], e.time)
        for e in derived
        if e.type == co.TASK_OVERDUE.type
    ]
    assert sorted(overdue) == sorted(month.EXPECTED_OVERDUE)
    escalated = [e.payload["owner"]["identifier"]["value"] for e in derived if e.type == co.TASK_OVERDUE.type]
    assert escalated == ["team-lead"] * len(month.EXPECTED_OVERDUE)


def test_case_finding_puts_the_right_people_on_the_case_list_once(engine: Engine) -> None:
    derived = run(engine, month_with_ticks(), MemoryCoordinationStore())
    people = {key: who for who, key in month.PEOPLE.items()}
    added = [e for e in derived if e.type == co.CASELIST_ADDED.type]
    assert {people[e.subject]: e.payload["extension"][0]["valueCode"] for e in added} == month.EXPECTED_CASE_LIST
    assert len(added) == len(month.EXPECTED_CASE_LIST)
    assert added[0].payload["author"]["identifier"]["value"] == month.PRACTICE


def test_derived_resources_are_valid_fhir(engine: Engine) -> None:
    derived = run(engine, month_with_ticks(), MemoryCoordinationStore())
    for event in derived:
        validate = {"Task": Task.model_validate, "Flag": Flag.model_validate}[event.payload["resourceType"]]
        validate(event.payload)


def test_the_same_log_twice_applies_once_and_derives_the_same_ids(engine: Engine) -> None:
    store = MemoryCoordinationStore()
    events = month_with_ticks()
    first = run(engine, events, store)
    again = run(engine, events, store)
    assert again == []
    fresh = run(engine, events, MemoryCoordinationStore())
    assert [e.id for e in fresh] == [e.id for e in first]


def test_a_clock_fires_on_its_own_partition_only(engine: Engine) -> None:
    store = MemoryCoordinationStore()
    referral = month.referral("P4", month.at(4, 10), "adult-social-care")
    with store.unit_of_work() as uow:
        process(engine, uow, [Positioned(referral, 3)])
        late = process(engine, uow, [Positioned(tick(2, month.at(9)), 2)])
        assert late == []
        fired = process(engine, uow, [Positioned(tick(3, month.at(9)), 3)])
        uow.commit()
    assert [e.type for e in fired] == [co.TASK_OVERDUE.type]


def test_a_coordinator_can_cancel_a_task_and_its_clock_stops(engine: Engine) -> None:
    store = MemoryCoordinationStore()
    referral = month.referral("P4", month.at(4, 10), "adult-social-care")
    created = run(engine, [referral], store)
    triage = next(e.payload for e in created if e.payload["code"]["coding"][0]["code"] == "referral-triage")
    manual = RecordEvent(
        id="manual-1",
        type=co.TASK_UPDATED.type,
        source="urn:ods:Y0PIC",
        time=month.at(5),
        subject=referral.subject,
        payload={**triage, "status": "cancelled"},
    )
    run(engine, [manual], store)
    assert run(engine, [tick(0, month.at(20))], store) == []  # the triage clock was stopped
    fired = run(engine, [tick(0, month.at(3, month=12))], store)
    assert [e.payload["code"]["coding"][0]["code"] for e in fired] == ["first-visit"]


def test_a_move_the_statuses_do_not_allow_is_ignored_as_the_record_ignores_it(engine: Engine) -> None:
    store = MemoryCoordinationStore()
    referral = month.referral("P4", month.at(4, 10), "adult-social-care")
    created = run(engine, [referral], store)
    triage = next(e.payload for e in created if e.payload["code"]["coding"][0]["code"] == "referral-triage")

    def moved(n: int, status: str) -> RecordEvent:
        return RecordEvent(
            f"manual-{n}",
            co.TASK_UPDATED.type,
            "urn:ods:Y0PIC",
            month.at(5),
            referral.subject,
            {**triage, "status": status},
        )

    run(engine, [moved(1, "completed"), moved(2, "in-progress")], store)  # two coordinators at once
    assert store.states[referral.subject]["tasks"][triage["id"]]["status"] == "completed"
    assert run(engine, [tick(0, month.at(20))], store) == []  # and its clock stays stopped


def long_stay_flags(
    engine: Engine, store: MemoryCoordinationStore, ticks: list[datetime]
) -> list[tuple[datetime, RecordEvent]]:
    """(tick time, flag) for every long-stay flag the ticks raise, in tick order."""
    return [
        (at, event)
        for at in sorted(ticks)
        for event in run(engine, [tick(0, at)], store)
        if event.type == co.CASELOAD_LONG_STAY.type
    ]


def test_a_person_on_a_caseload_over_12_weeks_is_flagged_once_dated_when_the_12_weeks_ran_out(engine: Engine) -> None:
    store = MemoryCoordinationStore()
    start = month.at(6, 9)
    run(engine, [month.episode("P3", start, "c-ann")], store)
    twelve_weeks = start + timedelta(weeks=12)  # 29 Jan 2027 09:00
    midnights = [month.at(7) + timedelta(days=d) for d in range(100)]  # to 14 Feb 2027, two weeks past
    flags = long_stay_flags(engine, store, [*midnights, twelve_weeks - timedelta(seconds=1)])
    # raised by the first tick at or after the 12 weeks (the next midnight), dated at the 12 weeks
    assert [(at, flag.time) for at, flag in flags] == [(month.at(30, month=1, year=2027), twelve_weeks)]
    flag = flags[0][1]
    assert flag.subject == month.PEOPLE["P3"]
    assert flag.payload["code"]["coding"][0]["code"] == co.LONG_STAY
    assert flag.payload["subject"] == {"reference": f"Patient/{month.PEOPLE['P3']}"}
    assert flag.payload["period"] == {"start": twelve_weeks.isoformat()}
    Flag.model_validate(flag.payload)


def test_a_person_discharged_from_the_service_within_12_weeks_is_never_flagged(engine: Engine) -> None:
    store = MemoryCoordinationStore()
    run(engine, [month.episode("P6", month.at(10, 9), "c-bob")], store)
    run(engine, [month.episode("P6", month.at(20, 9, month=12), "c-bob", closed=True)], store)
    midnights = [month.at(11) + timedelta(days=d) for d in range(120)]  # to 10 Mar 2027
    assert long_stay_flags(engine, store, midnights) == []


def test_a_long_stay_flag_ends_when_the_person_is_discharged_from_the_service(engine: Engine) -> None:
    store = MemoryCoordinationStore()
    start = month.at(6, 9)
    run(engine, [month.episode("P3", start, "c-ann")], store)
    [(_, raised)] = long_stay_flags(engine, store, [start + timedelta(weeks=13)])
    closed_at = start + timedelta(weeks=14)
    derived = run(engine, [month.episode("P3", closed_at, "c-ann", closed=True)], store)
    [ended] = [e for e in derived if e.type == co.CASELOAD_LONG_STAY.type]
    assert ended.payload["id"] == raised.payload["id"] and ended.id != raised.id
    assert ended.payload["status"] == "inactive"
    assert ended.payload["period"] == {"start": raised.payload["period"]["start"], "end": closed_at.isoformat()}
    assert ended.payload["extension"] == raised.payload["extension"]
    assert raised.payload["extension"][0]["valueReference"]["reference"].startswith("EpisodeOfCare/")
    Flag.model_validate(ended.payload)
    assert long_stay_flags(engine, store, [closed_at + timedelta(weeks=20)]) == []


def referred_by(org: str, source: str, when: datetime) -> RecordEvent:
    """P1 referred by `org`, whose referral's Patient names `org` as the GP (as the API's stub does)."""
    event = month.referral("P1", when, source, by=org)
    [stub] = [r["resource"] for r in event.payload["entry"] if r["resource"]["resourceType"] == "Patient"]
    stub["generalPractitioner"] = [{"identifier": {"system": month.ODS, "value": org}}]
    return event


def hospital_adt(when: datetime) -> RecordEvent:
    """A real A03 through the HL7 adapter: PD1-3 names Y00001, as generalPractitioner -> Organization."""
    [mapped] = map_message(an_adt(trigger="A03", practice="Y00001"), key_secret=b"k")
    return RecordEvent(mapped.event_id, mapped.event_type, mapped.source, when, month.PEOPLE["P1"], mapped.payload)


def letter_to(engine: Engine, events: list[RecordEvent]) -> str | None:
    """Where P1's PIC summary goes after these events, an episode and its close."""
    summary = {"resourceType": "Composition", "id": "pic-p1", "status": "final", "title": "PIC summary"}
    closing = month.episode("P1", month.at(20, 9), "c-ann", closed=True)
    closing.payload["entry"].append({"resource": summary})
    derived = run(engine, [*events, month.episode("P1", month.at(10, 9), "c-ann"), closing], MemoryCoordinationStore())
    [letter] = [e for e in derived if e.type == co.PIC_SUMMARY_SENT.type]
    [patient] = [r["resource"] for r in letter.payload["entry"] if r["resource"]["resourceType"] == "Patient"]
    gps = patient.get("generalPractitioner") or [{}]
    code = gps[0].get("identifier", {}).get("value")
    return None if code is None else str(code)


def test_a_referral_never_moves_the_gp_letters_from_where_the_person_is_registered(engine: Engine) -> None:
    """A hospital's ADT (PD1) or the practice's register says where the person is registered; a
    partner's referral after it must not send the PIC summary elsewhere."""
    partner = referred_by("LA123", "adult-social-care", month.at(3, 9))
    assert letter_to(engine, [hospital_adt(month.at(1, 9)), partner]) == "Y00001"
    register = month.register_row("P1", month.at(1, 9), admissions=0, conditions=0)
    assert letter_to(engine, [register, partner]) == month.PRACTICE


def test_until_a_registration_says_the_practice_the_latest_referral_does(engine: Engine) -> None:
    partner = referred_by("LA123", "gp", month.at(3, 9))  # a partner that did not say its source
    assert letter_to(engine, [partner]) == "LA123"  # all anyone has said
    assert letter_to(engine, [partner, referred_by("Y01", "gp", month.at(4, 9))]) == "Y01"  # the GP corrects it
    assert letter_to(engine, [partner, hospital_adt(month.at(5, 9))]) == "Y00001"


def test_the_hubs_own_letter_read_back_from_the_log_is_no_registration(engine: Engine) -> None:
    """The PIC summary is on the log, so the engine reads it back; the practice it names came from a
    partner's referral, and a GP's referral after it must still correct it."""
    store = MemoryCoordinationStore()
    partner = referred_by("LA123", "gp", month.at(3, 9))
    derived = run(engine, [partner, *discharged_from_the_service(month.at(20, 9))], store)
    [sent] = [e for e in derived if e.type == co.PIC_SUMMARY_SENT.type]
    assert letters([sent]) == [(sent.time, "LA123")]
    run(engine, [sent, referred_by("Y01", "gp", month.at(22, 9))], store)
    with store.unit_of_work() as uow:
        assert (uow.state(month.PEOPLE["P1"]) or {}).get("practice") == "Y01"


# --- a PIC summary with no practice to go to: held, and the coordinator told ------------------------


def unregistered_referral(when: datetime) -> RecordEvent:
    """P1 referred by adult social care, whose referral names no GP (as the API's stub for a partner)."""
    event = month.referral("P1", when, "adult-social-care", by="LA123")
    [stub] = [r["resource"] for r in event.payload["entry"] if r["resource"]["resourceType"] == "Patient"]
    del stub["generalPractitioner"]
    return event


def discharged_from_the_service(when: datetime) -> list[RecordEvent]:
    """P1 on c-ann's caseload from 10 Nov, discharged at `when` with the PIC summary `pic-p1`."""
    summary = {"resourceType": "Composition", "id": "pic-p1", "status": "final", "title": "PIC summary"}
    closing = month.episode("P1", when, "c-ann", closed=True)
    closing.payload["entry"].append({"resource": summary})
    return [month.episode("P1", month.at(10, 9), "c-ann"), closing]


def of_code(derived: list[RecordEvent], type_: str, code: str) -> list[RecordEvent]:
    return [e for e in derived if e.type == type_ and e.payload["code"]["coding"][0]["code"] == code]


def letters(derived: list[RecordEvent]) -> list[tuple[datetime, str | None]]:
    """(time, practice) of each PIC summary issued."""
    found = []
    for event in (e for e in derived if e.type == co.PIC_SUMMARY_SENT.type):
        [patient] = [r["resource"] for r in event.payload["entry"] if r["resource"]["resourceType"] == "Patient"]
        gps = patient.get("generalPractitioner") or [{}]
        found.append((event.time, gps[0].get("identifier", {}).get("value")))
    return found


def test_a_pic_summary_with_no_practice_to_go_to_waits_and_the_coordinator_must_find_the_practice(
    engine: Engine,
) -> None:
    store = MemoryCoordinationStore()
    closed_at = month.at(20, 9)
    derived = run(engine, [unregistered_referral(month.at(3, 9)), *discharged_from_the_service(closed_at)], store)
    assert letters(derived) == []  # not sent to nobody
    [made] = of_code(derived, co.TASK_CREATED.type, "find-gp-practice")
    task = made.payload
    Task.model_validate(task)
    assert (task["status"], task["owner"]["identifier"]["value"]) == ("requested", "c-ann")
    assert task["restriction"]["period"]["end"] == (closed_at + timedelta(hours=48)).isoformat()  # as the letter
    assert task["focus"] == {"reference": "Composition/pic-p1"}
    [_, closing] = discharged_from_the_service(closed_at)
    resent = RecordEvent(
        f"{closing.id}-again", closing.type, closing.source, closing.time, closing.subject, closing.payload
    )
    assert of_code(run(engine, [resent], store), co.TASK_CREATED.type, "find-gp-practice") == []  # one task

    released = run(engine, [hospital_adt(month.at(21, 9))], store)  # the hospital names Y00001
    assert letters(released) == [(month.at(21, 9), "Y00001")]
    [sent] = [e for e in released if e.type == co.PIC_SUMMARY_SENT.type]
    assert sent.payload["entry"][0]["resource"]["id"] == "pic-p1"
    [done] = of_code(released, co.TASK_UPDATED.type, "find-gp-practice")
    assert (done.payload["id"], done.payload["status"]) == (task["id"], "completed")
    assert done.payload["output"] == [practice_output("Y00001")]  # where the summary went
    Task.model_validate(done.payload)
    overdue = run(engine, [tick(0, month.at(23))], store)  # its clock stopped; the letter's receipt is still due
    # (the referral's triage, never done, ended with the stay on the caseload: rules version 2)
    assert {"pic-summary"} == {e.payload["code"]["coding"][0]["code"] for e in overdue}
    assert letters(run(engine, [hospital_adt(month.at(24, 9))], store)) == []  # sent once


def test_a_held_pic_summary_past_its_48_hours_goes_to_the_team_lead_and_still_goes_once_the_gp_refers(
    engine: Engine,
) -> None:
    store = MemoryCoordinationStore()
    run(engine, [unregistered_referral(month.at(3, 9)), *discharged_from_the_service(month.at(20, 9))], store)
    overdue = run(engine, [tick(0, month.at(22, 9))], store)  # (the referral's triage ended with the stay)
    codes = {e.payload["code"]["coding"][0]["code"] for e in overdue}
    assert codes == {"find-gp-practice", "pic-summary"}
    assert {e.payload["owner"]["identifier"]["value"] for e in overdue} == {"team-lead"}
    released = run(engine, [referred_by(month.PRACTICE, "gp", month.at(25, 9))], store)
    assert letters(released) == [(month.at(25, 9), month.PRACTICE)]
    [done] = of_code(released, co.TASK_UPDATED.type, "find-gp-practice")
    assert done.payload["status"] == "completed"
    assert done.payload["owner"]["identifier"]["value"] == "team-lead"


def test_a_held_pic_summary_still_goes_when_the_coordinator_has_closed_the_task_to_find_the_practice(
    engine: Engine,
) -> None:
    store = MemoryCoordinationStore()
    derived = run(engine, [unregistered_referral(month.at(3, 9)), *discharged_from_the_service(month.at(20, 9))], store)
    [made] = of_code(derived, co.TASK_CREATED.type, "find-gp-practice")
    cancelled = {**made.payload, "status": "cancelled"}
    run(
        engine,
        [RecordEvent("manual-1", co.TASK_UPDATED.type, "urn:ods:Y0PIC", month.at(21), made.subject, cancelled)],
        store,
    )
    released = run(engine, [hospital_adt(month.at(22, 9))], store)
    assert letters(released) == [(month.at(22, 9), "Y00001")]
    assert of_code(released, co.TASK_UPDATED.type, "find-gp-practice") == []  # it stays as the coordinator left it


def test_the_coordinator_who_finds_the_practice_names_it_on_completing_the_task_and_the_held_summary_goes(
    engine: Engine,
) -> None:
    store = MemoryCoordinationStore()
    derived = run(engine, [unregistered_referral(month.at(3, 9)), *discharged_from_the_service(month.at(20, 9))], store)
    [made] = of_code(derived, co.TASK_CREATED.type, "find-gp-practice")
    person = made.subject

    def coordinator(event_id: str, when: datetime, task: dict[str, object]) -> RecordEvent:
        return RecordEvent(event_id, co.TASK_UPDATED.type, "urn:ods:Y0PIC", when, person, task)

    # the practice named on another move, or on another task, is not taken for it
    other = next(iter(t for t in store.states[person]["tasks"] if t != made.payload["id"]))
    elsewhere = {**made.payload, "id": other, "status": "completed", "output": [practice_output("Y00002")]}
    assert letters(run(engine, [coordinator("manual-0", month.at(21, 9), elsewhere)], store)) == []
    started = {**made.payload, "status": "in-progress", "output": [practice_output("Y00002")]}
    assert letters(run(engine, [coordinator("manual-1", month.at(21, 10), started)], store)) == []

    found = {**made.payload, "status": "completed", "output": [practice_output("Y00002")]}
    Task.model_validate(found)
    released = run(engine, [coordinator("manual-2", month.at(21, 11), found)], store)
    assert letters(released) == [(month.at(21, 11), "Y00002")]
    assert of_code(released, co.TASK_UPDATED.type, "find-gp-practice") == []  # the coordinator completed it
    assert (store.states[person]["practice"], store.states[person]["practice_from"]) == ("Y00002", "coordinator")
    # as good as a registration: a partner's referral naming another practice does not move it, a
    # hospital's ADT does, and the letter went once
    assert letters(run(engine, [referred_by("Y00009", "adult-social-care", month.at(22, 9))], store)) == []
    assert store.states[person]["practice"] == "Y00002"
    assert letters(run(engine, [hospital_adt(month.at(23, 9))], store)) == []
    assert store.states[person]["practice"] == "Y00001"


def _named(value: object) -> list[object]:
    return [
        {
            "type": {"coding": [{"system": OUTPUT_SYSTEM, "code": PRACTICE_OUTPUT}]},
            "valueReference": {"identifier": {"system": month.ODS, "value": value}},
        }
    ]


BAD_OUTPUTS = [
    5,
    "Y00002",
    [5],
    [{"type": {"coding": 5}}],
    [{"type": 5}],
    _named(12345),
    _named({"x": 1}),
    _named(" Y00002 "),
    _named("Y" * 100),
    _named(""),
    [{"type": {"coding": [{"code": PRACTICE_OUTPUT}]}, "valueReference": _named("Y00002")[0]["valueReference"]}],  # type: ignore[index]
]


@pytest.mark.parametrize("output", BAD_OUTPUTS)
def test_a_task_update_from_the_log_with_a_malformed_practice_names_none_and_never_raises(
    engine: Engine, output: object
) -> None:
    store = MemoryCoordinationStore()
    derived = run(engine, [unregistered_referral(month.at(3, 9)), *discharged_from_the_service(month.at(20, 9))], store)
    [made] = of_code(derived, co.TASK_CREATED.type, "find-gp-practice")
    updated = {**made.payload, "status": "completed", "output": output}
    strange = {**made.payload, "id": ["not", "an", "id"], "status": "completed"}
    events = [
        RecordEvent(f"manual-{n}", co.TASK_UPDATED.type, "urn:ods:Y0PIC", month.at(21, 9 + n), made.subject, task)
        for n, task in enumerate([strange, updated])
    ]
    assert letters(run(engine, events, store)) == []  # still held
    assert store.states[made.subject]["practice"] is None


def the_referral_then_a_stay_that_closes_unvisited(second: bool = False) -> list[RecordEvent]:
    """P4 referred 4 Nov, on c-ann's caseload 6-10 Nov, discharged from the service unvisited; with
    `second`, referred again on 8 Nov, while on the caseload."""
    events = [
        month.referral("P4", month.at(4, 10), "adult-social-care"),
        month.episode("P4", month.at(6, 9), "c-ann"),
        month.episode("P4", month.at(10, 10), "c-ann", closed=True),  # (its period starts 10 Nov 09:00)
    ]
    events[2].payload["entry"][0]["resource"]["period"]["start"] = month.at(6, 9).isoformat()
    if second:
        again = month.referral("P4", month.at(8, 10), "huddle")
        again.payload["entry"][0]["resource"]["id"] = "the-second-referral"
        events.insert(
            2, RecordEvent(f"{again.id}-2", again.type, again.source, again.time, again.subject, again.payload)
        )
    return events


def test_a_referrals_tasks_end_when_the_stay_on_the_caseload_after_it_closes_without_them(engine: Engine) -> None:
    # version 1 left triage and first visit open, to go overdue to the team lead for someone the
    # service had discharged; a referral made during the stay keeps its own
    derived = run(
        engine,
        [*the_referral_then_a_stay_that_closes_unvisited(), tick(0, month.at(3, month=12))],
        MemoryCoordinationStore(),
    )
    assert {
        key: status for key, status in statuses(derived).items() if key[0] in ("referral-triage", "first-visit")
    } == {
        ("referral-triage", month.referral_id("P4")): "cancelled",
        ("first-visit", month.referral_id("P4")): "cancelled",
    }
    overdue = {e.payload["code"]["coding"][0]["code"] for e in derived if e.type == co.TASK_OVERDUE.type}
    assert overdue == {"pic-summary"}  # (no receipt for the GP letter: only that one)
    derived = run(engine, the_referral_then_a_stay_that_closes_unvisited(second=True), MemoryCoordinationStore())
    found = statuses(derived)
    assert found[("first-visit", month.referral_id("P4"))] == "cancelled"
    assert found[("first-visit", "the-second-referral")] == "requested"


def test_version_1_of_the_rules_leaves_them_open(engine: Engine) -> None:
    v1 = Engine(CoordinationRules.model_validate(yaml.safe_load(DEFAULT.with_name("croydon-pic.v1.yaml").read_text())))
    derived = run(v1, the_referral_then_a_stay_that_closes_unvisited(), MemoryCoordinationStore())
    assert statuses(derived)[("first-visit", month.referral_id("P4"))] == "requested"


def statuses(derived: list[RecordEvent]) -> dict[tuple[str, str], str]:
    """(rule, the referral it is about) -> the task's latest status, of the referral tasks derived."""
    latest: dict[tuple[str, str], str] = {}
    for event in derived:
        task = event.payload
        if task.get("resourceType") == "Task" and str((task.get("focus") or {}).get("reference", "")).startswith(
            "ServiceRequest/"
        ):
            key = (task["code"]["coding"][0]["code"], task["focus"]["reference"].removeprefix("ServiceRequest/"))
            latest[key] = str(task["status"])
    return latest


def test_which_referrals_a_stay_ends_is_decided_in_log_order_not_by_the_times_events_state(engine: Engine) -> None:
    # a review: a GP's letter dated before the stay but posted during it (its authoredOn 5 Nov, on
    # the log after the stay opened on 6 Nov) still waits; a stay opened for a referral with its
    # time set back before the referral's, and a closed stay whose start is a bare date, still end
    # the referral they were for
    events = the_referral_then_a_stay_that_closes_unvisited(second=True)
    posted_late = events[2]
    events[2] = RecordEvent(
        posted_late.id, posted_late.type, posted_late.source, month.at(5, 12), posted_late.subject, posted_late.payload
    )
    found = statuses(run(engine, events, MemoryCoordinationStore()))
    assert found[("first-visit", "the-second-referral")] == "requested"
    assert found[("first-visit", month.referral_id("P4"))] == "cancelled"

    backdated = the_referral_then_a_stay_that_closes_unvisited()
    opened = backdated[1]
    backdated[1] = RecordEvent(opened.id, opened.type, opened.source, month.at(4, 9), opened.subject, opened.payload)
    backdated[2].payload["entry"][0]["resource"]["period"]["start"] = "2026-11-04"
    found = statuses(run(engine, backdated, MemoryCoordinationStore()))
    assert found[("first-visit", month.referral_id("P4"))] == "cancelled"
    assert found[("referral-triage", month.referral_id("P4"))] == "cancelled"


def test_a_task_names_the_rules_version_that_opened_it_whatever_version_closes_it() -> None:
    v1 = Engine(CoordinationRules.model_validate(yaml.safe_load(DEFAULT.with_name("croydon-pic.v1.yaml").read_text())))
    later = Engine(CoordinationRules.model_validate(yaml.safe_load(DEFAULT.read_text())))
    store = MemoryCoordinationStore()
    referral, opened, closed = the_referral_then_a_stay_that_closes_unvisited()
    run(v1, [referral], store)
    derived = run(later, [opened, closed], store)
    cancelled = [e.payload for e in derived if e.payload.get("status") == "cancelled" and "focus" in e.payload]
    first = [t for t in cancelled if t["code"]["coding"][0]["code"] == "first-visit"]
    assert first and first[0]["instantiatesUri"].endswith("/v1#first-visit")


def test_a_referral_or_discharge_sent_again_as_a_new_event_opens_no_second_task(engine: Engine) -> None:
    """A corrected referral (the same ServiceRequest, a new event), or a hospital re-sending an A03 under
    a new message id, is news about the same referral or stay: its coordinators get one task, not two,
    even after the first is done."""
    store = MemoryCoordinationStore()
    first = month.referral("P1", month.at(3, 9), "gp")
    opened = of_code(run(engine, [first], store), co.TASK_CREATED.type, "referral-triage")
    assert len(opened) == 1
    [triage] = opened
    done = dict(triage.payload, status="completed")
    run(
        engine, [RecordEvent("triaged", co.TASK_UPDATED.type, "urn:ods:Y1", month.at(4, 9), first.subject, done)], store
    )
    corrected = month.referral("P1", month.at(3, 9), "gp")
    corrected.payload["entry"][0]["resource"]["reasonCode"] = [{"text": "struggling at home; falls"}]
    again = RecordEvent(
        f"{first.id}-corrected", first.type, first.source, month.at(5, 9), first.subject, corrected.payload
    )
    derived = run(engine, [again], store)
    assert [e for e in derived if e.type == co.TASK_CREATED.type] == []

    a03 = hospital_adt(month.at(6, 9))
    resent = RecordEvent(f"{a03.id}-resent", a03.type, a03.source, month.at(6, 10), a03.subject, a03.payload)
    follow_ups = of_code(run(engine, [a03, resent], store), co.TASK_CREATED.type, "discharge-follow-up")
    assert len(follow_ups) == 1
    other = month.referral("P1", month.at(7, 9), "gp", by="Y99999")  # another referral: its own tasks
    assert len(of_code(run(engine, [other], store), co.TASK_CREATED.type, "referral-triage")) == 1
