"""What an operator did about each dead letter: resolved (when, by whom, what was done), reopened,
and, once resolved long enough, purged. The dead-letter store keeps every rejected input until then,
so the listing an operator works through is what is still outstanding (hub.cli_deadletter_actions).

A dead letter holds what a sender sent (names, NHS numbers): a resolved one is kept only as long as
the operator's retention period says, then deleted whole. An outstanding one is never purged."""

from __future__ import annotations

import contextlib
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa

from hub.store.queries import Resolution
from hub.store.sql import store_errors
from hub.store.tables import dead_letter

D = dead_letter


@dataclass(frozen=True)
class Resolved:
    """What `resolve` did: the ids it resolved, those resolved already (with what was said then), and
    ids the store does not hold (then nothing was resolved at all)."""

    resolved: list[int]
    already: dict[int, Resolution]
    unknown: list[int]


def resolve(engine: sa.Engine, ids: Collection[int], *, by: str, note: str, at: datetime) -> Resolved:
    """Resolve every outstanding dead letter of `ids`, in one transaction; none at all when any id is
    unknown (a mistyped id must not leave half a batch done). One resolved already keeps what was said
    when it was (a second operator's resolve never overwrites the first's note)."""
    wanted = sorted(set(ids))
    query = sa.select(D.c.id, D.c.resolved_at, D.c.resolved_by, D.c.resolution).where(D.c.id.in_(wanted))
    with store_errors(), _writing(engine) as conn:
        held = {row.id: row for row in conn.execute(query.with_for_update())}
        unknown = [i for i in wanted if i not in held]
        if unknown:
            return Resolved([], {}, unknown)
        already = {
            i: Resolution(row.resolved_at, row.resolved_by or "", row.resolution or "")
            for i, row in held.items()
            if row.resolved_at is not None
        }
        todo = [i for i in wanted if i not in already]
        if todo:
            values = {"resolved_at": at, "resolved_by": by[:255], "resolution": note}
            conn.execute(sa.update(D).where(D.c.id.in_(todo), D.c.resolved_at.is_(None)).values(**values))
    return Resolved(todo, already, [])


def reopen(engine: sa.Engine, id_: int) -> Resolution | None:
    """Make a resolved dead letter outstanding again; what it said when resolved, or None when it was
    not resolved. Raises KeyError when the store holds no such dead letter."""
    query = sa.select(D.c.resolved_at, D.c.resolved_by, D.c.resolution).where(D.c.id == id_)
    with store_errors(), _writing(engine) as conn:
        row = conn.execute(query.with_for_update()).first()
        if row is None:
            raise KeyError(id_)
        if row.resolved_at is None:
            return None
        conn.execute(sa.update(D).where(D.c.id == id_).values(resolved_at=None, resolved_by=None, resolution=None))
    return Resolution(row.resolved_at, row.resolved_by or "", row.resolution or "")


def purge(engine: sa.Engine, *, resolved_before: datetime) -> int:
    """Delete, whole, every dead letter resolved before `resolved_before`; how many. Outstanding ones stay."""
    stmt = sa.delete(D).where(D.c.resolved_at.is_not(None), D.c.resolved_at < resolved_before)
    with store_errors(), _writing(engine) as conn:
        return int(conn.execute(stmt).rowcount or 0)


@contextlib.contextmanager
def _writing(engine: sa.Engine) -> Iterator[sa.Connection]:
    """A transaction that writes what it read: on SQLite one taking the write lock at its start
    (BEGIN IMMEDIATE, as the store's keep does), so a resolve racing a keep waits its turn rather than
    failing at its first write; PostgreSQL's row locks (FOR UPDATE) do the same there."""
    with engine.connect().execution_options(immediate=True) as conn, conn.begin():
        yield conn


def tally(engine: sa.Engine) -> tuple[int, int]:
    """How many dead letters are outstanding, and how many resolved."""
    resolved = sa.func.count(D.c.resolved_at)
    query = sa.select(sa.func.count() - resolved, resolved).select_from(D)
    with store_errors(), engine.connect() as conn:
        outstanding, done = conn.execute(query).one()
    return int(outstanding or 0), int(done or 0)
