"""A clock tick that fires thousands of clocks at once, on a real broker (Tansu): the rules engine
publishes everything it derives and commits, where it used to run out of its 10 s publish budget
and redo the batch for ever; and a Kafka that stops halfway through is reported, nothing committed.

Each referral a month old has two clocks run out (triage, 3 days; first visit, 28 days), so one
tick derives over two events per person in one batch: `carehub ingest referrals` of 10,000 rows
referred a month before had the hub's clock derive 16,590 in one batch, and stall.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import pytest
import sqlalchemy as sa
from faststream.kafka import KafkaBroker

from consumers.app import build_broker
from consumers.coordination import coordination_router
from hub.bootstrap import Services, build
from hub.core.coordination import tick
from hub.core.identity import person_key, stable_id
from hub.core.ports import RecordEvent
from hub.kafka import behind, create_topics
from hub.settings import Settings
from schemas.events import coordination as co
from tests import locality_month as month
from tests.conftest import TansuProcess
from tests.kafka_log import header, produce, read_all

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(120)]
GROUP = "carehub-coordination"
START = datetime(2026, 11, 2, 9, tzinfo=UTC)
TICK = tick(0, START + timedelta(days=40))  # every triage and first-visit clock has run out


def referrals(n: int) -> list[RecordEvent]:
    """Adult social care referrals of n people, a minute apart from START."""
    events = []
    for i in range(n):
        who = person_key(b"bulk-key-secret", f"person-{i}", None)
        base = month.referral("P1", START + timedelta(minutes=i), "adult-social-care")
        payload = orjson.loads(orjson.dumps(base.payload).replace(month.PEOPLE["P1"].encode(), who.encode()))
        payload["entry"][0]["resource"]["id"] = stable_id("bulk-referral", str(i))
        events.append(RecordEvent(stable_id("bulk-event", str(i)), base.type, base.source, base.time, who, payload))
    return events


@pytest.fixture
def services(tmp_path: Path) -> Services:
    return build(Settings(data_dir=tmp_path))


async def start_rules_engine(bootstrap: str, services: Services, people: int) -> KafkaBroker:
    """`people` referrals on partition 0, then the tick there; the coordination consumer running."""
    await produce(bootstrap, [(e, 0) for e in referrals(people)] + [(TICK, 0)])
    broker = build_broker(bootstrap)
    coordination = services.rules, services.coordination.unit_of_work
    broker.include_router(coordination_router(*coordination, broker, group_id=GROUP))
    await broker.start()
    return broker


async def committed_to_the_end(bootstrap: str, within: float) -> dict[str, int]:
    """{} once the coordination group has committed every record on the log (what it derived too)."""
    deadline = time.monotonic() + within
    while (lag := await behind(bootstrap, [GROUP])) and time.monotonic() < deadline:
        await asyncio.sleep(0.5)
    return lag


def count(services: Services, sql: str) -> int:
    with services.engine.connect() as conn:
        return int(conn.execute(sa.text(sql)).scalar_one())


def processed_of(services: Services, ids: set[str]) -> set[str]:
    """Which of these events the coordination consumer has committed as processed."""
    sql = "select event_id from processed_event where consumer = 'coordination'"
    with services.engine.connect() as conn:
        return ids & set(conn.execute(sa.text(sql)).scalars())


async def test_a_tick_firing_thousands_of_clocks_is_published_in_full_and_committed(
    services: Services, tansu: TansuProcess
) -> None:
    people = 4000  # about 8,700 derived events in the tick's batch, far more than 10 s took at once
    broker = await start_rules_engine(tansu.bootstrap, services, people)
    try:
        lag = await committed_to_the_end(tansu.bootstrap, within=45)
    finally:
        await broker.stop()
    clocks = count(services, "select count(*) from coordination_clock")
    assert lag == {}, f"the coordination consumer is {lag} records behind, {clocks} clocks pending"
    assert clocks == 0
    records = await read_all(tansu.bootstrap)
    overdue = {header(r, "ce_id") for r in records if header(r, "ce_type") == co.TASK_OVERDUE.type}
    assert len(overdue) == 2 * people


class Watch(logging.Handler):
    """What the coordination consumer logs: chunks of derived events acknowledged, and warnings."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.acknowledged: list[tuple[int, int]] = []
        self.warnings: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        if found := re.fullmatch(r"derived events acknowledged: (\d+) of (\d+)", text):
            self.acknowledged.append((int(found[1]), int(found[2])))
        elif record.levelno >= logging.WARNING:
            self.warnings.append(text)

    def publishing(self, more_than: int) -> bool:
        """Halfway through publishing what a batch of over `more_than` derived events derived."""
        done, of = self.acknowledged[-1] if self.acknowledged else (0, 0)
        return more_than < of and done < of


@pytest.fixture
def watch() -> Iterator[Watch]:
    handler = Watch()
    loggers = [logging.getLogger(name) for name in ("consumers.coordination", "consumers.middlewares")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.addHandler(handler)
        logger.setLevel(logging.DEBUG)
    yield handler
    for logger, level in zip(loggers, levels, strict=True):
        logger.removeHandler(handler)
        logger.setLevel(level)


async def until(done: Callable[[], object], within: float, what: str, every: float = 0.1) -> None:
    deadline = time.monotonic() + within
    while not done():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(every)


async def test_kafka_stopping_halfway_through_a_big_batch_is_reported_and_the_batch_redone_whole(
    services: Services, tansu: TansuProcess, watch: Watch
) -> None:
    people = 1200  # about 2,600 derived events in the tick's batch; the referrals' batches derive fewer
    ids = {e.id for e in referrals(people)} | {TICK.id}
    broker = await start_rules_engine(tansu.bootstrap, services, people)
    try:
        await until(lambda: watch.publishing(more_than=2 * people), 60, "the tick's batch publishing", every=0.005)
        tansu.stop()  # some of the tick's derived events acknowledged, the rest not (chunks take 20-40 ms)
        await until(lambda: watch.warnings, 30, "a warning that Kafka is down")
        clocks = count(services, "select count(*) from coordination_clock")
        processed = processed_of(services, ids)
        tansu.start()  # (an empty log: Tansu keeps it in memory)
        await create_topics(tansu.bootstrap)
        await until(lambda: processed_of(services, ids) == ids, 30, "the batch redone once Kafka is back")
    finally:
        await broker.stop()
    assert re.search(r"Kafka did not acknowledge the derived events \(\d+ of \d+ acknowledged", watch.warnings[0])
    assert TICK.id not in processed  # the tick's batch rolled back whole: no clock fired, none cleared
    assert 0 < len(processed) < people
    assert clocks == 2 * len(processed)
    assert count(services, "select count(*) from coordination_clock") == 0
