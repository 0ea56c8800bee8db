"""`carehub deadletters resolve ID... --note`, `reopen ID` and `purge --older-than DAYS`: what an
operator did about rejected input, so `carehub deadletters` lists what is still outstanding, and
resolved input (patient data) is not kept for ever (registered on hub.cli_deadletters' app).

Who resolved it is the name given with --by, else the login running the command: the command line
has no other identity (anyone who can run it can read the whole store)."""

from __future__ import annotations

import getpass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated

import typer

from hub.cli_base import HeldDir, console, counted, fail, open_existing
from hub.cli_deadletters import deadletters_app, shown
from hub.instants import UK

MOST_ID = 2**31 - 1  # (PostgreSQL's integer: a larger id is no dead letter's)
Note = Annotated[
    str,
    typer.Option(
        "--note",
        help="What was done: 'resent fixed as MSH-10 X', 'sender asked to resend', 'test message, nothing to do'",
        show_default=False,
    ),
]


def _data_dir(context: typer.Context, data_dir: Path | None) -> Path | None:
    return data_dir or (context.obj if isinstance(context.obj, Path) else None)


@deadletters_app.command("resolve")
def resolve(
    context: typer.Context,
    ids: Annotated[
        list[int],
        typer.Argument(metavar="ID...", help="Ids as `carehub deadletters` lists them", min=1, max=MOST_ID),
    ],
    note: Note,
    by: Annotated[str | None, typer.Option(help="Who resolved them (default: your login)")] = None,
    data_dir: HeldDir = None,
) -> None:
    """Mark dead letters resolved, saying what was done: they leave the outstanding listing.

    All or none: an id the store does not hold resolves nothing. One resolved already keeps what was
    said then. A file's row refused again is outstanding again."""
    from hub.store.dead_letter_status import resolve as resolved_in

    if not note.strip():
        fail("--note is empty: say what was done about them (resent fixed, sender asked to resend, nothing to do)")
    who = (_login() if by is None else by).strip()
    if not who:
        fail("--by is empty: say who resolved them")
    if len(who) > 255:
        fail(f"--by is {len(who)} characters: give a name of at most 255")
    state = open_existing(_data_dir(context, data_dir))
    done = resolved_in(state.engine, ids, by=who, note=note.strip(), at=datetime.now(UTC))
    if done.unknown:
        listed = ", ".join(str(i) for i in done.unknown)
        fail(
            f"no dead letter {listed} in the dead-letter store, so none was resolved: carehub deadletters "
            "--all lists their ids"
        )
    for id_, said in done.already.items():
        console.print(
            f"dead letter {id_} was resolved already, {said.at.astimezone(UK):%Y-%m-%d %H:%M %Z} by "
            f"{shown(said.by)}: {shown(said.note)} (left as it was; carehub deadletters reopen {id_} to undo it)"
        )
    if done.resolved:
        listed = ", ".join(str(i) for i in done.resolved)
        console.print(f"resolved {counted(len(done.resolved), 'dead letter')} ({listed}) by {shown(who)}")


@deadletters_app.command("reopen")
def reopen(
    context: typer.Context,
    id_: Annotated[int, typer.Argument(metavar="ID", help="A resolved dead letter's id", min=1, max=MOST_ID)],
    data_dir: HeldDir = None,
) -> None:
    """Make a resolved dead letter outstanding again (resolved by mistake, or the fix did not work)."""
    from hub.store.dead_letter_status import reopen as reopened

    state = open_existing(_data_dir(context, data_dir))
    try:
        was = reopened(state.engine, id_)
    except KeyError:
        fail(f"no dead letter {id_} in the dead-letter store: carehub deadletters --all lists their ids")
    if was is None:
        console.print(f"dead letter {id_} is outstanding already: nothing to reopen")
        return
    console.print(
        f"dead letter {id_} is outstanding again (it was resolved {was.at.astimezone(UK):%Y-%m-%d %H:%M %Z} "
        f"by {shown(was.by)}: {shown(was.note)})"
    )


@deadletters_app.command("purge")
def purge(
    context: typer.Context,
    older_than: Annotated[
        int,
        typer.Option(
            "--older-than",
            metavar="DAYS",
            help="Delete dead letters resolved more than DAYS days ago (your retention period)",
            show_default=False,
            max=36_500,
        ),
    ],
    data_dir: HeldDir = None,
) -> None:
    """Delete, whole, dead letters resolved more than DAYS days ago: they hold patient data, kept no
    longer than your retention period. Outstanding ones are never deleted."""
    from hub.store.dead_letter_status import purge as purged

    if older_than < 1:
        fail(f"--older-than {older_than}: give a number of days, at least 1")
    before = datetime.now(UTC) - timedelta(days=older_than)
    state = open_existing(_data_dir(context, data_dir))
    gone = purged(state.engine, resolved_before=before)
    console.print(
        f"deleted {counted(gone, 'dead letter')} resolved before {before.astimezone(UK):%Y-%m-%d %H:%M %Z}; "
        "outstanding ones are kept"
    )


def _login() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # (no login name: a container's numeric user)
        return ""
