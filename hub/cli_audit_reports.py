"""What the auditor's ledger reports share (hub.cli_audit): the ledger verified before a report reads
it, a person the hub does not know told apart from one with nothing disclosed, the subject-access
summary line, and time travel's rows chosen and written as CSV."""

from __future__ import annotations

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


def disclosures_summary(decisions: list[str]) -> str:
    """How many decisions disclosed something (break-glass among them) and how many refused."""
    glass, denied = decisions.count("break-glass"), decisions.count("deny")
    disclosed = decisions.count("permit") + glass
    said = f"{counted(disclosed, 'disclosure')} ({glass:,} by break-glass), {counted(denied, 'denial')}"
    other = len(decisions) - disclosed - denied
    return (
        f"{counted(len(decisions), 'decision')} recorded about this person: {said}"
        + (f", {other:,} other" if other else "")
        + (" (a denial disclosed nothing)" if denied else "")
    )


def selected_rows(rows: list[Any], *, changed: bool, cannot_tell: bool) -> list[Any]:
    """The rows the report lists: all of them, or those --changed and --cannot-tell ask for."""
    from hub.core.timetravel import CANNOT_TELL

    if not (changed or cannot_tell):
        return rows
    return [r for r in rows if (changed and r.changed) or (cannot_tell and r.now == CANNOT_TELL)]


def time_travel_csv(rows: list[Any], path: Path, ledger: str) -> None:
    """The report's rows, every column in full (the table cuts them to the terminal's width), each
    saying whether the ledger verified (a spreadsheet travels without the console's warning)."""
    import csv

    from hub.kpi_report import spreadsheet_text

    columns = ("seq", "at", "recipient", "channel", "resource", "then", "then_basis", "now", "now_basis")
    with path.open("w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow([*columns, "changed", "ledger"])
        for r in rows:
            cells_ = (spreadsheet_text(str(getattr(r, c))) for c in columns[1:])
            writer.writerow([r.seq, *cells_, r.changed, spreadsheet_text(ledger)])
