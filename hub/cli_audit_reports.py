"""What the auditor's ledger reports share (hub.cli_audit): the ledger verified before a report reads
it, a person the hub does not know told apart from one with nothing disclosed, the subject-access
summary line, rows and CSV (each decision with what it came to: a webhook or mailbox permit is an
attempt, disclosed, possibly disclosed or not), and time travel's rows chosen and written as CSV."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any

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


def trusted_ledger(engine: Any, *, unverified: bool) -> str:
    """Verify the whole ledger's hash chain before a report reads it: an entry altered, removed or
    filed under another person would otherwise be reported as if true (a subject-access request
    would count a disclosure as a denial, or leave it out). A break refuses the report (exit 1),
    naming the entry, unless --unverified asks for it anyway, when it is said above the report.
    Returns what a file written from the report says of the ledger: "verified", or the break."""
    from hub.core.ledger import verify
    from hub.store.ledger import SqlLedger

    _, broken = verify(SqlLedger(engine).entries())
    if broken is None:
        return "verified"
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
    with path.open("w", newline="") as out:
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
    ledger verified (a spreadsheet travels without the console's warning)."""
    import csv

    from hub.kpi_report import spreadsheet_text

    columns = ("seq", "at", "recipient", "channel", "resource", "then", "then_basis", "now", "now_basis")
    with path.open("w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow([*columns, "changed", "disclosed", "ledger"])
        for r in rows:
            cells_ = (spreadsheet_text(str(getattr(r, c))) for c in columns[1:])
            result = (came or {}).get(r.seq)
            disclosed = spreadsheet_text(came_to(result)) if result is not None else ""
            writer.writerow([r.seq, *cells_, r.changed, disclosed, spreadsheet_text(ledger)])
