"""bench/ingest: N ADT messages through MLLP into the record, beside two references in the same run.

(a) raw aiokafka produce+consume of the same bytes; (b) the unavoidable work alone: parse each
message and validate its FHIR resources once, in one process; (c) the hub end to end: `carehub up`
in its own process, messages sent over MLLP on several connections, timed until the record has
applied every event. Then ACK latency p50/p99 at a fixed offered load (open loop: latency counts
from each message's scheduled send time, so a slow hub cannot hide its queueing).

Run: `make bench` or `.venv/bin/python -m bench.ingest --messages 3000`.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import sqlalchemy as sa

from adapters.hl7v2.synthetic import adt_traffic, make_locality
from adapters.hl7v2.to_fhir import map_message
from adapters.hl7v2.transport import MllpClient
from bench.reference import raw_kafka_throughput
from bench.results import emit
from hub.kafka import embedded_broker, free_port

START = datetime(2026, 10, 1, tzinfo=UTC)


def traffic(n: int, *, seed: int = 1) -> list[bytes]:
    """n distinct synthetic ADT messages (a bigger locality until there are enough); never repeats,
    since a repeated control id is rightly applied once and would stall the count."""
    people = max(500, n // 2)
    while True:
        messages = [m for _, m in adt_traffic(make_locality(people=people, seed=seed), start=START, days=30, seed=seed)]
        if len(messages) >= n:
            return messages[:n]
        people *= 2


def validation_only(messages: list[bytes]) -> float:
    """(b): parse + map + validate once per message, in this process; messages per second."""
    secret = b"bench"
    started = time.perf_counter()
    for message in messages:
        map_message(message, key_secret=secret)
    return len(messages) / (time.perf_counter() - started)


class HubProcess:
    """`carehub up` in its own process on free ports, with a SQLite record in a temp folder."""

    def __init__(self, data_dir: Path, env: dict[str, str] | None = None) -> None:
        self.data_dir = data_dir
        self.extra_env = env or {}
        self.mllp_port = free_port()
        self.http_port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> HubProcess:
        exe = Path(sys.executable).with_name("carehub")
        args = [str(exe), "up", "--data-dir", str(self.data_dir)]
        args += ["--mllp-port", str(self.mllp_port), "--http-port", str(self.http_port)]
        env = {k: v for k, v in os.environ.items() if not k.startswith("CAREHUB_")}
        env.pop("KAFKA_BOOTSTRAP_SERVERS", None)
        env.update(self.extra_env)
        self.proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        return self

    def __exit__(self, *exc: object) -> None:
        assert self.proc
        self.proc.terminate()
        self.proc.wait(20)

    async def ready(self, within: float = 120.0) -> None:
        """Wait for the MLLP port (the hub opens it once its consumers have joined: tens of seconds
        on a busy 2-core machine)."""
        deadline = time.perf_counter() + within
        while time.perf_counter() < deadline:
            if self.proc and self.proc.poll() is not None:
                raise RuntimeError(f"carehub up exited with {self.proc.returncode}")
            try:
                client = await MllpClient.connect("127.0.0.1", self.mllp_port)
                await client.close()
                return
            except OSError:
                await asyncio.sleep(0.05)
        raise RuntimeError(f"carehub up did not open its MLLP port within {within:.0f}s")

    def applied(self) -> int:
        engine = sa.create_engine(f"sqlite:///{self.data_dir / 'carehub.db'}")
        with engine.connect() as conn:
            count = conn.execute(sa.text("select count(*) from processed_event where consumer = 'record'")).scalar_one()
        engine.dispose()
        return int(count)


async def _send_all(port: int, messages: list[bytes]) -> list[bytes]:
    client = await MllpClient.connect("127.0.0.1", port)
    try:
        return [await client.send(m) for m in messages]
    finally:
        await client.close()


async def end_to_end(hub: HubProcess, messages: list[bytes], connections: int) -> float:
    """(c): all messages over `connections` MLLP connections, until the record applied them."""
    before = hub.applied()
    started = time.perf_counter()
    shares = [messages[i::connections] for i in range(connections)]
    acks = await asyncio.gather(*(_send_all(hub.mllp_port, s) for s in shares))
    accepted = sum(1 for batch in acks for a in batch if b"MSA|AA" in a)
    deadline = time.perf_counter() + 300
    while hub.applied() - before < accepted:
        if time.perf_counter() > deadline:
            raise RuntimeError(f"the record applied {hub.applied() - before} of {accepted} events in 300 s")
        await asyncio.sleep(0.02)
    return len(messages) / (time.perf_counter() - started)


async def ack_latency(hub: HubProcess, messages: list[bytes], rate: float, connections: int) -> list[float]:
    """Open-loop latency (ms) at `rate` messages/s spread over `connections` connections."""
    clients = [await MllpClient.connect("127.0.0.1", hub.mllp_port) for _ in range(connections)]
    locks = [asyncio.Lock() for _ in clients]
    latencies: list[float] = []
    origin = time.perf_counter() + 0.1

    async def one(i: int, message: bytes) -> None:
        scheduled = origin + i / rate
        await asyncio.sleep(max(0.0, scheduled - time.perf_counter()))
        async with locks[i % connections]:
            await clients[i % connections].send(message)
        latencies.append((time.perf_counter() - scheduled) * 1000)

    await asyncio.gather(*(one(i, m) for i, m in enumerate(messages)))
    for client in clients:
        await client.close()
    return latencies


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


async def main(n: int, connections: int, rate: float, seconds: float) -> dict[str, object]:
    messages = traffic(n)
    async with embedded_broker() as bootstrap:
        raw = await raw_kafka_throughput(bootstrap, messages, topic="bench.raw")
    validated = validation_only(messages)
    with tempfile.TemporaryDirectory() as tmp, HubProcess(Path(tmp)) as hub:
        await hub.ready()
        hub_rate = await end_to_end(hub, messages, connections)
        load = traffic(int(rate * seconds), seed=2)
        latencies = await ack_latency(hub, load, rate, connections)
    return {
        "bench": "ingest",
        "messages": n,
        "connections": connections,
        "msgs_per_s": round(hub_rate, 1),
        "validation_only_msgs_per_s": round(validated, 1),
        "raw_kafka_msgs_per_s": round(raw, 1),
        "ratio_vs_validation": round(hub_rate / validated, 3),
        "ratio_vs_kafka": round(hub_rate / raw, 3),
        "offered_load_msgs_per_s": rate,
        "ack_p50_ms": round(statistics.median(latencies), 2),
        "ack_p99_ms": round(percentile(latencies, 99), 2),
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=3000)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--rate", type=float, default=200.0)
    parser.add_argument("--seconds", type=float, default=10.0)
    ns = parser.parse_args()
    figures = asyncio.run(main(ns.messages, ns.connections, ns.rate, ns.seconds))
    emit(figures, command=" ".join(["python -m bench.ingest", *sys.argv[1:]]))
