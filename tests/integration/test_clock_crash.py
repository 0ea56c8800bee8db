"""Deadline clocks survive SIGKILL: a `carehub worker` killed while clocks are pending, and started
again, yields every overdue event, each once.

Once means: one event id per overdue task, and the record applies it once. Kafka here has no
transactions (Tansu, and at-least-once by design), so a worker killed after the broker acknowledged
its derived events but before its database commit publishes them again on restart, with the same ids;
the test reports how many such repeats the log holds and checks that each is the same event.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import pytest
import sqlalchemy as sa

from hub.core.coordination import tick
from hub.core.identity import person_key, stable_id
from hub.core.ports import RecordEvent
from hub.store.database import open_engine
from schemas.events import coordination as co
from schemas.topics import EVENTS
from tests import locality_month as month
from tests.conftest import TansuProcess
from tests.integration.test_crash_safety import Worker
from tests.kafka_log import header, produce, read_all

pytestmark = [pytest.mark.kafka, pytest.mark.slow, pytest.mark.timeout(900)]
SECRET = "clock-crash-key-secret"
PEOPLE = int(os.environ.get("CAREHUB_CLOCK_PEOPLE", "150"))
KILLS = 3
START = datetime(2026, 11, 2, 9, tzinfo=UTC)


def referrals(n: int) -> list[RecordEvent]:
    events = []
    for i in range(n):
        who = person_key(SECRET.encode(), f"person-{i}", None)
        base = month.referral("P1", START + timedelta(minutes=i), "adult-social-care")
        payload = orjson.loads(orjson.dumps(base.payload).replace(month.PEOPLE["P1"].encode(), who.encode()))
        payload["entry"][0]["resource"]["id"] = stable_id("clock-referral", str(i))
        events.append(
            RecordEvent(stable_id("clock-ref-event", str(i)), base.type, base.source, base.time, who, payload)
        )
    return events


async def put_on_the_log(bootstrap: str, events: list[RecordEvent], ticks: list[datetime]) -> None:
    await produce(
        bootstrap, [(e, None) for e in events] + [(tick(p, t), p) for t in ticks for p in range(EVENTS.partitions)]
    )


def count(url: str, sql: str) -> int:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return int(conn.execute(sa.text(sql)).scalar_one())
    except sa.exc.OperationalError:
        return 0
    finally:
        engine.dispose()


async def wait_until(url: str, sql: str, target: int, within: float, what: str, *, at_most: bool = False) -> None:
    """Until count(sql) reaches target (at least it, or with at_most, at most it)."""
    deadline = time.monotonic() + within
    while True:
        now = count(url, sql)
        if (now <= target) if at_most else (now >= target):
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: {now}, not {'at most' if at_most else 'at least'} {target}, after {within}s")
        await asyncio.sleep(0.2)


def state(url: str, log: Path) -> str:
    """What a failure shows: how far each consumer got, the clocks left, the worker's last words."""
    counts = {
        "record": count(url, "select count(*) from processed_event where consumer = 'record'"),
        "coordination": count(url, "select count(*) from processed_event where consumer = 'coordination'"),
        "clocks pending": count(url, "select count(*) from coordination_clock"),
    }
    tail = log.read_text(errors="replace").splitlines()[-40:] if log.exists() else []
    return f"{counts}; worker log ends:\n" + "\n".join(tail)


async def overdue_on_the_log(bootstrap: str) -> list[tuple[str, str]]:
    """(event id, task id) of every task.overdue record on the events topic."""
    return [
        (header(r, "ce_id"), orjson.loads(r.value)["id"])
        for r in await read_all(bootstrap)
        if header(r, "ce_type") == co.TASK_OVERDUE.type
    ]


async def test_killed_worker_yields_every_overdue_event_once(tmp_path: Path, tansu: TansuProcess) -> None:
    ticks = [START + timedelta(hours=6 * i) for i in range(1, 4 * 30)]  # a month of clock, every 6 hours
    await put_on_the_log(tansu.bootstrap, referrals(PEOPLE), ticks)
    total = PEOPLE + len(ticks) * EVENTS.partitions
    data = tmp_path / "live"
    url = f"sqlite:///{(data / 'carehub.db').resolve()}"
    open_engine(url).dispose()
    coordinated = "select count(*) from processed_event where consumer = 'coordination'"
    clock_from_the_log = {"CAREHUB_COORDINATION__TICK_S": "0", "CAREHUB_KAFKA__GROUP_ID": "clock-record"}
    log = tmp_path / "worker.log"
    worker = Worker(data, tansu.bootstrap, log, env=clock_from_the_log).start()
    expected = 2 * PEOPLE  # each person's triage (3 days) and first visit (28 days) run out
    overdue_tasks = "select count(*) from record_resource where resource_type = 'Task' and content like '%\"overdue\"%'"
    try:
        for point in (total // 4, total // 2, (3 * total) // 4):
            await wait_until(url, coordinated, point, 300, "events coordinated")
            worker.kill()
            worker.start()
        await wait_until(url, overdue_tasks, expected, 300, "overdue tasks in the record")
        # the record sees an overdue event once it is published, which is before the coordination
        # consumer commits the batch that fired it (at-least-once): wait for that commit too
        await wait_until(url, "select count(*) from coordination_clock", 0, 120, "clocks pending", at_most=True)
    except AssertionError as exc:
        raise AssertionError(f"{exc}; {state(url, log)}") from None
    finally:
        worker.stop()
    on_log = await overdue_on_the_log(tansu.bootstrap)
    ids = {event_id for event_id, _ in on_log}
    per_task = Counter(task for _, task in set(on_log))
    why = state(url, log)
    assert len(ids) == expected, why
    assert set(per_task.values()) == {1}, why  # one overdue event id per task
    assert count(url, overdue_tasks) == expected, why
    assert count(url, "select count(*) from coordination_clock") == 0, why
    repeats = len(on_log) - len(ids)
    print(f"overdue events: {expected} distinct, {repeats} repeated after kills")  # noqa: T201
