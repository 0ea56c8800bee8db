"""A referral, its outcomes and its corrections in any order: the shared care record (hub.core.record)
and the rules engine (hub.core.tasks over hub.core.coordination) end as they would in the natural
order. Events come from the referrals adapter; a small loop stands in for the consumers, putting the
engine's derived events back on the log as the hub does."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from adapters.referrals.rows import Format, Row
from adapters.referrals.to_fhir import map_row
from hub.core.coordination import Positioned, process, tick
from hub.core.identity import person_key
from hub.core.kpis import KpiFold
from hub.core.ports import Json, RecordEvent
from hub.core.record import apply_events
from hub.core.tasks import Engine
from hub.rules import load_rules
from hub.store.coordination import SqlCoordinationStore
from hub.store.database import open_engine
from hub.store.memory import MemoryCoordinationStore, MemoryRecordStore
from schemas.events import coordination as co
from tests.unit import test_referral_adapters as adapter_tests

SECRET = b"test-secret"
NHS, OTHER_NHS = "9434765919", "9990000018"
A, B = person_key(SECRET, NHS, None), person_key(SECRET, OTHER_NHS, None)
NOW = datetime(2026, 11, 25, tzinfo=UTC)
ENGINE = Engine(load_rules())
REFERRAL_TASKS = {"referral-triage", "first-visit"}
MOVED = "referral-moved"  # the reason a task ends when its referral is re-sent for another person


def vcse_referral(**changes: Any) -> RecordEvent:
    return _mapped(Format.VCSE_JSON, adapter_tests.vcse_referral(**changes))


def outcome(said: str, on: str, **changes: Any) -> RecordEvent:
    doc = {"referral_id": "VCS-1", "referrer": "VCS001", "nhs_number": NHS, "outcome": said, "on": on}
    return _mapped(Format.VCSE_OUTCOME, doc | changes)


def _mapped(fmt: Format, values: dict[str, Any]) -> RecordEvent:
    m = map_row(fmt, Row(2, values, b""), key_secret=SECRET, now=NOW)
    return RecordEvent(m.event_id, m.event_type, m.source, m.event_time, m.person_key, m.payload)


class Hub:
    """The record and the rules engine reading one log, the engine's derived events going back onto it."""

    def __init__(self, coordination: MemoryCoordinationStore | SqlCoordinationStore | None = None) -> None:
        self.record = MemoryRecordStore()
        self.coordination = coordination or MemoryCoordinationStore()
        self.log: list[RecordEvent] = []

    def send(self, *events: RecordEvent) -> None:
        waiting = list(events)
        while waiting:
            event = waiting.pop(0)
            self.log.append(event)
            with self.record.unit_of_work() as uow:
                apply_events(uow, [event])
                uow.commit()
            with self.coordination.unit_of_work() as uow:
                waiting += process(ENGINE, uow, [Positioned(event, 0)])
                uow.commit()

    def referral(self) -> Json:
        found = self.record.reader().search("ServiceRequest", None)
        assert len(found) == 1
        return found[0]

    def tasks(self, person: str) -> dict[str, str]:
        """rule -> status of the person's referral tasks, as the engine holds them; one task a rule."""
        store = self.coordination
        state = store.states.get(person) if isinstance(store, MemoryCoordinationStore) else store.state(person)
        held = (state or {"tasks": {}})["tasks"].values()
        found = [(t["rule"], t["status"]) for t in held if t["rule"] in REFERRAL_TASKS]
        assert len(found) == len({rule for rule, _ in found}), f"two tasks for one rule: {found}"
        return dict(found)

    def clocks(self) -> list[str]:
        """Whose deadline clocks are pending, one a clock."""
        assert isinstance(self.coordination, MemoryCoordinationStore)
        return sorted(person for person, *_ in self.coordination.clocks.values())

    def recorded_tasks(self, person: str) -> dict[str, Json]:
        """rule -> the Task the record holds, of the person's referral tasks."""
        found = [
            t for t in self.record.reader().search("Task", person) if t["code"]["coding"][0]["code"] in REFERRAL_TASKS
        ]
        return {t["code"]["coding"][0]["code"]: t for t in found}

    def task_events(self) -> list[tuple[str, str, Json]]:
        kinds = {co.TASK_CREATED.type, co.TASK_UPDATED.type, co.TASK_OVERDUE.type}
        return sorted((e.id, e.type, e.payload) for e in self.log if e.type in kinds)


def without_meta(resource: Json) -> Json:
    return {k: v for k, v in resource.items() if k != "meta"}


# --- defect 1: an outcome that arrives before its referral -------------------------------------------


@pytest.mark.parametrize(
    ("said", "expected"),
    [
        (["declined"], {"referral-triage": "cancelled", "first-visit": "cancelled"}),
        (["contacted"], {"referral-triage": "completed", "first-visit": "requested"}),
        (["contacted", "attended"], {"referral-triage": "completed", "first-visit": "completed"}),
    ],
)
def test_a_referral_after_its_outcomes_ends_as_if_it_had_come_first(said: list[str], expected: dict[str, str]) -> None:
    outcomes = [outcome(s, f"2026-11-{12 + n}") for n, s in enumerate(said)]
    in_order, reversed_ = Hub(), Hub()
    in_order.send(vcse_referral(), *outcomes)
    reversed_.send(*outcomes, vcse_referral())

    assert in_order.tasks(A) == reversed_.tasks(A) == expected
    assert reversed_.task_events() == in_order.task_events()  # the same Tasks, closed at the outcome's time
    open_ = {t for t, s in expected.items() if s == "requested"}
    assert reversed_.clocks() == in_order.clocks() == [A] * len(open_)

    first, late = in_order.referral(), reversed_.referral()
    assert without_meta(late) == without_meta(first)
    assert late["meta"]["versionId"] == first["meta"]["versionId"]
    assert late["meta"]["lastUpdated"] == first["meta"]["lastUpdated"]  # (the outcome's time: the latest said)
    assert late["reasonCode"] == [{"text": "Social isolation"}]
    assert late["authoredOn"].startswith("2026-11-06")
    assert late["status"] == {"declined": "revoked", "attended": "completed"}.get(said[-1], "active")
    assert [e["valueCode"] for e in late["extension"] if e["url"] == co.OUTCOME_EXTENSION] == [said[-1]]


def test_an_outcome_keeps_the_referrers_name_that_the_outcome_row_does_not_carry() -> None:
    hub = Hub()
    hub.send(vcse_referral(), outcome("declined", "2026-11-12"))
    assert hub.referral()["requester"]["display"] == "Example Age Concern"


# --- defect 2: a correction dated earlier than the referral held ---------------------------------------


def test_a_correction_dated_earlier_than_the_referral_held_is_applied_not_ignored_as_stale() -> None:
    hub = Hub()
    hub.send(vcse_referral())
    corrected = vcse_referral(referred_on="2026-11-04", needs=["carer-support"])
    with hub.record.unit_of_work() as uow:
        result = apply_events(uow, [corrected])
        uow.commit()
    assert result.stale == 0
    referral = hub.referral()
    assert referral["authoredOn"].startswith("2026-11-04")
    assert referral["reasonCode"] == [{"text": "Carer support"}]
    assert referral["meta"]["versionId"] == "2"
    assert referral["meta"]["lastUpdated"].startswith("2026-11-06")  # versions never go back in time


def test_a_correction_after_an_outcome_keeps_what_the_outcome_said() -> None:
    hub = Hub()
    hub.send(vcse_referral(), outcome("declined", "2026-11-12"), vcse_referral(needs=["carer-support"]))
    referral = hub.referral()
    assert referral["reasonCode"] == [{"text": "Carer support"}]
    assert referral["status"] == "revoked"
    assert [e["valueCode"] for e in referral["extension"] if e["url"] == co.OUTCOME_EXTENSION] == ["declined"]
    assert hub.tasks(A) == {"referral-triage": "cancelled", "first-visit": "cancelled"}


def test_an_older_outcome_arriving_after_a_newer_one_is_still_stale() -> None:
    hub = Hub()
    hub.send(vcse_referral(), outcome("attended", "2026-11-14"))
    with hub.record.unit_of_work() as uow:
        result = apply_events(uow, [outcome("contacted", "2026-11-12")])
        uow.commit()
    assert result.stale == 1
    assert hub.referral()["status"] == "completed"


# --- a corrected date moves the clocks of the referral's open tasks ------------------------------------

DUE_DAYS = {"referral-triage": 3, "first-visit": 28}


def coordinator_moves(hub: Hub, person: str, rule: str, status: str, at: str) -> None:
    """A coordinator's task.updated, as the API sends it: the Task as the record holds it, the status changed."""
    task = hub.recorded_tasks(person)[rule]
    when = datetime.fromisoformat(at).replace(tzinfo=UTC)
    moved = task | {"status": status}
    hub.send(RecordEvent(f"manual-{rule}-{status}", co.TASK_UPDATED.type, "urn:ods:Y0PIC", when, person, moved))


def dues(hub: Hub, person: str) -> dict[str, tuple[str, str]]:
    """rule -> (due, clock due) of the person's referral tasks: the engine's task, and its pending clock."""
    assert isinstance(hub.coordination, MemoryCoordinationStore)
    held = hub.coordination.states[person]["tasks"]
    clocks = {clock_id: due for clock_id, (_, due, *_) in hub.coordination.clocks.items()}
    return {
        t["rule"]: (t["due"][:10], clocks[task_id].date().isoformat() if task_id in clocks else "")
        for task_id, t in held.items()
        if t["rule"] in REFERRAL_TASKS
    }


@pytest.mark.parametrize("referred_on", ["2026-11-02", "2026-11-09"])
def test_a_corrected_referral_date_moves_its_open_tasks_deadlines_in_the_engine_and_the_record(
    referred_on: str,
) -> None:
    hub = Hub()
    hub.send(vcse_referral())  # referred on 2026-11-06
    assert dues(hub, A) == {
        "referral-triage": ("2026-11-09", "2026-11-09"),
        "first-visit": ("2026-12-04", "2026-12-04"),
    }

    hub.send(vcse_referral(referred_on=referred_on))
    day = datetime.fromisoformat(referred_on).replace(tzinfo=UTC)
    expected = {rule: (day + timedelta(days=n)).date().isoformat() for rule, n in DUE_DAYS.items()}
    assert dues(hub, A) == {rule: (due, due) for rule, due in expected.items()}
    for rule, task in hub.recorded_tasks(A).items():
        assert task["restriction"]["period"] == {"start": day.isoformat(), "end": f"{expected[rule]}T00:00:00+00:00"}
        assert task["authoredOn"] == day.isoformat()
        assert task["status"] == "requested"
        assert task["meta"]["versionId"] == "2"
    assert hub.tasks(A) == {"referral-triage": "requested", "first-visit": "requested"}  # no second task
    assert len([e for e in hub.log if e.type == co.TASK_CREATED.type]) == 2

    hub.send(vcse_referral(referred_on=referred_on, needs=["carer-support"]))  # corrected again, same date
    assert [t["meta"]["versionId"] for t in hub.recorded_tasks(A).values()] == ["2", "2"]  # nothing to move


def test_a_corrected_date_moves_a_task_a_coordinator_took_on_later_and_the_record_follows() -> None:
    hub = Hub()
    hub.send(vcse_referral())
    coordinator_moves(hub, A, "first-visit", "in-progress", "2026-11-20T10:00:00")
    hub.send(vcse_referral(referred_on="2026-11-02"))
    task = hub.recorded_tasks(A)["first-visit"]
    assert (task["status"], task["restriction"]["period"]["end"][:10]) == ("in-progress", "2026-11-30")
    assert task["meta"]["lastUpdated"].startswith("2026-11-20T10:00")  # dated after the coordinator's move, not stale
    assert dues(hub, A)["first-visit"] == ("2026-11-30", "2026-11-30")


def test_a_correction_leaves_finished_and_overdue_tasks_as_they_are() -> None:
    hub = Hub()
    hub.send(vcse_referral(), outcome("contacted", "2026-11-08"))  # the triage task completes
    hub.send(tick(0, datetime(2026, 12, 5, tzinfo=UTC)))  # the first visit ran out on 2026-12-04
    assert hub.tasks(A) == {"referral-triage": "completed", "first-visit": "requested"}
    before = hub.recorded_tasks(A)
    assert before["first-visit"]["businessStatus"]["coding"][0]["code"] == "overdue"

    hub.send(vcse_referral(referred_on="2026-11-20"))  # would be due 2026-12-18: too late, it is with the team lead
    assert hub.recorded_tasks(A) == before
    assert dues(hub, A) == {"referral-triage": ("2026-11-09", ""), "first-visit": ("2026-12-04", "")}


def test_a_referral_moved_after_a_coordinator_took_its_task_on_is_cancelled_in_the_record_too() -> None:
    hub = Hub()
    hub.send(vcse_referral())
    coordinator_moves(hub, A, "first-visit", "in-progress", "2026-11-20T10:00:00")
    hub.send(vcse_referral(nhs_number=OTHER_NHS))  # dated 2026-11-06, before the coordinator's move
    assert hub.tasks(A) == {"referral-triage": "cancelled", "first-visit": "cancelled"}
    assert {t["status"] for t in hub.recorded_tasks(A).values()} == {"cancelled"}


def views(hub: Hub) -> tuple[dict[str, tuple[str, str, bool]], dict[str, tuple[str, str, bool]]]:
    """rule -> (status, due day, overdue) of the referral tasks: as the engine holds them, and on the record."""
    assert isinstance(hub.coordination, MemoryCoordinationStore)
    held = hub.coordination.states[A]["tasks"].values()
    engine = {
        t["rule"]: (t["status"], t["due"][:10], bool(t.get("overdue"))) for t in held if t["rule"] in REFERRAL_TASKS
    }
    record = {
        rule: (t["status"], t["restriction"]["period"]["end"][:10], "businessStatus" in t)
        for rule, t in hub.recorded_tasks(A).items()
    }
    return engine, record


def test_a_deadline_moved_earlier_runs_out_on_the_record_as_in_the_engine() -> None:
    hub = Hub()
    hub.send(vcse_referral(), vcse_referral(referred_on="2026-11-01"))  # triage due 11-04, before the 11-06 row
    hub.send(tick(0, datetime(2026, 11, 25, tzinfo=UTC)))
    engine, record = views(hub)
    assert engine == record
    assert record["referral-triage"] == ("requested", "2026-11-04", True)


def test_an_outcome_between_the_corrected_and_the_first_date_completes_the_task_on_the_record_too() -> None:
    hub = Hub()
    hub.send(vcse_referral(), vcse_referral(referred_on="2026-11-02"), outcome("contacted", "2026-11-04"))
    engine, record = views(hub)
    assert engine == record
    assert record["referral-triage"][0] == "completed"


def test_an_outcome_the_record_skipped_before_a_correction_answers_the_task_it_re_times_nowhere() -> None:
    late, natural = Hub(), Hub()
    late.send(vcse_referral(), outcome("contacted", "2026-11-04"), vcse_referral(referred_on="2026-11-02"))
    natural.send(vcse_referral(referred_on="2026-11-02"), outcome("contacted", "2026-11-04"))
    # (late: dated before the 6 Nov referral when it came, the record skipped it and never reads it again)
    assert (said_of_referral(late), said_of_referral(natural)) == ([], ["contacted"])
    assert late.tasks(A) == {"referral-triage": "requested", "first-visit": "requested"}
    assert natural.tasks(A) == {"referral-triage": "completed", "first-visit": "requested"}
    engine, record = views(late)
    assert engine == record
    assert engine["referral-triage"] == ("requested", "2026-11-05", False)  # re-timed from 2 Nov all the same
    assert_outcomes_agree(late)
    assert_outcomes_agree(natural)


def test_an_outcome_sent_late_completes_a_task_a_coordinator_took_on_since_on_the_record_too() -> None:
    hub = Hub()
    hub.send(vcse_referral())
    coordinator_moves(hub, A, "first-visit", "in-progress", "2026-11-20T10:00:00")
    hub.send(outcome("attended", "2026-11-18"))  # a row sent late, dated before the coordinator's move
    engine, record = views(hub)
    assert engine == record
    assert record["first-visit"][0] == "completed"
    assert hub.recorded_tasks(A)["first-visit"]["meta"]["lastUpdated"].startswith("2026-11-20T10:00")  # not back


# --- defect 3: the same referral re-sent with a corrected NHS number -----------------------------------


def test_a_referral_moved_to_another_person_closes_the_first_persons_tasks_and_opens_the_seconds() -> None:
    hub = Hub()
    hub.send(vcse_referral())
    assert hub.tasks(A) == {"referral-triage": "requested", "first-visit": "requested"}
    hub.send(vcse_referral(nhs_number=OTHER_NHS))

    assert hub.tasks(A) == {"referral-triage": "cancelled", "first-visit": "cancelled"}
    assert hub.tasks(B) == {"referral-triage": "requested", "first-visit": "requested"}
    for task in hub.recorded_tasks(A).values():
        assert task["status"] == "cancelled"
        assert task["statusReason"]["coding"][0]["code"] == MOVED
        assert "NHS number" in task["statusReason"]["text"]
    assert {t["status"] for t in hub.recorded_tasks(B).values()} == {"requested"}
    assert hub.clocks() == [B, B]  # the first person's clocks stop
    assert hub.referral()["subject"]["reference"] == f"Patient/{B}"

    hub.send(vcse_referral(nhs_number=OTHER_NHS, needs=["carer-support"]))  # corrected again: no more tasks
    assert hub.tasks(B) == {"referral-triage": "requested", "first-visit": "requested"}
    created = [e for e in hub.log if e.type == co.TASK_CREATED.type]
    assert len(created) == 4  # two for each person, once


def test_a_referral_moved_back_opens_the_first_persons_tasks_again_once() -> None:
    hub = Hub()
    hub.send(vcse_referral(), vcse_referral(nhs_number=OTHER_NHS), vcse_referral(needs=["carer-support"]))
    assert hub.tasks(B) == {"referral-triage": "cancelled", "first-visit": "cancelled"}
    assert isinstance(hub.coordination, MemoryCoordinationStore)
    held = hub.coordination.states[A]["tasks"].values()
    assert sorted(t["status"] for t in held if t["rule"] == "first-visit") == ["cancelled", "requested"]
    assert hub.clocks() == [A, A]


def test_who_holds_a_referral_is_kept_in_the_database_too(sqlite_url: str) -> None:
    engine = open_engine(sqlite_url)
    try:
        hub = Hub(SqlCoordinationStore(engine))
        hub.send(vcse_referral(), vcse_referral(nhs_number=OTHER_NHS))
        assert hub.tasks(A) == {"referral-triage": "cancelled", "first-visit": "cancelled"}
        assert hub.tasks(B) == {"referral-triage": "requested", "first-visit": "requested"}
        assert SqlCoordinationStore(engine).pending_clocks() == 2
        assert SqlCoordinationStore(engine).caseloads() == {}  # (who holds a referral is no caseload)
    finally:
        engine.dispose()


def test_a_moved_referral_takes_its_outcomes_with_it() -> None:
    hub = Hub()
    hub.send(vcse_referral(), outcome("contacted", "2026-11-12"), vcse_referral(nhs_number=OTHER_NHS))
    assert hub.tasks(A) == {"referral-triage": "completed", "first-visit": "cancelled"}
    assert hub.tasks(B) == {"referral-triage": "completed", "first-visit": "requested"}


def test_a_referral_that_stays_with_its_person_moves_nothing_and_a_tick_still_fires_its_clocks() -> None:
    hub = Hub()
    hub.send(vcse_referral(), vcse_referral(needs=["carer-support"]), tick(0, datetime(2026, 11, 10, tzinfo=UTC)))
    assert hub.tasks(A) == {"referral-triage": "requested", "first-visit": "requested"}
    assert [e.type for e in hub.log].count(co.TASK_OVERDUE.type) == 1  # triage, 3 days after 6 Nov


# --- a referral's answers count from its date as the record holds it, after a correction ------------
# (the engine measured them from when the task opened, which a correction leaves as it was once the
# task is overdue; the record, and the KPIs, from the referral's authoredOn as it now stands)

OVERDUE = tick(0, datetime(2026, 11, 10, tzinfo=UTC))  # triage (due 3 days after 6 Nov) runs out


def said_of_referral(hub: Hub) -> list[str]:
    """The outcomes the record's ServiceRequest says."""
    return [e["valueCode"] for e in hub.referral().get("extension", []) if e["url"] == co.OUTCOME_EXTENSION]


ANSWERED = {  # rule -> the status the referral's outcome leaves its task in (the shipped rules), by outcome
    "referral-triage": {"contacted": "completed", "attended": "completed", "accepted": "completed",
                        "declined": "cancelled", "withdrawn": "cancelled"},
    "first-visit": {"attended": "completed", "declined": "cancelled", "withdrawn": "cancelled"},
}  # fmt: skip


def assert_outcomes_agree(hub: Hub) -> None:
    """The record's ServiceRequest and the engine's referral tasks say the same of the referral: each task
    is as the outcome on the record leaves it (none: still open), for a log with no contact or stay."""
    said = said_of_referral(hub)
    expected = {rule: by.get(said[-1], "requested") if said else "requested" for rule, by in ANSWERED.items()}
    assert hub.tasks(A) == expected, (said, hub.referral()["status"])


@pytest.mark.parametrize("said", ["contacted", "accepted"])
def test_an_outcome_after_an_earlier_corrected_date_answers_an_overdue_triage_as_the_record_shows(said: str) -> None:
    hub = Hub()
    hub.send(vcse_referral(), OVERDUE, vcse_referral(referred_on="2026-11-02"), outcome(said, "2026-11-04"))

    assert said_of_referral(hub) == [said]  # the record: answered, on 4 Nov, after the 2 Nov it now gives
    engine, record = views(hub)
    assert engine["referral-triage"] == ("completed", "2026-11-09", True)  # overdue first, answered since
    assert engine == record
    assert_outcomes_agree(hub)


def test_the_kpis_count_that_answer_from_the_corrected_date_too() -> None:
    hub = Hub()
    hub.send(vcse_referral(), OVERDUE, vcse_referral(referred_on="2026-11-02"), outcome("contacted", "2026-11-04"))
    fold = KpiFold(service=ENGINE.rules.service.ods)
    for event in hub.log:
        fold.add(event)
    figures = {(r.kpi, r.breakdown): r.value for r in fold.report("2026-11")}
    assert figures[("days from referral to first contact", "mean")] == 2.0
    assert hub.tasks(A)["referral-triage"] == "completed"


@pytest.mark.parametrize("on", ["2026-11-06", "2026-11-07"])  # the first date, or between the two
def test_an_outcome_before_a_later_corrected_date_answers_no_overdue_triage_as_the_record_skips_it(on: str) -> None:
    hub = Hub()
    hub.send(vcse_referral(), OVERDUE, vcse_referral(referred_on="2026-11-09"), outcome("contacted", on))

    assert said_of_referral(hub) == []  # the record: dated before the referral as it now stands, stale
    engine, record = views(hub)
    assert engine["referral-triage"] == ("requested", "2026-11-09", True)
    assert engine == record
    assert_outcomes_agree(hub)


@pytest.mark.parametrize("said", ["contacted", "declined"])
def test_an_outcome_the_record_skipped_before_an_earlier_correction_is_not_applied_by_it_either(said: str) -> None:
    late, natural = Hub(), Hub()
    late.send(vcse_referral(), OVERDUE, outcome(said, "2026-11-04"), vcse_referral(referred_on="2026-11-02"))
    natural.send(vcse_referral(), OVERDUE, vcse_referral(referred_on="2026-11-02"), outcome(said, "2026-11-04"))

    # late: dated before the 6 Nov referral when it came, the record skipped it, and a correction does
    # not make it look again: neither does the engine (it answered the overdue triage before)
    assert (said_of_referral(late), said_of_referral(natural)) == ([], [said])
    assert late.tasks(A) == {"referral-triage": "requested", "first-visit": "requested"}
    assert_outcomes_agree(late)
    assert_outcomes_agree(natural)
    engine, record = views(late)
    assert engine == record


def test_an_outcome_the_record_skipped_is_taken_when_it_is_sent_again_after_the_correction() -> None:
    hub = Hub()
    hub.send(vcse_referral(), OVERDUE, outcome("declined", "2026-11-04"), vcse_referral(referred_on="2026-11-02"))
    row = outcome("declined", "2026-11-04")  # the same row sent again: a new event
    hub.send(RecordEvent(f"{row.id}-again", row.type, row.source, row.time, row.subject, row.payload))

    assert said_of_referral(hub) == ["declined"]
    assert_outcomes_agree(hub)


def test_an_older_outcome_sent_after_one_the_record_took_answers_no_task_on_either_side() -> None:
    hub = Hub()
    hub.send(vcse_referral(), outcome("contacted", "2026-11-10"), outcome("attended", "2026-11-08"))

    assert said_of_referral(hub) == ["contacted"]  # (a later one stands over an older one sent late)
    assert hub.tasks(A) == {"referral-triage": "completed", "first-visit": "requested"}
    assert_outcomes_agree(hub)
