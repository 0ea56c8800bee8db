"""`carehub ingest hl7`: files and folders through the hospital adapter, one line per message."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from rich.console import Console
from rich.markup import escape

from hub.bootstrap import running
from hub.cli_base import cells
from hub.embedded import one_off_log, shared_kafka
from hub.settings import Settings
from hub.terminal import listing


def collect(paths: list[Path]) -> list[Path]:
    """Files as given, and every file under each folder, in name order."""
    found: list[Path] = []
    for path in paths:
        if path.is_dir():
            found += sorted(p for p in path.rglob("*") if p.is_file())
        elif path.is_file():
            found.append(path)
        else:
            raise FileNotFoundError(f"no such file or folder: {path}")
    return found


async def ingest_files(settings: Settings, paths: list[Path], console: Console) -> int:
    """Send every message; 0 when all were accepted, 1 when any was rejected, 2 on bad paths."""
    try:
        files = collect(paths)
    except FileNotFoundError as exc:
        console.print(f"[red]{escape(str(exc))}[/red]")  # (it names the path: never markup)
        return 2
    embedded = not shared_kafka(settings)  # (else the running hub's consumers apply what is sent)
    async with running(settings, mllp=False, http=False, consumers=embedded) as run:
        table = listing("file", "control id", "ACK", "events", "reason")
        codes: Counter[str] = Counter()
        events = kept = 0
        ids: list[str] = []
        for path in files:
            for outcome in await run.intake.ingest(path.read_bytes(), f"file:{path}"):
                codes[outcome.code] += 1
                events += outcome.events
                ids += outcome.event_ids
                kept += outcome.dead_lettered
                table.add_row(*cells(path.name, outcome.control_id, outcome.code, outcome.events, outcome.reason or ""))
        console.print(table)
        if embedded and not await run.applied_ids(ids, dead_letters=kept):
            console.print("[yellow]the record had not applied every event before the timeout[/yellow]")
    summary = ", ".join(f"{code} {n}" for code, n in sorted(codes.items()))
    console.print(f"{sum(codes.values())} message(s): {summary or 'none'}")
    if embedded and codes.get("AA"):
        console.print(f"[yellow]{escape(one_off_log(settings.data_dir))}[/yellow]", soft_wrap=True)
    return 0 if set(codes) <= {"AA"} else 1
