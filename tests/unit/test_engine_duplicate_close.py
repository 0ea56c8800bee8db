"""A duplicate stay a merge left open, closed entered-in-error (`$close-duplicate`): no discharge.

Two people each on a caseload (P1 under the key an A40 retires, with c-ann; P2 the survivor, with
c-bob) are merged; the retired identity's stay is then closed as entered-in-error, with no PIC
summary. The rules engine sends, holds and opens nothing for it, ends that stay's own tasks and its
close-duplicate-stay task, and leaves the survivor's stay and its tasks be (hub.core.caseload,
hub.core.tasks); the KPIs count no stay, no discharge and no letter for such a close (hub.core.kpi_facts).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from hub.core.caseload import FIND_PRACTICE, left_by_merge
from hub.core.kpis import KpiFold
from hub.core.ports import RecordEvent
from hub.core.tasks import Engine
from hub.rules import DEFAULT, load_rules
from hub.store.memory import MemoryCoordinationStore
from schemas.events import coordination as co
from tests import locality_month as month
from tests.unit.test_engine_merges import MERGE, RETIRED, SURVIVOR, as_, rule_of, run, tasks_in

DUPLICATE = month.episode_id("P1")
RULE = "close-duplicate-stay"


@pytest.fixture(scope="module", params=[DEFAULT.with_name("croydon-pic.v2.yaml"), DEFAULT], ids=lambda p: p.stem)
def engine(request: pytest.FixtureRequest) -> Engine:
    """The shipped rules, the newest and version 2 (no close-duplicate-stay task there: the engine's
    stays alone say which is the duplicate; and a close there ends every stay's tasks but this one's)."""
    path: Path = request.param
    return Engine(load_rules(path))


def in_error(event: RecordEvent) -> RecordEvent:
    """An episode.closed as $close-duplicate sends it: the EpisodeOfCare entered-in-error, no Composition."""
    payload = orjson.loads(orjson.dumps(event.payload))
    for entry in payload["entry"]:
        entry["resource"]["status"] = "entered-in-error"
    return RecordEvent(event.id, event.type, event.source, event.time, event.subject, payload)


def merged(engine: Engine, practice: str | None) -> MemoryCoordinationStore:
    store = MemoryCoordinationStore()
    theirs = as_(RETIRED, month.episode("P1", month.at(6, 9), "c-ann"))
    ours = as_(SURVIVOR, month.episode("P2", month.at(7, 9), "c-bob"), who="P2")
    run(engine, [theirs, ours, MERGE], store)
    store.states[SURVIVOR]["practice"] = practice
    return store


def closed_in_error(engine: Engine, store: MemoryCoordinationStore) -> list[RecordEvent]:
    return run(engine, [in_error(as_(RETIRED, month.episode("P1", month.at(12, 9), "c-ann", closed=True)))], store)


def tasks(store: MemoryCoordinationStore) -> list[dict[str, Any]]:
    return list(store.states[SURVIVOR]["tasks"].values())


def test_a_duplicate_stays_close_sends_no_pic_summary_and_opens_no_task(engine: Engine) -> None:
    store = merged(engine, practice="G82001")  # (the person's practice is known: a discharge's letter would go)

    derived = closed_in_error(engine, store)

    assert [e for e in derived if e.type in (co.PIC_SUMMARY_SENT.type, co.TASK_CREATED.type)] == []
    assert not any(t["rule"] == "pic-summary" for t in tasks(store))
    done = {rule_of(t): t["status"] for t in tasks_in(derived).values()}
    assert done.get(RULE, "completed") == "completed"
    assert [t["status"] for t in tasks(store) if t["rule"] == RULE] in ([], ["completed"])
    assert store.states[SURVIVOR]["episode"]["id"] == month.episode_id("P2")  # (the person's stay goes on)
    assert DUPLICATE in store.states[SURVIVOR]["closed"]


def test_without_a_practice_nothing_is_held_and_no_one_is_asked_to_find_it(engine: Engine) -> None:
    store = merged(engine, practice=None)

    derived = closed_in_error(engine, store)

    assert not store.states[SURVIVOR].get("held")
    assert not any(t["rule"] in (FIND_PRACTICE, "pic-summary") for t in tasks(store))
    assert [e for e in derived if e.type == co.TASK_CREATED.type] == []


def test_it_ends_the_duplicate_stays_own_reviews_and_not_the_survivors(engine: Engine) -> None:
    store = merged(engine, practice="G82001")

    closed_in_error(engine, store)

    reviews = {(t["focus"], t["status"]) for t in tasks(store) if t["rule"].startswith("review-")}
    ours, theirs = f"EpisodeOfCare/{month.episode_id('P2')}", f"EpisodeOfCare/{DUPLICATE}"
    assert {s for f, s in reviews if f == ours} == {"requested"}
    assert {s for f, s in reviews if f == theirs} == {"cancelled"}


def test_left_by_merge_is_only_the_stay_the_engine_has_as_a_duplicate(engine: Engine) -> None:
    store = merged(engine, practice=None)
    state = store.states[SURVIVOR]

    assert left_by_merge(state, DUPLICATE, {RULE})
    assert any(t["rule"] == RULE for t in tasks(store)) == (engine.rules.version >= 3)
    assert not left_by_merge(state, month.episode_id("P2"), {RULE})  # the person's own stay
    assert not left_by_merge(state, "unknown-episode", {RULE})
    assert left_by_merge(state, DUPLICATE, set())  # (rules without the task: seen open, not theirs, merged)
    closed_in_error(engine, store)
    assert not left_by_merge(store.states[SURVIVOR], DUPLICATE, {RULE})  # closed already


def test_an_entered_in_error_close_is_no_discharge_and_no_stay_in_the_kpis() -> None:
    opened = month.episode("P1", month.at(6, 9), "c-ann")
    closed = in_error(month.episode("P1", month.at(12, 9), "c-ann", closed=True))
    fold = KpiFold(service=month.SERVICE)
    for event in (opened, closed):
        fold.add(event)

    rows = {(r.kpi, r.breakdown): r.value for r in fold.report("2026-11")}

    assert rows[("discharges", "")] == 0
    assert rows.get(("GP letters within 48 hours", "pending"), 0) == 0
    assert ("caseload at month end", "c-ann") not in rows
