"""Engines and migrations: a SQLite file by default, PostgreSQL when CAREHUB_DATABASE_URL names one.

`open_engine` brings the schema to the newest Alembic revision before anything uses it, under a lock
so that several workers starting at once migrate it once. A SQLite file it makes, and its folder, are
its user's alone (0600, 0700): the record holds patient data.
"""

from __future__ import annotations

import logging
import os
import stat
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
PRIVATE_FOLDER, PRIVATE_FILE = 0o700, 0o600
_warned: set[Path] = set()  # paths open to others already named in a warning (once each per process)


def open_engine(url: str, *, migrate: bool = True, **options: Any) -> sa.Engine:
    """An engine for `url` with the schema current; StoreUnavailableError if the database won't answer."""
    parsed = sa.make_url(url)
    options.setdefault("json_serializer", json_text)
    options.setdefault("json_deserializer", orjson.loads)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:" and not parsed.query.get("uri"):
            make_private_file(Path(parsed.database))
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


def make_private_file(path: Path) -> None:
    """Make the empty file SQLite will use as a database, and its folder, for this user alone: the
    folder 0700, the file 0600, whatever the umask (SQLite gives the -wal and -shm files the database
    file's mode). A folder or file there already is left as it is, and named in a warning if others
    may read it (its owner may mean them to)."""
    make_private_folder(path.parent)
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE))
    except FileExistsError:
        for kept in (path, path.with_name(f"{path.name}-wal"), path.with_name(f"{path.name}-shm")):
            warn_if_open(kept)


def make_private_folder(path: Path) -> None:
    """Make the folder `path` (and any missing parents) for this user alone, 0700; one there already is
    left as it is, and named in a warning if others may read it."""
    try:
        path.mkdir(mode=PRIVATE_FOLDER, parents=True)
    except FileExistsError:
        if not path.is_dir():
            raise
        warn_if_open(path)


def warn_if_open(path: Path) -> None:
    """A warning, once per path, if users other than its owner may read, write or enter it."""
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        return
    if os.name != "posix" or not mode & 0o077 or path in _warned:
        return
    _warned.add(path)
    private = PRIVATE_FOLDER if path.is_dir() else PRIVATE_FILE
    log.warning(
        "%s is open to users other than its owner (mode %04o) and holds patient data: chmod %o %s",
        path,
        mode,
        private,
        path,
    )


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
