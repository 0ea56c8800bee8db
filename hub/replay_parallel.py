"""Replay on several cores: the log's partitions folded in worker processes, then loaded in bulk.

One person's events share a partition (events are keyed by person), so what each partition adds to
the record is, nearly always, independent of the others. Each worker process reads its share of
the partitions (partition p goes to worker p mod N), folds them with the record's own rules, exactly
as the one-process replay does, and writes what it folded to a shard: a SQLite file with the
record's tables and no secondary indexes, reference data in a table of its own. The shards are then
loaded into the target in one transaction (on SQLite, INSERT ... SELECT from the attached shards,
read through a memory map: no Python per row).

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
import itertools
import logging
import multiprocessing
import os
import platform
import signal
import sqlite3
import sys
import tempfile
import time
import traceback
from collections.abc import Collection, Iterator, Sequence
from datetime import UTC, datetime
from multiprocessing import resource_tracker
from pathlib import Path
from typing import Any

import orjson
import sqlalchemy as sa
from aiokafka import AIOKafkaConsumer

from hub.core.ports import RecordEvent, StoredResource
from hub.core.record import SHARED_KINDS, _same_content
from hub.kafka import high_watermarks, partitions_of
from hub.replay import (
    MMAP_BYTES,
    FoldUnitOfWork,
    Progress,
    ReplayResult,
    Stop,
    _bind,
    _bulk_load,
    _chunks,
    _fold,
    _indexes_after,
    _insert_sql,
    _same,
    _text_bound,
    in_key_order,
    in_thread,
    refuse_unless_empty,
    resource_row,
    sqlite_dialect,
)
from hub.store.sql import identifiers_of
from hub.store.tables import processed_event, record_identifier, record_resource

log = logging.getLogger(__name__)
_TABLES = (record_resource, record_identifier, processed_event)
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

    def of_person(self, person_key: str) -> list[StoredResource]:
        self._touched.add(person_key)
        return super().of_person(person_key)

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
    await consumer.start()
    try:
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
) -> ReplayResult | str:
    """The replay on `workers` processes, or why it cannot be (partitions that depend on each other:
    then nothing has been written and the caller folds in one process). `events`: about how many
    the log holds, for the room the shards need."""
    started = time.perf_counter()
    target = engine.url.database if engine.dialect.name == "sqlite" else None
    near = Path(target).parent if target and target != ":memory:" else None
    with tempfile.TemporaryDirectory(prefix="carehub-replay-", dir=scratch(near, events)) as tmp:
        paths = [Path(tmp) / f"shard-{i}.db" for i in range(workers)]
        counts = await _run_workers(bootstrap, paths, since, until, progress, huge_pages, events)
        tangled = await asyncio.to_thread(_tangled_in, paths)
        together = FoldUnitOfWork()
        if tangled:  # their events again, read from every partition, folded together here
            log.info("replay: %d people merged across workers are folded again together", len(tangled))
            gc.disable()
            try:
                await _fold(bootstrap, together, since, until, None, subjects=tangled)
            finally:
                gc.enable()
        outcome = await in_thread(load, engine, paths, tangled, together)
    if isinstance(outcome, str):
        return outcome
    read, applied, skipped = (sum(c[k] for c in counts) for k in range(3))
    seconds = time.perf_counter() - started
    return ReplayResult(read, applied, skipped, outcome, seconds, workers=workers, refolded=len(tangled))


async def _run_workers(
    bootstrap: str,
    paths: Sequence[Path],
    since: datetime | None,
    until: datetime | None,
    progress: Progress | None,
    huge_pages: bool = False,
    events: int = 0,
) -> list[tuple[int, int, int]]:
    # spawn, not fork: the caller may have threads (an event loop's executor, a web server's)
    available = memory_available()  # for what to say if the system stops a worker for want of it
    context = multiprocessing.get_context("spawn")
    counters = [context.Value("q", 0, lock=False) for _ in paths]
    processes = [
        context.Process(
            target=_worker,
            args=(bootstrap, index, len(paths), since, until, str(path), counters[index]),
            name=f"carehub-replay-{index}",
            daemon=True,
        )
        for index, path in enumerate(paths)
    ]
    stopped: set[int] = set()  # workers stopped here, not failed on their own
    try:
        with _environment(_worker_environment() if huge_pages else {}):  # read by each worker as it starts
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


_SHM = Path("/dev/shm")  # noqa: S108 - a private directory is made in it (tempfile.TemporaryDirectory)
_MEMINFO = Path("/proc/meminfo")
SHARD_BYTES_PER_EVENT = 2048  # measured: a million events' shards take 2.0 GB


def scratch(near: Path | None, events: int) -> Path | None:
    """Where the shards go: memory-backed /dev/shm where it has room for twice their likely size
    and the machine has four times that available (the workers' folds need memory too), else
    beside the target (None: the system's temporary directory).

    They are written once, read once and deleted within seconds; on a disk's file system their
    pages still cost its bookkeeping (a million-event replay took about 2 s longer with its shards
    on ext4 than on tmpfs, on the 2-core VMs this was measured on)."""
    need = events * SHARD_BYTES_PER_EVENT
    available = memory_available()
    try:
        stat = os.statvfs(_SHM)
    except OSError:
        return near  # no /dev/shm (not Linux, or a container without it)
    if available is None:
        return near  # no memory figure
    room = stat.f_bavail * stat.f_frsize
    return _SHM if os.access(_SHM, os.W_OK) and room >= 2 * need and available >= 4 * need else near


def memory_available() -> int | None:
    """Bytes of memory a replay can have without being stopped for want of it: the system's
    MemAvailable (Linux), or less where this process's cgroup (a container's memory limit) leaves
    less, since the kernel stops a process over its limit whatever the host has free. None where
    neither says."""
    try:
        system: int | None = next(
            int(line.split()[1]) * 1024
            for line in _MEMINFO.read_text().splitlines()
            if line.startswith("MemAvailable:")
        )
    except (OSError, StopIteration, ValueError, IndexError):
        system = None
    found = [room for room in (system, _cgroup_room()) if room is not None]
    return min(found) if found else None


_SELF_CGROUP = Path("/proc/self/cgroup")
_CGROUPS = Path("/sys/fs/cgroup")


def _cgroup_room() -> int | None:
    """The least room any memory limit on this process's cgroup or its ancestors leaves (the limit
    less the usage, plus the file pages the kernel can drop), cgroup v2 or v1; None without one."""
    try:
        lines = _SELF_CGROUP.read_text().splitlines()
    except OSError:
        return None
    rooms: list[int] = []
    for line in lines:  # hierarchy:controllers:path, one line a hierarchy ("0::path" for v2)
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        if parts[1] == "":  # v2: at the root of the mount, or under unified/ beside v1's
            root = _CGROUPS if (_CGROUPS / "cgroup.controllers").exists() else _CGROUPS / "unified"
            files = ("memory.max", "memory.current")
        elif "memory" in parts[1].split(","):
            root, files = _CGROUPS / "memory", ("memory.limit_in_bytes", "memory.usage_in_bytes")
        else:
            continue
        path = root / parts[2].lstrip("/")
        for place in (path, *path.parents):
            if place != root and root not in place.parents:
                break
            room = _room_in(place, *files)
            if room is not None:
                rooms.append(room)
    return min(rooms) if rooms else None


def _room_in(place: Path, limit_file: str, usage_file: str) -> int | None:
    try:
        limit = (place / limit_file).read_text().strip()
        if limit == "max" or int(limit) >= 1 << 60:  # no limit (v2 says max, v1 a huge number)
            return None
        used = int((place / usage_file).read_text())
        stat = (place / "memory.stat").read_text() if (place / "memory.stat").exists() else ""
    except (OSError, ValueError):
        return None
    droppable = next((int(line.split()[1]) for line in stat.splitlines() if line.startswith("inactive_file ")), 0)
    return max(0, int(limit) - used + droppable)


# measured: workers folding 500,000 of bench/replay's events each held 1.8 GB (maxrss), and one
# process folding a million about 3.6 GB; events with bigger payloads take more
FOLD_BYTES_PER_EVENT = 3600


def short_of_memory(events: int, available: int | None) -> str | None:
    """Why a replay of about `events` events may be stopped by the system part way, if it may: a
    fold holds the whole record in memory until it is written."""
    need = events * FOLD_BYTES_PER_EVENT
    if available is None or need <= available:
        return None
    return (
        f"folding up to the log's {events:,} events takes about {_gb(need)} of memory and {_gb(available)} is available"
    )


def _gb(size: int) -> str:
    return f"{size / 1e9:.1f} GB"


_THP = Path("/sys/kernel/mm/transparent_hugepage/enabled")
HUGE_PAGES_FROM = 1_000_000  # events a worker folds, from which huge pages pay for their slower start


def _worker_environment() -> dict[str, str]:
    """Workers allocate with the C library's malloc, asking it for transparent huge pages (glibc's
    hugetlb tunable, 2.35 and later: madvise on its heap), where the kernel offers them.

    A big fold holds gigabytes of small objects; on 4 KiB pages, finding them costs TLB misses and
    touching them page faults. Python's allocator cannot use huge pages (its 1 MiB arenas are not
    aligned to them), so this takes the system's, which is slower for smaller folds: replay asks
    for it only from HUGE_PAGES_FROM events a worker. (Measured here: at 500,000 events a worker a
    million-event replay's workers took 34 s with Python's allocator against 37.5 s with huge pages;
    one process folding and writing a million events in memory took 69.5 s against 65.6 s.)
    Nothing changes where the kernel has them off, where the C library is not glibc 2.35 or later
    (malloc without huge pages is only slower), or where the caller has chosen an allocator or
    glibc's huge-page setting already (PYTHONMALLOC, glibc.malloc.hugetlb)."""
    try:
        offered = "[never]" not in _THP.read_text()
    except OSError:
        offered = False  # not Linux, or no transparent huge pages
    tunables = os.environ.get("GLIBC_TUNABLES")
    if not offered or not _glibc_has_hugetlb() or "PYTHONMALLOC" in os.environ or "malloc.hugetlb" in (tunables or ""):
        return {}
    hugetlb = "glibc.malloc.hugetlb=1"
    return {"PYTHONMALLOC": "malloc", "GLIBC_TUNABLES": f"{tunables}:{hugetlb}" if tunables else hugetlb}


def _glibc_has_hugetlb() -> bool:
    name, version = platform.libc_ver()
    try:
        return name == "glibc" and tuple(int(part) for part in version.split(".")[:2]) >= (2, 35)
    except ValueError:
        return False


@contextlib.contextmanager
def _environment(changes: dict[str, str]) -> Iterator[None]:
    """os.environ with `changes` while the workers start (a spawned process takes the environment
    as it is when it starts), as it was afterwards. (The whole process sees them meanwhile: a thread
    starting a subprocess at that moment would pass them on. Multiprocessing's resource tracker is
    started first, so that it, at least, does not.)"""
    if changes:
        resource_tracker.ensure_running()
    before = {name: os.environ.get(name) for name in changes}
    os.environ.update(changes)
    try:
        yield
    finally:
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


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
        need = _gb(events * FOLD_BYTES_PER_EVENT)
        figures = f" (folding about {events:,} events takes about {need}; {_gb(available)} was available at the start)"
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
) -> None:
    """One worker process: fold partitions p with p mod workers == index, write them to a shard."""
    try:
        gc.disable()  # as in the one-process replay: the fold only grows
        fold = LinkedFold()

        def seen(read: int, _expected: int) -> None:
            counter.value = read

        started = time.perf_counter()
        counts = asyncio.run(_fold(bootstrap, fold, since, until, seen, only=lambda p: p % workers == index))
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


def write_shard(path: Path, fold: LinkedFold, counts: tuple[int, int, int], folded_s: float = 0.0) -> None:
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
        for table in _TABLES:  # no keys, no indexes: the target's primary keys catch any clash
            db.execute(f"CREATE TABLE {table.name} ({', '.join(c.name for c in table.columns)})")
        db.execute(f"CREATE TABLE shared ({_COLUMNS})")  # reference data, apart: it is reconciled
        db.execute("CREATE TABLE person (person_key TEXT PRIMARY KEY)")
        db.execute("CREATE TABLE retired (person_key TEXT PRIMARY KEY)")
        db.execute("CREATE TABLE link (a TEXT, b TEXT)")
        db.execute(
            "CREATE TABLE counts (read INTEGER, applied INTEGER, skipped INTEGER, folded_s REAL, written_s REAL)"
        )
        for sql, rows in _chunks(fold, dialect, 20_000, content=_same, kinds=_personal):
            db.executemany(sql, rows)
        row = resource_row(fold, dialect, content=_same)
        shared = in_key_order(fold, SHARED_KINDS.__contains__)
        db.executemany("INSERT INTO shared VALUES (?, ?, ?, ?, ?, ?, ?)", (row(key) for key in shared))
        people = {k for k, held in fold.by_person.items() if held} | {k for link in fold.links for k in link}
        db.executemany("INSERT INTO person VALUES (?)", ((k,) for k in sorted(people)))
        db.executemany("INSERT INTO link VALUES (?, ?)", sorted(fold.links))
        retired = fold.merged_away | fold.retired
        db.executemany("INSERT INTO retired VALUES (?)", ((k,) for k in sorted(retired)))
        db.execute("INSERT INTO counts VALUES (?, ?, ?, ?, ?)", (*counts, folded_s, time.perf_counter() - started))
        db.execute("COMMIT")
    finally:
        db.close()


def _shard_counts(path: Path) -> tuple[int, int, int]:
    with contextlib.closing(sqlite3.connect(path)) as db:
        read, applied, skipped, folded, written = db.execute("SELECT * FROM counts").fetchone()
    log.debug("replay: %s folded %d events in %.1f s and was written in %.1f s", path.stem, read, folded, written)
    return int(read), int(applied), int(skipped)


def load(
    engine: sa.Engine,
    paths: Sequence[Path],
    tangled: Collection[str] = (),
    together: FoldUnitOfWork | None = None,
    stop: Stop | None = None,
) -> int | str:
    """The shards into the (empty) target in one transaction, but for the `tangled` people, whose
    resources and events come from `together` instead: resources written, or why not."""
    stop = stop or Stop()
    with engine.connect().execution_options(immediate=True) as conn:
        if conn.dialect.name == "sqlite":
            db: sqlite3.Connection = conn.connection.driver_connection  # type: ignore[assignment]
            names = _attach(db, paths)  # outside any transaction, as SQLite requires
            try:
                return _load(conn, db, names, tangled, together, stop)
            finally:
                db.execute("DROP TABLE IF EXISTS temp.tangled_person")
                db.execute("DROP TABLE IF EXISTS temp.tangled_event")
                for name in names:
                    db.execute(f"DETACH DATABASE {name}")
        with contextlib.closing(sqlite3.connect(":memory:", isolation_level=None)) as db:
            return _load(conn, db, _attach(db, paths), tangled, together, stop)


def _tangled_in(paths: Sequence[Path]) -> set[str]:
    with contextlib.closing(sqlite3.connect(":memory:", isolation_level=None)) as db:
        return tangled(db, _attach(db, paths))


def tangled(db: sqlite3.Connection, names: list[str]) -> set[str]:
    """People whose events must be folded together, whatever partition they are on: each person
    merged away on one worker's partitions whom another worker holds resources for (or saw
    linked), with everyone linked to them on any worker, and so on."""
    seeds: set[str] = set()
    for a in names:
        for b in names:
            if a != b:
                found = db.execute(
                    f"SELECT m.person_key FROM {a}.retired m JOIN {b}.person p USING (person_key)"  # noqa: S608
                )
                seeds.update(k for (k,) in found)
    if not seeds:
        return set()
    parent: dict[str, str] = {}

    def root(key: str) -> str:
        parent.setdefault(key, key)
        while parent[key] != key:
            parent[key] = parent[parent[key]]
            key = parent[key]
        return key

    for name in names:
        for a, b in db.execute(f"SELECT a, b FROM {name}.link"):  # noqa: S608
            parent[root(a)] = root(b)
    roots = {root(k) for k in seeds}
    return {k for k in parent if root(k) in roots} | seeds


def _attach(db: sqlite3.Connection, paths: Sequence[Path]) -> list[str]:
    names = []
    for index, path in enumerate(paths):
        name = f"shard{index}"
        db.execute(f"ATTACH DATABASE ? AS {name}", (str(path),))
        db.execute(f"PRAGMA {name}.mmap_size={MMAP_BYTES}")  # read once, in order: no copies
        names.append(name)
    return names


class _ClashError(Exception):
    """The same row key on two shards: partitions depend on each other."""


def _load(
    conn: sa.Connection,
    db: sqlite3.Connection,
    names: list[str],
    tangled: Collection[str],
    together: FoldUnitOfWork | None,
    stop: Stop,
) -> int | str:
    shared = _reconciled(db, names)
    if isinstance(shared, str):
        return shared
    db.execute("CREATE TEMP TABLE tangled_person (person_key TEXT PRIMARY KEY)")
    db.execute("CREATE TEMP TABLE tangled_event (event_id TEXT PRIMARY KEY)")
    db.executemany("INSERT INTO temp.tangled_person VALUES (?)", ((k,) for k in sorted(tangled)))
    if together is not None:
        db.executemany("INSERT INTO temp.tangled_event VALUES (?)", ((e,) for e in sorted(together.done)))
    try:
        # (a clash found part way through rolls back: the load's journal is in memory)
        with _bulk_load(conn), conn.begin():
            with stop.watching(conn):
                refuse_unless_empty(conn)
                with _indexes_after(conn, record_resource, record_identifier, stop=stop):
                    try:
                        if conn.dialect.name == "sqlite":
                            _copy_in_sqlite(conn, names, shared, bool(tangled), stop)
                        else:
                            _copy_rows(conn, db, names, shared, bool(tangled), stop)
                        if together is not None and tangled:
                            for sql, rows in _chunks(together, conn.dialect, 20_000, kinds=_personal):
                                stop.check()
                                if rows:
                                    conn.exec_driver_sql(sql, rows)
                    except sa.exc.IntegrityError as exc:
                        raise _ClashError from exc
            return int(conn.execute(sa.select(sa.func.count()).select_from(record_resource)).scalar_one())
    except _ClashError:
        return "one resource or event is on partitions read by two workers"


def _personal(kind: str) -> bool:
    return kind not in SHARED_KINDS  # reference data comes from the shards, reconciled


def _picks(table: sa.Table, name: str, tangled: bool) -> str:
    """WHERE for one shard's rows of `table` (reference data is in its own table, reconciled apart):
    where some people are folded again together, none of theirs."""
    if not tangled:
        return ""
    if table is processed_event:
        return " WHERE event_id NOT IN (SELECT event_id FROM temp.tangled_event)"
    if table is record_resource:
        return " WHERE person_key IS NULL OR person_key NOT IN (SELECT person_key FROM temp.tangled_person)"
    return (
        f" WHERE (resource_type, resource_id) NOT IN (SELECT resource_type, id FROM {name}.record_resource"  # noqa: S608
        " WHERE person_key IN (SELECT person_key FROM temp.tangled_person))"
    )


_COLUMNS = ", ".join(c.name for c in record_resource.columns)


def _reconciled(db: sqlite3.Connection, names: list[str]) -> list[tuple[Any, ...]] | str:
    """Reference data rows (resource table order), one per resource, as the one-process fold leaves
    them; or why they cannot be (content that differs or changed: its versions depend on read order)."""
    found: dict[tuple[str, str], list[tuple[Any, ...]]] = {}
    for name in names:
        cursor = db.execute(
            f"SELECT {_COLUMNS} FROM {name}.shared"  # noqa: S608
        )
        for row in cursor:
            found.setdefault((row[0], row[1]), []).append(tuple(row))
    out = []
    for key in sorted(found):
        rows = found[key]
        if len(rows) == 1:
            out.append(rows[0])
            continue
        contents = [orjson.loads(row[6]) for row in rows]
        if any(row[3] != 1 for row in rows) or not all(_same_content(c, contents[0]) for c in contents[1:]):
            return f"{key[0]} reference data differs between partitions read by different workers"
        first = min(range(len(rows)), key=lambda i: (*_said(contents[i]), rows[i][5]))  # as the fold picks
        latest = max(row[4] for row in rows)  # the same text form on every shard, so it sorts as time
        out.append((*rows[first][:4], latest, *rows[first][5:]))
    return out


def _said(content: dict[str, Any]) -> tuple[str, str]:
    meta = content.get("meta") or {}
    return str(meta.get("lastUpdated", "")), str(meta.get("source", ""))


def _copy_in_sqlite(
    conn: sa.Connection, names: list[str], shared: list[tuple[Any, ...]], tangled: bool, stop: Stop
) -> None:
    """Shards to target inside SQLite: the shards hold the values the target's columns bind (content
    as its JSON text)."""
    for table in _TABLES:
        columns = ", ".join(c.name for c in table.columns)
        for name in names:  # each shard's rows are in key order already (inserted so)
            stop.check()
            where = _picks(table, name, tangled)
            conn.exec_driver_sql(
                f"INSERT INTO {table.name} ({columns}) SELECT {columns} FROM {name}.{table.name}{where}"  # noqa: S608
            )
        rows: list[tuple[Any, ...]] = []
        if table is record_resource:
            rows = shared
        elif table is record_identifier:
            rows = list(_identifiers(shared))
        if rows:  # (an empty list would be taken for no parameters at all)
            conn.exec_driver_sql(_insert_sql(table, conn.dialect), rows)


def _identifiers(shared: list[tuple[Any, ...]]) -> list[tuple[str, str, str, str]]:
    return [(r[0], r[1], s, v) for r in shared for s, v in sorted(identifiers_of(orjson.loads(r[6])))]


def _copy_rows(
    conn: sa.Connection,
    db: sqlite3.Connection,
    names: list[str],
    shared: list[tuple[Any, ...]],
    tangled: bool,
    stop: Stop,
    chunk: int = 5000,
) -> None:
    """Shards to another database (PostgreSQL): rows read back and bound by the target's own types."""
    dialect = conn.dialect
    when, content = _bind(record_resource.c.event_time, dialect), _text_bound(dialect)

    def resource(row: Sequence[Any]) -> tuple[Any, ...]:
        at = datetime.fromisoformat(row[4]).replace(tzinfo=UTC)  # shards keep UTC without an offset
        return (*row[:4], when(at), row[5], content(row[6]))

    for table in _TABLES:
        columns = ", ".join(c.name for c in table.columns)
        parts = [
            db.execute(f"SELECT {columns} FROM {name}.{table.name}{_picks(table, name, tangled)}")  # noqa: S608
            for name in names
        ]
        rows: Iterator[Sequence[Any]] = itertools.chain.from_iterable(parts)
        if table is record_resource:
            rows = (resource(row) for row in itertools.chain(rows, shared))
        elif table is record_identifier:
            rows = itertools.chain(rows, _identifiers(shared))
        sql = _insert_sql(table, dialect)
        while batch := [tuple(row) for row in itertools.islice(rows, chunk)]:
            stop.check()
            conn.exec_driver_sql(sql, batch)
