"""Composition root: settings in, running services out. The only place that names concrete classes
for the hub as a whole (store, broker, adapters, consumers, API)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Collection
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
import uvicorn

from hub.core.ports import DeadLetters, Ledger, RecordReader, RecordUnitOfWork, Registrations
from hub.core.record import ApplyResult
from hub.core.tasks import Engine
from hub.embedded import drain, kafka
from hub.kafka import create_topics
from hub.rules import load_rules
from hub.secret_keys import Secrets, load_secrets
from hub.settings import Settings
from hub.store.agreements import PolicySource, SqlAgreements
from hub.store.coordination import SqlCoordinationStore
from hub.store.database import is_local, make_private_folder, open_engine
from hub.store.key_fingerprint import hold_key_fingerprint
from hub.store.ledger import SqlLedger
from hub.store.registrations import SqlRegistrations
from hub.store.sql import SqlDeadLetters, SqlRecordReader, SqlRecordUnitOfWork
from hub.store.subscriptions import SqlOutbox, SqlSubscriptions
from schemas.envelope import Envelope

log = logging.getLogger(__name__)
__all__ = ["Running", "Secrets", "Services", "build", "load_secrets", "running"]


@dataclass
class Services:
    """What the edges need, built once from Settings."""

    settings: Settings
    engine: sa.Engine
    secrets: Secrets
    uow_factory: Callable[[], RecordUnitOfWork]
    reader: RecordReader
    dead_letters: DeadLetters
    ledger: Ledger
    agreements: SqlAgreements
    policy: PolicySource | None
    subscriptions: SqlSubscriptions
    outbox: SqlOutbox
    registrations: Registrations
    coordination: SqlCoordinationStore
    rules: Engine


def build(settings: Settings, *, migrate: bool = False, **overrides: Any) -> Services:
    """Open the database and assemble the services; overrides replace any part. The database is
    migrated where it is local, or empty, or `migrate` says so (the long-running hub: a server's
    database behind the code is refused otherwise); its person-key fingerprint is compared with this
    process's secret (DatabaseRefusedError where it differs), and recorded where there is none yet only
    by the long-running hub (`migrate`) or on a local file."""
    make_private_folder(settings.data_dir)
    url = settings.database()
    keys = overrides.pop("secrets", None) or load_secrets(settings)  # (none made for a server's database)
    engine = overrides.pop("engine", None) or open_engine(url, migrate=migrate or is_local(url) or "empty")
    # recorded by the hub's own processes (up, worker: `migrate`) or on a local file; compared by any
    hold_key_fingerprint(engine, keys.key, source=keys.key_from, record=migrate or is_local(url))
    parts: dict[str, Any] = {
        "settings": settings,
        "engine": engine,
        "secrets": keys,
        "uow_factory": lambda: SqlRecordUnitOfWork(engine),
        "reader": SqlRecordReader(engine),
        "dead_letters": SqlDeadLetters(engine),
        "ledger": SqlLedger(engine),
        "agreements": SqlAgreements(engine),
        "subscriptions": SqlSubscriptions(engine, ttl=settings.policy.agreements_ttl_s),
        "outbox": SqlOutbox(engine),
        "registrations": SqlRegistrations(engine),
        "coordination": SqlCoordinationStore(engine),
        "rules": Engine(load_rules(settings.coordination.rules)),
    }
    parts["policy"] = (
        PolicySource(parts["agreements"], parts["reader"], ttl=settings.policy.agreements_ttl_s)
        if settings.policy.enforce
        else None
    )
    parts.update(overrides)
    return Services(**parts)


@dataclass
class Running:
    """A running hub: where each part listens, and how far the record consumer has got."""

    services: Services
    bootstrap: str
    mllp_port: int | None = None
    http_port: int | None = None
    intake: Any = None
    applied: int = 0
    seen: int = 0
    kept: int = 0
    coordinated: int = 0
    derived: int = 0
    stopping: asyncio.Event = field(default_factory=asyncio.Event)
    publish: Callable[[Envelope], Awaitable[None]] | None = None  # to the events topic, as POST Consent does
    tick: Callable[[], Awaitable[None]] | None = None  # the hub's clock onto every partition, now
    # the consumer groups running here that read the events topic, and the one that reads the dead letters
    consumer_groups: list[str] = field(default_factory=list)
    dead_letter_group: str | None = None

    def count(self, result: ApplyResult) -> None:
        """Record consumer progress (events applied plus duplicates skipped)."""
        self.applied += result.applied
        self.seen += result.applied + result.duplicates

    def count_coordinated(self, seen: int, derived: int) -> None:
        """Coordination consumer progress (events seen, events derived)."""
        self.coordinated += seen
        self.derived += derived

    def count_kept(self, records: int) -> None:
        """Record dead-letter consumer progress (records kept in the store)."""
        self.kept += records

    async def applied_ids(self, event_ids: Collection[str], *, dead_letters: int = 0, timeout: float = 60.0) -> bool:
        """Wait until the record has applied these events (by id: the rules engine and the clock add
        events of their own to the topic, so a count would be reached early) and the dead-letter
        consumer has kept `dead_letters` records; False on timeout."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        wanted = set(event_ids)
        while True:
            done = await asyncio.to_thread(_processed, self.services.uow_factory, wanted)
            if done >= wanted and self.kept >= dead_letters:
                return True
            if loop.time() > deadline:
                return False
            await asyncio.sleep(0.1)

    async def settled(self, timeout: float = 120.0, *, poll: float = 0.3) -> dict[str, int]:
        """Wait until every consumer group on the events topic has committed to the end of the log
        (so the rules engine's derived events, published before it commits, have been read by every
        consumer too); {} then, else how far each group is still behind when `timeout` runs out.

        Progress is measured, not guessed from quiet: a consumer waiting out a slow broker or
        database makes no progress for seconds at a time, and is still not done."""
        from hub.kafka import behind

        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            lag = await behind(self.bootstrap, self.consumer_groups)
            if not lag or asyncio.get_running_loop().time() > deadline:
                return lag
            await asyncio.sleep(poll)

    async def caught_up(self, events: int, timeout: float = 60.0, *, dead_letters: int = 0) -> bool:
        """Wait until the record consumer has seen `events` events and the dead-letter consumer has
        kept `dead_letters` records; False on timeout."""
        deadline = asyncio.get_running_loop().time() + timeout
        while self.seen < events or self.kept < dead_letters:
            if asyncio.get_running_loop().time() > deadline:
                return False
            await asyncio.sleep(0.05)
        return True


class _QuietServer(uvicorn.Server):
    """uvicorn inside our own loop: the hub, not uvicorn, owns the process's signals."""

    def install_signal_handlers(self) -> None:
        return None

    @contextlib.contextmanager
    def capture_signals(self):  # type: ignore[no-untyped-def]
        yield


def _publisher(broker: Any, timeout: float) -> Callable[[Envelope], Awaitable[None]]:
    """Publish an API-originated event to the events topic; BrokerUnavailableError if Kafka won't ack,
    MessageTooLargeError (413: sent again it still is) if it will not take a record that large."""
    from aiokafka.errors import KafkaError, MessageSizeTooLargeError, RecordListTooLargeError

    from hub.core.errors import BrokerUnavailableError, MessageTooLargeError
    from schemas.topics import EVENTS

    async def publish(envelope: Envelope) -> None:
        try:
            await asyncio.wait_for(
                broker.publish(
                    envelope.data, EVENTS.name, key=envelope.subject.encode(), headers=envelope.kafka_headers()
                ),
                timeout,
            )
        except (MessageSizeTooLargeError, RecordListTooLargeError) as exc:
            size = f"{len(envelope.data):,} bytes"
            raise MessageTooLargeError(
                f"the event is too large for Kafka ({size}; it takes at most 1 MiB in one record): nothing "
                "was recorded, and sending it again as it is cannot succeed"
            ) from exc
        except (TimeoutError, KafkaError, OSError) as exc:
            raise BrokerUnavailableError("Kafka did not acknowledge; nothing was recorded, send it again") from exc

    return publish


def _refuser(broker: Any, timeout: float) -> Callable[[bytes, Any, str], Awaitable[object]]:
    """Keep an API refusal (a discharge summary, hub.api.routes.discharge) whole on the dead-letter
    topic, as the intake adapters keep theirs (adapters.publishing), keyed by the sender."""
    import hashlib
    from datetime import UTC, datetime

    from adapters.publishing import Publisher
    from hub.core.identity import stable_id

    out = Publisher(
        broker, timeout=timeout, clock=lambda: datetime.now(UTC), unit="the document", retry="send it again"
    )

    async def refused(raw: bytes, error: Any, sender: str) -> object:
        event_id = stable_id("rejected", "api", sender, hashlib.sha256(raw).hexdigest())
        origin = "http:POST /fhir/Bundle"
        return await out.rejected(
            raw, event_id=event_id, sender=sender, origin=origin, content_type="application/fhir+json", error=error
        )

    return refused


async def _serve_http(
    services: Services,
    listener: socket.socket,
    publish: Callable[[Envelope], Awaitable[None]] | None = None,
    broker: Any = None,
    meters: Any = None,
) -> tuple[_QuietServer, asyncio.Task[None]]:
    from hub.api import health
    from hub.api.app import create_app
    from hub.api.auth import TokenVerifier
    from hub.api.routes.coordination import CoordinationApi

    commands = None
    if publish is not None and services.settings.coordination.enabled:
        commands = CoordinationApi(
            reader=services.reader,
            coordination=services.coordination,
            engine=services.rules,
            key_secret=services.secrets.key,
            publish=publish,
            agreements=services.agreements.current if services.policy is not None else None,
            subscriptions=services.subscriptions.active if services.policy is not None else None,
        )
    checks = {"database": health.database_answers(services.engine)}
    if broker is not None:
        checks["kafka"] = health.kafka_answers(broker)
    app = create_app(
        services.reader,
        TokenVerifier(services.secrets.token),
        services.ledger,
        services.policy,
        publish,
        commands,
        checks,
        meters,
        _refuser(broker, services.settings.kafka.publish_timeout_s) if broker is not None else None,
    )
    host, port = listener.getsockname()[:2]
    server = _QuietServer(uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="off"))
    task = asyncio.create_task(server.serve(sockets=[listener]))
    while not server.started:
        if task.done():
            await task
            raise RuntimeError(f"HTTP server did not start on {host}:{port}")
        await asyncio.sleep(0.02)
    return server, task


@contextlib.asynccontextmanager
async def _http_listener(settings: Settings, http: bool) -> AsyncIterator[socket.socket | None]:
    """The FHIR API's socket, bound before Kafka and the consumers start: a port in use is an OSError
    at once, worded as the MLLP listener's (uvicorn, left to bind it, called sys.exit after the slow
    start-up: exit 3 and "Task was destroyed")."""
    if not http:
        yield None
        return
    listener = _bound(settings.http.host, settings.http.port)
    try:
        yield listener
    finally:
        listener.close()  # (uvicorn's server closed it already, where it served: closing again does nothing)


def _bound(host: str, port: int) -> socket.socket:
    """A TCP socket bound to host:port (uvicorn's options: SO_REUSEADDR; IPv6 where the host is an address
    with colons), or the OSError asyncio's create_server raises for it."""
    listener = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listener.bind((host, port))
    except OSError as exc:
        listener.close()
        said = f"error while attempting to bind on address {(host, port)!r}: {(exc.strerror or str(exc)).lower()}"
        raise OSError(exc.errno, said) from exc
    return listener


@contextlib.asynccontextmanager
async def running(
    settings: Settings,
    *,
    services: Services | None = None,
    mllp: bool = True,
    http: bool = True,
    consumers: bool = True,
    advertise: bool = False,
    migrate: bool = False,
) -> AsyncIterator[Running]:
    """Start Kafka (embedded unless configured), topics, consumers, MLLP and HTTP; stop them all.
    `advertise`: a long-running hub (`up`, `demo --serve`) tells other commands on its data directory
    where its embedded broker listens (hub.bootstrap.kafka). `migrate`: bring a server's database
    behind the code up to it (`up`, `worker`; hub.bootstrap.build)."""
    from adapters.hl7v2.service import HospitalIntake
    from adapters.hl7v2.transport import serve
    from consumers.app import build_broker, dead_letter_group, include_consumers
    from consumers.coordination import Ticker
    from consumers.delivery import Deliverer
    from consumers.delivery_sender import WebhookSender
    from hub.api.metrics import Metrics
    from hub.store.dead_letter_status import tally

    if services is None:
        services = await asyncio.to_thread(lambda: build(settings, migrate=migrate))
    async with _http_listener(settings, http) as listener, kafka(settings, advertise=advertise) as bootstrap:
        replication = settings.kafka.replication_factor if settings.bootstrap_servers() else 1
        await create_topics(bootstrap, replication=replication)
        broker = build_broker(bootstrap, client_id=settings.kafka.client_id)
        run = Running(services=services, bootstrap=bootstrap)
        run.publish = _publisher(broker, settings.kafka.publish_timeout_s)
        deliverer = Deliverer(
            replication=replication,
            broker=broker,
            bootstrap=bootstrap,
            uow_factory=services.uow_factory,
            subscriptions=services.subscriptions,
            outbox=services.outbox,
            registrations=services.registrations,
            policy=services.policy or PolicySource(services.agreements, services.reader),
            ledger=services.ledger,
            enforce=services.policy is not None,
            service=services.rules.rules.service.ods,  # (a huddle agenda: never taken for a GP practice's)
        )
        prefix = settings.kafka.group_id.removesuffix("-record")
        if consumers:
            run.dead_letter_group = dead_letter_group(prefix)
            run.consumer_groups = include_consumers(
                broker,
                uow_factory=services.uow_factory,
                dead_letters=services.dead_letters,
                group_prefix=prefix,
                on_applied=run.count,
                on_kept=run.count_kept,
                deliverer=deliverer,
                coordination=(services.rules, services.coordination.unit_of_work)
                if settings.coordination.enabled
                else None,
                on_coordinated=run.count_coordinated,
                key_secret=services.secrets.key,
            )
        await broker.start()
        meters = Metrics(lambda: tally(services.engine))  # (this process's counts: GET /metrics)
        run.intake = HospitalIntake(
            broker,
            key_secret=services.secrets.key,
            publish_timeout=settings.kafka.publish_timeout_s,
            processing_ids=settings.mllp.processing_ids,
            enhanced_ack_senders=settings.mllp.enhanced_ack_senders,
            on_answered=meters.record,
        )
        stack = contextlib.AsyncExitStack()
        try:
            if consumers:
                sender = asyncio.create_task(WebhookSender(deliverer).run(run.stopping))
                stack.push_async_callback(_stop_task, run.stopping, sender)
            clock = Ticker(broker, every=settings.coordination.tick_s or 60.0)
            run.tick = clock.tick_once
            if consumers and settings.coordination.enabled and settings.coordination.tick_s > 0:
                ticker = asyncio.create_task(clock.run(run.stopping))
                stack.push_async_callback(_stop_task, run.stopping, ticker)
            if mllp:
                server = await serve(
                    run.intake.receive,
                    run.intake.refuse,
                    settings.mllp.host,
                    settings.mllp.port,
                    limit=settings.mllp.max_message_bytes,
                    connections=settings.mllp.max_connections,
                    per_host=settings.mllp.max_connections_per_host,
                    quiet=settings.mllp.quiet_close_s,
                )
                stack.push_async_callback(_close_server, server)
                run.mllp_port = server.sockets[0].getsockname()[1]
            if listener is not None:
                publish = _publisher(broker, settings.kafka.publish_timeout_s)
                web, task = await _serve_http(services, listener, publish, broker, meters)
                stack.push_async_callback(_stop_http, web, task)
                run.http_port = web.servers[0].sockets[0].getsockname()[1]
            yield run
        finally:
            try:
                await stack.aclose()  # the listeners first: nothing more is acknowledged
                if advertise and consumers and not settings.bootstrap_servers():
                    await drain(run, settings.kafka.drain_timeout_s)
            finally:
                await broker.stop()


def _processed(uow_factory: Callable[[], RecordUnitOfWork], event_ids: set[str]) -> set[str]:
    with uow_factory() as uow:
        return uow.processed(event_ids)


async def _close_server(server: asyncio.Server) -> None:
    server.close()
    await server.wait_closed()


async def _stop_http(server: _QuietServer, task: asyncio.Task[None]) -> None:
    server.should_exit = True
    await task


async def _stop_task(stopping: asyncio.Event, task: asyncio.Task[None]) -> None:
    stopping.set()
    await task
