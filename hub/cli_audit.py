"""The auditor's and the commissioner's commands: the disclosure ledger, policy time travel, the
log export, replay and the record's hash, and the KPIs (registered on hub.cli's app)."""

from __future__ import annotations

import asyncio
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from hub.cli_base import (
    WHEN,
    DataDir,
    app,
    audit_app,
    console,
    make_settings,
    record_app,
)
from hub.instants import from_, up_to


@audit_app.command("verify")
def audit_verify(
    head: Annotated[
        str | None,
        typer.Option(help="SEQ:HASH of the head an earlier verify printed: also proves nothing was cut from the end"),
    ] = None,
    data_dir: DataDir = Path("var"),
) -> None:
    """Recompute the ledger's hash chain; name the first entry altered, removed or reordered."""
    from hub.bootstrap import build
    from hub.core.ledger import verify

    anchor = None
    if head is not None:
        seq, _, digest = head.partition(":")
        if not seq.isdigit() or len(digest) != 64:
            console.print("[red]--head: give SEQ:HASH as `carehub audit verify` printed it[/red]")
            raise typer.Exit(2)
        anchor = (int(seq), digest)
    services = build(make_settings(data_dir))
    entries = list(services.ledger.entries())
    checked, broken = verify(entries, anchor)
    if broken:
        console.print(f"[red]ledger broken at entry {broken.seq}: {broken.problem}[/red] ({checked} entries read)")
        raise typer.Exit(1)
    console.print(f"ledger intact: {checked} entries, chain verified")
    if entries:
        last = entries[-1]
        console.print(f"head {last.seq}:{last.hash} (keep it; a later `--head` with it proves no entry was cut)")


@audit_app.command("disclosures")
def audit_disclosures(
    nhs_number: Annotated[str, typer.Option("--nhs-number", help="The person's NHS number")],
    data_dir: DataDir = Path("var"),
) -> None:
    """Subject-access request: who was given what about this person, when, and on what basis."""
    from hub.bootstrap import build
    from hub.core import nhs_number as nhs
    from hub.core.identity import person_key

    problem = nhs.why_invalid(nhs_number)
    if problem:
        console.print(f"[red]--nhs-number: {problem}[/red]")
        raise typer.Exit(2)
    services = build(make_settings(data_dir))
    key = person_key(services.secrets.key, nhs.normalise(nhs_number), None)
    table = Table("#", "when", "to (org / user)", "how", "decision", "resources", "basis")
    entries = services.ledger.about(key)
    for entry in entries:
        body = entry.body
        table.add_row(
            str(entry.seq),
            body["at"],
            f"{body['recipient_org']} / {body['recipient_user']}",
            body["channel"],
            body["decision"],
            "\n".join(r.split("#")[0] for r in body["resources"]),
            "; ".join(body["reasons"]),
        )
    console.print(table)
    console.print(f"{len(entries)} disclosure(s) recorded")


@audit_app.command("time-travel")
def audit_time_travel(
    nhs_number: Annotated[str | None, typer.Option("--nhs-number", help="One person (else everyone)")] = None,
    since: Annotated[
        datetime | None, typer.Option(parser=from_, help=f"Decisions from this time ({WHEN}: its start)")
    ] = None,
    until: Annotated[
        datetime | None, typer.Option(parser=up_to, help=f"Decisions up to this time ({WHEN}: its end)")
    ] = None,
    changed: Annotated[
        bool, typer.Option("--changed", help="Only what today's policy would decide differently")
    ] = False,
    data_dir: DataDir = Path("var"),
) -> None:
    """What was disclosed then, under which agreement and consent versions, and what today's policy would decide."""
    from hub.bootstrap import build
    from hub.core import nhs_number as nhs
    from hub.core.identity import person_key
    from hub.core.timetravel import in_period, people_of, reconsider
    from hub.store.agreements import PolicySource

    services = build(make_settings(data_dir))
    if nhs_number is not None:
        problem = nhs.why_invalid(nhs_number)
        if problem:
            console.print(f"[red]--nhs-number: {problem}[/red]")
            raise typer.Exit(2)
        entries = services.ledger.about(person_key(services.secrets.key, nhs.normalise(nhs_number), None))
    else:
        entries = list(services.ledger.entries())
    entries = in_period(entries, since, until)
    policy = services.policy or PolicySource(services.agreements, services.reader)
    refs = {"/".join(str(r).split("#")[0].split("/")[:2]) for e in entries for r in e.body.get("resources") or []}
    resources = {ref: services.reader.read(*ref.split("/", 1)) for ref in refs if "/" in ref}
    consents = [rule for person in sorted(people_of(entries, resources)) for rule in policy.consents(person)]
    rows = reconsider(entries, resources, policy.agreements(), consents, datetime.now(UTC))
    table = Table("#", "when", "to", "how", "resource", "then", "on", "today", "on", title="Policy time travel")
    shown = [r for r in rows if r.changed or not changed]
    for r in shown:
        mark = "[bold yellow]" if r.changed else ""
        table.add_row(
            str(r.seq), r.at, r.recipient, r.channel, r.resource, r.then, r.then_basis, f"{mark}{r.now}", r.now_basis
        )
    console.print(table)
    differ = sum(r.changed for r in rows)
    console.print(f"{len(rows)} decision(s) about {len(entries)} ledger entr(ies); today's policy differs on {differ}")


@audit_app.command("export")
def audit_export(
    out: Annotated[Path, typer.Option(help="The NDJSON file to write (its public key goes beside it, .pub.pem)")],
    payloads: Annotated[
        bool, typer.Option(help="Include payloads the auditor's agreements permit (else hashes only)")
    ] = False,
    org: Annotated[str, typer.Option(help="The auditor's organisation (ODS code), for --payloads")] = "",
    user: Annotated[str, typer.Option(help="The auditor, as the ledger should name them")] = "auditor",
    checkpoint_every: Annotated[int, typer.Option(min=1, help="Lines between signed checkpoints")] = 10_000,
    data_dir: DataDir = Path("var"),
) -> None:
    """Export the event log for auditors: NDJSON with payload hashes and Ed25519-signed checkpoints,
    verifiable without the hub (python hub/export_verify.py FILE FILE.pub.pem); prints the public
    key's fingerprint for the auditor to confirm through another channel."""
    from hub.bootstrap import build
    from hub.core.policy import Asker, decide, person_of
    from hub.export import export, public_pem, signing_key
    from hub.export_verify import fingerprint
    from hub.store.agreements import PolicySource

    settings = make_settings(data_dir)
    if not settings.bootstrap_servers():
        console.print("[red]carehub audit export reads the Kafka log: set KAFKA_BOOTSTRAP_SERVERS[/red]")
        raise typer.Exit(2)
    if payloads and not org:
        console.print("[red]--payloads needs --org: payloads follow the auditor's own agreements[/red]")
        raise typer.Exit(2)
    services = build(settings)
    key = signing_key(settings.data_dir)
    judge = None
    if payloads:
        policy = services.policy or PolicySource(services.agreements, services.reader)
        agreements, asker = policy.agreements(), Asker(org.strip().upper(), "auditor", datetime.now(UTC))

        def judge(resource: dict[str, Any]) -> Any:
            person = person_of(resource)
            return decide(asker, resource, agreements, policy.consents(person) if person else [])

    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("wb") as target:
        summary = asyncio.run(
            export(
                settings.bootstrap_servers(),
                target,
                key,
                payloads=judge,
                ledger=services.ledger,
                auditor=(org.strip().upper() or "none", user),
                every=checkpoint_every,
            )
        )
    public = out.with_name(out.name + ".pub.pem")
    public.write_bytes(public_pem(key))
    console.print(
        f"{summary.events:,} events, {summary.checkpoints} signed checkpoints"
        + (f", {summary.payloads:,} payloads included, {summary.withheld:,} withheld" if payloads else "")
        + f"; written to {out}, public key {public}"
    )
    # the key travels with the file: the auditor confirms this through another channel
    console.print(f"public key fingerprint (SHA-256 of its DER): {fingerprint(public_pem(key))}", soft_wrap=True)


@record_app.command("hash")
def record_hash_command(data_dir: DataDir = Path("var")) -> None:
    """A canonical hash of the record (every current resource and applied event id)."""
    from hub.bootstrap import build
    from hub.store.hashing import record_hash

    services = build(make_settings(data_dir))
    digest, resources, events = record_hash(services.engine)
    typer.echo(f"{digest}  {resources} resources, {events} events applied")


def _holds_a_record(engine: Any) -> bool:
    import sqlalchemy as sa

    from hub.store.tables import record_resource

    with engine.connect() as conn:
        return bool(conn.execute(sa.select(sa.func.count()).select_from(record_resource)).scalar_one())


@app.command()
def replay(
    into: Annotated[Path, typer.Option("--into", help="Data directory for the rebuilt record (must be new)")],
    since: Annotated[
        datetime | None, typer.Option(parser=from_, help=f"Only events from this time ({WHEN}: its start)")
    ] = None,
    until: Annotated[
        datetime | None,
        typer.Option(
            "--until",
            "--as-of",
            parser=up_to,
            help=f"Only events up to this time: the record as of then ({WHEN}: its end)",
        ),
    ] = None,
    workers: Annotated[
        int | None,
        typer.Option(min=1, help="Processes folding the log's partitions (default: one per core, at most 4)"),
    ] = None,
) -> None:
    """Rebuild the shared care record from the Kafka log into a fresh database, and print its hash."""
    from rich.progress import Progress, SpinnerColumn, TextColumn

    from hub.replay import replay as rebuild
    from hub.store.database import open_engine
    from hub.store.hashing import record_hash

    settings = make_settings(into)
    if not settings.bootstrap_servers():
        console.print("[red]carehub replay reads a Kafka log: set KAFKA_BOOTSTRAP_SERVERS[/red]")
        raise typer.Exit(2)
    engine = open_engine(settings.database())
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), console=console) as progress:
        task = progress.add_task("reading the log", total=None)
        try:
            result = asyncio.run(
                rebuild(
                    settings.bootstrap_servers(),
                    engine,
                    since=since,
                    until=until,
                    progress=lambda read, _: progress.update(task, description=f"{read:,} events read"),
                    workers=workers,
                )
            )
        except RuntimeError as exc:
            console.print(f"[red]{exc}[/red]")
            raise typer.Exit(1) from exc
        except KeyboardInterrupt:
            if _holds_a_record(engine):  # (the stop came while the load committed: it let the commit end)
                console.print(
                    f"[yellow]replay interrupted: {into} holds the record but not the coordination tasks; "
                    "delete it and replay again[/yellow]"
                )
            else:
                console.print(f"[yellow]replay interrupted: no record was written to {into}; run it again[/yellow]")
            raise typer.Exit(130) from None
    if settings.coordination.enabled:
        from hub.core.tasks import Engine
        from hub.replay_coordination import rebuild as rebuild_coordination
        from hub.rules import load_rules

        try:
            folded = asyncio.run(
                rebuild_coordination(
                    settings.bootstrap_servers(),
                    engine,
                    Engine(load_rules(settings.coordination.rules)),
                    since=since,
                    until=until,
                )
            )
        except KeyboardInterrupt:
            console.print(
                f"[yellow]replay interrupted: {into} holds the record but not the coordination tasks; "
                "delete it and replay again[/yellow]"
            )
            raise typer.Exit(130) from None
        console.print(f"coordination: {folded.people:,} people's tasks and episodes, {folded.clocks:,} clocks pending")
    digest, resources, events = record_hash(engine)
    console.print(
        f"replayed {result.events:,} events ({result.applied:,} applied, {result.skipped} not CareHub events) "
        f"in {result.seconds:.1f}s on {result.workers} process{'es' if result.workers > 1 else ''}: "
        f"{resources:,} resources"
    )
    typer.echo(f"{digest}  {resources} resources, {events} events applied")


@app.command()
def kpi(
    month: Annotated[str, typer.Option(help="The month, YYYY-MM")],
    out: Annotated[Path, typer.Option(help="Folder for kpi-YYYY-MM.csv and kpi-YYYY-MM.html")] = Path("var/kpi"),
    data_dir: DataDir = Path("var"),
) -> None:
    """The commissioner's KPIs for a month, computed from the event log: CSV and an HTML report with charts."""
    from hub.kpi_report import fold_log, skipped_note, write_csv, write_html
    from hub.rules import load_rules

    if not re.fullmatch(r"\d{4}-(0[1-9]|1[0-2])", month):
        console.print(f"[red]--month {month!r}: give the month as YYYY-MM, e.g. 2026-11[/red]")
        raise typer.Exit(2)
    settings = make_settings(data_dir)
    if not settings.bootstrap_servers():
        console.print("[red]carehub kpi reads the Kafka log: set KAFKA_BOOTSTRAP_SERVERS[/red]")
        raise typer.Exit(2)
    rules = load_rules(settings.coordination.rules)
    fold, read = asyncio.run(fold_log(settings.bootstrap_servers(), rules.service.ods))
    rows = fold.report(month)
    write_csv(rows, out / f"kpi-{month}.csv", skipped=fold.skipped)
    write_html(rows, out / f"kpi-{month}.html", month=month, title=rules.service.name, skipped=fold.skipped)
    table = Table("KPI", "breakdown", "value", "target")
    for row in rows:  # practice, source and coordinator codes come from payloads: text, never markup
        value = "n/a" if row.value is None else f"{row.value:g}"
        table.add_row(escape(row.kpi), escape(row.breakdown), value, escape(row.target))
    console.print(table)
    if fold.skipped:
        console.print(f"[yellow]{escape(skipped_note(fold.skipped))}[/yellow]")
    console.print(f"{read:,} events read; wrote {out / f'kpi-{month}.csv'} and {out / f'kpi-{month}.html'}")
