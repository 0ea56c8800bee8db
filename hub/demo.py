"""`carehub demo`: the hub on its embedded defaults, fed a synthetic locality's month of ADT
through its own MLLP listener, then a look at what the shared care record holds."""

from __future__ import annotations

import shutil
import sys
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.progress import Progress
from rich.table import Table

from adapters.hl7v2.synthetic import Locality, adt_traffic, make_locality
from adapters.hl7v2.transport import MllpClient
from hub.bootstrap import Running, build, running
from hub.demo_coordination import kpis, report, run_month, settle
from hub.rules import load_rules
from hub.settings import Settings
from hub.terminal import on_signal, where_table
from schemas.agreements import Agreement


def _ack_code(ack: bytes) -> str:
    for segment in ack.split(b"\r"):
        if segment.startswith(b"MSA"):
            return segment[4:6].decode(errors="replace")
    return "??"


async def _feed(run: Running, traffic: list[bytes], console: Console) -> Counter[str]:
    if not run.mllp_port:
        raise RuntimeError("the demo needs the MLLP listener")
    codes: Counter[str] = Counter()
    client = await MllpClient.connect(run.services.settings.mllp.host, run.mllp_port)
    try:
        with Progress(console=console, transient=False) as progress:
            task = progress.add_task("Sending ADT over MLLP", total=len(traffic))
            for message in traffic:
                codes[_ack_code(await client.send(message))] += 1
                progress.advance(task)
    finally:
        await client.close()
    return codes


def _report(run: Running, codes: Counter[str], console: Console, token_hint: str) -> None:
    acks = Table("ACK", "messages", title="What the hospital was told")
    for code, n in sorted(codes.items()):
        acks.add_row(code, str(n))
    console.print(acks)
    record = Table("resource", "current versions", title="The shared care record now holds")
    for kind, n in sorted(run.services.reader.counts().items()):
        record.add_row(kind, str(n))
    console.print(record)
    kept = len(run.services.dead_letters.recent(10_000))
    console.print(f"Rejected messages kept whole in the dead-letter store: {kept}")
    console.print(f"Read it over FHIR: {token_hint}", soft_wrap=True)  # (a command to copy: never wrapped)


async def run_demo(settings: Settings, console: Console, *, people: int, days: int, seed: int, serve: bool) -> int:
    """Run the demo; 0 when the record caught up with everything accepted."""
    locality = make_locality(people=people, seed=seed)
    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    start = today - timedelta(days=days)  # the month just gone, so today's clock finds deadlines in it
    traffic = [m for _, m in adt_traffic(locality, start=start, days=days, seed=seed, include_faults=True)]
    console.print(
        f"Synthetic locality: hospital {locality.hospital_ods}, {len(locality.practices)} GP practices, "
        f"{len(locality.people)} people, {len(traffic)} ADT messages over {days} days"
    )
    services = build(settings)
    earlier = len(services.reader.search("Patient", None))
    if earlier:  # (a second `make demo` on ./var stacked a second month on the first, and said nothing)
        console.print(
            f"[yellow]{escape(str(settings.data_dir))} already holds a record ({earlier} people) from an earlier"
            " run: this month is added to it, and the figures below count both. For a fresh one, remove"
            " that folder first or give another --data-dir.[/yellow]"
        )
    service = load_rules(settings.coordination.rules).service.ods
    services.agreements.load(demo_agreement(locality, service), at=datetime.now(UTC))
    async with running(settings, services=services, advertise=True) as run:
        console.print(where_table(run))
        codes = await _feed(run, traffic, console)
        caught_up = await run.caught_up(codes["AA"], timeout=120, dead_letters=codes["AE"] + codes["AR"])
        await settle(run)
        someone = next(iter(run.services.reader.search("Encounter", None)), None)
        about = someone["subject"]["reference"] + "/$everything" if someone else "metadata"
        hint = (
            f"TOKEN=$({_carehub()} token --org {locality.practices[0].ods} --role clinician "
            f'--data-dir {settings.data_dir}); curl -H "Authorization: Bearer $TOKEN" '
            f"'http://{settings.http.host}:{run.http_port}/fhir/{about}'"
        )
        _report(run, codes, console, hint)
        console.rule("Care coordination")
        month = await run_month(run, locality, start, today, seed)
        await settle(run)
        meeting = today.date()
        report(run, month, locality, console, meeting)
        await kpis(run, month.busiest, console, month.letters)
        practice = month.practice
        console.print(
            f"The huddle page: TOKEN=$({_carehub()} token --org {practice} --role coordinator "
            f"--data-dir {settings.data_dir}); open 'http://{settings.http.host}:{run.http_port}/huddle/{practice}?date={meeting}&token='$TOKEN",
            soft_wrap=True,
        )
        if serve:
            stop = on_signal(at_once_again=bool(settings.bootstrap_servers()))
            console.print(
                f"Still running; Ctrl-C to stop. Meanwhile `{_carehub()} kpi --month {month.busiest}`, `replay` and "
                f"`audit export` with --data-dir {settings.data_dir} read its log."
            )
            await stop.wait()
        else:
            await settle(run)  # what the reports published, and any clock tick since: applied before it stops
            console.print(
                "The hub has stopped with the demo. To follow the links above, run it with --serve "
                "(.venv/bin/carehub demo --serve) and leave it running."
            )
    return 0 if caught_up else 1


def _carehub() -> str:
    """How to run `carehub` from where the demo was started: the project's .venv/bin/carehub (not on
    PATH) as a path relative to here, where it is one."""
    script = Path(sys.executable).with_name("carehub")
    try:
        return str(script.relative_to(Path.cwd()))
    except ValueError:
        return "carehub" if shutil.which("carehub") == str(script) else str(script)


def demo_agreement(locality: Locality, service: str | None = None) -> Agreement:
    """The locality's sharing agreement: the hospital, every practice and the coordination service, for
    direct care and coordination."""
    return Agreement.model_validate(
        {
            "id": "demo-locality-pisa",
            "version": 1,
            "title": "Demo locality personal information sharing agreement",
            "parties": [
                {"code": locality.hospital_ods},
                *({"code": p.ods, "name": p.name} for p in locality.practices),
                *([{"code": service, "name": "Personal Independence Coordinator service"}] if service else []),
            ],
            "purposes": ["direct-care", "care-coordination"],
            "categories": ["demographics", "encounters", "provenance", "consents", "referrals", "tasks", "care-plans"],
            "lawful_basis": {"article6": "6(1)(e) public task", "article9": "9(2)(h) health or social care"},
            "valid_from": "2026-01-01",
        }
    )
