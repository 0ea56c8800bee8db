"""bench/policy: the cost of information-sharing enforcement, measured against itself switched off.

(a) decisions per second of hub.core.policy.decide alone, over resources from real mapped ADT;
(b) FHIR reads per second over a real socket (uvicorn, httpx, 16 concurrent clients, every read also
written to the SQLite disclosure ledger) with enforcement on and off, same data, same run;
Ingest with enforcement on versus off (every subscription delivery decided) is bench/enforcement,
which reports this decision rate beside it in the same run.

Run: `.venv/bin/python -m bench.policy`.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx
import uvicorn

from adapters.hl7v2.synthetic import adt_traffic, make_locality
from adapters.hl7v2.to_fhir import map_message
from bench.results import emit
from hub.api.app import create_app
from hub.api.auth import TokenVerifier, issue_token
from hub.core.policy import Asker, ConsentRule, decide
from hub.core.ports import RecordEvent
from hub.core.record import apply_events
from hub.demo import demo_agreement
from hub.kafka import free_port
from hub.store.agreements import PolicySource, SqlAgreements
from hub.store.database import open_engine
from hub.store.ledger import SqlLedger
from hub.store.memory import MemoryRecordStore

SECRET = b"bench-secret-bench-secret-bench-secret"
START = datetime(2026, 10, 1, tzinfo=UTC)


def record(people: int) -> tuple[MemoryRecordStore, list[str]]:
    locality = make_locality(people=people, seed=1)
    store = MemoryRecordStore()
    events = [
        RecordEvent(m.event_id, m.event_type, m.source, m.event_time, m.person_key, m.payload)
        for _, raw in adt_traffic(locality, start=START, seed=1)
        for m in map_message(raw, key_secret=SECRET)
    ]
    with store.unit_of_work() as uow:
        apply_events(uow, events)
        uow.commit()
    patients = sorted({e.subject for e in events})
    return store, patients


def decisions_per_second(store: MemoryRecordStore, n: int) -> float:
    agreements = [demo_agreement(make_locality(people=1, seed=1))]
    resources = [r.content for r in store.resources.values()]
    consents = [ConsentRule(id="c", person_key="nobody", deny=True)]
    asker = Asker("Y90001", "clinician", datetime.now(UTC))
    started = time.perf_counter()
    for i in range(n):
        decide(asker, resources[i % len(resources)], agreements, consents)
    return n / (time.perf_counter() - started)


async def reads_per_second(store: MemoryRecordStore, patients: list[str], *, enforce: bool, n: int, tmp: Path) -> float:
    engine = open_engine(f"sqlite:///{tmp / ('on' if enforce else 'off')}.db")
    agreements = SqlAgreements(engine)
    agreements.load(demo_agreement(make_locality(people=1, seed=1)), at=datetime.now(UTC))
    reader = store.reader()
    policy = PolicySource(agreements, reader) if enforce else None
    app = create_app(reader, TokenVerifier(SECRET), SqlLedger(engine), policy)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off"))
    task = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.02)
    token = issue_token(SECRET, org="Y90001", role="clinician", now=datetime.now(UTC))
    headers = {"Authorization": f"Bearer {token}"}
    paths = [f"/fhir/Patient/{p}/$everything" for p in patients]
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", headers=headers, timeout=30) as http:
        queue = list(range(n))

        async def worker() -> None:
            while queue:
                i = queue.pop()
                response = await http.get(paths[i % len(paths)])
                assert response.status_code == 200, response.text

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(16)))
        rate = n / (time.perf_counter() - started)
    server.should_exit = True
    await task
    engine.dispose()
    return rate


async def main(people: int, reads: int, decisions: int) -> dict[str, object]:
    store, patients = record(people)
    per_second = decisions_per_second(store, decisions)
    with tempfile.TemporaryDirectory() as tmp:
        await reads_per_second(store, patients, enforce=True, n=50, tmp=Path(tmp))  # warm up
        offs, ons = [], []
        for _ in range(2):  # interleaved, best of two each: the machine's drift hits both alike
            offs.append(await reads_per_second(store, patients, enforce=False, n=reads, tmp=Path(tmp)))
            ons.append(await reads_per_second(store, patients, enforce=True, n=reads, tmp=Path(tmp)))
        off, on = max(offs), max(ons)
    return {
        "bench": "policy",
        "people": people,
        "resources": len(store.resources),
        "decisions_per_s": round(per_second),
        "everything_reads": reads,
        "reads_per_s_enforcement_off": round(off, 1),
        "reads_per_s_enforcement_on": round(on, 1),
        "ratio_on_vs_off": round(on / off, 3),
        "target_ratio": 0.8,
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--people", type=int, default=500)
    parser.add_argument("--reads", type=int, default=2000)
    parser.add_argument("--decisions", type=int, default=200_000)
    ns = parser.parse_args()
    figures = asyncio.run(main(ns.people, ns.reads, ns.decisions))
    emit(figures, command=" ".join(["python -m bench.policy", *sys.argv[1:]]))
