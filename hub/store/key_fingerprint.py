"""The person-key secret's fingerprint in the database: the first process to open it records its own,
and a process whose secret gives another refuses to start, before it keys anyone (an NHS number keyed
under two secrets is two people in the record, for good: the events are on the kept-forever log)."""

from __future__ import annotations

import hashlib
import hmac
from datetime import UTC, datetime

import sqlalchemy as sa

from hub.store.database import DatabaseRefusedError
from hub.store.tables import key_fingerprint

_LABEL = b"carehub person-key fingerprint v1"  # (fixed: the fingerprint names the secret, never holds it)


def fingerprint(secret: bytes) -> str:
    """An HMAC-SHA256 of a fixed label under `secret`: equal for equal secrets, and no way back to it."""
    return hmac.new(secret, _LABEL, hashlib.sha256).hexdigest()


def hold_key_fingerprint(engine: sa.Engine, secret: bytes, *, source: str, record: bool = True) -> None:
    """Record the secret's fingerprint where the database has none (only where `record`: the hub's own
    processes, never a one-off command, which might carry a stale secret from elsewhere and lock every
    pod out); DatabaseRefusedError where it holds another (`source` says where this process's secret
    comes from)."""
    hold_fingerprint(engine, fingerprint(secret), source=source, record=record)


def hold_fingerprint(engine: sa.Engine, mine: str, *, source: str, record: bool = True) -> None:
    """hold_key_fingerprint for a fingerprint already taken (a replay gives its record that of the key
    its log was written under, which it may know only as another database's fingerprint)."""
    with engine.connect().execution_options(immediate=True) as connection, connection.begin():
        held = connection.execute(sa.select(key_fingerprint.c.fingerprint)).scalar_one_or_none()
        if held is None and not record:
            return
        if held is None:
            row = {"id": 1, "fingerprint": mine, "recorded_at": datetime.now(UTC)}
            inserted = connection.execute(_insert_once(engine, row))
            if inserted.rowcount == 1:
                return
            held = connection.execute(sa.select(key_fingerprint.c.fingerprint)).scalar_one()
    if not hmac.compare_digest(held, mine):
        shown = engine.url.render_as_string(hide_password=True)
        raise DatabaseRefusedError(
            f"the person-key secret ({source}) does not match the one the record in {shown} was built "
            "with: people would be keyed apart from their records. Configure CAREHUB_SECURITY__KEY_SECRET "
            "(or secrets.json in --data-dir) as the hub's other processes have it; it is never rotated "
            "without re-keying the record"
        )


def held_fingerprint(engine: sa.Engine) -> str | None:
    """The fingerprint the database holds: None where it holds none (or predates migration 0014)."""
    if not sa.inspect(engine).has_table(key_fingerprint.name):
        return None
    with engine.connect() as connection:
        return connection.execute(sa.select(key_fingerprint.c.fingerprint)).scalar_one_or_none()


def _insert_once(engine: sa.Engine, row: dict[str, object]) -> sa.Insert:
    """The row, unless another process recorded one first (then nothing, and its fingerprint is read)."""
    if engine.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        return pg_insert(key_fingerprint).values(row).on_conflict_do_nothing()
    from sqlalchemy.dialects.sqlite import insert as sqlite_insert

    return sqlite_insert(key_fingerprint).values(row).on_conflict_do_nothing()
