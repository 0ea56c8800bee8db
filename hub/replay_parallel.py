"""Replay on several cores: the log's partitions folded in worker processes, then loaded in bulk.

One person's events share a partition (events are keyed by person), so what each partition adds to
the record is, nearly always, independent of the others. Each worker process reads its share of
the partitions (partition p goes to worker p mod N), folds them with the record's own rules, exactly
as the one-process replay does, and writes what it folded to a shard: a SQLite file with the
record's tables and no secondary indexes, reference data in a table of its own. The shards are then
loaded into the target in one transaction (hub.replay_load: on SQLite, INSERT ... SELECT from the
attached shards, read through a memory map: no Python per row). What the workers ask of the
machine (memory, scratch space, huge pages) is in hub.replay_machine.

Partitions can depend on each other in three ways. If one is found, nothing is kept of the load
and the caller folds the log again in one process, which gives the record the live consumer gives
(slower; the same answer as before this module existed):

    merges          a person merged away (A40) on one worker's partitions has resources on another's
                    (looked for before loading)
    shared ids      one resource id (other than reference data) or one event id on two workers'
                    partitions (the target's primary keys refuse the second; the load rolls back)
    reference data  a practice, practitioner or location whose content differs between workers, or
                    changed on one of them, so that its version would depend on the order partitions
                    are read in (looked for before loading)

Reference data said the same on several workers' partitions is reconciled as the fold itself does
it (hub.core.record): one version, meta naming the earliest event that said it, the latest event
time kept.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import multiprocessing
import os
import signal
import sqlite3
import sys
import tempfile
import time
import traceback
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from aiokafka import AIOKafkaConsumer

from hub import replay_machine as machine
from hub.core.ports import RecordEvent, StoredResource
from hub.core.record import SHARED_KINDS
from hub.kafka import high_watermarks, partitions_of
from hub.replay import Progress, ReplayResult, _fold
from hub.replay_fold import FoldUnitOfWork
from hub.replay_load import COLUMNS, TABLES, _tangled_in, load, personal
from hub.replay_write import _chunks, _same, in_key_order, in_thread, resource_row, sqlite_dialect

log = logging.getLogger(__name__)
_POLL_S = 0.2
MAX_WORKERS = 8  # each shard is an ATTACHed database; SQLite allows 10 by default


class LinkedFold(FoldUnitOfWork):
    """A worker's fold, which also notes the people each event touched beyond its own subject (a
    merge's retired person, a resource about someone else): the links along which partitions can
    depend on each other."""

    def __init__(self) -> None:
        super().__init__()
        self.links: set[tuple[str, str]] = set()
        self._subjects: dict[str, str] = {}
        self._touched: set[str] = set()  # filled by FoldUnitOfWork.put

    def batch(self, events: Sequence[RecordEvent]) -> None:
        self._subjects = {e.id: e.subject for e in events}

    def of_person(self, person_key: str, kind: str | None = None) -> list[StoredResource]:
        self._touched.add(person_key)
        return super().of_person(person_key, kind)

    def mark_processed(self, event_id: str) -> None:
        super().mark_processed(event_id)
        touched = self._touched
        if not touched:
            return
        subject = self._subjects.get(event_id, "")
        if len(touched) > 1 or subject not in touched:  # (most events touch their own subject only)
            self.links.update((subject, key) for key in touched if key != subject)
        touched.clear()


async def log_extent(bootstrap: str, wait_s: float = 5.0) -> list[int]:
    """How many records each partition of the events topic holds (none if it does not exist yet):
    its high watermark, as a fetch reports it, less its first offset. (Tansu answers ListOffsets
    'latest' wrongly, so the watermark comes from a fetch, of a megabyte or so a partition.)"""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_partition_fetch_bytes=1024 * 1024,  # (a broker that does not return a bigger first batch anyway)
    )
    try:  # (started inside: stopped even when it cannot start)
        await consumer.start()
        partitions = await partitions_of(consumer)
        if not partitions:
            return []
        first = await consumer.beginning_offsets(partitions)
        ends = await high_watermarks(consumer, partitions, wait_s)
        return [max(0, ends[tp] - first[tp]) for tp in partitions]
    finally:
        await consumer.stop()


async def replay_in_parallel(
    bootstrap: str,
    engine: sa.Engine,
    workers: int,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    progress: Progress | None = None,
    huge_pages: bool = False,
    events: int = 0,
    received_by: datetime | None = None,
) -> ReplayResult | str:
    """The replay on `workers` processes, or why it cannot be (partitions that depend on each other:
    then nothing has been written and the caller folds in one process). `events`: about how many
    the log holds, for the room the shards need."""
    started = time.perf_counter()
    target = engine.url.database if engine.dialect.name == "sqlite" else None
    near = Path(target).parent if target and target != ":memory:" else None
    with tempfile.TemporaryDirectory(prefix="carehub-replay-", dir=machine.scratch(near, events)) as tmp:
        paths = [Path(tmp) / f"shard-{i}.db" for i in range(workers)]
        counts = await _run_workers(bootstrap, paths, since, until, progress, huge_pages, events, received_by)
        tangled = await asyncio.to_thread(_tangled_in, paths)
        together = FoldUnitOfWork()
        if tangled:  # their events again, read from every partition, folded together here
            log.info("replay: %d people merged across workers are folded again together", len(tangled))
            gc.disable()
            try:
                await _fold(bootstrap, together, since, until, None, subjects=tangled, received_by=received_by)
            finally:
                gc.enable()
        outcome = await in_thread(load, engine, paths, tangled, together)
    if isinstance(outcome, str):
        return outcome
    read, applied, skipped, left_out = (sum(c[k] for c in counts) for k in range(4))
    seconds = time.perf_counter() - started
    return ReplayResult(
        read, applied, skipped, outcome, seconds, workers=workers, refolded=len(tangled), left_out=left_out
    )


async def _run_workers(
    bootstrap: str,
    paths: Sequence[Path],
    since: datetime | None,
    until: datetime | None,
    progress: Progress | None,
    huge_pages: bool = False,
    events: int = 0,
    received_by: datetime | None = None,
) -> list[tuple[int, int, int, int]]:
    # spawn, not fork: the caller may have threads (an event loop's executor, a web server's)
    available = machine.memory_available()  # for what to say if the system stops a worker for want of it
    context = multiprocessing.get_context("spawn")
    counters = [context.Value("q", 0, lock=False) for _ in paths]
    processes = [
        context.Process(
            target=_worker,
            args=(bootstrap, index, len(paths), since, until, str(path), counters[index], received_by),
            name=f"carehub-replay-{index}",
            daemon=True,
        )
        for index, path in enumerate(paths)
    ]
    stopped: set[int] = set()  # workers stopped here, not failed on their own
    try:
        # (read by each worker as it starts)
        with machine.environment(machine.worker_environment() if huge_pages else {}):
            for process in processes:
                process.start()
        while any(p.is_alive() for p in processes):
            await asyncio.sleep(_POLL_S)
            if progress:
                progress(sum(c.value for c in counters), 0)
            if any(p.exitcode for p in processes):
                break  # one failed: the others' work is no use, stop them now
    finally:
        for index, process in enumerate(processes):
            if process.is_alive():  # one failed, or the replay was cancelled (Ctrl-C)
                process.terminate()
                stopped.add(index)
            if process.pid is not None:
                process.join()
    failed = [(i, p.exitcode) for i, p in enumerate(processes) if p.exitcode != 0]
    if failed:
        # the worker that failed, not one stopped because it had (a traceback first: it says most)
        index, code = min(failed, key=lambda f: (f[0] in stopped, not (f[1] and f[1] > 0), f[0]))
        raise RuntimeError(f"replay worker {index} failed: {_error_of(paths[index], code, events, available)}")
    return [_shard_counts(path) for path in paths]


def _error_of(path: Path, code: int | None, events: int = 0, available: int | None = None) -> str:
    """What stopped a worker: the last line of its traceback, or the signal that killed it (SIGKILL,
    on Linux, is nearly always the kernel's out-of-memory killer: say so, with the figures)."""
    error = path.with_suffix(".error")
    lines = error.read_text().strip().splitlines() if error.exists() else []
    if lines:
        return lines[-1]
    if code is None or code >= 0:
        return f"exit code {code}"
    try:
        name = signal.Signals(-code).name
    except ValueError:
        name = f"signal {-code}"
    if -code != getattr(signal, "SIGKILL", 9):
        return f"killed by {name}"
    figures = ""
    if events and available is not None:
        need, had = machine.gb(events * machine.FOLD_BYTES_PER_EVENT), machine.gb(available)
        figures = f" (folding about {events:,} events takes about {need}; {had} was available at the start)"
    return (
        f"killed by {name}, most likely by the system for want of memory{figures}: a replay holds the whole "
        "record in memory until it writes it; run it where more memory is free"
    )


def _worker(
    bootstrap: str,
    index: int,
    workers: int,
    since: datetime | None,
    until: datetime | None,
    path: str,
    counter: Any,
    received_by: datetime | None = None,
) -> None:
    """One worker process: fold partitions p with p mod workers == index, write them to a shard."""
    try:
        gc.disable()  # as in the one-process replay: the fold only grows
        fold = LinkedFold()

        def seen(read: int, _expected: int) -> None:
            counter.value = read

        started = time.perf_counter()
        folding = _fold(
            bootstrap, fold, since, until, seen, only=lambda p: p % workers == index, received_by=received_by
        )
        counts = asyncio.run(folding)
        write_shard(Path(path), fold, counts, folded_s=time.perf_counter() - started)
    except BaseException:
        Path(path).with_suffix(".error").write_text(traceback.format_exc())
        raise
    # the shard is written and closed: exit now, without freeing the fold object by object (millions
    # of them, scattered over gigabytes: seconds of work for nothing)
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(AttributeError, OSError, ValueError):  # none, or closed
            stream.flush()
    os._exit(0)


def write_shard(path: Path, fold: LinkedFold, counts: tuple[int, int, int, int], folded_s: float = 0.0) -> None:
    """What one worker folded: the record's three tables (no keys; reference data in a table of its
    own, `shared`, as the load reconciles it apart), the people it holds resources for or links to,
    the people merged away on its partitions, the links, its counts and how long it took to fold
    and to write."""
    started = time.perf_counter()
    dialect = sqlite_dialect()
    db = sqlite3.connect(path, isolation_level=None)
    try:
        db.execute("PRAGMA page_size=16384")  # ~900-byte rows: fewer pages to fill and hand to the OS
        db.execute("PRAGMA journal_mode=OFF")
        db.execute("PRAGMA synchronous=OFF")
        db.execute("BEGIN")
        for table in TABLES:  # no keys, no indexes: the target's primary keys catch any clash
            db.execute(f"CREATE TABLE {table.name} ({', '.join(c.name for c in table.columns)})")
        db.execute(f"CREATE TABLE shared ({COLUMNS})")  # reference data, apart: it is reconciled
        db.execute("CREATE TABLE person (person_key TEXT PRIMARY KEY)")
        db.execute("CREATE TABLE retired (person_key TEXT PRIMARY KEY)")
        db.execute("CREATE TABLE link (a TEXT, b TEXT)")
        db.execute(
            "CREATE TABLE counts (read INTEGER, applied INTEGER, skipped INTEGER, left_out INTEGER, "
            "folded_s REAL, written_s REAL)"
        )
        for sql, rows in _chunks(fold, dialect, 20_000, content=_same, kinds=personal):
            db.executemany(sql, rows)
        row = resource_row(fold, dialect, content=_same)
        shared = in_key_order(fold, SHARED_KINDS.__contains__)
        db.executemany("INSERT INTO shared VALUES (?, ?, ?, ?, ?, ?, ?)", (row(key) for key in shared))
        people = {k for k, held in fold.by_person.items() if held} | {k for link in fold.links for k in link}
        db.executemany("INSERT INTO person VALUES (?)", ((k,) for k in sorted(people)))
        db.executemany("INSERT INTO link VALUES (?, ?)", sorted(fold.links))
        retired = fold.merged_away | fold.retired
        db.executemany("INSERT INTO retired VALUES (?)", ((k,) for k in sorted(retired)))
        db.execute("INSERT INTO counts VALUES (?, ?, ?, ?, ?, ?)", (*counts, folded_s, time.perf_counter() - started))
        db.execute("COMMIT")
    finally:
        db.close()


def _shard_counts(path: Path) -> tuple[int, int, int, int]:
    """(events read, applied, not CareHub events, records left out as written after received_by)."""
    with contextlib.closing(sqlite3.connect(path)) as db:
        read, applied, skipped, left_out, folded, written = db.execute("SELECT * FROM counts").fetchone()
    log.debug("replay: %s folded %d events in %.1f s and was written in %.1f s", path.stem, read, folded, written)
    return int(read), int(applied), int(skipped), int(left_out)
