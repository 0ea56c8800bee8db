"""`carehub replay --as-of T`, run as an operator runs it: --since after T is refused before anything
is read or made, and the summary says how many records the log held only after T, so were left out
(each partition up to its first record stamped after T: that one and all after it), on one process or several."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import pytest
from aiokafka import AIOKafkaProducer

from hub.core.ports import RecordEvent
from hub.instants import UK
from hub.kafka import create_topics, free_port
from schemas.envelope import Envelope
from schemas.topics import EVENTS
from tests.conftest import TansuProcess
from tests.integration.test_crash_safety import the_events

CAREHUB = str(Path(sys.executable).with_name("carehub"))
NO_BROKER = "127.0.0.1:1"  # nothing listens there: a command that reads the log fails (exit 1)
# the moment asked for: in the past, so that no broker refuses records stamped around it
T = (datetime.now(UTC) - timedelta(days=1)).replace(second=0, microsecond=0)


def carehub(bootstrap: str, cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {"PATH": "/usr/bin:/bin", "COLUMNS": "250", "KAFKA_BOOTSTRAP_SERVERS": bootstrap}
    return subprocess.run([CAREHUB, *args], capture_output=True, text=True, timeout=150, env=env, cwd=cwd, check=False)


@pytest.mark.parametrize(
    ("period", "said"),
    [
        (
            ["--since", "2026-11-20", "--as-of", "2026-11-10"],
            "--since 2026-11-20 00:00 GMT is after --as-of 2026-11-10 23:59 GMT: the hub held no event of that "
            "period by then",
        ),
        (
            ["--since", "2026-11-10T12:00:30Z", "--as-of", "2026-11-10T12:00:10Z", "--until", "2026-11-30"],
            "--since 2026-11-10 12:00:30 GMT is after --as-of 2026-11-10 12:00:10 GMT: the hub held no event of "
            "that period by then",
        ),
        (
            ["--since", "2026-11-20", "--until", "2026-11-10", "--as-of", "2026-11-30"],
            "--since 2026-11-20 00:00 GMT is after --until 2026-11-10 23:59 GMT: the period ends before it starts",
        ),
    ],
    ids=["since-after-as-of", "to-the-second", "since-after-until"],
)
@pytest.mark.parametrize("into", ["new", "sqlite:///new/rebuilt.db"])
def test_a_replay_since_after_as_of_or_until_is_refused_in_one_line_before_reading_or_making_anything(
    tmp_path: Path, period: list[str], said: str, into: str
) -> None:
    # (nothing listens at the bootstrap: had it read the log, it would fail with exit 1 instead)
    refused = carehub(NO_BROKER, tmp_path, "replay", "--into", into, "--workers", "1", *period)
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert refused.stdout.strip() == said
    assert list(tmp_path.iterdir()) == []


@dataclass(frozen=True)
class Log:
    bootstrap: str
    kept: int  # records on the log by T
    late: int  # records left out: on the partition a record stamped after T ended, it and all after it


async def produce_stamped(bootstrap: str, stamped: list[tuple[RecordEvent, datetime]]) -> list[int]:
    """The events on the log in this order, each with the Kafka timestamp given; their partitions."""
    await create_topics(bootstrap)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    await producer.start()
    try:
        sends = []
        for e, at in stamped:
            envelope = Envelope(
                id=e.id, source=e.source, type=e.type, time=e.time, subject=e.subject, data=orjson.dumps(e.payload)
            )
            headers = [(k, v.encode()) for k, v in envelope.kafka_headers().items()]
            sends.append(
                await producer.send(
                    EVENTS.name,
                    envelope.data,
                    key=e.subject.encode(),
                    headers=headers,
                    timestamp_ms=int(at.timestamp() * 1000),
                )
            )
        return [sent.partition for sent in await asyncio.gather(*sends)]
    finally:
        await producer.stop()


@pytest.fixture(scope="module")
def log() -> Iterator[Log]:
    """300 events stamped before T, then one stamped after T by a producer whose clock runs fast, then
    150 stamped before T again but appended after it: on its partition they are left out too."""
    events = the_events(451)
    held, fast, rest = events[:300], events[300], events[301:]
    stamped = [(e, T - timedelta(hours=1)) for e in held]
    stamped += [(fast, T + timedelta(minutes=5))]
    stamped += [(e, T - timedelta(minutes=1)) for e in rest]
    broker = TansuProcess(free_port()).start()
    try:
        partitions = asyncio.run(produce_stamped(broker.bootstrap, stamped))
        ended = partitions[300]
        late = 1 + partitions[301:].count(ended)
        assert 1 < late < 1 + len(rest)  # (records after the fast one on its partition, and on others)
        yield Log(broker.bootstrap, len(events) - late, late)
    finally:
        broker.stop()


@pytest.mark.kafka
@pytest.mark.timeout(180)
@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_replay_as_of_a_moment_says_how_many_records_written_after_it_were_left_out(
    log: Log, tmp_path: Path, workers: str
) -> None:
    done = carehub(
        log.bootstrap, tmp_path, "replay", "--into", "new", "--workers", workers, "--as-of", f"{T:%Y-%m-%dT%H:%MZ}"
    )
    assert done.returncode == 0, done.stdout + done.stderr
    said = " ".join(done.stdout.split())
    when = f"{T.astimezone(UK):%Y-%m-%d %H:%M %Z}"
    assert (
        f"replayed {log.kept + log.late} events in " in said
        and f"on {workers} process" in said
        and f"{log.kept} applied, {log.late} records left out (written to the log after {when}), 0 not CareHub events;"
        in said
    ), said
