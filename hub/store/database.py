"""Engines and migrations: a SQLite file by default, PostgreSQL when CAREHUB_DATABASE_URL names one.

`open_engine` brings the schema to the newest Alembic revision before anything uses it, under a lock
so that several workers starting at once migrate it once; asked to migrate only an empty database, it
refuses one behind the code (a one-off command must not migrate a shared database under older pods:
`carehub up`, `worker` and `migrate` do that), and whatever it is asked, one newer than the code. A
SQLite file it makes, and its folder, are its user's alone (0600, 0700): the record holds patient data.
"""

from __future__ import annotations

import logging
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import orjson
import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util import CommandError

from hub.core.errors import HubError, StoreUnavailableError

log = logging.getLogger(__name__)
MIGRATIONS = Path(__file__).with_name("migrations")
_MIGRATION_LOCK = 0x4361_7265_4875_62  # "CareHub": the PostgreSQL advisory lock key
PRIVATE_FOLDER, PRIVATE_FILE = 0o700, 0o600
_warned: set[Path] = set()  # paths open to others already named in a warning (once each per process)
# migrate: True, to the code's revision; "empty", only a database with no schema yet (one behind is
# refused); False, not at all
Migrate = bool | Literal["empty"]


@dataclass(eq=False)
class DatabaseRefusedError(HubError):
    """This process may not use the database as it is: its schema is newer than the code, or behind it
    for a command that does not migrate, or its record was built with another person-key secret."""

    code: str = "conflict"


def open_engine(url: str, *, migrate: Migrate = True, **options: Any) -> sa.Engine:
    """An engine for `url` with the schema current; StoreUnavailableError if the database won't answer,
    DatabaseRefusedError if its schema is newer than the code (or behind it, where `migrate` is "empty")."""
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
            upgrade(engine, only_empty=migrate == "empty")
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
    folder = path.is_dir()
    # (a folder: the data directory, whose secrets.json holds the key that finds a person in the record
    # and the one that signs tokens, wherever the record is; a file: a SQLite record)
    holds = "the hub's secrets (secrets.json) and may hold patient data" if folder else "patient data"
    log.warning(
        "%s is open to users other than its owner (mode %04o) and holds %s: chmod %o %s",
        path,
        mode,
        holds,
        PRIVATE_FOLDER if folder else PRIVATE_FILE,
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


def is_local(url: str) -> bool:
    """A SQLite file (the default <data_dir>/carehub.db, or one a URL names): one machine's, which any
    command may migrate and whose processes may make their own secrets; else a server's database,
    shared by processes that may run other versions of the hub."""
    return sa.make_url(url).get_backend_name() == "sqlite"


def upgrade(engine: sa.Engine, *, only_empty: bool = False) -> None:
    """Run every Alembic migration not yet applied, once, even with several processes starting.
    DatabaseRefusedError for a schema newer than the code, and (`only_empty`) for one behind it."""
    config = _config()
    head = head_revision()
    with engine.connect().execution_options(immediate=True) as connection, connection.begin():
        if engine.dialect.name == "postgresql":
            connection.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": _MIGRATION_LOCK})
        current = MigrationContext.configure(connection).get_current_revision()
        if current == head:
            return
        refuse_newer(current, head)
        if current is not None and only_empty:
            raise DatabaseRefusedError(
                f"the database's schema ({current}) is behind this CareHub ({head}), and this command does "
                "not migrate it (processes of the older hub may still use it): run `carehub migrate` first "
                "(or start the newer hub: `carehub up` and `carehub worker` migrate)"
            )
        log.info("migrating database from %s to %s", current or "empty", head)
        config.attributes["connection"] = connection
        command.upgrade(config, "head")


def refuse_newer(current: str | None, head: str | None) -> None:
    """DatabaseRefusedError where the database is at a revision this code does not know: a newer hub's."""
    if current is None:
        return
    try:
        ScriptDirectory.from_config(_config()).get_revision(current)
    except CommandError:
        raise DatabaseRefusedError(
            f"the database's schema ({current}) is newer than this CareHub ({head}): run the newer version, "
            "or restore the database from a backup taken before it was upgraded (deploy/README.md, Backups)"
        ) from None


def current_revision(engine: sa.Engine) -> str | None:
    """The Alembic revision the database is at."""
    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()
