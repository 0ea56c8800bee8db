"""The shards of a parallel replay (hub.replay_parallel) into the target record, in one transaction:
on SQLite, INSERT ... SELECT from the attached shards; elsewhere, rows read back and bound by the
target's types. Reference data said on several workers' partitions is reconciled as the fold does
it; where partitions turn out to depend on each other, nothing is kept and the caller is told why."""

from __future__ import annotations

import contextlib
import itertools
import sqlite3
from collections.abc import Collection, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import sqlalchemy as sa

from hub.core.record import SHARED_KINDS
from hub.core.record_content import same_content
from hub.replay_fold import FoldUnitOfWork
from hub.replay_write import (
    MMAP_BYTES,
    Stop,
    _bind,
    _bulk_load,
    _chunks,
    _indexes_after,
    _insert_sql,
    _text_bound,
    refuse_unless_empty,
)
from hub.store.sql import identifiers_of
from hub.store.tables import processed_event, record_identifier, record_resource

TABLES = (record_resource, record_identifier, processed_event)
COLUMNS = ", ".join(c.name for c in record_resource.columns)


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
                            for sql, rows in _chunks(together, conn.dialect, 20_000, kinds=personal):
                                stop.check()
                                if rows:
                                    conn.exec_driver_sql(sql, rows)
                    except sa.exc.IntegrityError as exc:
                        raise _ClashError from exc
            return int(conn.execute(sa.select(sa.func.count()).select_from(record_resource)).scalar_one())
    except _ClashError:
        return "one resource or event is on partitions read by two workers"


def personal(kind: str) -> bool:
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


def _reconciled(db: sqlite3.Connection, names: list[str]) -> list[tuple[Any, ...]] | str:
    """Reference data rows (resource table order), one per resource, as the one-process fold leaves
    them; or why they cannot be (content that differs or changed: its versions depend on read order)."""
    found: dict[tuple[str, str], list[tuple[Any, ...]]] = {}
    for name in names:
        cursor = db.execute(
            f"SELECT {COLUMNS} FROM {name}.shared"  # noqa: S608
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
        if any(row[3] != 1 for row in rows) or not all(same_content(c, contents[0]) for c in contents[1:]):
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
    for table in TABLES:
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

    for table in TABLES:
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
