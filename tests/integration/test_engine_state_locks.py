"""Two coordination workers that write one person's engine state take turns (hub.store.coordination),
on PostgreSQL with two connections in two threads: since A40 merges, events under a retired key, read
on its partition, write the survivor's state, and the A40, read on the survivor's, writes the retired
key's; a referral re-sent for someone else writes the state of the person who held it. Each race below
ends as the two batches applied one after the other, in the order they took the person, as the same
events applied in that order in memory do: no task, clock or pointer is lost.

The race is forced, never timed: the first worker holds its transaction open after reading, and the
second starts; the first commits only once the second has read too (the defect) or is waiting for the
person (pg_stat_activity shows it). (SQLite has one writer at a time: BEGIN IMMEDIATE.)"""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import pytest
import sqlalchemy as sa
import yaml

from consumers.coordination import run_batch
from consumers.middlewares import retrying
from hub.core.coordination import HOLDER, Positioned, process, tick
from hub.core.errors import ConcurrentWriteError
from hub.core.identity import stable_id
from hub.core.ports import CoordinationUnitOfWork, RecordEvent
from hub.core.tasks import Engine
from hub.rules import DEFAULT
from hub.store.coordination import SqlCoordinationStore
from hub.store.database import open_engine
from hub.store.memory import MemoryCoordinationStore
from schemas.coordination_rules import CoordinationRules
from tests import locality_month as month
from tests.unit import test_engine_merges as tm

pytestmark = [pytest.mark.postgres, pytest.mark.timeout(600)]  # (races on a loaded machine: see race)

ENGINE = Engine(CoordinationRules.model_validate(yaml.safe_load(DEFAULT.read_text())))
R, S, PR, PS = tm.RETIRED, tm.SURVIVOR, tm.RETIRED_PARTITION, tm.SURVIVOR_PARTITION
COUNT = itertools.count()
PATIENT_A, PATIENT_B, PATIENT_C = "a" * 32, "b" * 32, "c" * 32  # three people on partitions 0, 1, 2
WAITING = sa.text(  # (sessions of this test's database waiting for a lock another holds)
    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
)


@pytest.fixture
def store(postgres_url: str) -> Iterator[SqlCoordinationStore]:
    engine = open_engine(postgres_url)
    yield SqlCoordinationStore(engine)
    engine.dispose()


def as_(key: str, event: RecordEvent, who: str = "P1") -> RecordEvent:
    return tm.as_(key, event, who, event_id=f"ev-{next(COUNT)}-{key[:8]}")  # (fits processed_event.event_id)


def referred_under_old_number() -> RecordEvent:
    return as_(R, month.referral("P1", month.at(4, 10), "gp"))


def apply(factory: Callable[[], CoordinationUnitOfWork], batch: Sequence[Positioned]) -> None:
    with factory() as uow:
        process(ENGINE, uow, batch)
        uow.commit()


def waiting(monitor: sa.Connection) -> int:
    """How many of this database's sessions wait for a lock, now: each poll in a transaction of its own
    (PostgreSQL keeps pg_stat_activity as it first read it until the transaction ends, so polls in one
    transaction, the first made before the second worker waited, read 0 for ever: the unexplained
    stalls of this file under load)."""
    try:
        return int(monitor.scalar(WAITING) or 0)
    finally:
        monitor.rollback()


def race(store: SqlCoordinationStore, first: Positioned, second: Positioned) -> None:
    """`first` read in one worker's transaction, held open until `second`'s worker has read its
    people too or waits for them (pg_stat_activity); then both commit (the second as soon as it can)."""
    read, release, errors = threading.Event(), threading.Event(), list[BaseException]()
    second_read = threading.Event()

    def worker(item: Positioned, done: threading.Event, hold: threading.Event | None) -> None:
        try:
            with store.unit_of_work() as uow:
                process(ENGINE, uow, [item])
                done.set()
                if hold is not None:
                    assert hold.wait(300), "the race was never released"
                uow.commit()
        except BaseException as exc:  # (reported by the test, not lost in the thread)
            errors.append(exc)
            done.set()

    one = threading.Thread(target=worker, args=(first, read, release))
    one.start()
    assert read.wait(60)
    two = threading.Thread(target=worker, args=(second, second_read, None))
    two.start()
    deadline = time.monotonic() + 240  # (a condition, polled; generous: a loaded 2-core CI machine)
    with store.engine.connect() as monitor:
        while not (second_read.is_set() or waiting(monitor)):
            if time.monotonic() > deadline:
                release.set()
                pytest.fail("the second worker neither read nor waited within 240 s")
            second_read.wait(0.05)
    release.set()
    one.join(300)
    two.join(300)
    assert not errors, errors


def states_and_clocks(store: Any, keys: Sequence[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The keys' states and every pending clock (id -> person, due, partition), from either store."""
    if isinstance(store, MemoryCoordinationStore):
        clocks = {c: (p, d, part) for c, (p, d, _, part) in store.clocks.items()}
        return {k: store.states.get(k) for k in keys}, clocks
    with store.engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT id, person_key, due, partition FROM coordination_clock"))
        clocks = {r.id: (r.person_key, r.due, r.partition) for r in rows}
    return {k: store.state(k) for k in keys}, clocks


def check_serial(
    store: SqlCoordinationStore, before: Sequence[Positioned], race_of: Sequence[Positioned], keys: list[str]
) -> None:
    """Set up with `before`, race the two, and compare with the same events applied one by one in memory."""
    for item in before:
        apply(store.unit_of_work, [item])
    race(store, race_of[0], race_of[1])
    serial = MemoryCoordinationStore()
    for item in [*before, *race_of]:
        apply(serial.unit_of_work, [item])
    assert states_and_clocks(store, keys) == states_and_clocks(serial, keys)


def test_a_late_event_under_the_retired_key_and_the_survivors_own_event_both_change_the_survivor(
    store: SqlCoordinationStore,
) -> None:
    late = as_(R, month.referral("P2", month.at(13, 10), "gp"), who="P2")  # (acts on the survivor)
    visit = as_(S, month.contact("P1", month.at(13, 11), "face-to-face"))
    before = [Positioned(referred_under_old_number(), PR), Positioned(tm.MERGE, PS)]

    check_serial(store, before, (Positioned(late, PR), Positioned(visit, PS)), [R, S])


def test_an_event_under_the_retired_key_racing_the_merge_acts_on_the_survivor_and_the_pointer_stays(
    store: SqlCoordinationStore,
) -> None:
    late = as_(R, month.referral("P2", month.at(10, 8), "gp"), who="P2")
    before = [Positioned(referred_under_old_number(), PR)]

    check_serial(store, before, (Positioned(tm.MERGE, PS), Positioned(late, PR)), [R, S])
    assert store.state(R) == {"merged_into": S}


@pytest.mark.parametrize("tick_first", [True, False], ids=["tick-first", "merge-first"])
def test_a_clock_the_merge_moved_is_not_deleted_by_a_tick_on_the_retired_keys_partition(
    store: SqlCoordinationStore, tick_first: bool
) -> None:
    late = month.at(7, 12)  # after the triage deadline (7 Nov 10:00): the tick fires it
    merge, ticked = Positioned(tm.merge_of(R, S, "M9", late), PS), Positioned(tick(PR, late), PR)
    before = [Positioned(referred_under_old_number(), PR)]

    check_serial(store, before, (ticked, merge) if tick_first else (merge, ticked), [R, S])
    _, clocks = states_and_clocks(store, [])
    state = store.state(S) or {}
    waiting = {t for t, task in state["tasks"].items() if task["status"] == "requested" and not task.get("overdue")}
    assert waiting <= set(clocks)  # (every task that can still run out has its clock)


def test_a_referral_re_sent_for_two_people_at_once_moves_from_each_holder_in_turn(store: SqlCoordinationStore) -> None:
    referral = month.referral("P1", month.at(4, 10), "gp")
    held = tm.as_(PATIENT_A, referral, event_id="ev-held")
    to_b = tm.as_(PATIENT_B, referral, event_id="ev-to-b")  # (its NHS number corrected: the same referral)
    to_c = tm.as_(PATIENT_C, referral, event_id="ev-to-c")  # (and corrected again, read on a third partition)
    focus = f"ServiceRequest/{month.referral_id('P1')}"
    holder = f"{HOLDER}{stable_id('referral-holder', focus)}"  # (who holds it: hub.core.coordination)

    check_serial(store, [Positioned(held, 0)], (Positioned(to_b, 1), Positioned(to_c, 2)), [holder, PATIENT_B])
    assert (store.state(holder) or {}).get("person") == PATIENT_C


def test_two_workers_taking_two_people_in_opposite_orders_one_is_told_to_retry(store: SqlCoordinationStore) -> None:
    with store.unit_of_work() as uow:
        for key in (PATIENT_A, PATIENT_B):
            uow.save(key, {"tasks": {}})
        uow.commit()
    both_hold, outcomes = threading.Barrier(2, timeout=60), list[str]()

    def worker(first: str, then: str) -> None:
        try:
            with store.unit_of_work() as uow:
                uow.state(first)
                both_hold.wait()
                uow.state(then)
                uow.save(then, {"by": first})
                uow.commit()
            outcomes.append("committed")
        except ConcurrentWriteError:
            outcomes.append("retry")

    threads = [threading.Thread(target=worker, args=keys) for keys in ((PATIENT_A, PATIENT_B), (PATIENT_B, PATIENT_A))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)

    assert sorted(outcomes) == ["committed", "retry"]  # (PostgreSQL broke the deadlock: the batch is redone)


def test_two_workers_giving_one_new_person_a_state_the_second_is_told_to_retry_before_publishing(
    store: SqlCoordinationStore,
) -> None:
    both_read, outcomes = threading.Barrier(2, timeout=60), list[str]()

    def worker(n: int) -> None:
        try:
            with store.unit_of_work() as uow:
                assert uow.state(PATIENT_A) is None
                both_read.wait()
                uow.save(PATIENT_A, {"tasks": {}, "by": n})  # (the first waits here for the other's commit)
                outcomes.append("saved")
                uow.commit()
        except ConcurrentWriteError:
            outcomes.append("retry")

    first = threading.Thread(target=worker, args=(1,))
    first.start()
    with store.unit_of_work() as uow:  # the second, in this thread: it saves once the first has
        assert uow.state(PATIENT_A) is None
        both_read.wait()
        for _ in range(6000):  # (a condition, polled: at most 60 s)
            if outcomes:
                break
            threading.Event().wait(0.01)
        with pytest.raises(ConcurrentWriteError):
            uow.save(PATIENT_A, {"tasks": {}, "by": 2})
    first.join(60)

    assert outcomes == ["saved"]
    assert store.state(PATIENT_A) == {"tasks": {}, "by": 1}


class PausingUnitOfWork:
    """The store's unit of work, pausing once, at `barrier`, after its first read of a person's state
    (to force two workers to take their first person before either takes its second)."""

    def __init__(self, inner: CoordinationUnitOfWork, barrier: threading.Barrier, paused: list[bool]) -> None:
        self.inner, self.barrier, self.paused = inner, barrier, paused

    def __enter__(self) -> PausingUnitOfWork:
        self.inner.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.inner.__exit__(*exc)

    def state(self, person_key: str) -> Any:
        found = self.inner.state(person_key)
        if not self.paused:
            self.paused.append(True)
            self.barrier.wait()
        return found

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def test_a_deadlock_between_two_workers_batches_is_redone_and_ends_as_one_after_the_other(
    store: SqlCoordinationStore,
) -> None:
    late = as_(R, month.referral("P2", month.at(13, 10), "gp"), who="P2")  # takes R, then the survivor
    again = tm.a40(control_id="M2", at="202611131100")  # the A40 sent again: takes the survivor, then R
    before = [Positioned(referred_under_old_number(), PR), Positioned(tm.MERGE, PS)]
    for item in before:
        apply(store.unit_of_work, [item])
    barrier, errors = threading.Barrier(2, timeout=60), list[BaseException]()

    def worker(item: Positioned) -> None:
        paused: list[bool] = []
        factory = lambda: PausingUnitOfWork(store.unit_of_work(), barrier, paused)  # noqa: E731
        work = lambda: asyncio.to_thread(run_batch, ENGINE, factory, [item], lambda _: None)  # noqa: E731
        try:
            asyncio.run(retrying(work, first=0.01))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(item,)) for item in (Positioned(late, PR), Positioned(again, PS))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)

    assert not errors, errors
    orders = []
    for pair in ((late, PR, again, PS), (again, PS, late, PR)):
        serial = MemoryCoordinationStore()
        for item in [*before, Positioned(pair[0], pair[1]), Positioned(pair[2], pair[3])]:
            apply(serial.unit_of_work, [item])
        orders.append(states_and_clocks(serial, [R, S]))
    assert states_and_clocks(store, [R, S]) in orders
