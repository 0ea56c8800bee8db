"""The coordination engine follows an A40 merge (hub.core.merges through hub.core.coordination): the
retired identity's tasks, clocks, stay and death are the survivor's from the merge on, and events
sent later under the retired key (a sender still using the old hospital number) act on the survivor.

A person known to the hospital only by its number OLD1 (RXX) is referred by their GP on 4 Nov 2026;
on 10 Nov the hospital merges OLD1 into the person's NHS-numbered record (a real A40, through the
hospital adapter's mapping). Their keys: RETIRED (OLD1's) and SURVIVOR (the NHS number's)."""

from __future__ import annotations

import itertools
from datetime import datetime, timedelta
from typing import Any

import orjson
import pytest

from adapters.hl7v2.to_fhir import map_message
from hub.core.coordination import Positioned, process, tick
from hub.core.derived_events import STATUS_REASON_SYSTEM
from hub.core.identity import MAX_HOPS
from hub.core.ports import RecordEvent
from hub.core.record import apply_events
from hub.core.tasks import Engine
from hub.rules import DEFAULT, load_rules
from hub.store.memory import MemoryCoordinationStore, MemoryRecordStore
from schemas.events import coordination as co
from tests import locality_month as month
from tests.builders import an_adt
from tests.unit import test_coordination_rules as rules_tests
from tests.unit.test_coordination_rules import engine as rules_engine

engine = rules_engine  # (the shipped rules' engine, a module fixture)
SECRET = b"k"
RETIRED_PARTITION, SURVIVOR_PARTITION = 1, 0


def a40(control_id: str = "M1", at: str = "202611100900", nhs: str = "9434765919", mrn: str = "OLD1") -> RecordEvent:
    """The hospital's A40: MRN `mrn` (RXX) merged into the person with NHS number `nhs`."""
    raw = an_adt(trigger="A40", control_id=control_id, event_time=at, nhs_number=nhs, merged_mrn=mrn)
    [mapped] = map_message(raw, key_secret=SECRET)
    return RecordEvent(
        mapped.event_id, mapped.event_type, mapped.source, mapped.event_time, mapped.person_key, mapped.payload
    )


MERGE = a40()
SURVIVOR = MERGE.subject
RETIRED = next(e["resource"]["id"] for e in MERGE.payload["entry"] if e["resource"].get("active") is False)


def as_(key: str, event: RecordEvent, who: str = "P1", event_id: str | None = None) -> RecordEvent:
    """A scripted event of the locality month (about `who`) as one about person key `key`."""
    payload = orjson.loads(orjson.dumps(event.payload).replace(month.PEOPLE[who].encode(), key.encode()))
    return RecordEvent(event_id or f"{event.id}-{key}", event.type, event.source, event.time, key, payload)


def adt_under_old_number(control_id: str, at: str, *, died: str = "", indicator: str = "") -> RecordEvent:
    """An A08 that names the person by their old hospital number alone (so it is keyed RETIRED)."""
    raw = an_adt(
        trigger="A08", control_id=control_id, event_time=at, nhs_number=None, mrn="OLD1", died=died,
        death_indicator=indicator,
    )  # fmt: skip
    [mapped] = map_message(raw, key_secret=SECRET)
    assert mapped.person_key == RETIRED
    return RecordEvent(mapped.event_id, mapped.event_type, mapped.source, mapped.event_time, RETIRED, mapped.payload)


def partition_of(event: RecordEvent) -> int:
    return RETIRED_PARTITION if event.subject == RETIRED else SURVIVOR_PARTITION


def run(engine: Engine, events: list[RecordEvent], store: MemoryCoordinationStore) -> list[RecordEvent]:
    """Each event in its own batch, read from its person's partition (a tick from the one it names)."""
    derived: list[RecordEvent] = []
    for event in events:
        partition = SURVIVOR_PARTITION if event.type == co.CLOCK_TICK.type else partition_of(event)
        if event.type == co.CLOCK_TICK.type:
            partition = int(event.payload["parameter"][0]["valueInteger"])
        with store.unit_of_work() as uow:
            derived += process(engine, uow, [Positioned(event, partition)])
            uow.commit()
    return derived


def ticks(at: datetime) -> list[RecordEvent]:
    return [tick(SURVIVOR_PARTITION, at), tick(RETIRED_PARTITION, at)]


def referred_under_old_number() -> RecordEvent:
    return as_(RETIRED, month.referral("P1", month.at(4, 10), "gp"))


def tasks_in(derived: list[RecordEvent]) -> dict[str, dict[str, Any]]:
    """Each task's latest Task, by id."""
    return {e.payload["id"]: e.payload for e in derived if e.payload.get("resourceType") == "Task"}


def rule_of(task: dict[str, Any]) -> str:
    return str(task["code"]["coding"][0]["code"])


def test_a_contact_for_the_survivor_completes_the_first_visit_the_retired_identity_waited_for(engine: Engine) -> None:
    store = MemoryCoordinationStore()
    visit = as_(SURVIVOR, month.contact("P1", month.at(20, 10), "face-to-face"))

    derived = run(engine, [referred_under_old_number(), MERGE, visit, *ticks(month.at(10, month=12))], store)

    latest = tasks_in(derived)
    first_visit = next(t for t in latest.values() if rule_of(t) == "first-visit")
    assert first_visit["status"] == "completed"
    assert first_visit["for"] == {"reference": f"Patient/{SURVIVOR}"}
    overdue = [e for e in derived if e.type == co.TASK_OVERDUE.type]
    assert [rule_of(e.payload) for e in overdue] == []  # no false breach on the coordinator's list
    assert store.clocks == {}


def test_the_retired_identitys_open_tasks_move_to_the_survivor_keeping_their_ids_and_deadlines(engine: Engine) -> None:
    store = MemoryCoordinationStore()
    opened = tasks_in(run(engine, [referred_under_old_number()], store))
    before = {tid: (rule_of(t), t["restriction"]["period"]["end"]) for tid, t in opened.items()}

    derived = run(engine, [MERGE], store)

    repointed = tasks_in(derived)
    assert {tid: (rule_of(t), t["restriction"]["period"]["end"]) for tid, t in repointed.items()} == before
    assert {t["for"]["reference"] for t in repointed.values()} == {f"Patient/{SURVIVOR}"}
    assert {e.subject for e in derived} == {SURVIVOR}  # keyed to the survivor: on their partition
    assert store.states[RETIRED] == {"merged_into": SURVIVOR}
    assert set(store.states[SURVIVOR]["tasks"]) == set(before)
    clocks = {cid: (person, due.isoformat(), partition) for cid, (person, due, _, partition) in store.clocks.items()}
    assert clocks == {tid: (SURVIVOR, due, SURVIVOR_PARTITION) for tid, (_, due) in before.items()}


def test_a_task_the_retired_identity_left_open_goes_overdue_once_for_the_survivor(engine: Engine) -> None:
    store = MemoryCoordinationStore()
    derived = run(engine, [referred_under_old_number(), MERGE, *ticks(month.at(10, month=12))], store)

    overdue = [e for e in derived if e.type == co.TASK_OVERDUE.type]
    assert sorted(rule_of(e.payload) for e in overdue) == ["first-visit", "referral-triage"]
    assert {e.subject for e in overdue} == {SURVIVOR}
    assert {e.time for e in overdue if rule_of(e.payload) == "first-visit"} == {month.at(4, 10) + timedelta(days=28)}


def test_a_death_sent_later_under_the_old_hospital_number_is_known_for_the_survivor(engine: Engine) -> None:
    store = MemoryCoordinationStore()
    death = adt_under_old_number("D1", "202611120900", died="202611120800", indicator="Y")

    derived = run(engine, [referred_under_old_number(), MERGE, death], store)

    assert store.states[SURVIVOR]["died"]["at"] == "2026-11-12T08:00:00+00:00"
    cancelled = [t for t in tasks_in(derived).values() if t["status"] == "cancelled"]
    assert sorted(rule_of(t) for t in cancelled) == ["first-visit", "referral-triage"]
    assert {t["statusReason"]["coding"][0]["code"] for t in cancelled} == {"person-died"}
    assert {t["for"]["reference"] for t in cancelled} == {f"Patient/{SURVIVOR}"}
    again = as_(SURVIVOR, month.referral("P2", month.at(14, 10), "gp"), who="P2")
    opened = [e for e in run(engine, [again], store) if e.type == co.TASK_CREATED.type]
    assert opened == []  # no one is sent to visit a person who died, under either key


def test_a_death_the_retired_identity_knew_of_cancels_the_survivors_visits_at_the_merge(engine: Engine) -> None:
    store = MemoryCoordinationStore()
    survivors_referral = as_(SURVIVOR, month.referral("P2", month.at(3, 10), "gp"), who="P2")
    death = adt_under_old_number("D1", "202611050900", died="202611050800", indicator="Y")
    run(engine, [survivors_referral, death], store)
    assert not store.states[SURVIVOR].get("died")

    derived = run(engine, [MERGE], store)

    assert store.states[SURVIVOR]["died"]["at"] == "2026-11-05T08:00:00+00:00"
    assert {rule_of(t): t["status"] for t in tasks_in(derived).values()} == {
        "referral-triage": "cancelled",
        "first-visit": "cancelled",
    }
    assert {e.subject for e in derived} == {SURVIVOR}


def test_one_task_per_duty_the_survivors_stands_with_its_deadline_and_two_referrals_stay_two(
    engine: Engine,
) -> None:
    store = MemoryCoordinationStore()
    referral = month.referral("P1", month.at(4, 10), "gp")
    corrected = as_(SURVIVOR, month.referral("P1", month.at(6, 10), "gp"))  # re-sent with the NHS number
    other = as_(SURVIVOR, month.referral("P2", month.at(5, 10), "gp"), who="P2")  # another referral
    run(engine, [as_(RETIRED, referral)], store)
    moving = run(engine, [corrected, other], store)  # the move's cancelling of RETIRED's: not read yet
    in_flight = [e for e in moving if e.subject == RETIRED]
    assert len(in_flight) == 2

    derived = run(engine, [MERGE], store)

    tasks = store.states[SURVIVOR]["tasks"]
    open_ = sorted((t["rule"], t["focus"], t["due"]) for t in tasks.values() if t["status"] == "requested")
    ours, theirs = f"ServiceRequest/{month.referral_id('P1')}", f"ServiceRequest/{month.referral_id('P2')}"
    first_visit = (month.at(6, 10) + timedelta(days=28)).isoformat()  # from the referral as it now stands
    assert [(r, f) for r, f, _ in open_] == sorted(
        [("first-visit", ours), ("first-visit", theirs), ("referral-triage", ours), ("referral-triage", theirs)]
    )
    assert ("first-visit", ours, first_visit) in open_
    duplicates = [t for t in tasks_in(derived).values() if t["status"] == "cancelled"]
    assert sorted(rule_of(t) for t in duplicates) == ["first-visit", "referral-triage"]
    assert {t["focus"]["reference"] for t in duplicates} == {ours}
    assert {c["code"] for t in duplicates for c in t["statusReason"]["coding"]} == {"person-merged"}
    assert {c["system"] for t in duplicates for c in t["statusReason"]["coding"]} == {STATUS_REASON_SYSTEM}
    assert sorted(c for c in store.clocks if c in tasks) == sorted(
        k for k, t in tasks.items() if t["status"] == "requested"
    )  # one clock a duty
    run(engine, in_flight, store)  # the move's cancelling, read at last, finds them ended
    assert sorted(t["rule"] for t in store.states[SURVIVOR]["tasks"].values() if t["status"] == "requested") == [
        "first-visit",
        "first-visit",
        "referral-triage",
        "referral-triage",
    ]


def test_events_sent_later_under_the_retired_key_act_on_the_survivors_state(engine: Engine) -> None:
    store = MemoryCoordinationStore()
    episode = as_(RETIRED, month.episode("P1", month.at(12, 9), "c-ann"))
    late_referral = as_(RETIRED, month.referral("P2", month.at(13, 10), "gp"), who="P2")

    derived = run(engine, [MERGE, episode, late_referral], store)

    assert set(store.states) - {SURVIVOR} == {RETIRED} | {k for k in store.states if k.startswith("referral-holder:")}
    assert store.states[RETIRED] == {"merged_into": SURVIVOR}
    survivor = store.states[SURVIVOR]
    assert survivor["episode"]["coordinator"] == "c-ann"
    assert {t["rule"] for t in survivor["tasks"].values()} >= {"referral-triage", "first-visit"}
    assert {e.subject for e in derived if e.type == co.TASK_CREATED.type} == {SURVIVOR}
    # their clocks are on the survivor's partition, where the survivor's own events are read
    assert {(person, partition) for person, _, _, partition in store.clocks.values()} == {
        (SURVIVOR, SURVIVOR_PARTITION)
    }


def test_the_retired_identitys_stay_on_a_caseload_comes_with_its_long_stay_clock(engine: Engine) -> None:
    store = MemoryCoordinationStore()
    run(engine, [referred_under_old_number(), as_(RETIRED, month.episode("P1", month.at(6, 9), "c-ann"))], store)

    run(engine, [MERGE], store)

    assert store.states[SURVIVOR]["episode"]["id"] == month.episode_id("P1")
    long_stay = store.clocks[f"long-stay:{month.episode_id('P1')}"]
    assert (long_stay[0], long_stay[3]) == (SURVIVOR, SURVIVOR_PARTITION)
    flagged = run(engine, ticks(month.at(6, 9, month=2, year=2027)), store)
    assert [e.subject for e in flagged if e.type == co.CASELOAD_LONG_STAY.type] == [SURVIVOR]


def test_a_merge_sent_again_changes_nothing(engine: Engine) -> None:
    store = MemoryCoordinationStore()
    run(engine, [referred_under_old_number(), MERGE], store)
    states, clocks = orjson.dumps(store.states, option=orjson.OPT_SORT_KEYS), dict(store.clocks)
    assert {person for person, *_ in clocks.values()} == {SURVIVOR}
    again = RecordEvent(f"{MERGE.id}-resent", MERGE.type, MERGE.source, MERGE.time, MERGE.subject, MERGE.payload)

    derived = run(engine, [again], store)

    assert [e for e in derived if e.payload.get("resourceType") == "Task"] == []
    assert orjson.dumps(store.states, option=orjson.OPT_SORT_KEYS) == states
    assert store.clocks == clocks


def test_a_merge_reversed_makes_the_survivor_named_the_person_and_never_loops(engine: Engine) -> None:
    store = MemoryCoordinationStore()
    run(engine, [referred_under_old_number(), MERGE], store)
    back = merge_of(SURVIVOR, RETIRED, "M2", month.at(11, 9))  # the hospital undoes it the other way round

    run(engine, [back], store)

    assert store.states[SURVIVOR] == {"merged_into": RETIRED}
    assert "merged_into" not in store.states[RETIRED]
    assert {t["rule"] for t in store.states[RETIRED]["tasks"].values()} == {"referral-triage", "first-visit"}
    visit = as_(SURVIVOR, month.contact("P1", month.at(20, 10), "face-to-face"))
    done = tasks_in(run(engine, [visit], store))
    assert {rule_of(t): (t["status"], t["for"]["reference"]) for t in done.values()} == {
        "referral-triage": ("completed", f"Patient/{RETIRED}"),
        "first-visit": ("completed", f"Patient/{RETIRED}"),
    }


def test_merges_of_merges_are_followed_past_max_hops_and_a_loop_of_pointers_is_not(engine: Engine) -> None:
    store = MemoryCoordinationStore()
    chain = [f"key-{i}" for i in range(MAX_HOPS + 3)]
    run(engine, [as_(chain[0], month.referral("P1", month.at(4, 10), "gp"))], store)
    for i, (retired, into) in enumerate(itertools.pairwise(chain)):
        run(engine, [merge_of(retired, into, f"C{i}", month.at(5, 9) + timedelta(minutes=i))], store)
    assert {t["rule"] for t in store.states[chain[-1]]["tasks"].values()} == {"referral-triage", "first-visit"}
    assert all(store.states[key] == {"merged_into": chain[-1]} for key in chain[:-1])  # one hop each

    visit = as_(chain[0], month.contact("P1", month.at(20, 10), "face-to-face"))  # under the first key of all
    done = tasks_in(run(engine, [visit], store))
    assert {(t["status"], t["for"]["reference"]) for t in done.values()} == {("completed", f"Patient/{chain[-1]}")}
    # a loop no merge makes (the store written by hand): events for its keys still end
    store.states["loop-a"], store.states["loop-b"] = {"merged_into": "loop-b"}, {"merged_into": "loop-a"}
    run(engine, [as_("loop-a", month.referral("P2", month.at(21, 10), "gp"), who="P2")], store)
    assert store.states["loop-b"]["tasks"]


def merge_of(retired: str, into: str, control_id: str, at: datetime) -> RecordEvent:
    """MERGE, retiring `retired` into `into`."""
    payload = orjson.loads(
        orjson.dumps(MERGE.payload).replace(RETIRED.encode(), b"@R").replace(SURVIVOR.encode(), b"@S")
    )
    payload = orjson.loads(orjson.dumps(payload).replace(b"@R", retired.encode()).replace(b"@S", into.encode()))
    return RecordEvent(f"merge-{control_id}", MERGE.type, MERGE.source, at, into, payload)


def test_a_referral_held_under_the_retired_key_is_not_moved_when_re_sent_for_the_survivor(engine: Engine) -> None:
    store = MemoryCoordinationStore()
    again = as_(SURVIVOR, month.referral("P1", month.at(4, 10), "gp"))  # the same referral, its NHS number now known

    derived = run(engine, [referred_under_old_number(), MERGE, again], store)

    assert [e for e in derived if e.payload.get("resourceType") == "Task" and e.payload["status"] == "cancelled"] == []
    tasks = store.states[SURVIVOR]["tasks"]
    assert sorted(t["rule"] for t in tasks.values() if t["status"] == "requested") == ["first-visit", "referral-triage"]


def test_the_survivors_nhs_number_is_not_taken_from_the_record_the_merge_retires(engine: Engine) -> None:
    store = MemoryCoordinationStore()
    payload = orjson.loads(orjson.dumps(MERGE.payload))
    retired = next(e["resource"] for e in payload["entry"] if e["resource"].get("active") is False)
    retired["identifier"].append({"system": month.NHS, "value": "9990000018"})  # a number it no longer goes by
    merge = RecordEvent(f"{MERGE.id}-nhs", MERGE.type, MERGE.source, MERGE.time, MERGE.subject, payload)

    run(engine, [referred_under_old_number(), merge], store)

    assert store.states[SURVIVOR]["nhs"] == "9434765919"  # (the PIC summary to the GP names it)
    assert store.states[SURVIVOR]["practice"] == "Y00001"


def test_a_pic_summary_held_under_the_retired_identity_goes_to_the_practice_the_merge_names(engine: Engine) -> None:
    store = MemoryCoordinationStore()
    stay = [as_(RETIRED, e) for e in rules_tests.discharged_from_the_service(month.at(9, 9))]
    run(engine, [as_(RETIRED, rules_tests.unregistered_referral(month.at(3, 9))), *stay], store)
    assert store.states[RETIRED]["held"]  # no practice known for the old hospital number

    derived = run(engine, [MERGE], store)

    assert rules_tests.letters(derived) == [(MERGE.time, "Y00001")]  # the A40's PD1
    assert {e.subject for e in derived} == {SURVIVOR}
    *_, done = rules_tests.of_code(derived, co.TASK_UPDATED.type, "find-gp-practice")  # (moved, then done)
    assert done.payload["status"] == "completed"
    assert [c for c in store.clocks if c == done.payload["id"]] == []


def test_of_two_stays_on_a_caseload_the_survivors_is_the_engines_and_the_others_clock_is_cleared(
    engine: Engine,
) -> None:
    store = MemoryCoordinationStore()
    theirs = as_(RETIRED, month.episode("P1", month.at(6, 9), "c-ann"))
    ours = as_(SURVIVOR, month.episode("P2", month.at(7, 9), "c-bob"), who="P2")
    run(engine, [theirs, ours], store)
    assert {c for c in store.clocks if c.startswith("long-stay:")} == {
        f"long-stay:{month.episode_id('P1')}",
        f"long-stay:{month.episode_id('P2')}",
    }

    run(engine, [MERGE], store)

    assert store.states[SURVIVOR]["episode"]["coordinator"] == "c-bob"
    assert {c for c in store.clocks if c.startswith("long-stay:")} == {f"long-stay:{month.episode_id('P2')}"}


def test_the_retired_identitys_corrected_referral_date_is_the_survivors_for_answers_sent_after_the_merge(
    engine: Engine,
) -> None:
    store = MemoryCoordinationStore()
    corrected = as_(RETIRED, month.referral("P1", month.at(1, 10), "gp"))  # the same referral, made on 1 Nov
    run(engine, [referred_under_old_number(), *ticks(month.at(8)), corrected, MERGE], store)  # triage overdue
    contacted = as_(SURVIVOR, month.outcome("P1", month.at(3, 10), "contacted"))  # after 1 Nov, before 4 Nov

    derived = run(engine, [contacted], store)

    triage = [t for t in tasks_in(derived).values() if rule_of(t) == "referral-triage"]
    assert [(t["status"], t["for"]["reference"]) for t in triage] == [("completed", f"Patient/{SURVIVOR}")]


def duplicate_stay_tasks(store: MemoryCoordinationStore) -> list[dict[str, Any]]:
    held = store.states[SURVIVOR]["tasks"].values()
    return [t for t in held if t["rule"] == "close-duplicate-stay"]


def test_a_merge_of_two_people_on_caseloads_asks_the_retired_stays_coordinator_to_close_it_once(
    engine: Engine,
) -> None:
    store = MemoryCoordinationStore()
    theirs = as_(RETIRED, month.episode("P1", month.at(6, 9), "c-ann"))
    ours = as_(SURVIVOR, month.episode("P2", month.at(7, 9), "c-bob"), who="P2")
    run(engine, [theirs, ours], store)

    derived = run(engine, [MERGE], store)

    [created] = [e for e in derived if e.type == co.TASK_CREATED.type]
    assert (rule_of(created.payload), created.subject) == ("close-duplicate-stay", SURVIVOR)
    assert created.payload["focus"] == {"reference": f"EpisodeOfCare/{month.episode_id('P1')}"}
    [task] = duplicate_stay_tasks(store)
    assert (task["owner"], task["status"], task["due"]) == (
        "c-ann",
        "requested",
        (MERGE.time + timedelta(days=7)).isoformat(),
    )
    clock = store.clocks[created.payload["id"]]
    assert (clock[0], clock[3]) == (SURVIVOR, SURVIVOR_PARTITION)

    resent = RecordEvent(f"{MERGE.id}-resent", MERGE.type, MERGE.source, MERGE.time, MERGE.subject, MERGE.payload)
    assert [e for e in run(engine, [MERGE, resent], store) if e.payload.get("resourceType") == "Task"] == []
    assert len(duplicate_stay_tasks(store)) == 1


def test_the_duplicate_stays_task_is_done_when_that_stay_closes_and_not_when_the_survivors_does(
    engine: Engine,
) -> None:
    store = MemoryCoordinationStore()
    theirs = as_(RETIRED, month.episode("P1", month.at(6, 9), "c-ann"))
    ours = as_(SURVIVOR, month.episode("P2", month.at(7, 9), "c-bob"), who="P2")
    run(engine, [theirs, ours, MERGE], store)
    [task_id] = [k for k, t in store.states[SURVIVOR]["tasks"].items() if t["rule"] == "close-duplicate-stay"]

    closed = run(engine, [as_(RETIRED, month.episode("P1", month.at(12, 9), "c-ann", closed=True))], store)  # sent late

    assert [t["status"] for t in duplicate_stay_tasks(store)] == ["completed"]
    assert task_id not in store.clocks
    assert [rule_of(t) for t in tasks_in(closed).values() if t["status"] == "completed"] == ["close-duplicate-stay"]
    reviews = [t for t in store.states[SURVIVOR]["tasks"].values() if t["rule"].startswith("review-")]
    ours_ = f"EpisodeOfCare/{month.episode_id('P2')}"  # (the survivor's stay's reviews go on)
    assert {(t["focus"], t["status"]) for t in reviews if t["focus"] == ours_} == {(ours_, "requested")}
    assert store.states[SURVIVOR]["episode"]["id"] == month.episode_id("P2")


def test_closing_the_survivors_own_stay_leaves_the_duplicate_stays_task_open(engine: Engine) -> None:
    store = MemoryCoordinationStore()
    theirs = as_(RETIRED, month.episode("P1", month.at(6, 9), "c-ann"))
    ours = as_(SURVIVOR, month.episode("P2", month.at(7, 9), "c-bob"), who="P2")
    run(
        engine,
        [theirs, ours, MERGE, as_(SURVIVOR, month.episode("P2", month.at(12, 9), "c-bob", closed=True), who="P2")],
        store,
    )
    assert [t["status"] for t in duplicate_stay_tasks(store)] == ["requested"]


# --- after the review of the duplicate-stay task and the referral's date in a merge ---------------------


def fed(engine: Engine, events: list[RecordEvent], store: MemoryCoordinationStore) -> list[RecordEvent]:
    """As the hub runs: every event and what the engine derives from it go onto the log in turn; the log."""
    waiting, log = list(events), []
    while waiting:
        event = waiting.pop(0)
        log.append(event)
        waiting[:0] = run(engine, [event], store)
    return log


def test_a_referral_moved_to_the_retired_identity_then_merged_is_answered_from_the_date_the_record_holds(
    engine: Engine,
) -> None:
    store, record = MemoryCoordinationStore(), MemoryRecordStore()
    first = as_(SURVIVOR, month.referral("P1", month.at(4, 10), "gp"))
    moved = as_(RETIRED, month.referral("P1", month.at(8, 10), "gp"))  # re-sent for the other key, made 8 Nov
    answer = as_(SURVIVOR, month.outcome("P1", month.at(6, 10), "contacted"))  # before 8 Nov: not an answer

    log = fed(engine, [first, moved, MERGE, answer], store)
    for event in log:
        with record.unit_of_work() as uow:
            apply_events(uow, [event])
            uow.commit()

    [request] = record.reader().search("ServiceRequest", None)
    assert request["authoredOn"].startswith("2026-11-08")
    assert [e for e in request.get("extension", []) if e["url"] == co.OUTCOME_EXTENSION] == []  # skipped
    live = [t for t in store.states[SURVIVOR]["tasks"].values() if not t.get("moved")]
    assert sorted((t["rule"], t["status"]) for t in live if t["rule"] in ("referral-triage", "first-visit")) == [
        ("first-visit", "requested"),
        ("referral-triage", "requested"),
    ]
    assert store.states[SURVIVOR]["made"] == {f"ServiceRequest/{month.referral_id('P1')}": month.at(8, 10).isoformat()}


def two_stays_merged_then_the_survivors_closed() -> list[RecordEvent]:
    return [
        as_(RETIRED, month.episode("P1", month.at(6, 9), "c-ann")),
        as_(SURVIVOR, month.episode("P2", month.at(7, 9), "c-bob"), who="P2"),
        MERGE,
        as_(SURVIVOR, month.episode("P2", month.at(12, 9), "c-bob", closed=True), who="P2"),
        *ticks(month.at(1, 9, month=2, year=2027)),
    ]


@pytest.mark.parametrize("version", [1, 2])
def test_a_log_replayed_under_rules_version_1_or_2_makes_what_it_made_before_version_3(version: int) -> None:
    older = Engine(load_rules(DEFAULT.with_name(f"croydon-pic.v{version}.yaml")))
    store = MemoryCoordinationStore()

    derived = run(older, two_stays_merged_then_the_survivors_closed(), store)

    # (the survivor's close ended every stay task of theirs, the duplicate stay's reviews too; no task to close it)
    created = {rule_of(e.payload) for e in derived if e.type == co.TASK_CREATED.type}
    assert "close-duplicate-stay" not in created
    assert [rule_of(e.payload) for e in derived if e.type == co.TASK_OVERDUE.type] == ["pic-summary"]
    reviews = {
        (t["focus"], t["status"]) for t in store.states[SURVIVOR]["tasks"].values() if t["rule"].startswith("review")
    }
    assert {status for _, status in reviews} == {"cancelled"}
    assert {focus for focus, _ in reviews} == {f"EpisodeOfCare/{month.episode_id(p)}" for p in ("P1", "P2")}


def test_under_rules_version_3_the_survivors_close_leaves_the_duplicate_stays_tasks_to_its_own_close(
    engine: Engine,
) -> None:
    assert engine.rules.version >= 3
    store = MemoryCoordinationStore()

    derived = run(engine, two_stays_merged_then_the_survivors_closed(), store)

    overdue = sorted(rule_of(e.payload) for e in derived if e.type == co.TASK_OVERDUE.type)
    assert overdue == ["close-duplicate-stay", "pic-summary", "review-12-weeks", "review-6-weeks"]


def test_the_duplicate_stays_task_is_done_by_its_close_whatever_status_it_gives(engine: Engine) -> None:
    store = MemoryCoordinationStore()
    theirs = as_(RETIRED, month.episode("P1", month.at(6, 9), "c-ann"))
    ours = as_(SURVIVOR, month.episode("P2", month.at(7, 9), "c-bob"), who="P2")
    run(engine, [theirs, ours, MERGE], store)
    close = as_(RETIRED, month.episode("P1", month.at(12, 9), "c-ann", closed=True))
    payload = orjson.loads(orjson.dumps(close.payload))
    for entry in payload["entry"]:
        if entry["resource"]["resourceType"] == "EpisodeOfCare":
            entry["resource"]["status"] = "entered-in-error"  # (a duplicate's close: no discharge)

    run(engine, [RecordEvent(close.id, close.type, close.source, close.time, close.subject, payload)], store)

    assert [t["status"] for t in duplicate_stay_tasks(store)] == ["completed"]
    assert store.states[SURVIVOR]["episode"]["id"] == month.episode_id("P2")


@pytest.mark.parametrize("when", ["before the merge", "after the merge"])
def test_the_duplicate_stays_task_stays_open_for_a_person_who_died(engine: Engine, when: str) -> None:
    store = MemoryCoordinationStore()
    theirs = as_(RETIRED, month.episode("P1", month.at(6, 9), "c-ann"))
    ours = as_(SURVIVOR, month.episode("P2", month.at(7, 9), "c-bob"), who="P2")
    died = adt_under_old_number("D1", "202611080900" if when == "before the merge" else "202611110900",
                                died="202611080800", indicator="Y")  # fmt: skip
    log = [theirs, ours, died, MERGE] if when == "before the merge" else [theirs, ours, MERGE, died]

    run(engine, log, store)

    assert store.states[SURVIVOR].get("died")
    assert [(t["status"], t["owner"]) for t in duplicate_stay_tasks(store)] == [("requested", "c-ann")]
    reviews = [t["status"] for t in store.states[SURVIVOR]["tasks"].values() if t["rule"].startswith("review")]
    assert set(reviews) == {"cancelled"}  # (the visits end with the death; closing a stay is admin)


def test_a_merge_folded_again_under_a_new_event_id_asks_for_the_duplicate_stay_once(engine: Engine) -> None:
    store = MemoryCoordinationStore()
    theirs = as_(RETIRED, month.episode("P1", month.at(6, 9), "c-ann"))
    ours = as_(SURVIVOR, month.episode("P2", month.at(7, 9), "c-bob"), who="P2")
    run(engine, [theirs, ours], store)
    retired = orjson.loads(orjson.dumps(store.states[RETIRED]))
    survivor = orjson.loads(orjson.dumps(store.states[SURVIVOR]))
    resent = RecordEvent(f"{MERGE.id}-resent", MERGE.type, MERGE.source, MERGE.time, MERGE.subject, MERGE.payload)

    first = engine.merge(survivor, orjson.loads(orjson.dumps(retired)), RETIRED, MERGE)
    again = engine.merge(survivor, retired, RETIRED, resent)  # (the retired state as it was, folded again)

    assert [rule_of(e.payload) for e in first.events if e.type == co.TASK_CREATED.type] == ["close-duplicate-stay"]
    assert [e for e in again.events if e.type == co.TASK_CREATED.type] == []
    assert [c.id for c in again.set if c.kind == "task"] == []
    assert [t["rule"] for t in survivor["tasks"].values()].count("close-duplicate-stay") == 1


def test_a_merge_reversed_keeps_the_stay_the_merged_person_held_as_the_kpis_do(engine: Engine) -> None:
    store = MemoryCoordinationStore()
    theirs = as_(RETIRED, month.episode("P1", month.at(6, 9), "c-ann"))
    ours = as_(SURVIVOR, month.episode("P2", month.at(7, 9), "c-bob"), who="P2")
    back = merge_of(SURVIVOR, RETIRED, "M2", month.at(11, 9))

    run(engine, [theirs, ours, MERGE, back], store)

    # (documented in README: the named survivor takes the merged person's stay, P2, and the task asks for
    # their own first one, P1, to be closed, by its coordinator: either close leaves one stay)
    state = store.states[RETIRED]
    assert state["episode"]["id"] == month.episode_id("P2")
    tasks = [
        (t["focus"], t["owner"], t["status"]) for t in state["tasks"].values() if t["rule"] == "close-duplicate-stay"
    ]
    assert tasks == [(f"EpisodeOfCare/{month.episode_id('P1')}", "c-ann", "requested")]
