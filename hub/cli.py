"""The `carehub` command: parse options, call a service, print, exit code. Nothing else."""

from __future__ import annotations

import asyncio
import logging
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, TypeVar

import typer
from pydantic import BaseModel
from rich.console import Console
from rich.markup import escape
from rich.table import Table

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
def audit_verify(data_dir: DataDir = Path("var")) -> None:
    """Recompute the ledger's hash chain; name the first entry altered, removed or reordered."""
    from hub.bootstrap import build
    from hub.core.ledger import verify

    services = build(make_settings(data_dir))
    checked, broken = verify(services.ledger.entries())
    if broken:
        console.print(f"[red]ledger broken at entry {broken.seq}: {broken.problem}[/red] ({checked} entries read)")
        raise typer.Exit(1)
    console.print(f"ledger intact: {checked} entries, chain verified")


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


@agreements_app.command("load")
def agreements_load(
    paths: Annotated[list[Path], typer.Argument(help="Agreement YAML files (one version each)")],
    data_dir: DataDir = Path("var"),
) -> None:
    """Validate and load agreement versions; earlier versions stay stored for audit."""
    from hub.bootstrap import build
    from hub.core.errors import InvalidMessageError
    from schemas.agreements import Agreement

    services = build(make_settings(data_dir))
    documents, failed = _read_documents(paths, Agreement)
    for path, agreement in documents:
        try:
            fresh = services.agreements.load(agreement, at=datetime.now(UTC))
        except InvalidMessageError as exc:
            console.print(f"[red]{path}: {exc.diagnostics}[/red]")
            failed += 1
        else:
            state = "loaded" if fresh else "already loaded"
            console.print(f"{path}: {agreement.id} version {agreement.version} {state}")
    raise typer.Exit(1 if failed else 0)


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


@app.command()
def replay(
    into: Annotated[Path, typer.Option("--into", help="Data directory for the rebuilt record (must be new)")],
    since: Annotated[datetime | None, typer.Option(help="Only events at or after this time (ISO 8601)")] = None,
    until: Annotated[datetime | None, typer.Option(help="Only events up to this time: the record as of then")] = None,
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
    bounds = [(since, "since"), (until, "until")]
    since, until = (b.replace(tzinfo=b.tzinfo or UTC) if b else None for b, _ in bounds)
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
                )
            )
        except RuntimeError as exc:
            console.print(f"[red]{exc}[/red]")
            raise typer.Exit(1) from exc
    digest, resources, events = record_hash(engine)
    console.print(
        f"replayed {result.events:,} events ({result.applied:,} applied, {result.skipped} not CareHub events) "
        f"in {result.seconds:.1f}s: {resources:,} resources"
    )
    typer.echo(f"{digest}  {resources} resources, {events} events applied")
