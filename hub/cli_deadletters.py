"""`carehub deadletters`: what was rejected and is still outstanding, which message it was and why;
`deadletters show ID`: one entry whole, to fix and resend (registered on hub.cli's app). Resolving,
reopening and purging them: hub.cli_deadletter_actions.

A dead letter's content is what a sender sent: names, NHS numbers, addresses. These commands print
it for the operator who runs them and for no one else: nothing of it is logged."""

from __future__ import annotations

import csv
import io
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import orjson
import typer
from rich.markup import escape
from rich.table import Table

from hub.cli_base import HeldDir, app, console, counted, fail, open_existing
from hub.core.errors import kept_in_part
from hub.core.ports import Json
from hub.instants import UK
from hub.terminal import controls_escaped, listing

if TYPE_CHECKING:
    from hub.store.queries import KeptDeadLetter

deadletters_app = typer.Typer(
    help="Rejected input kept in the dead-letter store: list what is outstanding, show one whole, resolve it."
)
app.add_typer(deadletters_app, name="deadletters")
BOM = b"\xef\xbb\xbf"


@deadletters_app.callback(invoke_without_command=True)
def deadletters(
    context: typer.Context,
    data_dir: HeldDir = None,
    limit: Annotated[int, typer.Option(help="How many, newest first", min=1)] = 20,
    all_: Annotated[bool, typer.Option("--all", help="Resolved ones too, with what was done")] = False,
    source: Annotated[
        str | None, typer.Option(help="Only from this sender: its ODS code (RXX) or source (urn:ods:RXX)")
    ] = None,
) -> None:
    """Show the outstanding rejected input: its id, the message it was and the reason (--all: resolved too)."""
    from hub.store.dead_letter_status import tally
    from hub.store.queries import recent_dead_letters

    if context.invoked_subcommand is not None:
        context.obj = data_dir  # (for `deadletters --data-dir D show ID`)
        return
    state = open_existing(data_dir)
    outstanding, resolved = tally(state.engine)
    table = listing("id", "received", "source", "origin", "message", "reason", *(["resolved"] if all_ else []))
    table.title = f"{counted(outstanding, 'dead letter')} outstanding, {resolved} resolved" + (
        "" if all_ or not resolved else " (--all lists them too)"
    )
    table.caption = (
        "carehub deadletters show ID: one entry whole (its content holds patient data); "
        "carehub deadletters resolve ID --note '...': what was done about it"
    )
    letters = recent_dead_letters(state.engine, limit, resolved_too=all_, source=source)
    if source:
        table.title = f"{table.title}; listed: from {shown(source)} only"
    if not letters:
        where = f" from {shown(source)}" if source else ""
        hint = "" if all_ or not resolved else "; --all lists resolved ones too"
        console.print(f"no dead letters{where} to list ({outstanding} outstanding, {resolved} resolved in all{hint})")
        return
    for letter in letters:
        table.add_row(
            str(letter.id),
            received(letter),
            shown(letter.source),
            shown(letter.origin),
            shown(message_id(letter)),
            shown("; ".join(issues(letter.reason))),
            *([resolution_said(letter)] if all_ else []),
        )
    console.print(table)


@deadletters_app.command("show")
def show(
    context: typer.Context,
    id_: Annotated[int, typer.Argument(metavar="ID", help="The entry's id, as `carehub deadletters` lists it")],
    data_dir: Annotated[
        Path | None,
        typer.Option(
            "--data-dir",
            help="Where the hub keeps its state (default: the --data-dir given before `show`, else "
            "CAREHUB_DATA_DIR, else var); as for "
            "`carehub deadletters`",
            show_default=False,
        ),
    ] = None,
    raw: Annotated[
        bool, typer.Option("--raw", help="Write the content exactly as kept and nothing else (redirect it to a file)")
    ] = False,
    partial: Annotated[
        bool,
        typer.Option(
            "--partial",
            help="With --raw, write an entry kept in part (the head of an input too large to keep whole): "
            "it is not the input, and its last line is cut short",
        ),
    ] = False,
) -> None:
    """One dead letter whole, to fix and resend: its reason, then its content (patient data).

    When, from where, which message, every issue of the reason, then the content as text; --raw writes
    the bytes as kept and nothing else (an entry kept in part only with --partial)."""
    from hub.store.queries import dead_letter_by_id

    data_dir = data_dir or (context.obj if isinstance(context.obj, Path) else None)
    if raw:  # (stdout is the content's alone, redirected to a file: whatever goes wrong is said on stderr)
        console.file = sys.stderr
    if raw and sys.stdout.isatty():
        fail(
            f"--raw writes the bytes as kept, not to a terminal: redirect them (carehub deadletters show {id_} "
            "--raw > FILE)"
        )
    state = open_existing(data_dir)
    letter = dead_letter_by_id(state.engine, id_)
    if letter is None:
        fail(f"no dead letter {id_} in the dead-letter store: carehub deadletters lists their ids")
    if raw:
        _partial_raw(letter, allowed=partial)
        sys.stdout.flush()
        sys.stdout.buffer.write(letter.content)
        sys.stdout.buffer.flush()
        return
    console.print(details(letter))
    console.print("content, as text (CR line ends as new lines; bytes not UTF-8 and control characters as \\xNN):")
    sys.stdout.flush()
    text = readable(letter.content)
    sys.stdout.buffer.write(text.encode(sys.stdout.encoding or "utf-8", errors="backslashreplace"))
    sys.stdout.buffer.write(b"" if text.endswith("\n") else b"\n")
    sys.stdout.buffer.flush()


def _partial_raw(letter: KeptDeadLetter, *, allowed: bool) -> None:
    """Refuse (exit 2) to write an entry kept in part as if it were the input, unless `allowed`; then
    say on stderr what it is. Resent as it is, its rows cut short would be applied as if whole."""
    whole = kept_in_part(letter.reason)
    if whole is None:
        return
    kept = f"only the first {counted(letter.size, 'byte')} of {counted(whole[0], 'byte')} (sha256 {whole[1]}) are kept"
    if not allowed:
        fail(
            f"dead letter {letter.id} is kept in part: {kept}, so its content is not the input and its last "
            "line is cut short; resend the original input, or add --partial to write the part kept"
        )
    console.print(f"warning: dead letter {letter.id} is kept in part: {kept}; its last line is cut short")


def details(letter: KeptDeadLetter) -> Table:
    """Everything the store keeps about one dead letter but its content."""
    table = listing("", "", title=f"Dead letter {letter.id}")
    table.show_header = False
    table.add_row("received", received(letter))
    table.add_row("source", shown(letter.source))
    table.add_row("origin", shown(letter.origin))
    table.add_row("message", shown(message_id(letter)))
    table.add_row("content", content_said(letter))
    for n, issue in enumerate(issues(letter.reason)):
        table.add_row("reason" if n == 0 else "", shown(issue))
    table.add_row("status", resolution_said(letter))
    return table


def resolution_said(letter: KeptDeadLetter) -> str:
    """Outstanding, or when, by whom and what was done (the operator's words, shown as typed)."""
    done = letter.resolution
    if done is None:
        return "outstanding"
    return shown(f"resolved {done.at.astimezone(UK):%Y-%m-%d %H:%M %Z} by {done.by}: {done.note}")


def content_said(letter: KeptDeadLetter) -> str:
    """What the content is: its size and SHA-256, or, kept in part, the whole input's and how much is kept."""
    whole = kept_in_part(letter.reason)
    if whole is None:
        return f"{counted(letter.size, 'byte')}, sha256 {letter.digest}"
    return f"kept in part: the first {counted(letter.size, 'byte')} of {counted(whole[0], 'byte')}, sha256 {whole[1]}"


def message_id(letter: KeptDeadLetter) -> str:
    """What names the rejected message: an HL7 v2 message's control id (MSH-10, read from the content
    kept) and type; a file row's number and its referral_id; else the content's digest. Kept in part
    (the head of an input too large to keep whole): the whole input's size and digest too."""
    said = [_named(letter)]
    whole = kept_in_part(letter.reason)
    if whole is not None:
        said.append(f"kept in part of {counted(whole[0], 'byte')}, sha256 {whole[1]}")
    return ", ".join(s for s in said if s) or f"sha256 {letter.digest[:12]}"


def _named(letter: KeptDeadLetter) -> str:
    from adapters.hl7v2.message import read_header

    head = letter.content.removeprefix(BOM).lstrip(b"\x0b\x1c\r\n\t ")
    header = read_header(head) if head.startswith((b"MSH", b"FHS", b"BHS")) else None
    if header is not None:
        kind = "^".join(p for p in (header.message_type, header.trigger_event) if p)
        return f"MSH-10 {header.control_id or '(empty)'}" + (f" ({kind})" if kind else "")
    said = []
    _, marked, row = letter.origin.rpartition("#row=")
    if marked:
        said.append(f"row {row}")
    referral = referral_id(letter.content)
    if referral:
        said.append(f"referral_id {referral}")
    return ", ".join(said)


def referral_id(content: bytes) -> str | None:
    """The referral_id of a referral file's row (the CSV header and the row) or JSON document, if it says one."""
    content = content.removeprefix(BOM)
    try:
        if content.lstrip()[:1] == b"{":
            document = orjson.loads(content)
            value = document.get("referral_id") if isinstance(document, dict) else None
        else:
            row = next(csv.DictReader(io.StringIO(content.decode("utf-8", errors="replace"))), None)
            value = row.get("referral_id") if row else None
    except (orjson.JSONDecodeError, csv.Error):
        return None
    return value.strip() if isinstance(value, str) and value.strip() else None


def issues(reason: Json) -> list[str]:
    """Each issue of an OperationOutcome as a line: its diagnostics, then the fields it names."""
    said = []
    for issue in reason.get("issue") or []:
        if not isinstance(issue, dict):
            continue
        where = ", ".join(str(e) for e in issue.get("expression") or [])
        text = str(issue.get("diagnostics") or issue.get("code") or "")
        said.append(f"{text} [{where}]" if where else text)
    return said or ["(no reason kept)"]


def received(letter: KeptDeadLetter) -> str:
    """When it came; refused more than once (the same input sent again), how often and when last."""
    first = f"{letter.received_at.astimezone(UK):%Y-%m-%d %H:%M:%S %Z}"
    if letter.refused_times < 2 or letter.last_received_at is None:
        return first
    last = f"{letter.last_received_at.astimezone(UK):%Y-%m-%d %H:%M:%S %Z}"
    return f"{first}, refused {letter.refused_times} times, last {last}"


def readable(content: bytes) -> str:
    """Content as text a terminal shows as it is: UTF-8, a byte that is not as \\xNN, each CR, LF or
    CRLF line end as a new line, and control characters as \\xNN."""
    text = content.decode("utf-8", errors="backslashreplace").replace("\r\n", "\n").replace("\r", "\n")
    return controls_escaped(text)


def shown(value: str) -> str:
    """A value from a dead letter in a Rich table: its control characters escaped, no markup."""
    return escape(controls_escaped(value))
