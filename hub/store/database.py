"""Engines and migrations: a SQLite file by default, PostgreSQL when CAREHUB_DATABASE_URL names one.

`open_engine` brings the schema to the newest Alembic revision before anything uses it, under a lock
so that several workers starting at once migrate it once.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import orjson
import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from hub.core.errors import StoreUnavailableError

log = logging.getLogger(__name__)
MIGRATIONS = Path(__file__).with_name("migrations")
_MIGRATION_LOCK = 0x4361_7265_4875_62  # "CareHub": the PostgreSQL advisory lock key


def open_engine(url: str, *, migrate: bool = True, **options: Any) -> sa.Engine:
    """An engine for `url` with the schema current; StoreUnavailableError if the database won't answer."""
    parsed = sa.make_url(url)
    options.setdefault("json_serializer", json_text)
    options.setdefault("json_deserializer", orjson.loads)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = sa.create_engine(parsed, connect_args={"timeout": 30}, **options)
        sa.event.listen(engine, "connect", _sqlite_pragmas)
        sa.event.listen(engine, "begin", _sqlite_begin)
    else:
        options.setdefault("pool_pre_ping", True)
        engine = sa.create_engine(parsed, **options)
    if migrate:
        try:
            upgrade(engine)
        except sa.exc.OperationalError as exc:
            engine.dispose()
            where = parsed.render_as_string(hide_password=True)
            raise StoreUnavailableError(f"database {where} is not answering: {exc.orig}") from exc
    return engine


def json_text(value: Any) -> str:
    """JSON text as every record column holds it (orjson: compact, UTF-8)."""
    return orjson.dumps(value).decode()


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    dbapi_connection.isolation_level = None  # we issue BEGIN ourselves (see _sqlite_begin)
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def _sqlite_begin(connection: sa.Connection) -> None:
    """Writers take the write lock up front (a deferred read-then-write can fail busy under WAL)."""
    immediate = connection.get_execution_options().get("immediate", False)
    connection.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


def _config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    return config


def head_revision() -> str | None:
    """The newest migration this code knows."""
    return ScriptDirectory.from_config(_config()).get_current_head()


def upgrade(engine: sa.Engine) -> None:
    """Run every Alembic migration not yet applied, once, even with several processes starting."""
    config = _config()
    head = head_revision()
    with engine.connect().execution_options(immediate=True) as connection, connection.begin():
        if engine.dialect.name == "postgresql":
            connection.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": _MIGRATION_LOCK})
        current = MigrationContext.configure(connection).get_current_revision()
        if current == head:
            return
        log.info("migrating database from %s to %s", current or "empty", head)
        config.attributes["connection"] = connection
        command.upgrade(config, "head")


def current_revision(engine: sa.Engine) -> str | None:
    """The Alembic revision the database is at."""
    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()
