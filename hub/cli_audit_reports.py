"""What the auditor's ledger reports share (hub.cli_audit): the ledger verified before a report reads
it, what a chain that verifies shows, a person the hub does not know told apart from one with nothing
disclosed, the subject-access summary line, rows and CSV (each decision with what it came to: a webhook
or mailbox permit is an attempt, disclosed, possibly disclosed or not), time travel's rows chosen and
written as CSV, and the files they write, readable by their owner alone (they hold patient data)."""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
from collections import Counter
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import IO, Annotated, Any

import typer
from rich.markup import escape

from hub.cli_base import console, counted, fail

UNVERIFIED = Annotated[
    bool,
    typer.Option(
        "--unverified",
        help="Report even if the ledger's hash chain is broken (with a warning): else a broken ledger is refused",
    ),
]


@contextlib.contextmanager
def private_file(path: Path, mode: str = "w") -> Iterator[IO[Any]]:
    """`path`, written readable by its owner alone (0600 whatever the umask, as the hub makes its
    database): into a new file beside it, made 0600 before a byte is written, which replaces `path`
    only once whole (so a file replaced is 0600 too, and a write that fails leaves it as it was)."""
    from hub.store.database import PRIVATE_FILE

    if path.is_dir():  # (said of `path`, not of the file beside it)
        raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(path))
    part = path.with_name(f".{path.name}.{secrets.token_hex(4)}.part")
    try:
        fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE)
    except OSError as exc:  # (no such folder, say: named as given)
        raise type(exc)(exc.errno, exc.strerror, str(path)) from None
    try:
        with os.fdopen(fd, mode, newline="" if "b" not in mode else None) as out:
            yield out
        os.replace(part, path)
    except BaseException:
        part.unlink(missing_ok=True)
        raise


# what `-` as a file to write is told (refuse_dash): each is a file, never standard output
_DASH = {
    "--csv": "the CSV is written to a file, readable by you alone, never to standard output (the table is "
    "printed there): give a file, e.g. --csv report.csv",
    "--out": "the export is written to a file, readable by you alone, with its public key beside it "
    "(FILE.pub.pem), never to standard output: give a file, e.g. --out log.ndjson",
}


def refuse_dash(option: str, path: Path | None) -> None:
    """Exit 2 for `-` as the file `option` names: no file name here (a file named "-" was written)."""
    if path is not None and str(path) == "-":
        fail(f"{option} -: {_DASH[option]}")


def chain_verdict(checked: int, anchor: tuple[int, str] | None, head: str | None = None) -> str:
    """What a chain of `checked` entries that verifies shows: a consistent chain alone proves nothing
    (anyone who can write the database can rewrite an entry and recompute every hash after it); one
    that still leads to a head kept outside the hub proves nothing up to that head was changed, and of
    the entries after it (`head`: today's, to keep) no more than that they are consistent."""
    if anchor is None:
        return (
            f"ledger chain consistent: {counted(checked, 'entry', 'entries')}, each entry matching its hash and "
            "the one before it. This proves nothing was changed only against a head kept outside the hub: anyone "
            "who can write to the database can rewrite an entry and recompute the chain after it"
        )
    seq, kept = anchor
    if checked <= seq:
        return (
            f"ledger intact: {counted(checked, 'entry', 'entries')}, and entry {seq} is the head kept ({seq}:{kept}): "
            "nothing up to it was changed or cut since that head was kept"
        )
    return (
        f"ledger: {_entries(1, seq)} intact against the head kept ({seq}:{kept}): nothing up to it was changed or "
        f"cut since that head was kept; {_entries(seq + 1, checked)} consistent only, since anyone who can write to "
        f"the database can rewrite an entry after the head and recompute the chain after it (keep today's head: "
        f"{head})"
    )


def _entries(first: int, last: int) -> str:
    return f"entry {first}" if first == last else f"entries {first}-{last}"


def trusted_ledger(engine: Any, *, unverified: bool) -> str:
    """Verify the whole ledger's hash chain before a report reads it: an entry altered, removed or
    filed under another person would otherwise be reported as if true (a subject-access request
    would count a disclosure as a denial, or leave it out). A break refuses the report (exit 1),
    naming the entry, unless --unverified asks for it anyway, when it is said above the report.
    Returns what a file written from the report says of the ledger: "consistent" (the chain holds
    together: without a head kept outside the hub it proves no more, hub.cli_audit's verify), or the
    break."""
    from hub.core.ledger import verify
    from hub.store.ledger import SqlLedger

    _, broken = verify(SqlLedger(engine).entries())
    if broken is None:
        return "consistent"
    said = f"ledger broken at entry {broken.seq}: {broken.problem}"
    if not unverified:
        fail(
            f"{said}. This report would rest on entries that cannot be trusted, so it is not given: run "
            "`carehub audit verify`, and report the break to your information governance lead; "
            "--unverified gives it anyway, marked so",
            1,
        )
    console.print(
        escape(f"WARNING: {said}. This report reads the ledger as it stands and may be wrong."),
        style="bold red",
        soft_wrap=True,
    )
    return f"NOT VERIFIED: {said}"


def refuse_unknown(engine: Any, key: str, entries: list[Any], nhs_number: str) -> None:
    """Exit 1 if the record holds no such person and the ledger nothing about them: an empty answer
    would read as "nothing disclosed" when the NHS number may be a (check-digit valid) typo."""
    from hub.store.sql import SqlRecordReader

    if entries or SqlRecordReader(engine).read("Patient", key) is not None:
        return
    fail(
        f"no person with NHS number {nhs_number} in the shared care record, and no disclosures recorded "
        "about them: check the number",
        1,
    )


def disclosures_summary(decided: list[tuple[str, Any]]) -> str:
    """How many decisions disclosed something (break-glass among them), how many were attempts
    that possibly disclosed it or sent nothing (webhook and mailbox), and how many refused.
    `decided`: each decision with its hub.core.ledger.Result."""
    from hub.core.ledger import DISCLOSED, NOT_DISCLOSED, POSSIBLY_DISCLOSED

    came = Counter(result.outcome for _, result in decided)
    glass = sum(d == "break-glass" and r.outcome == DISCLOSED for d, r in decided)
    denied = sum(d == "deny" for d, _ in decided)
    said = f"{counted(came[DISCLOSED], 'disclosure')} ({glass:,} by break-glass)"
    if came[POSSIBLY_DISCLOSED]:
        said += f", {came[POSSIBLY_DISCLOSED]:,} possibly disclosed (sent, but not known to have arrived)"
    if came[NOT_DISCLOSED]:
        said += f", {came[NOT_DISCLOSED]:,} not disclosed (permitted, but nothing was sent)"
    said += f", {counted(denied, 'denial')}"
    other = len(decided) - sum(came[o] for o in (DISCLOSED, POSSIBLY_DISCLOSED, NOT_DISCLOSED)) - denied
    return (
        f"{counted(len(decided), 'decision')} recorded about this person: {said}"
        + (f", {other:,} other" if other else "")
        + (" (a denial disclosed nothing)" if denied else "")
    )


def came_to(result: Any) -> str:
    """What a decision came to, as a report's cell: "disclosed", or the outcome, why and where the
    ledger says so ("not disclosed: ConnectError ... (entry 13)")."""
    from hub.core.ledger import DISCLOSED, REFUSED

    if result.outcome in (DISCLOSED, REFUSED) and not result.detail:
        return str(result.outcome)
    where = f" (entry {result.seq})" if result.seq is not None else ""
    return f"{result.outcome}: {result.detail}{where}" if result.detail else f"{result.outcome}{where}"


def disclosures_csv(entries: list[Any], came: Mapping[int, Any], path: Path, ledger: str) -> None:
    """A subject-access answer's decisions, every column in full, each with what it came to."""
    import csv

    from hub.kpi_report import spreadsheet_text

    columns = ("at", "recipient_org", "recipient_user", "channel", "decision")
    with private_file(path) as out:
        writer = csv.writer(out)
        writer.writerow(["seq", *columns, "disclosed", "resources", "reasons", "ledger"])
        for entry in entries:
            body, result = entry.body, came[entry.seq]
            said = [str(body.get(c, "")) for c in columns]
            said += [came_to(result), " ".join(body.get("resources") or []), "; ".join(body.get("reasons") or [])]
            writer.writerow([entry.seq, *(spreadsheet_text(c) for c in said), spreadsheet_text(ledger)])


def selected_rows(rows: list[Any], *, changed: bool, cannot_tell: bool) -> list[Any]:
    """The rows the report lists: all of them, or those --changed and --cannot-tell ask for."""
    from hub.core.timetravel import CANNOT_TELL

    if not (changed or cannot_tell):
        return rows
    return [r for r in rows if (changed and r.changed) or (cannot_tell and r.now == CANNOT_TELL)]


def time_travel_csv(rows: list[Any], path: Path, ledger: str, came: Mapping[int, Any] | None = None) -> None:
    """The report's rows, every column in full (the table cuts them to the terminal's width), each
    saying what its decision came to (`came`, by seq: hub.core.ledger.results) and whether the
    ledger's chain was consistent (a spreadsheet travels without the console's warning)."""
    import csv

    from hub.kpi_report import spreadsheet_text

    columns = ("seq", "at", "recipient", "channel", "resource", "then", "then_basis", "now", "now_basis")
    with private_file(path) as out:
        writer = csv.writer(out)
        writer.writerow([*columns, "changed", "disclosed", "ledger"])
        for r in rows:
            cells_ = (spreadsheet_text(str(getattr(r, c))) for c in columns[1:])
            result = (came or {}).get(r.seq)
            disclosed = spreadsheet_text(came_to(result)) if result is not None else ""
            writer.writerow([r.seq, *cells_, r.changed, disclosed, spreadsheet_text(ledger)])
