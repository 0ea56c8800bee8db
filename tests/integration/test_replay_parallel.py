"""Replay on several worker processes (hub.replay_parallel) against the one-process replay, on a real
broker and real SQLite files.

Each test picks person keys by the partition the producer puts them on (partition mod 2 is the
worker that reads them when there are two), so that a dependence between partitions lands across
workers, or deliberately does not.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import signal
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
import sqlalchemy as sa
from aiokafka.partitioner import DefaultPartitioner

from hub import replay_machine
from hub.core.ports import RecordEvent
from hub.core.record import MERGED, SHARED_KINDS
from hub.replay import replay
from hub.replay_parallel import log_extent
from hub.store.database import open_engine
from hub.store.hashing import record_hash
from schemas.events.encounter import ENCOUNTER_ADMITTED
from schemas.topics import EVENTS
from tests.conftest import TansuProcess
from tests.integration.test_crash_safety import produce, reference_hash, the_events

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(300)]
T0 = datetime(2026, 10, 5, 9, 0, tzinfo=UTC)
PRACTICE = "6e4a5b4c-0000-5000-8000-00000000a001"


def worker_of(key: str) -> int:
    return partition_of(key) % 2


def partition_of(key: str) -> int:
    partitions = list(range(EVENTS.partitions))
    return int(DefaultPartitioner()(key.encode(), partitions, partitions))


def keys(same_worker: bool, prefix: str) -> tuple[str, str]:
    """Two person keys read by the same worker (on one partition, so in log order), or by different
    workers (partition mod 2 differs)."""
    first = f"{prefix}{0:028x}"
    for n in range(1, 500):
        other = f"{prefix}{n:028x}"
        if same_worker and partition_of(other) == partition_of(first):
            return first, other
        if not same_worker and partition_of(other) % 2 != partition_of(first) % 2:
            return first, other
    raise AssertionError("no such pair of keys")


def patient(key: str, **extra: Any) -> dict[str, Any]:
    return {"resourceType": "Patient", "id": key, "name": [{"family": "TEST"}], **extra}


def encounter(eid: str, key: str) -> dict[str, Any]:
    return {"resourceType": "Encounter", "id": eid, "status": "in-progress", "subject": {"reference": f"Patient/{key}"}}


ODS = {"system": "https://fhir.nhs.uk/Id/ods-organization-code", "value": "Y90001"}


def practice(name: str) -> dict[str, Any]:
    return {"resourceType": "Organization", "id": PRACTICE, "identifier": [ODS], "name": name}


def event(n: int, key: str, *resources: dict[str, Any], kind: str = ENCOUNTER_ADMITTED.type) -> RecordEvent:
    bundle = {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": r} for r in resources]}
    return RecordEvent(f"evt-{n:04d}", kind, "urn:ods:RZZ", T0 + timedelta(hours=n), key, bundle)


def tables(engine: sa.Engine) -> dict[str, list[tuple[Any, ...]]]:
    """Every row the replay wrote, beyond what `record hash` covers (event times, identifiers). For
    reference data the event that first wrote it is whichever was read first, so it is left out."""
    with engine.connect() as conn:
        resources = [
            (*row[:5], None if row[0] in SHARED_KINDS else row[5], row[6])
            for row in conn.exec_driver_sql(
                "SELECT resource_type, id, person_key, version_id, event_time, source_event_id, content"
                " FROM record_resource ORDER BY resource_type, id"
            )
        ]
        rest = {
            t: [tuple(r) for r in conn.exec_driver_sql(f"SELECT * FROM {t} ORDER BY {order}")]  # noqa: S608
            for t, order in (("record_identifier", "1, 2, 3, 4"), ("processed_event", "1, 2"))
        }
    return {"record_resource": resources, **rest}


def merge_event(n: int, survivor: str, retired: str) -> RecordEvent:
    """An A40 as the mapper gives it: the survivor replaces the retired identity."""
    replaces = [{"other": {"reference": f"Patient/{retired}"}, "type": "replaces"}]
    replaced_by = [{"other": {"reference": f"Patient/{survivor}"}, "type": "replaced-by"}]
    return event(
        n, survivor, patient(survivor, link=replaces), patient(retired, active=False, link=replaced_by), kind=MERGED
    )


async def replayed(tmp: Path, bootstrap: str, name: str, workers: int) -> tuple[Any, tuple[str, int, int], sa.Engine]:
    engine = open_engine(f"sqlite:///{tmp / name}")
    result = await replay(bootstrap, engine, workers=workers)
    return result, record_hash(engine), engine


async def test_two_workers_give_the_one_process_record(tmp_path: Path, tansu: TansuProcess) -> None:
    events = the_events(3000)  # ADT traffic with merges (within a person's partition) and shared practices
    await produce(tansu.bootstrap, events)
    parallel, digest, engine = await replayed(tmp_path, tansu.bootstrap, "two.db", 2)
    assert parallel.workers == 2
    assert (parallel.events, parallel.applied, parallel.skipped) == (3000, 3000, 0)
    assert digest == reference_hash(tmp_path, events)
    one, one_digest, one_engine = await replayed(tmp_path, tansu.bootstrap, "one.db", 1)
    assert one.workers == 1
    assert one_digest == digest
    assert parallel.resources == one.resources == digest[1]
    assert tables(engine) == tables(one_engine)
    assert len(tables(engine)["record_identifier"]) > 3000  # identifiers of reference data too
    with engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar_one() == "wal"
        assert conn.exec_driver_sql("PRAGMA integrity_check").scalar_one() == "ok"
        # content is stored as text, exactly as the live consumer stores it
        kinds = conn.exec_driver_sql("SELECT DISTINCT typeof(content) FROM record_resource").scalars().all()
        assert kinds == ["text"]
    indexes = {i["name"] for t in ("record_resource", "record_identifier") for i in sa.inspect(engine).get_indexes(t)}
    assert {"ix_record_resource_person_key", "ix_record_identifier_lookup"} <= indexes


async def test_the_same_practice_on_both_workers_is_one_version_naming_the_earliest_event(
    tmp_path: Path, tansu: TansuProcess
) -> None:
    a, b = keys(same_worker=False, prefix="a1")
    events = [
        event(1, b, patient(b), practice("HELMSLEY SURGERY")),
        event(2, a, patient(a), practice("HELMSLEY SURGERY")),
    ]
    await produce(tansu.bootstrap, list(reversed(events)))
    parallel, digest, engine = await replayed(tmp_path, tansu.bootstrap, "two.db", 2)
    assert parallel.workers == 2
    assert digest == reference_hash(tmp_path, events)
    with engine.connect() as conn:
        version, content = conn.execute(
            sa.text("SELECT version_id, content FROM record_resource WHERE id = :id"), {"id": PRACTICE}
        ).one()
    assert version == 1
    assert orjson.loads(content)["meta"]["lastUpdated"] == events[0].time.isoformat()
    _, _, one = await replayed(tmp_path, tansu.bootstrap, "one.db", 1)
    assert tables(engine) == tables(one)  # the latest event time kept, the practice's ODS code indexed
    assert ("Organization", PRACTICE, ODS["system"], ODS["value"]) in tables(engine)["record_identifier"]


async def test_people_merged_across_workers_are_folded_again_together(tmp_path: Path, tansu: TansuProcess) -> None:
    """The retired identity has a stay of its own, on the other worker's partitions: its events
    and the survivor's are read again and folded together, the rest comes from the shards."""
    events, _, survivor, bystander = merged_across_workers()
    await produce(tansu.bootstrap, events)
    parallel, digest, engine = await replayed(tmp_path, tansu.bootstrap, "two.db", 2)
    assert (parallel.workers, parallel.refolded) == (2, 2)  # the bystander is not folded again
    _, one_digest, one = await replayed(tmp_path, tansu.bootstrap, "one.db", 1)
    assert digest == one_digest
    assert tables(engine) == tables(one)
    with engine.connect() as conn:
        owners = dict(
            conn.exec_driver_sql("SELECT id, person_key FROM record_resource WHERE resource_type = 'Encounter'").all()
        )
    assert owners == {"enc-r": survivor, "enc-r2": survivor, "enc-s": survivor, "enc-b": bystander}


@pytest.mark.postgres
async def test_people_merged_across_workers_replay_into_postgresql(
    tmp_path: Path, tansu: TansuProcess, postgres_url: str
) -> None:
    events, *_ = merged_across_workers()
    await produce(tansu.bootstrap, events)
    engine = open_engine(postgres_url)
    parallel = await replay(tansu.bootstrap, engine, workers=2)
    assert (parallel.workers, parallel.refolded) == (2, 2)
    _, one_digest, _ = await replayed(tmp_path, tansu.bootstrap, "one.db", 1)
    assert record_hash(engine) == one_digest
    engine.dispose()


def merged_across_workers() -> tuple[list[RecordEvent], str, str, str]:
    retired, survivor = keys(same_worker=False, prefix="b2")
    bystander = next(k for n in range(500) if worker_of(k := f"b3{n:030x}") == worker_of(retired))
    events = [
        event(1, retired, patient(retired), encounter("enc-r", retired)),
        event(2, survivor, patient(survivor), encounter("enc-s", survivor)),
        event(3, bystander, patient(bystander), encounter("enc-b", bystander)),
        merge_event(4, survivor, retired),
        event(5, retired, patient(retired), encounter("enc-r2", retired)),  # late news of the old identity
    ]
    return events, retired, survivor, bystander


@pytest.mark.parametrize("case", ["practice differs across workers", "one encounter on both workers"])
async def test_partitions_that_depend_on_each_other_fold_again_in_one_process(
    tmp_path: Path, tansu: TansuProcess, caplog: pytest.LogCaptureFixture, case: str
) -> None:
    one_person, other = keys(same_worker=False, prefix="b2")
    if case == "practice differs across workers":
        events = [
            event(1, one_person, patient(one_person), practice("HELMSLEY SURGERY")),
            event(2, other, patient(other), practice("HELMSLEY MEDICAL PRACTICE")),
        ]
        why = "reference data differs"
    else:
        events = [
            event(1, one_person, patient(one_person), encounter("enc-x", one_person)),
            event(2, other, patient(other), encounter("enc-x", other)),
        ]
        why = "two workers"
    await produce(tansu.bootstrap, events)
    with caplog.at_level(logging.WARNING, logger="hub.replay"):
        parallel, digest, engine = await replayed(tmp_path, tansu.bootstrap, "two.db", 2)
    assert parallel.workers == 1, "the dependence was not noticed"
    assert why in caplog.text and "folded again in one process" in caplog.text
    _, one_digest, one = await replayed(tmp_path, tansu.bootstrap, "one.db", 1)
    assert digest == one_digest
    assert tables(engine) == tables(one)
    assert parallel.events == len(events) == digest[2]
    with engine.connect() as conn:  # a load that clashed part way was rolled back, not left behind
        assert conn.exec_driver_sql("PRAGMA integrity_check").scalar_one() == "ok"
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar_one() == "wal"
    assert "ix_record_resource_person_key" in {i["name"] for i in sa.inspect(engine).get_indexes("record_resource")}


async def test_the_log_extent_counts_every_record_on_every_partition(tansu: TansuProcess) -> None:
    """How big a fold each worker will have (it decides whether workers ask for huge pages) comes
    from the high watermarks fetches report, as Tansu answers ListOffsets 'latest' wrongly."""
    assert await log_extent(tansu.bootstrap) == []  # no topic yet
    events = the_events(700)
    await produce(tansu.bootstrap, events)
    extent = await log_extent(tansu.bootstrap)
    assert len(extent) == EVENTS.partitions
    assert sum(extent) == 700
    assert sum(1 for n in extent if n) > 1  # spread over the partitions, each counted


async def test_a_merge_within_one_worker_stays_parallel(tmp_path: Path, tansu: TansuProcess) -> None:
    retired, survivor = keys(same_worker=True, prefix="c3")
    events = [
        event(1, retired, patient(retired), encounter("enc-r", retired)),
        merge_event(2, survivor, retired),
    ]
    await produce(tansu.bootstrap, events)
    parallel, digest, _ = await replayed(tmp_path, tansu.bootstrap, "two.db", 2)
    assert parallel.workers == 2
    assert digest == reference_hash(tmp_path, events)


async def test_a_merge_whose_own_patient_write_was_stale_still_counts_as_a_merge(
    tmp_path: Path, tansu: TansuProcess
) -> None:
    """On one worker: news of the retired person newer than the merge, read before it, so the
    merge's own write of the retired Patient is stale and leaves no replaced-by link. On the other:
    another person's event carrying an encounter about the retired person. Only the merge itself
    says the partitions depend on each other: all three people are folded again together."""
    retired, survivor = keys(same_worker=True, prefix="d4")
    other = next(k for n in range(500) if partition_of(k := f"e5{n:030x}") % 2 != partition_of(retired) % 2)
    merge = merge_event(3, survivor, retired)
    events = [
        event(1, retired, patient(retired), encounter("enc-r", retired)),
        event(5, retired, patient(retired, gender="female")),  # an A08 stamped after the merge, sent before it
        merge,
        event(2, other, patient(other), encounter("enc-o", retired)),
    ]
    await produce(tansu.bootstrap, events)
    parallel, digest, engine = await replayed(tmp_path, tansu.bootstrap, "two.db", 2)
    assert (parallel.workers, parallel.refolded) == (2, 3), "the merge was not noticed"
    _, one_digest, one = await replayed(tmp_path, tansu.bootstrap, "one.db", 1)
    assert digest == one_digest
    assert tables(engine) == tables(one)


async def test_a_worker_stopped_by_the_system_fails_the_replay_plainly_and_keeps_nothing(
    tmp_path: Path, tansu: TansuProcess, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The kernel's out-of-memory killer, as a worker sees it: SIGKILL, no traceback. The replay says
    what most likely happened and with what figures, before folding and after; nothing is written
    and no shard is left behind."""
    await produce(tansu.bootstrap, the_events(300))
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(replay_machine, "scratch", lambda near, events: scratch)
    monkeypatch.setattr(replay_machine, "memory_available", lambda: 1_000_000)  # 1 MB: too little for 300
    engine = open_engine(f"sqlite:///{tmp_path / 'target.db'}")
    caplog.set_level(logging.WARNING, logger="hub.replay")
    running = asyncio.create_task(replay(tansu.bootstrap, engine, workers=2))
    killed = False
    while not killed and not running.done():
        for child in multiprocessing.active_children():
            if child.name == "carehub-replay-1" and child.pid:
                os.kill(child.pid, signal.SIGKILL)
                killed = True
        await asyncio.sleep(0.005)
    assert killed, "the replay ended before its worker could be stopped"
    with pytest.raises(RuntimeError) as failure:
        await running
    said = str(failure.value)
    assert said.startswith("replay worker 1 failed: killed by SIGKILL, most likely by the system for want of memory")
    assert "folding about 300 events takes about 0.0 GB; 0.0 GB was available at the start" in said
    assert "folding up to the log's 300 events takes about 0.0 GB of memory and 0.0 GB is available" in caplog.text
    assert not [c for c in multiprocessing.active_children() if c.name.startswith("carehub-replay-")]
    assert list(scratch.iterdir()) == []
    assert record_hash(engine)[1:] == (0, 0)
