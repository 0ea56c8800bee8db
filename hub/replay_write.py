"""A replayed record written in bulk into an empty database (SQLite or PostgreSQL), in one
transaction that a cancelled replay (Ctrl-C) stops and rolls back: rows in primary-key order,
secondary indexes built once at the end, SQLite tuned for the load and put back afterwards."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeVar

import orjson
import sqlalchemy as sa

from hub.store.database import json_text
from hub.store.tables import (
    coordination_clock,
    coordination_state,
    processed_event,
    record_identifier,
    record_resource,
)

if TYPE_CHECKING:
    from hub.replay_fold import FoldUnitOfWork, Key

T = TypeVar("T")
MMAP_BYTES = 8 << 30  # SQLite reads a bulk load's pages through a memory map (capped by its build)
# a replayed record's SQLite pages: its rows are ~1 KB of JSON each, and on 4 KiB pages (SQLite's
# default) the load of a million events' 1.7 million rows took twice as long (5.5 s against 2.5 s,
# and its person index 1.8 s against 1.4 s)
PAGE_BYTES = 16384


def write(engine: sa.Engine, fold: FoldUnitOfWork, chunk: int = 20_000, stop: Stop | None = None) -> None:
    """The folded record into an empty database, in bulk, in one transaction.

    Rows go in primary-key order (appends, not page splits) as plain tuples straight to the
    driver's executemany, each value bound by its column type's own processor, so the stored
    bytes are what the live consumer's SQLAlchemy statements store (the JSON text was made when
    each resource was put into the fold, and is held with it; rows are built a chunk at a time).
    """
    # the transaction ends (committed or rolled back) before the bulk-load settings are undone
    stop = stop or Stop()
    with (
        engine.connect().execution_options(immediate=True) as conn,
        _bulk_load(conn),
        conn.begin(),
        stop.watching(conn),
    ):
        refuse_unless_empty(conn)
        with _indexes_after(conn, record_resource, record_identifier, stop=stop):
            for sql, rows in _chunks(fold, conn.dialect, chunk):
                stop.check()
                conn.exec_driver_sql(sql, rows)


def holds_anything(conn: sa.Connection) -> bool:
    """Whether any table a replay writes (the record's, the coordination engine's) holds a row: a
    database with its resources deleted but its applied-event ids kept is not empty either."""
    return any(
        conn.execute(sa.select(sa.literal(1)).select_from(table).limit(1)).first() is not None
        for table in (record_resource, record_identifier, processed_event, coordination_state, coordination_clock)
    )


def refuse_unless_empty(conn: sa.Connection) -> None:
    if holds_anything(conn):
        raise RuntimeError("replay writes into an empty record; this database already holds one")


def _refuse_unless_empty(engine: sa.Engine) -> None:
    with engine.connect() as conn:
        refuse_unless_empty(conn)


def _chunks(
    fold: FoldUnitOfWork,
    dialect: sa.Dialect,
    chunk: int,
    content: Callable[[str], Any] | None = None,
    kinds: Callable[[str], bool] | None = None,
) -> Iterator[tuple[str, list[tuple[Any, ...]]]]:
    """(INSERT, rows) for every table (resources of the `kinds` picked), `chunk` rows at a time,
    built only when asked for; content (its JSON text) bound as the dialect binds JSON unless
    `content` says otherwise."""
    keys = in_key_order(fold, kinds)
    row = resource_row(fold, dialect, content)
    sql = _insert_sql(record_resource, dialect)
    for start in range(0, len(keys), chunk):
        yield sql, list(map(row, keys[start : start + chunk]))
    found = fold.identifiers  # (taken in the resources' key order, so sorted as they are)
    identifiers = list(itertools.chain.from_iterable(map(found.get, keys, itertools.repeat(()))))
    processed = [("record", e) for e in sorted(fold.done)]
    for table, rows in ((record_identifier, identifiers), (processed_event, processed)):
        sql = _insert_sql(table, dialect)
        for start in range(0, len(rows), chunk):
            yield sql, rows[start : start + chunk]


def in_key_order(fold: FoldUnitOfWork, kinds: Callable[[str], bool] | None = None) -> list[Key]:
    """The fold's resource keys (of the `kinds` picked) sorted as the tables' primary keys sort
    them: by type, then id (each type's ids sorted as strings, several times faster than sorting
    the pairs)."""
    picked = sorted(kind for kind in fold.ids if kinds is None or kinds(kind))
    return [(kind, rid) for kind in picked for rid in sorted(fold.ids[kind])]


def resource_row(
    fold: FoldUnitOfWork, dialect: sa.Dialect, content: Callable[[str], Any] | None = None
) -> Callable[[Key], tuple[Any, ...]]:
    """One folded resource's record_resource row, by key, in table column order, its values bound:
    on SQLite, with the content as its text, the row as the fold holds it."""
    content = content or _text_bound(dialect)
    rows = fold.rows
    if dialect.name == "sqlite" and content is _same:
        return rows.__getitem__
    bind = _bind(record_resource.c.event_time, dialect)
    at = _Memo(lambda held: bind(time_of(held)))  # events stamp several resources

    def row(key: Key) -> tuple[Any, ...]:
        kind, rid, person, version, when, event, text = rows[key]
        return (kind, rid, person, version, at[when], event, content(text))

    return row


def sqlite_dialect() -> sa.Dialect:
    """SQLite as the record's engines bind it (JSON as orjson text), so a fold and a shard hold
    what the live consumer would store."""
    return sa.create_engine("sqlite://", json_serializer=json_text).dialect


def time_of(held: str) -> datetime:
    """An event time as SQLite's record_resource holds it, as the UTC time it is."""
    return datetime.fromisoformat(held).replace(tzinfo=UTC)


def _text_bound(dialect: sa.Dialect) -> Callable[[str], Any]:
    """JSON text as the dialect binds the content column: the text itself where its JSON serialiser
    is the record's own (every engine hub.store.database opens), else the content bound anew."""
    if getattr(dialect, "_json_serializer", None) is json_text:
        return _same
    bind = _bind(record_resource.c.content, dialect)
    return lambda text: bind(orjson.loads(text))


def _bind(column: sa.Column[Any], dialect: sa.Dialect) -> Callable[[Any], Any]:
    process = column.type.dialect_impl(dialect).bind_processor(dialect)
    return process if process is not None else _same


def _same(value: Any) -> Any:
    return value


class _Memo(dict[Any, Any]):
    """compute(key), remembered (all of them, or up to `most` at a time)."""

    def __init__(self, compute: Callable[[Any], Any], most: int = 0) -> None:
        super().__init__()
        self.compute = compute
        self.most = most

    def __missing__(self, key: Any) -> Any:
        if self.most and len(self) >= self.most:
            self.clear()
        value = self[key] = self.compute(key)
        return value


def _insert_sql(table: sa.Table, dialect: sa.Dialect) -> str:
    """A positional INSERT of every column, in table order, for the driver's executemany."""
    mark = "?" if dialect.paramstyle == "qmark" else "%s"
    names = ", ".join(dialect.identifier_preparer.quote(c.name) for c in table.columns)
    marks = ", ".join([mark] * len(table.columns))
    return f"INSERT INTO {table.name} ({names}) VALUES ({marks})"  # noqa: S608 (names from our own tables)


def _holds_a_record(sqlite: Any) -> bool:
    found = sqlite.execute(f"SELECT EXISTS (SELECT 1 FROM {record_resource.name})").fetchone()  # noqa: S608
    return bool(found[0])


@contextlib.contextmanager
def _bulk_load(conn: sa.Connection, kib: int = 64 * 1024) -> Iterator[None]:
    """SQLite: load a fresh file with its rollback journal in memory, without fsyncs, with a page
    cache of `kib` KiB and pages read through a memory map, sorting for its indexes on every core,
    for this load only; its pages made PAGE_BYTES first, while it is still empty. The journal costs
    next to nothing (pages past the file's size when the load began, nearly all of them, are not
    journalled) and lets a load that fails or is cancelled part way roll back, where no journal at
    all would leave half a record. Safe because the target is new and empty: a process killed part
    way (no rollback then) leaves a file to delete and replay again, never a record to trust (the
    WAL journal, normal syncing and the connection's own cache, map size and sorter threads are back
    before anything else writes to it).

    A bigger cache is slower: loading a million events' shards took 8.9-10.7 s with 512 MiB (most
    of it the system's time to hand the process fresh memory, then the file's pages at commit),
    5.3-6.5 s with 8 to 128 MiB."""
    if conn.dialect.name != "sqlite":
        yield
        return
    sqlite: Any = conn.connection.driver_connection  # PRAGMAs outside SQLAlchemy's transaction
    before = int(sqlite.execute("PRAGMA main.cache_size").fetchone()[0])
    mapped = int(sqlite.execute("PRAGMA main.mmap_size").fetchone()[0])
    threads = int(sqlite.execute("PRAGMA threads").fetchone()[0])
    sqlite.execute(f"PRAGMA threads={_cores()}")  # the indexes' sorts on every core (person index 1.9 s -> 1.35 s)
    sqlite.execute(f"PRAGMA main.cache_size=-{kib}")
    sqlite.execute(f"PRAGMA main.mmap_size={MMAP_BYTES}")  # building the indexes reads every page back
    sqlite.execute("PRAGMA main.journal_mode=MEMORY")
    sqlite.execute("PRAGMA main.synchronous=OFF")
    if int(sqlite.execute("PRAGMA main.page_size").fetchone()[0]) < PAGE_BYTES and not _holds_a_record(sqlite):
        # an empty record is rebuilt at once with bigger pages (not in WAL mode: hence here)
        sqlite.execute(f"PRAGMA main.page_size={PAGE_BYTES}")
        sqlite.execute("VACUUM")
    try:
        yield
    finally:
        sqlite.execute("PRAGMA main.journal_mode=WAL")
        sqlite.execute("PRAGMA main.synchronous=NORMAL")
        sqlite.execute(f"PRAGMA main.mmap_size={mapped}")
        sqlite.execute(f"PRAGMA main.cache_size={before}")
        sqlite.execute(f"PRAGMA threads={threads}")


@contextlib.contextmanager
def _indexes_after(conn: sa.Connection, *tables: sa.Table, stop: Stop) -> Iterator[None]:
    """Secondary indexes dropped for the load and built once it is in (one sort each, not a random
    insert per row); inside the load's transaction, so they are there when it commits."""
    indexes = [index for table in tables for index in sorted(table.indexes, key=lambda i: str(i.name))]
    for index in indexes:
        conn.execute(sa.schema.DropIndex(index, if_exists=True))
    yield
    for index in indexes:
        stop.check()
        conn.execute(sa.schema.CreateIndex(index))


class ReplayCancelledError(Exception):
    """The replay was cancelled while it wrote: its transaction rolled back."""


class Stop:
    """Stops a bulk write running in a thread when the replay is cancelled (Ctrl-C): the statement
    in flight is interrupted (SQLite) or cancelled (PostgreSQL), and the write checks between
    statements, so its transaction rolls back and nothing of it is kept. (Before, a cancelled replay
    waited for the load to finish and commit: a record with no tasks, in a directory that then
    refused a second replay.)

    An interrupt that falls between two statements finds nothing to stop (sqlite3_interrupt and a
    PostgreSQL cancel request both act only on what runs when they arrive), so `in_thread` asks
    again until the work has let go. Only the statements inside `watching` are interrupted: never
    the commit or the rollback that follows them."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._driver: Any = None
        self.requested = False

    @contextlib.contextmanager
    def watching(self, conn: sa.Connection) -> Iterator[None]:
        """Statements on `conn` (the writing thread's own) are interrupted by a stop while inside."""
        with self._lock:
            self._driver = conn.connection.driver_connection
            if self.requested:
                self._interrupt()
        try:
            yield
        finally:
            with self._lock:
                self._driver = None

    def check(self) -> None:
        if self.requested:
            raise ReplayCancelledError("the replay was cancelled; nothing of its load was kept")

    def __call__(self) -> None:
        with self._lock:
            self.requested = True
            self._interrupt()

    def _interrupt(self) -> None:
        driver = self._driver
        halt = getattr(driver, "interrupt", None) or getattr(driver, "cancel", None)  # sqlite3 / psycopg
        if halt is not None:
            with contextlib.suppress(Exception):  # nothing running, or the connection already closed
                halt()


async def in_thread(work: Callable[..., T], *args: Any, again_s: float = 0.1) -> T:
    """work(*args, stop=...) in a thread. Cancelling the caller stops the work, asking again every
    `again_s` until it has let go (its transaction rolled back, or committed if the stop came during
    the commit), then the cancellation goes on."""
    stop = Stop()
    running = asyncio.ensure_future(asyncio.to_thread(work, *args, stop=stop))
    try:
        return await asyncio.shield(running)
    except asyncio.CancelledError:
        while not running.done():
            stop()
            await asyncio.wait({running}, timeout=again_s)
        with contextlib.suppress(Exception):  # (ReplayCancelledError: what was asked for)
            running.result()
        raise


def _cores() -> int:
    """Cores this process may run on (its affinity, where the platform says; else all of them)."""
    affinity = getattr(os, "sched_getaffinity", None)
    return len(affinity(0)) if affinity else os.cpu_count() or 1
