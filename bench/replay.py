"""bench/replay: replay throughput beside raw aiokafka consumption of the same topic, same run.

A pool of real mapped ADT events is multiplied into N distinct events (new event ids, person keys
and encounter ids per copy, by rewriting the JSON bytes) and produced to a fresh embedded broker.
Then (a) raw aiokafka reads the whole topic (no group, up to the high watermark, with the settings
every reader of the log uses: `hub.replay.read_log`), before the replay and again after it, and (b)
`replay` folds it into a fresh SQLite record and writes it in bulk. Target: (b) at least 25% of (a),
the mean of the two raw readings (these VMs' speed drifts over minutes; both are reported). Also
timed: the extra pass a log needs when merges cross workers (the log read again, the people merged
across folded together), with --one-process the replay on one process, and with --compare-batches
raw reading at other records per getmany (why READ_BATCH is what it is).

Run: `.venv/bin/python -m bench.replay --events 1000000`.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import orjson
from aiokafka import AIOKafkaProducer

from adapters.hl7v2.synthetic import adt_traffic, make_locality
from adapters.hl7v2.to_fhir import map_message
from bench.results import emit
from hub.kafka import create_topics, embedded_broker
from hub.replay import READ_BATCH, FoldUnitOfWork, _fold, read_log, replay
from hub.store.database import open_engine
from schemas.envelope import Envelope
from schemas.topics import EVENTS


def pool(size: int) -> list[tuple[Envelope, list[str]]]:
    """Mapped events and the ids in each that a copy must make its own."""
    traffic = adt_traffic(
        make_locality(people=max(500, size // 2), seed=9), start=datetime(2026, 9, 1, tzinfo=UTC), seed=9
    )
    found = []
    for _, raw in traffic:
        for m in map_message(raw, key_secret=b"bench-replay"):
            ids = [m.person_key] + [
                e["resource"]["id"]
                for e in m.payload["entry"]
                if e["resource"]["resourceType"] in ("Encounter", "Patient")
            ]
            envelope = Envelope(
                id=m.event_id, source=m.source, type=m.event_type, time=m.event_time, subject=m.person_key,
                data=orjson.dumps(m.payload),
            )  # fmt: skip
            found.append((envelope, sorted(set(ids))))
            if len(found) == size:
                return found
    return found


def copies(templates: list[tuple[Envelope, list[str]]], n: int) -> list[tuple[bytes, bytes, list[tuple[str, bytes]]]]:
    """n distinct (key, value, headers): copy k rewrites each id's last 6 hex digits with k."""
    out = []
    for i in range(n):
        envelope, ids = templates[i % len(templates)]
        k = i // len(templates)
        data, subject = envelope.data, envelope.subject
        if k:
            for old in ids:
                new = old[:-6] + f"{k:06x}"
                data = data.replace(old.encode(), new.encode())
                subject = subject.replace(old, new)
        headers = envelope.kafka_headers() | {"ce_id": str(uuid.UUID(int=i + 1)), "ce_subject": subject}
        out.append((subject.encode(), data, [(h, v.encode()) for h, v in headers.items()]))
    return out


async def produce(bootstrap: str, records: list[tuple[bytes, bytes, list[tuple[str, bytes]]]]) -> None:
    await create_topics(bootstrap)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=20, max_batch_size=1_048_576)
    await producer.start()
    try:
        pending = []
        for key, value, headers in records:
            pending.append(await producer.send(EVENTS.name, value, key=key, headers=headers))
            if len(pending) >= 20_000:
                await asyncio.gather(*pending)
                pending = []
        await asyncio.gather(*pending)
    finally:
        await producer.stop()


async def raw_consume(bootstrap: str, batch: int = READ_BATCH) -> tuple[int, float]:
    started = time.perf_counter()
    count = 0
    async for records in read_log(bootstrap, batch=batch):
        count += len(records)
    return count, time.perf_counter() - started


async def main(n: int, templates: int, one_process: bool, batches: list[int]) -> dict[str, object]:
    records = copies(pool(templates), n)
    records_subject = records[0][0].decode()
    async with embedded_broker() as bootstrap:
        await produce(bootstrap, records)
        del records
        raw_count, raw_seconds = await raw_consume(bootstrap)
        with tempfile.TemporaryDirectory() as tmp:
            engine = open_engine(f"sqlite:///{Path(tmp) / 'replay.db'}")
            result = await replay(bootstrap, engine)
            engine.dispose()
            raw_after_count, raw_after_seconds = await raw_consume(bootstrap)
            # what a log whose merges cross workers costs on top: the log read again, the people
            # merged across folded together (here one person, so the figure is nearly all reading)
            started = time.perf_counter()
            await _fold(bootstrap, FoldUnitOfWork(), None, None, None, subjects={records_subject})
            again = time.perf_counter() - started
            one = None
            if one_process:
                engine = open_engine(f"sqlite:///{Path(tmp) / 'one.db'}")
                one = await replay(bootstrap, engine, workers=1)
                engine.dispose()
        by_batch: dict[int, list[int]] = {b: [] for b in batches}
        for _ in range(2):  # alternating, twice: the VMs' speed drifts over minutes
            for size in batches:
                count, seconds = await raw_consume(bootstrap, size)
                by_batch[size].append(round(count / seconds))
    raw_before, raw_after = raw_count / raw_seconds, raw_after_count / raw_after_seconds
    raw_rate = (raw_before + raw_after) / 2
    rate = result.events / result.seconds
    extra: dict[str, object] = {}
    if batches:
        extra["raw_events_per_s_by_records_per_getmany"] = {str(b): rates for b, rates in by_batch.items()}
    if one is not None:
        extra["one_process_events_per_s"] = round(one.events / one.seconds)
        extra["one_process_ratio_vs_raw"] = round(one.events / one.seconds / raw_rate, 3)
    return {
        "bench": "replay",
        "events": result.events,
        "applied": result.applied,
        "resources": result.resources,
        "raw_aiokafka_events_per_s": round(raw_rate),
        "raw_before_and_after_events_per_s": [round(raw_before), round(raw_after)],
        "replay_events_per_s": round(rate),
        "replay_seconds": round(result.seconds, 1),
        "replay_workers": result.workers,
        "merged_across_workers_extra_s": round(again, 1),
        "ratio_vs_raw": round(rate / raw_rate, 3),
        "target_ratio": 0.25,
        **extra,
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--templates", type=int, default=5_000)
    parser.add_argument("--one-process", action="store_true", help="also time the one-process replay, same run")
    parser.add_argument(
        "--compare-batches",
        default="",
        help="also read the topic raw at these records per getmany, comma-separated (e.g. 5000,500,250,100)",
    )
    ns = parser.parse_args()
    batches = [int(b) for b in ns.compare_batches.split(",") if b.strip()]
    figures = asyncio.run(main(ns.events, ns.templates, ns.one_process, batches))
    emit(figures, command=" ".join(["python -m bench.replay", *sys.argv[1:]]))
