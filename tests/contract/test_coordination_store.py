"""The coordination store contract on every back end: the scripted locality month gives the same
derived events, clocks and caseloads in memory, in a SQLite file and in PostgreSQL."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
import yaml

from hub.core.coordination import Positioned, process, tick
from hub.core.ports import CoordinationUnitOfWork, RecordEvent
from hub.core.tasks import Engine
from hub.rules import DEFAULT
from hub.store.coordination import SqlCoordinationStore
from hub.store.database import open_engine
from hub.store.memory import MemoryCoordinationStore
from schemas.coordination_rules import CoordinationRules
from tests import locality_month as month

RULES = DEFAULT  # the shipped rules (hub/rules/croydon-pic.v4.yaml)
ENGINE = Engine(CoordinationRules.model_validate(yaml.safe_load(RULES.read_text())))


@pytest.fixture(params=["memory", "sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def unit_of_work(request: pytest.FixtureRequest) -> Iterator[tuple[Callable[[], CoordinationUnitOfWork], Any]]:
    if request.param == "memory":
        store: Any = MemoryCoordinationStore()
        yield store.unit_of_work, store
        return
    url = request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "postgres_url")
    engine = open_engine(url)
    store = SqlCoordinationStore(engine)
    yield store.unit_of_work, store
    engine.dispose()


def timeline() -> list[Positioned]:
    events = [(e.time, 1, e) for e in month.script()] + [(t, 0, tick(0, t)) for t in month.tick_times()]
    return [Positioned(e, 0) for _, _, e in sorted(events, key=lambda x: (x[0], x[1]))]


def run(factory: Callable[[], CoordinationUnitOfWork], batch: list[Positioned], size: int) -> list[RecordEvent]:
    derived: list[RecordEvent] = []
    for start in range(0, len(batch), size):
        with factory() as uow:
            derived += process(ENGINE, uow, batch[start : start + size])
            uow.commit()
    return derived


def reference() -> list[str]:
    store = MemoryCoordinationStore()
    return [e.id for e in run(store.unit_of_work, timeline(), 1)]


@pytest.mark.parametrize("batch", [1, 7, 500])
def test_every_back_end_derives_the_same_events_whatever_the_batch(unit_of_work: Any, batch: int) -> None:
    factory, _ = unit_of_work
    assert [e.id for e in run(factory, timeline(), batch)] == reference()


def test_a_batch_not_committed_leaves_nothing_behind(unit_of_work: Any) -> None:
    factory, _ = unit_of_work
    items = timeline()
    with factory() as uow:
        assert process(ENGINE, uow, items[:10])  # derived, then the worker dies before commit
    assert [e.id for e in run(factory, items, 50)] == reference()


def test_caseloads_and_clocks_after_the_month(unit_of_work: Any) -> None:
    factory, store = unit_of_work
    run(factory, timeline(), 20)
    if isinstance(store, SqlCoordinationStore):
        assert {k: v for k, v in store.caseloads().items() if v} == {
            k: v for k, v in month.EXPECTED_CASELOADS.items() if v
        }
        # open clocks: P3's two reviews and its episode's long stay
        assert store.pending_clocks() == 3
    else:
        assert len(store.clocks) == 3
