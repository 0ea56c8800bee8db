"""bench/enforcement: end-to-end ingest with information-sharing enforcement on versus off, same run.

Each side: its own embedded broker and `carehub up` process, the demo locality's agreement and a
subscription per GP practice (registered patients, full resources, to the practice's topic), N ADT
messages over 8 MLLP connections, timed until the record has applied every event AND the delivery
consumer has committed past every event (so every delivery was decided, recorded in the ledger and
published). Off means CAREHUB_POLICY__ENFORCE=false: deliveries and ledger entries still happen,
only the decisions are skipped. Target: on keeps at least 80% of off. The same run also reports
the policy decision point's own rate (bench/policy's decisions per second over mapped ADT).

Run: `.venv/bin/python -m bench.enforcement --messages 2000`.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from aiokafka import AIOKafkaConsumer, TopicPartition

from adapters.hl7v2.synthetic import make_locality
from bench.ingest import HubProcess, _send_all, traffic
from bench.policy import decisions_per_second, record
from bench.results import emit
from hub.bootstrap import build
from hub.demo import demo_agreement
from hub.kafka import embedded_broker
from hub.settings import Settings
from schemas.registry import REGISTRY
from schemas.subscriptions import Subscription
from schemas.topics import EVENTS

ADT = tuple(t for t in REGISTRY if ".encounter." in t or ".patient." in t)


async def committed(bootstrap: str, group: str) -> int:
    """How far `group` has committed on the events topic, summed over partitions (OffsetFetch from
    an assigned, never-subscribed consumer: it reads the group's offsets without joining it)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    await consumer.start()
    try:
        partitions = [TopicPartition(EVENTS.name, p) for p in range(EVENTS.partitions)]
        consumer.assign(partitions)
        offsets = [await consumer.committed(tp) for tp in partitions]
    finally:
        await consumer.stop()
    return sum(o for o in offsets if o and o > 0)


async def one_side(messages: list[bytes], *, enforce: bool, tmp: Path) -> tuple[float, int]:
    side = "on" if enforce else "off"
    data = tmp / side
    services = build(Settings(data_dir=data))
    locality = make_locality(people=1, seed=1)
    services.agreements.load(demo_agreement(locality), at=datetime.now(UTC))
    for practice in locality.practices:
        services.subscriptions.save(Subscription(id=f"sub-{practice.ods.lower()}", org=practice.ods, events=ADT))
    services.engine.dispose()
    async with embedded_broker() as bootstrap:
        env = {
            "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
            "CAREHUB_POLICY__ENFORCE": str(enforce).lower(),
            "CAREHUB_KAFKA__GROUP_ID": f"bench-{side}-record",
        }
        with HubProcess(data, env=env) as hub:
            await hub.ready()
            await asyncio.sleep(12)  # three consumer groups join (about 5 s each on this broker)
            started = time.perf_counter()
            shares = [messages[i::8] for i in range(8)]
            acks = await asyncio.gather(*(_send_all(hub.mllp_port, s) for s in shares))
            accepted = sum(1 for batch in acks for a in batch if b"MSA|AA" in a)
            deadline = time.perf_counter() + 600
            while True:
                applied = hub.applied()
                delivered = await committed(bootstrap, f"bench-{side}-delivery")
                if applied >= accepted and delivered >= applied:
                    break
                if time.perf_counter() > deadline:
                    raise RuntimeError(f"{side}: applied {applied}, delivery consumer at {delivered} of {accepted}")
                await asyncio.sleep(0.1)
            rate = len(messages) / (time.perf_counter() - started)
    return rate, applied


async def main(n: int, decisions: int) -> dict[str, object]:
    store, _ = record(500)
    per_second = decisions_per_second(store, decisions)
    messages = traffic(n)
    offs, ons = [], []
    for round_ in range(2):  # interleaved, best of two each: drift on a shared machine hits both alike
        with tempfile.TemporaryDirectory() as tmp:
            off, events = await one_side(messages, enforce=False, tmp=Path(tmp))
            on, _ = await one_side(messages, enforce=True, tmp=Path(tmp))
        offs.append(off)
        ons.append(on)
        print(f"round {round_ + 1}: off {off:.1f} msg/s, on {on:.1f} msg/s", file=sys.stderr)
    off, on = max(offs), max(ons)
    return {
        "bench": "enforcement",
        "messages": n,
        "events": events,
        "subscriptions": 5,
        "decisions_per_s": round(per_second),
        "msgs_per_s_enforcement_off": round(off, 1),
        "msgs_per_s_enforcement_on": round(on, 1),
        "ratio_on_vs_off": round(on / off, 3),
        "target_ratio": 0.8,
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--decisions", type=int, default=200_000)
    ns = parser.parse_args()
    figures = asyncio.run(main(ns.messages, ns.decisions))
    emit(figures, command=" ".join(["python -m bench.enforcement", *sys.argv[1:]]))
