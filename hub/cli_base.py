"""What every `carehub` command shares: the Typer apps, the console and the common options."""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, NoReturn, TypeVar

import typer
from pydantic import BaseModel
from rich.markup import escape

from hub.instants import UK
from hub.settings import HttpSettings, MllpSettings, Settings
from hub.terminal import ControlSafeConsole

if TYPE_CHECKING:
    import sqlalchemy as sa

app = typer.Typer(help="CareHub: joins up health and social care around one person.", no_args_is_help=True)


@app.callback()
def _logging(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log at DEBUG (may show patient data)")] = False,
) -> None:
    """Logs go to stderr at INFO (WARNING for the Kafka client libraries); --verbose for DEBUG."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if not verbose:
        for noisy in ("carehub.kafka", "faststream", "aiokafka", "uvicorn", "alembic", "httpx"):
            logging.getLogger(noisy).setLevel(logging.WARNING)


topics_app = typer.Typer(help="The Kafka topic catalogue.", no_args_is_help=True)
ingest_app = typer.Typer(help="Feed files into the hub.", no_args_is_help=True)
app.add_typer(topics_app, name="topics")
app.add_typer(ingest_app, name="ingest")
agreements_app = typer.Typer(help="Information sharing agreements.", no_args_is_help=True)
app.add_typer(agreements_app, name="agreements")
optouts_app = typer.Typer(help="The national data opt-out.", no_args_is_help=True)
app.add_typer(optouts_app, name="optouts")
subscriptions_app = typer.Typer(help="Organisations' subscriptions to events.", no_args_is_help=True)
app.add_typer(subscriptions_app, name="subscriptions")
deliveries_app = typer.Typer(help="Webhook deliveries: see them, redeliver failed ones.", no_args_is_help=True)
app.add_typer(deliveries_app, name="deliveries")
record_app = typer.Typer(help="The shared care record.", no_args_is_help=True)
app.add_typer(record_app, name="record")
audit_app = typer.Typer(
    help="For auditors: verify the disclosure ledger, subject access, policy time travel, log export.",
    no_args_is_help=True,
)
app.add_typer(audit_app, name="audit")
console = ControlSafeConsole()  # (terminal controls in what it prints are shown as \xNN, never sent)
M = TypeVar("M", bound=BaseModel)
# how a moment is typed (hub.instants)
WHEN = "ISO 8601; without an offset, UK time; a date alone"

# what the commands that read the log say when there is none to read
NO_LOG = (
    "reads the Kafka log: set KAFKA_BOOTSTRAP_SERVERS, or run it while `carehub up` (or `carehub demo "
    "--serve`) runs on the same --data-dir (its embedded broker keeps the log in memory, only while it runs)"
)

# Options that are settings too default to None: the setting (its variable, else its default) then holds
DATA_DIR_DEFAULT = f"CAREHUB_DATA_DIR, else {Settings.model_fields['data_dir'].default}"
DataDir = Annotated[
    Path | None, typer.Option("--data-dir", help="Where the hub keeps its state", show_default=DATA_DIR_DEFAULT)
]
# the same, for commands that only read the state: they refuse a folder that holds none
HeldDir = Annotated[
    Path | None,
    typer.Option(
        "--data-dir",
        help="Where the hub keeps its state; a folder that holds none is refused (with CAREHUB_DATABASE_URL set, "
        "the database is there instead, and only secrets.json is read from here)",
        show_default=DATA_DIR_DEFAULT,
    ),
]
MllpPort = Annotated[
    int | None,
    typer.Option(
        "--mllp-port",
        help="MLLP listener port (0 = any free)",
        show_default=f"CAREHUB_MLLP__PORT, else {MllpSettings().port}",
    ),
]
HttpPort = Annotated[
    int | None,
    typer.Option(
        "--http-port",
        help="FHIR API port (0 = any free)",
        show_default=f"CAREHUB_HTTP__PORT, else {HttpSettings().port}",
    ),
]


def make_settings(data_dir: Path | None, mllp_port: int | None = None, http_port: int | None = None) -> Settings:
    """Settings from the environment, with the command line's options on top (None: not given). A
    CAREHUB_ variable that names no setting, or a setting's bad value: one line each, exit 2."""
    base = _from_environment(data_dir)
    update: dict[str, object] = {}
    if mllp_port is not None:
        update["mllp"] = MllpSettings(**{**base.mllp.model_dump(), "port": mllp_port})
    if http_port is not None:
        update["http"] = HttpSettings(**{**base.http.model_dump(), "port": http_port})
    return base.model_copy(update=update)


def _from_environment(data_dir: Path | None) -> Settings:
    from pydantic import ValidationError
    from pydantic_settings import SettingsError

    from hub.settings import setting_problems, unknown_variables

    problems = unknown_variables(os.environ)
    if not problems:
        try:
            return Settings() if data_dir is None else Settings(data_dir=data_dir)
        except (ValidationError, SettingsError) as exc:
            problems = setting_problems(exc, os.environ)
    for problem in problems[:-1]:
        console.print(f"[red]{escape(problem)}[/red]", soft_wrap=True)
    fail(problems[-1])


def refuse_local_record_on_shared_kafka(settings: Settings) -> None:
    """Exit 2 where consumers would join a shared Kafka's consumer groups with the record in the
    default SQLite file: almost always a database setting gone missing or misspelt, and what they
    took from the shared groups (offsets committed) would never reach the hub's database. A
    database URL given explicitly, sqlite: included, says it is meant."""
    if settings.bootstrap_servers() and not (settings.database_url or settings.db.url):
        fail(
            f"the record would go to a local SQLite file ({settings.database().removeprefix('sqlite:///')}) while "
            f"the consumer group {settings.kafka.group_id} on Kafka at {settings.bootstrap_servers()} is shared: "
            "set CAREHUB_DATABASE_URL to the hub's database (a sqlite:/// URL if a local file is meant)"
        )


def fail(message: str, code: int = 2) -> NoReturn:
    """Say what is wrong in one line (text, never markup: paths and payloads hold brackets) and exit."""
    console.print(f"[red]{escape(message)}[/red]", soft_wrap=True)
    raise typer.Exit(code)


def cells(*values: object) -> list[str]:
    """What the hub holds (names, ids, reasons, a webhook's error), as a Rich table's cells: shown as
    written, never read as markup (a "[/]" in a name would crash the table, a "[bold]" vanish); its
    terminal controls (an ESC in a name) the console shows as \\xNN (hub.terminal.ControlSafeConsole)."""
    return [escape(str(value)) for value in values]


def counted(n: int, one: str, many: str | None = None) -> str:
    """'1 entry', '2 entries': a count and its noun, agreeing."""
    return f"{n:,} {one if n == 1 else many or one + 's'}"


def refuse_backwards(since: datetime | None, until: datetime | None, as_of: datetime | None = None) -> None:
    """Exit 2 for a period that ends before it starts, or (replay's --as-of) that starts after the
    moment the record is asked as of: it would hold nothing, and say so only as 0 or a warning after
    the whole log had been read."""
    if since is not None and until is not None and since > until:
        fail(f"--since {typed_time(since)} is after --until {typed_time(until)}: the period ends before it starts")
    if since is not None and as_of is not None and since > as_of:
        fail(
            f"--since {typed_time(since)} is after --as-of {typed_time(as_of)}: the hub held no event of that period "
            "by then"
        )


def typed_time(moment: datetime) -> str:
    """A moment given on the command line, in UK time, to the minute (to the second where seconds were given)."""
    given = (moment.second, moment.microsecond) not in ((0, 0), (59, 999_999))  # (the end of a day: up_to)
    return f"{moment.astimezone(UK):%Y-%m-%d %H:%M{':%S' if given else ''} %Z}"


@dataclass(frozen=True)
class HubState:
    """A hub's existing state, opened for a command that only reads it."""

    settings: Settings
    engine: sa.Engine
    key: bytes = b""  # the person-key secret, where the command asked for it


def open_existing(data_dir: Path | None, *, person_keys: bool = False) -> HubState:
    """The state --data-dir (or CAREHUB_DATABASE_URL) names, for a command that only reads it. Where
    there is none: one line, exit 2, and nothing created (a mistyped --data-dir must not read as a
    hub with nothing in it). `person_keys`: the command finds people, so it needs the hub's key too."""
    from hub.store.database import is_local, open_engine, upgrade

    settings = make_settings(data_dir)
    url, configured = settings.database(), bool(settings.database_url or settings.db.url)
    where, check = _where(settings, configured)
    folder = settings.data_dir
    if not configured and folder.exists() and not folder.is_dir():
        fail(f"--data-dir {folder} is a file: give the folder the hub keeps its state in")
    file = _sqlite_file(url)
    if file is not None and not file.is_file():
        fail(f"no CareHub state {where} (no {file.name}): {check}")
    engine = open_engine(url, migrate=False)
    if not _holds_carehub_tables(engine):
        engine.dispose()
        fail(f"no CareHub state {where} (its database holds no CareHub tables): {check}")
    # (a local file is brought to this version; a server's database behind it is refused: older hubs
    # may still use it, and `carehub migrate` or the newer hub's `up` migrates it)
    upgrade(engine, only_empty=not is_local(url))
    return HubState(settings, engine, _person_key_secret(settings, engine) if person_keys else b"")


def _where(settings: Settings, configured: bool) -> tuple[str, str]:
    """Where the state was looked for, and what to check, as a person reads them."""
    if not configured:
        return f"in {settings.data_dir}", "check --data-dir (or set CAREHUB_DATABASE_URL to the hub's database)"
    import sqlalchemy as sa

    shown = sa.make_url(settings.database()).render_as_string(hide_password=True)
    return f"in {shown}, the database CAREHUB_DATABASE_URL names", "check CAREHUB_DATABASE_URL"


def _sqlite_file(url: str) -> Path | None:
    import sqlalchemy as sa

    parsed = sa.make_url(url)
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    return Path(parsed.database)


def _holds_carehub_tables(engine: sa.Engine) -> bool:
    import sqlalchemy as sa

    from hub.core.errors import StoreUnavailableError
    from hub.store.database import current_revision

    try:
        return current_revision(engine) is not None
    except sa.exc.DatabaseError as exc:
        if engine.dialect.name == "sqlite":  # a file, but not a database
            return False
        shown = engine.url.render_as_string(hide_password=True)
        raise StoreUnavailableError(f"the database {shown} is not answering: {exc.orig}") from exc


def _person_key_secret(settings: Settings, engine: sa.Engine) -> bytes:
    """The secret that turns an NHS number into the hub's person key: read, never made here (a new
    one would find nobody), and refused where the record was built with another."""
    from hub.secret_keys import load_secrets
    from hub.store.key_fingerprint import hold_key_fingerprint

    if settings.security.key_secret is not None:
        key = settings.security.key_secret.get_secret_value().encode()
        hold_key_fingerprint(engine, key, source="CAREHUB_SECURITY__KEY_SECRET", record=False)
        return key
    if not (settings.data_dir / "secrets.json").is_file():
        fail(
            f"no CareHub state in {settings.data_dir} (no secrets.json, which holds the key that finds "
            "a person in the record): check --data-dir, or set CAREHUB_SECURITY__KEY_SECRET"
        )
    secrets = load_secrets(settings)  # (it reads the file that is there)
    hold_key_fingerprint(engine, secrets.key, source=secrets.key_from, record=False)
    return secrets.key
