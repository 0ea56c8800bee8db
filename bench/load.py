"""bench/load: sustained ingest at a fixed offered load with the hub's memory at start and end, then
FHIR read latency under 50 concurrent clients, against one `carehub up` process.

(a) Open-loop MLLP sender at --rate messages/s for --seconds (default 600) over 4 connections; the
hub's resident memory (VmRSS) is read after a warm-up minute and at the end: growth must stay under
10%. (b) 50 concurrent clients read Patient/$everything for random people for --read-seconds;
latency p50/p99 in ms, each read decided by the policy and written to the ledger.

Run: `.venv/bin/python -m bench.load --seconds 600`.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx

from adapters.hl7v2.synthetic import make_locality
from adapters.hl7v2.transport import MllpClient
from bench.ingest import HubProcess, percentile, traffic
from bench.results import emit
from hub.api.auth import issue_token
from hub.bootstrap import build
from hub.demo import demo_agreement
from hub.settings import Settings


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


async def offered_load(port: int, messages: list[bytes], rate: float, connections: int = 4) -> list[float]:
    clients = [await MllpClient.connect("127.0.0.1", port) for _ in range(connections)]
    locks = [asyncio.Lock() for _ in clients]
    latencies: list[float] = []
    origin = time.perf_counter() + 0.2

    async def one(i: int, message: bytes) -> None:
        scheduled = origin + i / rate
        await asyncio.sleep(max(0.0, scheduled - time.perf_counter()))
        async with locks[i % connections]:
            ack = await clients[i % connections].send(message)
        assert b"MSA|AA" in ack, ack[:200]
        latencies.append((time.perf_counter() - scheduled) * 1000)

    await asyncio.gather(*(one(i, m) for i, m in enumerate(messages)))
    for client in clients:
        await client.close()
    return latencies


async def reads(base: str, token: str, patients: list[str], seconds: float, clients: int = 50) -> list[float]:
    latencies: list[float] = []
    stop = time.perf_counter() + seconds
    rng = random.Random(1)
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(
        base_url=base, headers={"Authorization": f"Bearer {token}"}, limits=limits, timeout=30
    ) as http:

        async def client() -> None:
            while time.perf_counter() < stop:
                started = time.perf_counter()
                response = await http.get(f"/fhir/Patient/{rng.choice(patients)}/$everything")
                assert response.status_code == 200, response.text[:200]
                latencies.append((time.perf_counter() - started) * 1000)

        await asyncio.gather(*(client() for _ in range(clients)))
    return latencies


async def main(rate: float, seconds: float, read_seconds: float) -> dict[str, object]:
    messages = traffic(int(rate * seconds))
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp)
        services = build(Settings(data_dir=data))
        services.agreements.load(demo_agreement(make_locality(people=1)), at=datetime.now(UTC))
        secret = services.secrets.token
        services.engine.dispose()
        with HubProcess(data) as hub:
            await hub.ready()
            assert hub.proc
            warm = int(rate * 60)
            sender = asyncio.create_task(offered_load(hub.mllp_port, messages, rate))
            await asyncio.sleep(min(60, seconds / 2) + 12)
            start_mb = rss_mb(hub.proc.pid)
            acks = await sender
            while hub.applied() < len(messages):
                await asyncio.sleep(0.5)
            end_mb = rss_mb(hub.proc.pid)
            token = issue_token(secret, org="Y90001", role="clinician", now=datetime.now(UTC))
            import sqlalchemy as sa

            engine = sa.create_engine(f"sqlite:///{data / 'carehub.db'}")
            with engine.connect() as conn:
                patients = list(conn.scalars(sa.text("select id from record_resource where resource_type='Patient'")))
            engine.dispose()
            read_ms = await reads(f"http://127.0.0.1:{hub.http_port}", token, patients, read_seconds)
    return {
        "bench": "load",
        "offered_msgs_per_s": rate,
        "seconds": seconds,
        "messages": len(messages),
        "warm_up_messages": warm,
        "ack_p50_ms": round(statistics.median(acks), 2),
        "ack_p99_ms": round(percentile(acks, 99), 2),
        "rss_mb_after_warm_up": round(start_mb, 1),
        "rss_mb_at_end": round(end_mb, 1),
        "rss_growth": round(end_mb / start_mb - 1, 3),
        "rss_growth_limit": 0.10,
        "read_clients": 50,
        "reads": len(read_ms),
        "reads_per_s": round(len(read_ms) / read_seconds, 1),
        "read_p50_ms": round(statistics.median(read_ms), 1),
        "read_p99_ms": round(percentile(read_ms, 99), 1),
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rate", type=float, default=50.0)
    parser.add_argument("--seconds", type=float, default=600.0)
    parser.add_argument("--read-seconds", type=float, default=30.0)
    ns = parser.parse_args()
    figures = asyncio.run(main(ns.rate, ns.seconds, ns.read_seconds))
    emit(figures, command=" ".join(["python -m bench.load", *sys.argv[1:]]))
