"""Rebuilding the record from the log: `carehub replay`, and `carehub record hash` to compare a
rebuilt record with the live one (registered on hub.cli's app)."""

from __future__ import annotations

import asyncio
import shutil
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer
from rich.markup import escape

from hub.cli_base import (
    DATA_DIR_DEFAULT,
    NO_LOG,
    WHEN,
    HeldDir,
    app,
    console,
    counted,
    fail,
    make_settings,
    open_existing,
    record_app,
    refuse_backwards,
    typed_time,
)
from hub.instants import from_, up_to
from hub.settings import Settings

if TYPE_CHECKING:
    from hub.replay import ReplayResult
    from hub.replay_key import Candidate, KeyCheck, LogKey


@record_app.command("hash")
def record_hash_command(data_dir: HeldDir = None) -> None:
    """A canonical hash of the record (every current resource and applied event id)."""
    from hub.store.hashing import record_hash

    digest, resources, events = record_hash(open_existing(data_dir).engine)
    typer.echo(f"{digest}  {resources} resources, {events} events applied")


def _holds_a_record(engine: Any) -> bool:
    from hub.replay_write import holds_anything

    with engine.connect() as conn:
        return holds_anything(conn)


@app.command()
def replay(
    into: Annotated[
        str,
        typer.Option(
            "--into",
            help="Where the rebuilt record goes: a new folder (its carehub.db), or the URL of an empty database; "
            "this alone decides (CAREHUB_DATABASE_URL is not used)",
        ),
    ],
    since: Annotated[
        datetime | None, typer.Option(parser=from_, help=f"Only events from this time ({WHEN}: its start)")
    ] = None,
    until: Annotated[
        datetime | None,
        typer.Option(parser=up_to, help=f"Only events that say they happened by this time ({WHEN}: its end)"),
    ] = None,
    as_of: Annotated[
        datetime | None,
        typer.Option(
            "--as-of",
            parser=up_to,
            help=f"The record as the hub held it at this moment: only events written to its log by then, "
            f"whatever time they say they happened ({WHEN}: its end)",
        ),
    ] = None,
    workers: Annotated[
        int | None,
        typer.Option(min=1, help="Processes folding the log's partitions (default: one per core, at most 4)"),
    ] = None,
    data_dir: Annotated[
        Path | None,
        typer.Option(
            "--data-dir",
            help="The running hub whose embedded broker's log to read, if KAFKA_BOOTSTRAP_SERVERS is unset",
            show_default=DATA_DIR_DEFAULT,
        ),
    ] = None,
) -> None:
    """Rebuild the shared care record from the Kafka log into a fresh database, and print its hash."""
    from hub.store.hashing import record_hash

    refuse_backwards(since, until, as_of)
    settings = make_settings(data_dir)
    url, target = _replay_target(into, settings)
    from hub.embedded import shared_kafka

    bootstrap = shared_kafka(settings)
    if not bootstrap:
        console.print(f"[red]carehub replay {NO_LOG}[/red]")
        raise typer.Exit(2)
    made = _made_by_replay(into, url)  # all a failed replay removes: never a database that was there before it
    from hub.replay_key import candidates, keyed_note

    found = candidates(settings)  # (read before --into is made: it may be the folder the hub's secrets are in)
    engine = None
    try:
        engine = _open_empty(url, target)
        checked = _log_key(bootstrap, found, engine, target, made)
        result = _replay_record(bootstrap, engine, target, made, since, until, as_of, workers)
        held_before = _hold_log_key(engine, checked.key, target)  # (only once the record is written)
        if settings.coordination.enabled:
            _replay_coordination(settings, bootstrap, engine, target, made, since, until, as_of)
    except BaseException:  # (failed, refused or stopped: what it made is no record to trust, nor an empty one)
        if engine is not None:
            engine.dispose()
        _remove(made)
        raise
    digest, resources, events = record_hash(engine)
    period = since is not None or until is not None or as_of is not None
    if period and not result.applied:
        console.print(
            "[yellow]warning: no event on the log falls in the period asked for (--since/--until/--as-of): "
            "the rebuilt record is empty[/yellow]"
        )
    summary = _replay_summary(result, target, resources, since=since, until=until, as_of=as_of)
    console.print(escape(summary), soft_wrap=True)
    note = escape(keyed_note(checked, settings, held_before))
    console.print(note if checked.key else f"[yellow]{note}[/yellow]", soft_wrap=True)
    typer.echo(f"{digest}  {resources} resources, {events} events applied")


def _log_key(bootstrap: str, found: list[Candidate], engine: Any, target: str, made: list[Path]) -> KeyCheck:
    """The candidates checked against the first people on the log (hub.replay_key), before the fold;
    refused (one line, exit 2) where --into holds the fingerprint of another key than the log's, and
    on failure or Ctrl-C one line saying nothing was written (exit 1 or 130), as the replay's own."""
    from hub.core.errors import HubError
    from hub.replay_key import log_key
    from hub.store.key_fingerprint import held_fingerprint

    try:
        checked = asyncio.run(log_key(bootstrap, found))
    except (RuntimeError, HubError) as exc:  # (the log unreachable)
        fail(f"{exc} (replaying into {target}): {_left(target, made, written=False)}", 1)
    except KeyboardInterrupt:
        console.print(f"[yellow]replay interrupted: {escape(_left(target, made, written=False))}[/yellow]")
        raise typer.Exit(130) from None
    if checked.key is not None and held_fingerprint(engine) not in (None, checked.key.fingerprint):
        _refuse_another_key(target, checked.key)
    return checked


def _hold_log_key(engine: Any, key: LogKey | None, target: str) -> str | None:
    """Record in the rebuilt record the fingerprint of the key its log was written under (checked
    against it), so a hub with another secret is refused on it: only once the replay's own writes are
    done (a failed replay leaves none). None, or where there is no such key and --into held a
    fingerprint already, what became of it."""
    from hub.store.database import DatabaseRefusedError
    from hub.store.key_fingerprint import held_fingerprint, hold_fingerprint

    if key is None:
        held = held_fingerprint(engine)
        return f"the fingerprint {target} held before is left as it was, unchecked" if held is not None else None
    try:
        hold_fingerprint(engine, key.fingerprint, source=f"the log's, from {key.found_in}")
    except DatabaseRefusedError:  # (another recorded since it was checked)
        _refuse_another_key(target, key)
    return None


def _refuse_another_key(target: str, key: LogKey) -> NoReturn:
    fail(
        f"--into {target} holds the fingerprint of another person-key secret than the one the log was written "
        f"under (that in {key.found_in}): everyone in the rebuilt record would be keyed apart from it; give "
        "--into a new folder, or an empty database that no hub with another secret has used"
    )


def _open_empty(url: str, target: str) -> Any:
    """The engine of the database replay writes into, refused (one line, exit 2) if it will not
    answer or already holds a record: said before minutes of folding, naming the database."""
    from hub.core.errors import StoreUnavailableError
    from hub.store.database import open_engine

    try:
        engine = open_engine(url)
    except StoreUnavailableError as exc:
        fail(f"--into: {exc}")
    if _holds_a_record(engine):
        engine.dispose()
        refused = f"replay writes into an empty record; {target} already holds one"
        fail(f"{refused}: give --into a new folder, or an empty database")
    return engine


def _replay_record(
    bootstrap: str,
    engine: Any,
    target: str,
    made: list[Path],
    since: datetime | None,
    until: datetime | None,
    as_of: datetime | None,
    workers: int | None,
) -> ReplayResult:
    """The record folded from the log and written to `engine`; on failure or Ctrl-C, one line saying
    what is left of it (the caller removes what replay made) and exit 1 or 130."""
    from rich.progress import Progress, SpinnerColumn, TextColumn

    from hub.core.errors import HubError
    from hub.replay import replay as rebuild

    # the spinner is gone when it stops (and never drawn where no one watches), so nothing of it
    # follows what is printed last: an error, or the summary
    spinner = SpinnerColumn(), TextColumn("{task.description}")
    with Progress(*spinner, console=console, transient=True, disable=not console.is_terminal) as progress:
        task = progress.add_task("reading the log", total=None)
        try:
            return asyncio.run(
                rebuild(
                    bootstrap,
                    engine,
                    since=since,
                    until=until,
                    progress=lambda read, _: progress.update(task, description=f"{read:,} events read"),
                    workers=workers,
                    received_by=as_of,
                )
            )
        except (RuntimeError, HubError) as exc:  # (the log unreachable, the database failing the write)
            fail(f"{exc} (replaying into {target}): {_left(target, made, _written(engine))}", 1)
        except KeyboardInterrupt:
            left = _left(target, made, _written(engine))
            console.print(f"[yellow]replay interrupted: {escape(left)}[/yellow]")
            raise typer.Exit(130) from None


def _replay_coordination(
    settings: Settings,
    bootstrap: str,
    engine: Any,
    target: str,
    made: list[Path],
    since: datetime | None,
    until: datetime | None,
    as_of: datetime | None,
) -> None:
    """The coordination engine's tasks and clocks folded from the log into the record just written;
    on failure or Ctrl-C, one line saying what is left (the record without them) and exit 1 or 130."""
    from hub.core.tasks import Engine
    from hub.replay_coordination import rebuild as rebuild_coordination
    from hub.rules import load_rules

    try:
        folded = asyncio.run(
            rebuild_coordination(
                bootstrap, engine, Engine(load_rules(settings.coordination.rules)), since=since, until=until,
                received_by=as_of,
            )
        )  # fmt: skip
    except KeyboardInterrupt:
        console.print(f"[yellow]replay interrupted: {escape(_left(target, made, written=True))}[/yellow]")
        raise typer.Exit(130) from None
    except RuntimeError as exc:  # (Kafka gone between the two reads of the log, say)
        fail(f"{exc} (replaying into {target}): {_left(target, made, written=True)}", 1)
    console.print(f"coordination: {folded.people:,} people's tasks and episodes, {folded.clocks:,} clocks pending")


def _written(engine: Any) -> bool:
    """Whether a replay that stopped wrote the record: a stop while the load committed lets the commit
    end; a database that no longer answers holds none of it (the load is one transaction)."""
    import sqlalchemy as sa

    try:
        return _holds_a_record(engine)
    except sa.exc.SQLAlchemyError:
        return False


def _left(target: str, made: list[Path], written: bool) -> str:
    """What a replay that stopped part way leaves, and what to do next."""
    if made:
        return f"nothing kept: removed {made[0]}, which this replay made; run it again"
    if written:
        return f"{target} holds the record but not the coordination tasks; empty it and replay again"
    return f"nothing was written to {target}; run it again"


def _replay_target(into: str, settings: Settings) -> tuple[str, str]:
    """The database a replay writes into, and its name as a person reads it: --into alone decides
    (a CAREHUB_DATABASE_URL set for the live hub is not where a rebuilt record should go)."""
    import sqlalchemy as sa

    if "://" in into:
        try:
            url = sa.make_url(into)
            url.get_dialect()  # (a database SQLAlchemy does not know is refused here, not as a traceback)
        except (sa.exc.ArgumentError, sa.exc.NoSuchModuleError):
            fail(f"--into {into!r} is neither a folder nor a database URL SQLAlchemy knows")
        shown = url.render_as_string(hide_password=True)
        if url.get_backend_name() not in ("sqlite", "postgresql"):
            fail(f"--into {shown}: the record is kept in SQLite or PostgreSQL, not {url.get_backend_name()}")
        if url.get_backend_name() == "sqlite" and url.database in (None, "", ":memory:"):
            fail(f"--into {shown} is a database in memory, gone when replay ends: give a file or a folder")
        return into, shown
    folder = Path(into)
    if folder.exists() and not folder.is_dir():
        fail(f"--into {into} is a file: give a new folder for the rebuilt record (or an empty database's URL)")
    file = (folder / "carehub.db").resolve()
    if settings.database_url or settings.db.url:
        console.print(
            escape(f"replaying into {file}, as --into says (CAREHUB_DATABASE_URL is not used)"), soft_wrap=True
        )
    return f"sqlite:///{file}", str(file)


def _made_by_replay(into: str, url: str) -> list[Path]:
    """What replay is about to make for its database, as a failed replay removes it: the outermost
    new folder (a new --into folder, or that of a SQLite file named by URL, as open_engine makes it),
    else a new SQLite file; nothing for a database that is there already, or a server's."""
    import sqlalchemy as sa

    if "://" in into:
        parsed = sa.make_url(url)
        if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
            return []
        file = Path(str(parsed.database)).resolve()
    else:
        file = (Path(into) / "carehub.db").resolve()
    folder = file.parent
    if folder.exists():  # the file, and the journals SQLite keeps beside it, that are not there yet
        beside = [file.with_name(f"{file.name}-{end}") for end in ("wal", "shm", "journal")]
        return [] if file.exists() else [path for path in (file, *beside) if not path.exists()]
    while not folder.parent.exists():
        folder = folder.parent
    return [folder]


def _remove(made: list[Path]) -> None:
    """Remove what this replay made (a folder whole)."""
    for path in made:
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


def _replay_summary(
    result: ReplayResult,
    target: str,
    resources: int,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    as_of: datetime | None = None,
) -> str:
    """Where the record went, and what became of every event read (nothing left unexplained)."""
    late = ""  # records the log held only after --as-of
    bounds = [name for name, given in (("--since", since), ("--until", until), ("--as-of", as_of)) if given is not None]
    ignored = result.events - result.applied - result.skipped
    if as_of is not None:
        late = f"{counted(result.left_out, 'record')} left out (written to the log after {typed_time(as_of)}), "
        ignored -= result.left_out
        bounds.remove("--as-of")
    why = "clock ticks, which the record does not keep, or repeats of events already applied"
    why += f", or outside {'/'.join(bounds)}" if bounds else ""
    return (
        f"replayed {counted(result.events, 'event')} in {result.seconds:.1f}s on "
        f"{counted(result.workers, 'process', 'processes')} into {target}: {result.applied:,} applied, {late}"
        + (f"{ignored:,} with nothing to apply ({why}), " if ignored else "")
        + f"{result.skipped:,} not CareHub events; {counted(resources, 'resource')}"
    )
