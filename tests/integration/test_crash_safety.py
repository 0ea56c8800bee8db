"""Nothing lost, nothing applied twice: workers SIGKILLed mid-stream, and three workers sharing the
partitions with one killed, end with the same record as one uninterrupted pass over the same events.

Sizes. `make test` (and CI) runs the reduced size: CAREHUB_CRASH_EVENTS events (default 5,000) and
CAREHUB_CRASH_KILLS kills (default 5). The full size, 50,000 events and 20 SIGKILLs, is the `[full]`
case of the SIGKILL test, marked `long` and skipped unless the marker is selected:

    .venv/bin/pytest -m long tests/integration/test_crash_safety.py

(about 10 minutes on a 2-core machine: 9 min 13 s when first run).
"""

from __future__ import annotations

import asyncio
import os
import random
import re
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest
import sqlalchemy as sa
from aiokafka import AIOKafkaProducer

from adapters.hl7v2.synthetic import adt_traffic, make_locality
from adapters.hl7v2.to_fhir import map_message
from hub.core.ports import RecordEvent
from hub.core.record import apply_events
from hub.kafka import create_topics
from hub.replay import replay
from hub.store.database import open_engine
from hub.store.hashing import record_hash
from hub.store.sql import SqlRecordUnitOfWork
from schemas.envelope import Envelope
from schemas.topics import EVENTS
from tests.conftest import TansuProcess

pytestmark = [pytest.mark.kafka, pytest.mark.slow, pytest.mark.timeout(1500)]
SECRET = "crash-test-key-secret"
EVENT_COUNT = int(os.environ.get("CAREHUB_CRASH_EVENTS", "5000"))
KILLS = int(os.environ.get("CAREHUB_CRASH_KILLS", "5"))
FULL_EVENTS, FULL_KILLS = 50_000, 20
SIZES = [
    pytest.param(EVENT_COUNT, KILLS, id="reduced"),
    pytest.param(FULL_EVENTS, FULL_KILLS, id="full", marks=[pytest.mark.long, pytest.mark.timeout(3600)]),
]


def long_selected(config: pytest.Config) -> bool:
    """True when `-m` selects the long marker (`-m long`, `-m "long and kafka"`; not `-m "not long"`)."""
    return re.search(r"(?<!not )\blong\b", config.option.markexpr or "") is not None


def the_events(n: int) -> list[RecordEvent]:
    """n distinct events from synthetic ADT (a locality as large as it takes), mapping no more than needed."""
    people = max(500, n // 2)
    while True:
        traffic = adt_traffic(make_locality(people=people, seed=5), start=datetime(2026, 9, 1, tzinfo=UTC), seed=5)
        events: list[RecordEvent] = []
        for _, raw in traffic:
            events += [
                RecordEvent(m.event_id, m.event_type, m.source, m.event_time, m.person_key, m.payload)
                for m in map_message(raw, key_secret=SECRET.encode())
            ]
            if len(events) >= n:
                return events[:n]
        people *= 2


async def produce(bootstrap: str, events: list[RecordEvent]) -> None:
    await create_topics(bootstrap)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    await producer.start()
    try:
        sends = []
        for e in events:
            envelope = Envelope(
                id=e.id, source=e.source, type=e.type, time=e.time, subject=e.subject, data=orjson.dumps(e.payload)
            )
            headers = [(k, v.encode()) for k, v in envelope.kafka_headers().items()]
            sends.append(await producer.send(EVENTS.name, envelope.data, key=e.subject.encode(), headers=headers))
        await asyncio.gather(*sends)
    finally:
        await producer.stop()


def reference_hash(tmp: Path, events: list[RecordEvent]) -> tuple[str, int, int]:
    """The record from one uninterrupted pass, in log order per person."""
    engine = open_engine(f"sqlite:///{tmp / 'reference.db'}")
    with SqlRecordUnitOfWork(engine) as uow:
        apply_events(uow, events)
        uow.commit()
    found = record_hash(engine)
    engine.dispose()
    return found


class Worker:
    """`carehub worker` as a process on a shared database and broker."""

    def __init__(self, data_dir: Path, bootstrap: str, log: Path, *, env: dict[str, str] | None = None) -> None:
        self.args = [str(Path(sys.executable).with_name("carehub")), "worker", "--data-dir", str(data_dir)]
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("CAREHUB_")}
        self.env |= {"KAFKA_BOOTSTRAP_SERVERS": bootstrap, "CAREHUB_SECURITY__KEY_SECRET": SECRET}
        self.env |= {
            "CAREHUB_SECURITY__TOKEN_SECRET": "crash-test-token-secret",
            "CAREHUB_KAFKA__GROUP_ID": "crash-record",
        }
        self.env |= env or {}
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Worker:
        out = self.log.open("ab")
        self.proc = subprocess.Popen(self.args, env=self.env, stdout=out, stderr=out)
        return self

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.kill()


def applied(url: str) -> int:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            query = sa.text("select count(*) from processed_event where consumer = 'record'")
            return int(conn.execute(query).scalar_one())
    except sa.exc.OperationalError:
        return 0
    finally:
        engine.dispose()


async def wait_until(check, within: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if check():
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"{what} not reached within {within}s")


@pytest.mark.parametrize(("event_count", "kills"), SIZES)
async def test_sigkilled_worker_recovers_to_the_same_record(
    tmp_path: Path, tansu: TansuProcess, request: pytest.FixtureRequest, event_count: int, kills: int
) -> None:
    if event_count == FULL_EVENTS and not long_selected(request.config):
        pytest.skip("the full-size run (50,000 events, 20 SIGKILLs) runs with -m long")
    events = the_events(event_count)
    assert len({e.id for e in events}) == event_count
    await produce(tansu.bootstrap, events)
    data = tmp_path / "live"
    url = f"sqlite:///{(data / 'carehub.db').resolve()}"
    open_engine(url).dispose()  # migrate once, before the first worker
    rng = random.Random(20)
    kill_points = sorted(rng.sample(range(event_count // 20, event_count - event_count // 20), kills))
    worker = Worker(data, tansu.bootstrap, tmp_path / "worker.log").start()
    killed = 0
    try:
        for point in kill_points:
            await wait_until(lambda p=point: applied(url) >= p, 300, f"{point} events applied")
            worker.kill()
            killed += 1
            worker.start()
        await wait_until(lambda: applied(url) >= event_count, 600, "every event applied")
    finally:
        worker.stop()
    assert killed == kills
    assert applied(url) == event_count  # each event applied once: no more rows than events
    engine = open_engine(url)
    live = record_hash(engine)
    engine.dispose()
    assert live == reference_hash(tmp_path, events)
    rebuilt = open_engine(f"sqlite:///{tmp_path / 'replayed.db'}")
    await replay(tansu.bootstrap, rebuilt)  # the log the killed workers read rebuilds the same record
    assert record_hash(rebuilt) == live
    rebuilt.dispose()


async def test_three_workers_share_the_partitions_and_survive_losing_one(tmp_path: Path, tansu: TansuProcess) -> None:
    events = the_events(EVENT_COUNT)
    await produce(tansu.bootstrap, events)
    data = tmp_path / "live"
    url = f"sqlite:///{(data / 'carehub.db').resolve()}"
    open_engine(url).dispose()
    workers = [Worker(data, tansu.bootstrap, tmp_path / f"worker{n}.log").start() for n in range(3)]
    try:
        await wait_until(lambda: applied(url) >= EVENT_COUNT // 3, 300, "a third applied")
        workers[1].kill()  # its partitions move to the other two
        await wait_until(lambda: applied(url) >= EVENT_COUNT, 600, "every event applied")
    finally:
        for worker in workers:
            worker.stop()
    logs = [(tmp_path / f"worker{n}.log").read_text(errors="replace") for n in range(3)]
    assert sum("Traceback" in log for log in logs) == 0, logs
    engine = open_engine(url)
    live = record_hash(engine)
    engine.dispose()
    assert live == reference_hash(tmp_path, events)
