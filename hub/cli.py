"""The `carehub` command: parse options, call a service, print, exit code. Nothing else."""

from __future__ import annotations

import asyncio
import logging
import re
import sys
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from pydantic import BaseModel
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from hub.instants import from_, up_to
from hub.settings import HttpSettings, MllpSettings, Settings
from hub.terminal import until_signalled, where_table

app = typer.Typer(help="CareHub: joins up health and social care around one person.", no_args_is_help=True)


@app.callback()
def _logging(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log at DEBUG (may show patient data)")] = False,
) -> None:
    """Logs go to stderr at INFO (WARNING for the Kafka client libraries); --verbose for DEBUG."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if not verbose:
        for noisy in ("carehub.kafka", "faststream", "aiokafka", "uvicorn", "alembic", "httpx"):
            logging.getLogger(noisy).setLevel(logging.WARNING)


topics_app = typer.Typer(help="The Kafka topic catalogue.", no_args_is_help=True)
ingest_app = typer.Typer(help="Feed files into the hub.", no_args_is_help=True)
app.add_typer(topics_app, name="topics")
app.add_typer(ingest_app, name="ingest")
agreements_app = typer.Typer(help="Information sharing agreements.", no_args_is_help=True)
app.add_typer(agreements_app, name="agreements")
optouts_app = typer.Typer(help="The national data opt-out.", no_args_is_help=True)
app.add_typer(optouts_app, name="optouts")
subscriptions_app = typer.Typer(help="Organisations' subscriptions to events.", no_args_is_help=True)
app.add_typer(subscriptions_app, name="subscriptions")
deliveries_app = typer.Typer(help="Webhook deliveries: see them, redeliver failed ones.", no_args_is_help=True)
app.add_typer(deliveries_app, name="deliveries")
record_app = typer.Typer(help="The shared care record.", no_args_is_help=True)
app.add_typer(record_app, name="record")
audit_app = typer.Typer(help="The disclosure ledger: verify it, answer subject-access requests.", no_args_is_help=True)
app.add_typer(audit_app, name="audit")
console = Console()
M = TypeVar("M", bound=BaseModel)
# how a moment is typed (hub.instants)
_WHEN = "ISO 8601; without an offset, UK time; a date alone"

DataDir = Annotated[Path, typer.Option("--data-dir", help="Where the hub keeps its state")]
MllpPort = Annotated[int, typer.Option("--mllp-port", help="MLLP listener port (0 = any free)")]
HttpPort = Annotated[int, typer.Option("--http-port", help="FHIR API port (0 = any free)")]


def make_settings(data_dir: Path, mllp_port: int | None = None, http_port: int | None = None) -> Settings:
    """Settings from the environment, with the command line's options on top."""
    base = Settings(data_dir=data_dir)
    update: dict[str, object] = {}
    if mllp_port is not None:
        update["mllp"] = MllpSettings(**{**base.mllp.model_dump(), "port": mllp_port})
    if http_port is not None:
        update["http"] = HttpSettings(**{**base.http.model_dump(), "port": http_port})
    return base.model_copy(update=update)


@app.command()
def up(data_dir: DataDir = Path("var"), mllp_port: MllpPort = 2575, http_port: HttpPort = 8000) -> None:
    """Run broker (embedded unless KAFKA_BOOTSTRAP_SERVERS), consumers, MLLP and HTTP until Ctrl-C."""
    from hub.bootstrap import running

    async def main() -> None:
        async with running(make_settings(data_dir, mllp_port, http_port)) as run:
            console.print(where_table(run))
            console.print("Press Ctrl-C to stop.")
            await until_signalled()

    asyncio.run(main())


@app.command()
def worker(data_dir: DataDir = Path("var")) -> None:
    """Run the consumers only; several workers share the partitions as one consumer group."""
    from hub.bootstrap import running

    settings = make_settings(data_dir)
    if not settings.bootstrap_servers():
        console.print("[red]carehub worker needs KAFKA_BOOTSTRAP_SERVERS (a shared Kafka)[/red]")
        raise typer.Exit(2)

    async def main() -> None:
        async with running(settings, mllp=False, http=False) as run:
            console.print(f"worker consuming from {run.bootstrap}")
            await until_signalled()

    asyncio.run(main())


@app.command()
def demo(
    data_dir: DataDir = Path("var"),
    mllp_port: MllpPort = 2575,
    http_port: HttpPort = 8000,
    people: Annotated[int, typer.Option(help="People in the synthetic locality")] = 500,
    days: Annotated[int, typer.Option(help="Days of ADT traffic")] = 30,
    seed: Annotated[int, typer.Option(help="Random seed (the same seed, the same locality)")] = 1,
    serve: Annotated[bool, typer.Option(help="Keep running after the demo")] = False,
) -> None:
    """Run the hub, feed a synthetic locality's month of ADT through MLLP, show the record."""
    from hub.demo import run_demo

    settings = make_settings(data_dir, mllp_port, http_port)
    code = asyncio.run(run_demo(settings, console, people=people, days=days, seed=seed, serve=serve))
    raise typer.Exit(code)


@ingest_app.command("hl7")
def ingest_hl7(
    paths: Annotated[list[Path], typer.Argument(help="Files or folders of HL7 v2 messages")],
    data_dir: DataDir = Path("var"),
) -> None:
    """Send HL7 v2 files (single messages, several, or FHS/BHS batches) through the hospital adapter."""
    from hub.ingest import ingest_files

    settings = make_settings(data_dir)
    code = asyncio.run(ingest_files(settings, paths, console))
    raise typer.Exit(code)


@ingest_app.command("register")
def ingest_register(
    paths: Annotated[list[Path], typer.Argument(help="GP at-risk register CSV files (risk-stratification exports)")],
    extracted_on: Annotated[
        datetime | None,
        typer.Option("--extracted-on", formats=["%Y-%m-%d"], help="Extraction date for rows without extracted_on"),
    ] = None,
    data_dir: DataDir = Path("var"),
) -> None:
    """Send at-risk register rows through the referrals adapter: one event per row, bad rows dead-lettered."""
    from hub.referrals_ingest import ingest_referral_files

    settings = make_settings(data_dir)
    day = extracted_on.date() if extracted_on else None
    code = asyncio.run(ingest_referral_files(settings, paths, console, fmt="register", extracted_on=day))
    raise typer.Exit(code)


@ingest_app.command("referrals")
def ingest_referrals(
    paths: Annotated[list[Path], typer.Argument(help="Referral files (JSON or CSV), or folders of them")],
    fmt: Annotated[
        str | None,
        typer.Option("--format", help="asc-json, asc-csv, vcse-json, vcse-outcome or register (default: detect)"),
    ] = None,
    data_dir: DataDir = Path("var"),
) -> None:
    """Send adult social care and voluntary-sector referrals and outcomes: one event per row or document."""
    from hub.referrals_ingest import ingest_referral_files

    settings = make_settings(data_dir)
    code = asyncio.run(ingest_referral_files(settings, paths, console, fmt=fmt))
    raise typer.Exit(code)


@topics_app.command("create")
def topics_create(data_dir: DataDir = Path("var")) -> None:
    """Create every topic of the catalogue that the Kafka at KAFKA_BOOTSTRAP_SERVERS lacks."""
    from hub.kafka import create_topics

    settings = make_settings(data_dir)
    if not settings.bootstrap_servers():
        console.print("[red]set KAFKA_BOOTSTRAP_SERVERS to the Kafka to create topics on[/red]")
        raise typer.Exit(2)
    created = asyncio.run(create_topics(settings.bootstrap_servers(), replication=settings.kafka.replication_factor))
    console.print(f"created: {', '.join(created) or 'nothing (all exist)'}")


@topics_app.command("list")
def topics_list() -> None:
    """Show the topic catalogue."""
    from schemas.topics import CATALOGUE

    table = Table("topic", "key", "partitions", "configs", "what")
    for t in CATALOGUE:
        configs = ", ".join(f"{k}={v}" for k, v in t.configs.items())
        table.add_row(t.name, t.key, str(t.partitions), configs, t.description)
    console.print(table)


@app.command()
def token(
    org: Annotated[str, typer.Option(help="The user's organisation (ODS code)")],
    role: Annotated[str, typer.Option(help="clinician, coordinator, auditor, admin or system")],
    user: Annotated[str | None, typer.Option(help="User id (SDS user id or login)")] = None,
    hours: Annotated[float, typer.Option(help="Lifetime in hours")] = 12.0,
    data_dir: DataDir = Path("var"),
) -> None:
    """Print a signed bearer token that the running hub (same --data-dir) accepts."""
    from hub.api.auth import issue_token
    from hub.bootstrap import load_secrets

    secrets = load_secrets(make_settings(data_dir))
    now = datetime.now(UTC)
    try:
        typer.echo(issue_token(secrets.token, org=org, role=role, user=user, now=now, ttl=timedelta(hours=hours)))
    except ValueError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from exc


@app.command()
def deadletters(
    data_dir: DataDir = Path("var"),
    limit: Annotated[int, typer.Option(help="How many, newest first")] = 20,
) -> None:
    """Show rejected input kept in the dead-letter store, with the reason."""
    from hub.bootstrap import build

    services = build(make_settings(data_dir))
    table = Table("received", "source", "origin", "reason")
    for row in services.dead_letters.recent(limit):
        issues = row.get("reason", {}).get("issue", [{}])
        table.add_row(
            str(row.get("received_at")),
            str(row.get("source")),
            str(row.get("origin")),
            str(issues[0].get("diagnostics", "")),
        )
    console.print(table)


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
        datetime | None, typer.Option(parser=from_, help=f"Decisions from this time ({_WHEN}: its start)")
    ] = None,
    until: Annotated[
        datetime | None, typer.Option(parser=up_to, help=f"Decisions up to this time ({_WHEN}: its end)")
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


@agreements_app.command("load")
def agreements_load(
    paths: Annotated[list[Path], typer.Argument(help="Agreement YAML files (one version each)")],
    data_dir: DataDir = Path("var"),
) -> None:
    """Validate and load agreement versions; earlier versions stay stored for audit."""
    from hub.bootstrap import build
    from hub.core.errors import InvalidMessageError
    from schemas.agreements import Agreement

    settings = make_settings(data_dir)
    services = build(settings)
    documents, failed = _read_documents(paths, Agreement)
    loaded: list[Agreement] = []
    for path, agreement in documents:
        try:
            fresh = services.agreements.load(agreement, at=datetime.now(UTC))
        except InvalidMessageError as exc:
            console.print(f"[red]{path}: {exc.diagnostics}[/red]")
            failed += 1
        else:
            state = "loaded" if fresh else "already loaded"
            console.print(f"{path}: {agreement.id} version {agreement.version} {state}")
            loaded.append(agreement)
    if loaded and settings.bootstrap_servers():
        asyncio.run(_agreements_on_the_log(settings, loaded))
        console.print(f"{len(loaded)} agreement version(s) on the log as uk.nhs.carehub.agreement.loaded.v1")
    elif loaded:
        console.print("(not on the log: the embedded broker keeps no log; with KAFKA_BOOTSTRAP_SERVERS it does)")
    raise typer.Exit(1 if failed else 0)


async def _agreements_on_the_log(settings: Settings, agreements: list[Any]) -> None:
    """Publish each loaded version as an event, acknowledged by Kafka (acks=all)."""
    from consumers.app import build_broker
    from hub.agreement_events import envelope
    from hub.kafka import create_topics
    from schemas.topics import EVENTS

    bootstrap = settings.bootstrap_servers()
    await create_topics(bootstrap, replication=settings.kafka.replication_factor)
    broker = build_broker(bootstrap, client_id=settings.kafka.client_id)
    await broker.start()
    try:
        now = datetime.now(UTC)
        for agreement in agreements:
            event = envelope(agreement, now)
            await broker.publish(event.data, EVENTS.name, key=event.subject.encode(), headers=event.kafka_headers())
    finally:
        await broker.stop()


def _read_documents(paths: list[Path], model: type[M]) -> tuple[list[tuple[Path, M]], int]:
    """Each YAML file validated as `model`; every problem printed with file and field, and counted."""
    import yaml
    from pydantic import ValidationError

    documents: list[tuple[Path, M]] = []
    failed = 0
    for path in paths:
        try:
            documents.append((path, model.model_validate(yaml.safe_load(path.read_text()))))
        except (OSError, yaml.YAMLError) as exc:
            console.print(f"[red]{escape(f'{path}: cannot read: {exc}')}[/red]")
            failed += 1
        except ValidationError as exc:
            for error in exc.errors():
                where = ".".join(str(p) for p in error["loc"]) or "(document)"
                message = f"{path}: {where}: {error['msg']}"
                console.print(f"[red]{escape(message)}[/red]")  # pydantic messages hold [...], not markup
            failed += 1
    return documents, failed


@optouts_app.command("load")
def optouts_load(
    path: Annotated[Path, typer.Argument(help="NHS numbers with a national data opt-out: one per line, or CSV")],
    source: Annotated[str, typer.Option(help="ODS code of the organisation that checked the list")],
    data_dir: DataDir = Path("var"),
) -> None:
    """Record each person's national data opt-out as a Consent on the log (applied through agreements that
    say the opt-out applies); lines that are not NHS numbers are refused by line and dead-lettered."""
    from hub.bootstrap import build, running
    from hub.optouts import keep_refused, read

    if not path.is_file():
        console.print(f"[red]no such file: {escape(str(path))}[/red]")
        raise typer.Exit(2)
    settings = make_settings(data_dir)
    services = build(settings)
    raw = path.read_bytes()
    lines = read(raw, key_secret=services.secrets.key, source=source.strip().upper(), as_of=datetime.now(UTC))
    refused = [line for line in lines if line.envelope is None]
    for line in refused:
        console.print(f"[red]{escape(line.reason or '')}[/red]")
        keep_refused(services.dead_letters, line, raw, source=source, origin=f"file:{path}")

    async def publish() -> int:
        embedded = not settings.bootstrap_servers()
        sent = 0
        async with running(settings, services=services, mllp=False, http=False, consumers=embedded) as run:
            if run.publish is None:
                raise RuntimeError("the hub started without a publisher")
            for line in lines:
                if line.envelope is not None:
                    await run.publish(line.envelope)
                    sent += 1
            ids = [line.envelope.id for line in lines if line.envelope is not None]
            if embedded and not await run.applied_ids(ids):
                console.print("[yellow]the record had not applied every opt-out before the timeout[/yellow]")
        return sent

    sent = asyncio.run(publish())
    console.print(f"{sent} national data opt-out(s) recorded, {len(refused)} line(s) refused")
    raise typer.Exit(1 if refused else 0)


@agreements_app.command("list")
def agreements_list(data_dir: DataDir = Path("var")) -> None:
    """Every agreement version held, newest last."""
    from hub.bootstrap import build

    services = build(make_settings(data_dir))
    table = Table("id", "version", "parties", "purposes", "categories", "valid")
    for a in services.agreements.all_versions():
        valid = f"{a.valid_from} to {a.valid_to or 'open'}"
        table.add_row(
            a.id, str(a.version), " ".join(sorted(a.party_codes)), ", ".join(a.purposes), ", ".join(a.categories), valid
        )
    console.print(table)


@subscriptions_app.command("load")
def subscriptions_load(
    paths: Annotated[list[Path], typer.Argument(help="Subscription YAML files")],
    data_dir: DataDir = Path("var"),
) -> None:
    """Validate and save subscriptions (a file with an existing id replaces it); the hub picks them up within 1 s."""
    from hub.bootstrap import build
    from schemas.subscriptions import Subscription

    services = build(make_settings(data_dir))
    documents, failed = _read_documents(paths, Subscription)
    for path, subscription in documents:
        services.subscriptions.save(subscription)
        console.print(f"{path}: subscription {subscription.id} for {subscription.org} saved")
    raise typer.Exit(1 if failed else 0)


@subscriptions_app.command("list")
def subscriptions_list(data_dir: DataDir = Path("var")) -> None:
    """Every subscription."""
    from hub.bootstrap import build

    services = build(make_settings(data_dir))
    table = Table("id", "org", "events", "scope", "content", "webhook", "active")
    for s, active in services.subscriptions.all():
        hook = str(s.webhook.url) if s.webhook else "-"
        table.add_row(s.id, s.org, "\n".join(s.events), s.scope, s.content, hook, "yes" if active else "no")
    console.print(table)


@deliveries_app.command("list")
def deliveries_list(
    status: Annotated[str | None, typer.Option(help="pending, delivered, failed or withheld")] = None,
    limit: Annotated[int, typer.Option(help="How many, newest first")] = 50,
    data_dir: DataDir = Path("var"),
) -> None:
    """Webhook deliveries, newest first."""
    from hub.bootstrap import build

    services = build(make_settings(data_dir))
    table = Table("id", "subscription", "event", "status", "attempts", "last error")
    for d in services.outbox.listing(status, limit):
        table.add_row(str(d.id), d.subscription_id, d.event_id, d.status, str(d.attempts), d.last_error or "")
    console.print(table)


@deliveries_app.command("redeliver")
def deliveries_redeliver(
    ids: Annotated[list[int] | None, typer.Argument(help="Delivery ids (see deliveries list)")] = None,
    all_failed: Annotated[bool, typer.Option("--all-failed", help="Every failed delivery")] = False,
    data_dir: DataDir = Path("var"),
) -> None:
    """Queue failed deliveries again; each is decided again under today's policy before it is sent."""
    from hub.bootstrap import build

    if not ids and not all_failed:
        console.print("[red]name delivery ids, or --all-failed[/red]")
        raise typer.Exit(2)
    services = build(make_settings(data_dir))
    count = services.outbox.redeliver(None if all_failed else ids, now=datetime.now(UTC))
    console.print(f"{count} failed deliver{'y' if count == 1 else 'ies'} queued again")


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
        datetime | None, typer.Option(parser=from_, help=f"Only events from this time ({_WHEN}: its start)")
    ] = None,
    until: Annotated[
        datetime | None,
        typer.Option(
            "--until",
            "--as-of",
            parser=up_to,
            help=f"Only events up to this time: the record as of then ({_WHEN}: its end)",
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


@app.command()
def huddle(
    practice: Annotated[str, typer.Option("--practice", help="The practice's ODS code")],
    day: Annotated[str | None, typer.Option("--date", help="Meeting day, YYYY-MM-DD (default today)")] = None,
    org: Annotated[str | None, typer.Option(help="Who it is for (ODS code; default the practice)")] = None,
    publish: Annotated[bool, typer.Option(help="Publish it as a huddle.agenda event")] = True,
    attended: Annotated[
        bool, typer.Option(help="The meeting was held and the coordinator attended (counts in the KPIs)")
    ] = False,
    data_dir: DataDir = Path("var"),
) -> None:
    """Print a practice's weekly huddle / MDT agenda (as its coordinator may see it) and publish it."""
    from hub.api.auth import Principal
    from hub.api.routes.fhir import Judge, record
    from hub.bootstrap import build
    from hub.core.errors import InvalidMessageError
    from hub.core.huddle import UK, to_fhir_list
    from hub.core.policy import Asker
    from hub.web.views import decided_agenda
    from schemas.events.coordination import ATTENDED_EXTENSION

    practice, who_org = practice.strip().upper(), (org or practice).strip().upper()
    try:
        meeting = date.fromisoformat(day) if day else datetime.now(UK).date()
    except ValueError as exc:
        console.print(f"[red]--date: {escape(str(exc))} (use YYYY-MM-DD)[/red]")
        raise typer.Exit(2) from exc
    settings = make_settings(data_dir)
    services = build(settings)
    who = Principal(org=who_org, role="coordinator", user="carehub-cli")
    judge = Judge(services.policy, Asker(who.org, who.role, datetime.now(UTC)))
    try:
        shown = decided_agenda(
            services.reader, practice, meeting, judge, lambda judged: record(services.ledger, who, "huddle", judged)
        )
    except InvalidMessageError as exc:
        console.print(f"[red]{escape(exc.diagnostics)}[/red]")
        raise typer.Exit(2) from exc
    console.print(_agenda_table(shown))
    if shown.withheld_people or shown.withheld_items:
        console.print(f"{shown.withheld_people} person(s), {shown.withheld_items} item(s) withheld by the policy")
    if publish:
        agenda = to_fhir_list(shown)
        if attended:
            agenda["extension"] = [*agenda.get("extension", []), {"url": ATTENDED_EXTENSION, "valueBoolean": True}]
        event = asyncio.run(_publish_agenda(settings, services, agenda))
        console.print(f"published {event}")


def _agenda_table(shown: Any) -> Table:
    from hub.core.huddle import SECTIONS
    from hub.web.views import nhs_text, when_text

    first, last = shown.window
    title = f"Huddle agenda {shown.practice_name or shown.practice_ods}, {shown.meeting_date} ({first} to {last})"
    table = Table("section", "name", "NHS number", "what", "when / due", title=escape(title))
    for item in shown.items:
        cells = (SECTIONS[item.section], item.name or "", nhs_text(item.nhs_number), item.what, when_text(item))
        table.add_row(*(escape(c) for c in cells))
    return table


async def _publish_agenda(settings: Settings, services: Any, fhir_list: dict[str, Any]) -> str:
    """Publish the List on the events topic (with the embedded broker, the record applies it first)."""
    import orjson

    from hub.bootstrap import running
    from hub.core.huddle import event_id
    from schemas.envelope import Envelope
    from schemas.events.coordination import HUDDLE_AGENDA

    practice = fhir_list["identifier"][0]["value"].split("/")[0]
    envelope = Envelope(
        id=event_id(fhir_list),
        source=f"urn:ods:{practice}",
        type=HUDDLE_AGENDA.type,
        time=datetime.now(UTC),
        subject=f"urn:ods:{practice}",
        data=orjson.dumps(fhir_list),
    )
    embedded = not settings.bootstrap_servers()
    async with running(settings, services=services, mllp=False, http=False, consumers=embedded) as run:
        if run.publish is None:
            raise RuntimeError("the hub started without a publisher")
        await run.publish(envelope)
        if embedded and not await run.applied_ids([envelope.id]):
            console.print("[yellow]the record had not applied the agenda before the timeout[/yellow]")
    return f"{HUDDLE_AGENDA.type} {envelope.id} (List/{fhir_list['id']}, {len(fhir_list.get('entry', []))} entries)"
