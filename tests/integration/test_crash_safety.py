"""Nothing lost, nothing applied twice: a `carehub worker` SIGKILLed at random points of a mixed stream
ends with the same record, tasks and disclosure ledger as an uninterrupted run over the same log; and
three workers sharing the partitions, one killed, end with the same record as one pass.

The SIGKILL test streams hospital ADT mixed with what the care coordination rules act on (at-risk
register rows, referrals, contacts, episodes, objections, and the hub's clock ticking onto every
partition) for some of the same people, with a sharing agreement and two subscriptions in place, so
the rules engine opens, completes, cancels and escalates tasks and sets clocks, and the delivery
consumer writes disclosure-ledger decisions; tests/crash_world.py builds the stream and says what it
holds. Two `carehub worker` processes read the one log at the same time, each with its own database
and consumer groups (`crash-killed-*`, `crash-reference-*`) and the hub's own clock off: one is
SIGKILLed and restarted, the other runs uninterrupted. Each consumer reads the whole log in a burst of
seconds once its group has formed, so the kills are shared out among the record, delivery and
coordination consumers, each at random points of that consumer's work (`kill_at_random_points`).
Once every consumer group of both runs has committed to the end of the log, the two must agree on:

  the record          its canonical hash (`carehub record hash`); replaying the log gives it too
  coordination        every person's rules-engine state (tasks with status, owner, due, overdue), the
                      pending clocks, the caseloads
  disclosure ledger   the multiset of decisions (recipient, person, resources, decision, reasons,
                      basis), leaving out seq, time stamps and chain hashes, whose order depends on how
                      the partitions interleave; each chain passes `verify()`
  once                each consumer applied each distinct event id on the log once (processed-event
                      rows equal the distinct ids); every input event is on the log once; an event the
                      rules engine derived again (each run derives its own copy, and a killed run may
                      publish one again: at-least-once, allowed) has the same content each time

The test prints the stream, where the kills fell, what each run ended with and the phase times.

Sizes. `make test` (and CI) runs the reduced size: CAREHUB_CRASH_EVENTS events (default 3,000) and
CAREHUB_CRASH_KILLS kills (default 3, one in each consumer), about 2 minutes on a 2-core machine,
most of it consumer groups re-forming after each kill. The full size, 50,000 events and 20
SIGKILLs, is the `[full]` case of the SIGKILL test, marked `long` and skipped unless the marker is
selected:

    .venv/bin/pytest -m long tests/integration/test_crash_safety.py

(about 14 minutes on a 2-core machine).

The three-worker test streams CAREHUB_CRASH_EVENTS events of ADT to three workers in one group (the
group lists all three as members), kills one mid-stream (the group then lists the other two, which
took over its partitions) and compares the record with one in-process pass over the same events.
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
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest
import sqlalchemy as sa
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient

from hub.core.ports import RecordEvent
from hub.core.record import apply_events
from hub.kafka import create_topics
from hub.replay import replay
from hub.store.database import open_engine
from hub.store.hashing import record_hash
from hub.store.sql import SqlRecordUnitOfWork
from schemas.envelope import Envelope
from schemas.events.coordination import NOT_RECORDED
from schemas.topics import EVENTS
from tests import kafka_log
from tests.conftest import TansuProcess
from tests.crash_world import (
    State,
    deliveries,
    differences,
    hospital,
    log_problems,
    mixed_stream,
    prepare,
    progress,
    repeats,
    settled,
)

pytestmark = [pytest.mark.kafka, pytest.mark.slow, pytest.mark.timeout(1500)]
SECRET = "crash-test-key-secret"
EVENT_COUNT = int(os.environ.get("CAREHUB_CRASH_EVENTS", "3000"))
KILLS = int(os.environ.get("CAREHUB_CRASH_KILLS", "3"))
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
    return hospital(n, SECRET)[0]


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
    """`carehub worker` as a process on a shared database and broker. `group` names its consumer groups
    (<group>-record, -coordination, -delivery, ...), `name` its Kafka client id; the hub's own clock is
    off (the tests put the clock ticks on the log, so every run reads the same ones)."""

    def __init__(
        self,
        data_dir: Path,
        bootstrap: str,
        log: Path,
        *,
        env: dict[str, str] | None = None,
        group: str = "crash",
        name: str = "carehub",
    ) -> None:
        self.args = [str(Path(sys.executable).with_name("carehub")), "worker", "--data-dir", str(data_dir)]
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("CAREHUB_")}
        self.env |= {"KAFKA_BOOTSTRAP_SERVERS": bootstrap, "CAREHUB_SECURITY__KEY_SECRET": SECRET}
        self.env |= {
            "CAREHUB_SECURITY__TOKEN_SECRET": "crash-test-token-secret",
            "CAREHUB_KAFKA__GROUP_ID": f"{group}-record",
            "CAREHUB_KAFKA__CLIENT_ID": name,
            "CAREHUB_COORDINATION__TICK_S": "0",
        }
        # (the record in the data directory's SQLite file, named: meant, as a worker on a shared Kafka must say)
        self.env |= {"CAREHUB_DATABASE_URL": f"sqlite:///{(data_dir / 'carehub.db').resolve()}"}
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


async def wait_until(check: Callable[[], bool], within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if check():
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"{what} not reached within {within}s")


async def kill_at_random_points(
    worker: Worker, url: str, kills: int, totals: dict[str, int], rng: random.Random, started: float
) -> list[str]:
    """SIGKILL the worker `kills` times, restarting it each time; where each kill fell.

    Each consumer reads the whole log in a burst of seconds once its group has formed (the record
    first, the rules engine last), so points on one consumer's count alone would never catch the others
    mid-batch. The kills are shared out among the three, each given random points between 5% and 90%
    of its work (events applied by the record and coordination consumers, decisions the delivery
    consumer writes), and the worker is killed up to half a second after any consumer reaches its next
    point (a batch takes about that long, and a kill between the rules engine's publishing what it
    derived and its commit is the one that puts derived events on the log twice). A point passed
    in one stride is dropped, and spent points are replaced by one a random way into the work left of
    a consumer still working; with none working, the kill falls at once (during startup).
    """
    turns = ("coordination", "delivery", "record")
    shares = {c: kills // 3 + (i < kills % 3) for i, c in enumerate(turns)}
    plan = {c: sorted(rng.sample(range(totals[c] // 20, totals[c] * 9 // 10), shares[c])) for c in turns}
    fell: list[str] = []
    for _ in range(kills):
        now = progress(url)
        plan = {c: [p for p in points if p > now[c]] for c, points in plan.items()}
        if not any(plan.values()):
            working = [c for c in turns if now[c] < totals[c] * 0.9]
            if working:
                c = rng.choice(working)
                plan[c] = [now[c] + max(1, int((totals[c] * 0.95 - now[c]) * rng.uniform(0.05, 0.35)))]
        nexts = {c: points[0] for c, points in plan.items() if points}

        def reached(points: dict[str, int] = nexts) -> bool:
            at = progress(url)
            return not points or any(at[c] >= p for c, p in points.items())

        await wait_until(reached, 300, f"one of {nexts}")
        await asyncio.sleep(rng.uniform(0, 0.5))  # anywhere in the batch after the one that got there
        worker.kill()
        at = progress(url)
        hit = [f"{c} {p}" for c, p in nexts.items() if at[c] >= p] or ["startup"]
        fell.append(f"{'/'.join(hit)} {at} {time.monotonic() - started:.0f}s")
        worker.start()
    return fell


def exercised(state: State) -> list[str]:
    """What the reference run must show for the comparison to mean something."""
    tasks = [t for person in state.tasks.values() for t in person.values()]
    statuses = {t[1] for t in tasks}
    decisions = {orjson.loads(d)["decision"] for d in state.ledger}
    wanted = {
        "tasks requested, completed and cancelled": {"requested", "completed", "cancelled"} <= statuses,
        "overdue tasks": any(t[4] for t in tasks),
        "discharge follow-ups": any(t[0] == "discharge-follow-up" for t in tasks),
        "pending clocks": bool(state.clocks),
        "caseloads": any(state.caseloads.values()),
        "ledger permits and denials": {"permit", "deny"} <= decisions,
    }
    return [f"the stream did not exercise {what}" for what, ok in wanted.items() if not ok]


@pytest.mark.parametrize(("event_count", "kills"), SIZES)
async def test_sigkilled_worker_ends_as_an_uninterrupted_run(
    tmp_path: Path, tansu: TansuProcess, request: pytest.FixtureRequest, event_count: int, kills: int
) -> None:
    if event_count == FULL_EVENTS and not long_selected(request.config):
        pytest.skip("the full-size run (50,000 events, 20 SIGKILLs) runs with -m long")
    started = time.monotonic()
    stream = mixed_stream(event_count, SECRET)
    inputs = [e.id for e in stream.events]
    recorded = [e for e in stream.events if e.type not in NOT_RECORDED]
    await kafka_log.produce(tansu.bootstrap, stream.items)
    runs = {"crash-killed": tmp_path / "killed", "crash-reference": tmp_path / "reference"}
    urls = {group: f"sqlite:///{(data / 'carehub.db').resolve()}" for group, data in runs.items()}
    for url in urls.values():
        prepare(url)  # migrated, agreement and subscriptions in, before the first worker
    killed_url = urls["crash-killed"]
    totals = {"record": len(recorded), "coordination": len(inputs), "delivery": deliveries(stream.events)}
    rng = random.Random(20)
    streamed = time.monotonic()
    reference = Worker(runs["crash-reference"], tansu.bootstrap, tmp_path / "reference.log", group="crash-reference")
    worker = Worker(runs["crash-killed"], tansu.bootstrap, tmp_path / "killed.log", group="crash-killed")
    reference.start()
    worker.start()
    try:
        kill_points = await kill_at_random_points(worker, killed_url, kills, totals, rng, streamed)
        log = await settled(tansu.bootstrap, urls, stream.events, within=900)
    finally:
        worker.stop()
        reference.stop()
    ran = time.monotonic()
    assert len(kill_points) == kills
    live, uninterrupted = State.of(killed_url), State.of(urls["crash-reference"])
    problems = exercised(uninterrupted)
    problems += [f"killed run: {d}" for d in differences(live, uninterrupted)]
    problems += [f"killed run: {p}" for p in log_problems(log, inputs, live)]
    problems += [f"uninterrupted run: {p}" for p in log_problems(log, inputs, uninterrupted)]
    for name, state in (("killed", live), ("uninterrupted", uninterrupted)):
        checked, broken = state.chain
        if broken or checked != sum(state.ledger.values()):
            problems.append(f"{name} run: ledger chain does not verify ({checked} checked): {broken}")
    if "Traceback" in (tmp_path / "reference.log").read_text(errors="replace"):
        problems.append("the uninterrupted worker logged a traceback")
    rebuilt = open_engine(f"sqlite:///{tmp_path / 'replayed.db'}")
    await replay(tansu.bootstrap, rebuilt)  # the log the killed worker read rebuilds the same record
    if record_hash(rebuilt) != live.record:
        problems.append(f"replayed record {record_hash(rebuilt)} != killed run's {live.record}")
    rebuilt.dispose()
    given = set(inputs)
    copies = Counter(n for event_id, n in repeats(log).items() if event_id not in given)
    print(  # noqa: T201
        f"\n{stream.describe()}; SIGKILLs at {kill_points} (of {totals})"
        f"\nuninterrupted: {uninterrupted.summary()}\nkilled:        {live.summary()}"
        f"\nlog: {len(log)} records; derived ids by copies on the log: {dict(sorted(copies.items()))}"
        f"\ntimes: stream {streamed - started:.0f}s, workers {ran - streamed:.0f}s, "
        f"checks {time.monotonic() - ran:.0f}s"
    )
    assert not problems, "\n".join(problems)


async def group_members(bootstrap: str, group: str) -> list[str]:
    """Member ids of a consumer group (each begins with the member's client id)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        described = await admin.describe_consumer_groups([group])
    finally:
        await admin.close()
    return [str(member[0]) for response in described for g in response.groups for member in g[5]]


async def members_become(bootstrap: str, group: str, names: set[str], within: float) -> None:
    deadline = time.monotonic() + within
    found: set[str] = set()
    while time.monotonic() < deadline:
        found = {m.split("-")[0] for m in await group_members(bootstrap, group)}
        if found == names:
            return
        await asyncio.sleep(0.5)
    raise AssertionError(f"{group} has members {sorted(found)}, not {sorted(names)}, after {within}s")


async def test_three_workers_share_the_partitions_and_survive_losing_one(tmp_path: Path, tansu: TansuProcess) -> None:
    events = the_events(EVENT_COUNT)
    await produce(tansu.bootstrap, events)
    data = tmp_path / "live"
    url = f"sqlite:///{(data / 'carehub.db').resolve()}"
    open_engine(url).dispose()
    names = [f"worker{n}" for n in range(3)]
    workers = [Worker(data, tansu.bootstrap, tmp_path / f"{name}.log", name=name).start() for name in names]
    try:
        await members_become(tansu.bootstrap, "crash-record", set(names), 60)  # one group, three members
        await wait_until(lambda: applied(url) >= EVENT_COUNT // 3, 300, "a third applied")
        assert applied(url) < EVENT_COUNT  # mid-stream
        workers[1].kill()  # its partitions move to the other two
        await wait_until(lambda: applied(url) >= EVENT_COUNT, 600, "every event applied")
        await members_become(tansu.bootstrap, "crash-record", {names[0], names[2]}, 60)
    finally:
        for worker in workers:
            worker.stop()
    logs = [(tmp_path / f"{name}.log").read_text(errors="replace") for name in names]
    assert sum("Traceback" in log for log in logs) == 0, logs
    engine = open_engine(url)
    live = record_hash(engine)
    engine.dispose()
    assert live == reference_hash(tmp_path, events)
