"""The information-sharing commands: agreements, the national data opt-out, subscriptions and
deliveries (registered on hub.cli's app)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape

from hub.cli_base import (
    DataDir,
    HeldDir,
    M,
    agreements_app,
    cells,
    console,
    deliveries_app,
    make_settings,
    open_existing,
    optouts_app,
    subscriptions_app,
)
from hub.settings import Settings
from hub.terminal import listing


@agreements_app.command("load")
def agreements_load(
    paths: Annotated[list[Path], typer.Argument(help="Agreement YAML files (one version each)")],
    data_dir: DataDir = None,
) -> None:
    """Validate and load agreement versions; earlier versions stay stored for audit."""
    from hub.bootstrap import build
    from hub.core.errors import InvalidMessageError
    from hub.embedded import shared_kafka
    from schemas.agreements import Agreement

    settings = make_settings(data_dir)
    services = build(settings)
    documents, failed = _read_documents(paths, Agreement)
    loaded: list[Agreement] = []
    for path, agreement in documents:
        try:
            fresh = services.agreements.load(agreement, at=datetime.now(UTC))
        except InvalidMessageError as exc:
            console.print(f"[red]{escape(f'{path}: {exc.diagnostics}')}[/red]")
            failed += 1
        else:
            state = "loaded" if fresh else "already loaded"
            console.print(escape(f"{path}: {agreement.id} version {agreement.version} {state}"))
            loaded.append(agreement)
    if loaded and shared_kafka(settings):
        asyncio.run(_agreements_on_the_log(settings, loaded))
        console.print(f"{len(loaded)} agreement version(s) on the log as uk.nhs.carehub.agreement.loaded.v1")
    elif loaded:
        console.print("(not on the log: the embedded broker keeps no log; with KAFKA_BOOTSTRAP_SERVERS it does)")
    raise typer.Exit(1 if failed else 0)


async def _agreements_on_the_log(settings: Settings, agreements: list[Any]) -> None:
    """Publish each loaded version as an event, acknowledged by Kafka (acks=all)."""
    from consumers.app import build_broker
    from hub.agreement_events import envelope
    from hub.embedded import shared_kafka
    from hub.kafka import create_topics
    from schemas.topics import EVENTS

    bootstrap = shared_kafka(settings)
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
    data_dir: DataDir = None,
) -> None:
    """Record each person's national data opt-out as a Consent on the log (applied through agreements that
    say the opt-out applies); lines that are not NHS numbers are refused by line and dead-lettered."""
    from hub.bootstrap import build, running
    from hub.embedded import shared_kafka
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
        embedded = not shared_kafka(settings)
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
def agreements_list(data_dir: HeldDir = None) -> None:
    """Every agreement version held, newest last."""
    from hub.store.agreements import SqlAgreements

    table = listing("id", "version", "parties", "purposes", "categories", "valid")
    for a in SqlAgreements(open_existing(data_dir).engine).all_versions():
        valid = f"{a.valid_from} to {a.valid_to or 'open'}"
        parties = " ".join(sorted(a.party_codes))
        table.add_row(*cells(a.id, a.version, parties, ", ".join(a.purposes), ", ".join(a.categories), valid))
    console.print(table)


@subscriptions_app.command("load")
def subscriptions_load(
    paths: Annotated[list[Path], typer.Argument(help="Subscription YAML files")],
    data_dir: DataDir = None,
) -> None:
    """Validate and save subscriptions (a file with an existing id replaces it); the hub picks them up within 1 s."""
    from hub.bootstrap import build
    from schemas.subscriptions import Subscription

    services = build(make_settings(data_dir))
    documents, failed = _read_documents(paths, Subscription)
    for path, subscription in documents:
        unknown = _unknown_events(path, subscription)
        if unknown:  # saved, it would deliver nothing, ever, and say nothing
            console.print(escape(unknown), style="red", soft_wrap=True)
            failed += 1
            continue
        services.subscriptions.save(subscription)
        console.print(escape(f"{path}: subscription {subscription.id} for {subscription.org} saved"))
    raise typer.Exit(1 if failed else 0)


def _unknown_events(path: Path, subscription: Any) -> str:
    """Why a subscription names an event type no one publishes (a typo), or ''."""
    import difflib

    from schemas.registry import REGISTRY

    for index, event in enumerate(subscription.events):
        if event not in REGISTRY:
            near = difflib.get_close_matches(event, REGISTRY, n=1)
            hint = f" (did you mean {near[0]}?)" if near else ""
            return (
                f"{path}: events.{index}: unknown event type {event!r}{hint}; not saved. "
                f"The event types: {', '.join(sorted(REGISTRY))}"
            )
    return ""


@subscriptions_app.command("list")
def subscriptions_list(data_dir: HeldDir = None) -> None:
    """Every subscription."""
    from hub.store.subscriptions import SqlSubscriptions

    table = listing("id", "org", "events", "scope", "content", "webhook", "active")
    for s, active in SqlSubscriptions(open_existing(data_dir).engine).all():
        hook = str(s.webhook.url) if s.webhook else "-"
        table.add_row(*cells(s.id, s.org, "\n".join(s.events), s.scope, s.content, hook, "yes" if active else "no"))
    console.print(table)


@deliveries_app.command("list")
def deliveries_list(
    status: Annotated[str | None, typer.Option(help="pending, delivered, failed or withheld")] = None,
    limit: Annotated[int, typer.Option(help="How many, newest first")] = 50,
    data_dir: HeldDir = None,
) -> None:
    """Webhook deliveries, newest first."""
    from hub.store.subscriptions import SqlOutbox

    table = listing("id", "subscription", "event", "status", "attempts", "last error")
    for d in SqlOutbox(open_existing(data_dir).engine).listing(status, limit):
        table.add_row(*cells(d.id, d.subscription_id, d.event_id, d.status, d.attempts, d.last_error or ""))
    console.print(table)


@deliveries_app.command("redeliver")
def deliveries_redeliver(
    ids: Annotated[list[int] | None, typer.Argument(help="Delivery ids (see deliveries list)")] = None,
    all_failed: Annotated[bool, typer.Option("--all-failed", help="Every failed delivery")] = False,
    data_dir: HeldDir = None,
) -> None:
    """Queue failed deliveries again; each is decided again under today's policy before it is sent."""
    from hub.store.subscriptions import SqlOutbox

    if not ids and not all_failed:
        console.print("[red]name delivery ids, or --all-failed[/red]")
        raise typer.Exit(2)
    outbox = SqlOutbox(open_existing(data_dir).engine)  # (a hub with no state has nothing to redeliver)
    count = outbox.redeliver(None if all_failed else ids, now=datetime.now(UTC))
    console.print(f"{count} failed deliver{'y' if count == 1 else 'ies'} queued again")
