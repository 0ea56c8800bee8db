"""`carehub ingest register` and `carehub ingest referrals`: files through the referrals adapter,
one line per row."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, date, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console
from rich.markup import escape

from hub.bootstrap import running
from hub.core.skew import latest_day
from hub.embedded import one_off_log, shared_kafka
from hub.settings import Settings
from hub.terminal import listing

if TYPE_CHECKING:  # (the adapter is imported when a command runs, as below)
    from adapters.referrals.service import FileOutcome

SUFFIXES = (".csv", ".json")


def future_extraction(extracted_on: date | None, now: datetime) -> str:
    """Why --extracted-on cannot be the day a register was extracted (a day after today in the UK, as
    the adapter would refuse it in every row), or ''."""
    today = latest_day(now)
    if extracted_on is None or extracted_on <= today:
        return ""
    return (
        f"--extracted-on {extracted_on.isoformat()} is in the future (today is {today.isoformat()} in the UK): "
        "give the day the register was extracted; nothing was sent"
    )


def collect(paths: list[Path]) -> list[Path]:
    """Files as given, and the .csv and .json files under each folder, in name order."""
    found: list[Path] = []
    for path in paths:
        if path.is_dir():
            found += sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in SUFFIXES)
        elif path.is_file():
            found.append(path)
        else:
            raise FileNotFoundError(f"no such file or folder: {path}")
    return found


def file_notes(name: str, read: FileOutcome) -> list[str]:
    """What the sender should know about a file beyond its rows: the columns or fields its layout does
    not read (what they say is not applied: a status column withdraws nothing), and referrals accepted
    without a referral_id (sent again with the NHS number corrected, they are new referrals)."""
    notes = []
    if read.ignored and read.fmt is not None:
        kind = "column" if read.fmt.is_csv else "field"
        names = ", ".join(n[:40] for n in read.ignored[:10])  # (names as the sender spelt them: kept short)
        names += f" and {len(read.ignored) - 10} more" if len(read.ignored) > 10 else ""
        notes.append(
            f"{name}: {kind}(s) {names} ignored: the {read.fmt} layout does not read them, so nothing they say "
            "was applied (see adapters/referrals/README.md for the layouts)"
        )
    without_id = sum(o.without_id for o in read.outcomes)
    if without_id:
        notes.append(
            f"{name}: {without_id} referral(s) accepted without a referral_id: sent again with a corrected NHS "
            "number, such a row is a second referral, not a correction of the first; give each referral its "
            "referral_id"
        )
    return notes


async def ingest_referral_files(
    settings: Settings,
    paths: list[Path],
    console: Console,
    *,
    fmt: str | None = None,
    extracted_on: date | None = None,
) -> int:
    """Send every row; 0 when all were accepted, 1 when any was rejected or not sent, 2 on bad input."""
    from adapters.referrals.rows import Format
    from adapters.referrals.service import ACCEPTED, KeptInputs, ReferralIntake
    from consumers.app import build_broker

    if fmt is not None and fmt not in set(Format):
        console.print(f"[red]--format must be one of {', '.join(Format)}, not {escape(repr(fmt))}[/red]")
        return 2
    future = future_extraction(extracted_on, datetime.now(UTC))
    if future:  # (else every row would be rejected, and dead-lettered, for the option's date)
        console.print(f"[red]{escape(future)}[/red]", soft_wrap=True)
        return 2
    try:
        files = collect(paths)
    except FileNotFoundError as exc:
        console.print(f"[red]{escape(str(exc))}[/red]")
        return 2
    embedded = not shared_kafka(settings)  # (else the running hub's consumers apply what is sent)
    statuses: Counter[str] = Counter()
    async with running(settings, mllp=False, http=False, consumers=embedded) as run:
        broker = build_broker(run.bootstrap, client_id=f"{settings.kafka.client_id}-referrals")
        await broker.start()
        try:
            store = run.services.dead_letters
            intake = ReferralIntake(
                broker,
                key_secret=run.services.secrets.key,
                publish_timeout=settings.kafka.publish_timeout_s,
                kept=store if isinstance(store, KeptInputs) else None,
                record=run.services.reader,
            )
            table = listing("file", "row", "outcome", "event", "reason")
            accepted: list[str] = []
            kept = again = warned = 0
            notes: list[str] = []
            for path in files:
                chosen = Format(fmt) if fmt else None
                read = await intake.ingest_file(path.read_bytes(), f"file:{path}", chosen, extracted_on=extracted_on)
                notes += file_notes(path.name, read)
                for o in read.outcomes:
                    statuses[o.status] += 1
                    accepted += [o.event_id] if o.status == ACCEPTED else []
                    kept += o.dead_lettered
                    again += o.already_kept
                    warned += bool(o.warnings)
                    row = "file" if o.row is None else str(o.row)
                    kind = o.event_type.removeprefix("uk.nhs.carehub.")
                    table.add_row(escape(path.name), row, o.status, kind, escape(o.reason or ""))
            console.print(table)
            for note in notes:
                console.print(f"[yellow]{escape(note)}[/yellow]", soft_wrap=True)
        finally:
            await broker.stop()
        if embedded and not await run.applied_ids(accepted, dead_letters=kept):
            console.print("[yellow]the record had not applied every event before the timeout[/yellow]")
    summary = ", ".join(f"{status} {n}" for status, n in sorted(statuses.items()))
    summary += f" ({again} already in the dead-letter store)" if again else ""
    summary += f" ({warned} accepted with a detail left out: its warning is in the reason column)" if warned else ""
    console.print(f"{sum(statuses.values())} row(s) from {len(files)} file(s): {summary or 'none'}")
    if embedded and statuses.get(ACCEPTED):
        console.print(f"[yellow]{escape(one_off_log(settings.data_dir))}[/yellow]", soft_wrap=True)
    return 0 if set(statuses) <= {ACCEPTED} else 1
