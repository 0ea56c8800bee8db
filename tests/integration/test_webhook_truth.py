"""Webhook and mailbox deliveries tell the truth in the disclosure ledger, and one subscriber's slow
endpoint holds up no other's. Real receivers on real sockets (one refusing connections, one slow past
the client's timeout, one answering 500, one answering 204), a mailbox that cannot be written, the
ledger and outbox on SQLite and PostgreSQL, and `carehub audit disclosures` run as an operator runs
it (a subject-access answer must not count as disclosed what never left the hub)."""

from __future__ import annotations

import asyncio
import csv
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

import httpx
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from consumers.delivery import Deliverer
from consumers.delivery_sender import WebhookSender
from hub.bootstrap import Services, build
from hub.core.identity import person_key
from hub.core.ledger import DISCLOSED, NO_RESULT, NOT_DISCLOSED, POSSIBLY_DISCLOSED, is_result, results, verify
from hub.kafka import free_port
from hub.settings import DatabaseSettings, SecuritySettings, Settings
from hub.store.agreements import PolicySource
from schemas.subscriptions import Subscription
from tests.builders import an_agreement

pytestmark = pytest.mark.timeout(240)
CAREHUB = str(Path(sys.executable).with_name("carehub"))
NHS = "9434765919"
SECRET_ENV = "TRUTH_HOOK_SECRET"
COUNCIL, VCSE = "LA0001", "V00001"


@dataclass
class Receiver:
    """Webhook endpoints on one real socket: /ok answers 204, /fail 500, /slow holds each request
    (its body read: it has arrived) until released or `hold` seconds pass, then answers 204."""

    hold: float = 60.0
    port: int = field(default_factory=free_port)
    got: dict[str, list[str]] = field(default_factory=dict)  # path -> the event ids it received, in order
    on_request: Callable[[str], None] | None = None
    release: asyncio.Event = field(default_factory=asyncio.Event)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}/{path}"

    async def hook(self, request: Request) -> Response:
        await request.body()
        event = request.headers["x-carehub-event-id"]
        if self.on_request is not None:
            self.on_request(event)
        path = request.url.path.strip("/")
        self.got.setdefault(path, []).append(event)
        if path == "fail":
            return Response(status_code=500)
        if path == "slow":
            try:
                await asyncio.wait_for(self.release.wait(), self.hold)
            except TimeoutError:
                pass
        return Response(status_code=204)

    def server(self) -> uvicorn.Server:
        app = Starlette(routes=[Route("/{path}", self.hook, methods=["POST"])])
        return uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))


SERVER_SECRETS = SecuritySettings(
    key_secret="truth-key-secret", token_secret="truth-token-secret-at-least-32-bytes-long"
)  # type: ignore[arg-type]


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def settings(request: pytest.FixtureRequest, tmp_path: Path) -> Settings:
    if request.param == "sqlite":
        return Settings(data_dir=tmp_path)
    url = str(request.getfixturevalue("postgres_url"))  # (a server's database: the secrets are configured)
    return Settings(data_dir=tmp_path, db=DatabaseSettings(url=url), security=SERVER_SECRETS)


@pytest.fixture
def services(settings: Settings) -> Iterator[Services]:
    made = build(settings)
    made.agreements.load(an_agreement("RXX", "Y00001", COUNCIL, VCSE), at=datetime.now(UTC) - timedelta(days=1))
    yield made
    made.engine.dispose()


class Clock:
    """The sender's clock, moved on by hand past each retry's backoff."""

    def __init__(self) -> None:
        self.now = datetime.now(UTC)

    def __call__(self) -> datetime:
        return self.now


def a_deliverer(services: Services, clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> Deliverer:
    return Deliverer(
        broker=cast(Any, None),  # (the sender publishes only a PIC summary's receipt: none here)
        bootstrap="",
        uow_factory=services.uow_factory,
        subscriptions=services.subscriptions,
        outbox=services.outbox,
        policy=PolicySource(services.agreements, services.reader),
        ledger=services.ledger,
        registrations=services.registrations,
        clock=clock,
    )


def subscribe(services: Services, id: str, org: str, *, max_attempts: int = 2, **where: Any) -> None:
    hook = {"webhook": {"url": where["url"], "secret_env": SECRET_ENV}} if "url" in where else where
    services.subscriptions.save(
        Subscription(
            id=id, org=org, events=("uk.nhs.carehub.encounter.admitted.v1",), max_attempts=max_attempts, **hook
        )
    )


def queue(services: Services, sub_id: str, person: str, now: datetime, n: int = 1) -> list[str]:
    """`n` deliveries of an admission about `person` to one subscription: their event ids, in order."""
    source = {"source": "urn:ods:RXX"}
    rows, ids = [], []
    for _ in range(n):
        event = f"ev-{uuid.uuid4().hex[:12]}"
        resources = [
            {"resourceType": "Patient", "id": person, "meta": source, "name": [{"family": "SMITH"}]},
            {
                "resourceType": "Encounter",
                "id": f"enc-{event}",
                "meta": source,
                "status": "in-progress",
                "subject": {"reference": f"Patient/{person}"},
            },
        ]
        summary = {"id": event, "type": "uk.nhs.carehub.encounter.admitted.v1", "time": now.isoformat()}
        body = {"event": summary, "resources": resources}
        rows.append({"subscription_id": sub_id, "event_id": event, "person_key": person, "body": body})
        ids.append(event)
    services.outbox.enqueue(rows, now=now)
    return ids


def carehub(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    env = {"PATH": "/usr/bin:/bin", "COLUMNS": "250"}
    if settings.db.url:
        env["CAREHUB_DATABASE_URL"] = settings.db.url
    for name, secret in (("KEY", settings.security.key_secret), ("TOKEN", settings.security.token_secret)):
        if secret is not None:  # (a server's database: the secrets the hub was given)
            env[f"CAREHUB_SECURITY__{name}_SECRET"] = secret.get_secret_value()
    command = [CAREHUB, *args, "--data-dir", str(settings.data_dir)]
    return subprocess.run(command, capture_output=True, text=True, timeout=100, env=env, check=False)


def outcomes_by_subscription(services: Services) -> dict[str, list[str]]:
    entries = list(services.ledger.entries())
    came = results(entries)
    found: dict[str, list[str]] = {}
    for entry in entries:
        if entry.seq in came:
            found.setdefault(entry.body["recipient_user"].removeprefix("subscription:"), []).append(
                came[entry.seq].outcome
            )
    return found


async def test_each_attempt_is_recorded_before_it_is_sent_and_what_came_of_it_after(
    services: Services, settings: Settings, tmp_path: Path
) -> None:
    receiver = Receiver(hold=30.0)
    person = person_key(services.secrets.key, NHS, None)
    refused = f"http://127.0.0.1:{free_port()}/nobody"  # nothing listens: connection refused
    subscribe(services, "council-down", COUNCIL, url=refused)
    subscribe(services, "council-500", COUNCIL, url=receiver.url("fail"))
    subscribe(services, "council-slow", COUNCIL, url=receiver.url("slow"))
    subscribe(services, "vcse-ok", VCSE, url=receiver.url("ok"))
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("a file where the mailbox's folder should be")
    subscribe(services, "gp-box", "Y00001", mailbox=str(blocked / "box"))
    clock = Clock()
    for sub in ("council-down", "council-500", "council-slow", "vcse-ok", "gp-box"):
        queue(services, sub, person, clock.now)

    recorded_first: list[bool] = []

    def attempt_already_in_the_ledger(event: str) -> None:
        mine = [e.body for e in services.ledger.entries() if e.body.get("event") == event]
        tried = {b["attempt"] for b in mine if b.get("attempt") and not is_result(b)}
        recorded_first.append(bool(tried - {b["attempt"] for b in mine if is_result(b)}))  # (its result: not yet)

    receiver.on_request = attempt_already_in_the_ledger
    server = receiver.server()
    serving = asyncio.create_task(server.serve())
    client = httpx.AsyncClient(timeout=2.0)
    sender = WebhookSender(a_deliverer(services, clock), client=client, env={SECRET_ENV: "s3cret"})
    try:
        await asyncio.sleep(0.3)  # (the receiver listening)
        for _ in range(2):  # every subscription allows 2 attempts
            await sender.once()
            clock.now += timedelta(minutes=1)  # past the backoff
    finally:
        receiver.release.set()
        await client.aclose()
        server.should_exit = True
        await serving

    assert recorded_first and all(recorded_first)  # each POST came after its attempt's entry, before its result
    assert len(receiver.got["slow"]) == 2  # the timed-out POSTs arrived, both times
    assert verify(services.ledger.entries())[1] is None
    assert outcomes_by_subscription(services) == {
        "council-down": [NOT_DISCLOSED, NOT_DISCLOSED],  # never connected: nothing left the hub
        "council-500": [POSSIBLY_DISCLOSED, POSSIBLY_DISCLOSED],  # the receiver had it, and said 500
        "council-slow": [POSSIBLY_DISCLOSED, POSSIBLY_DISCLOSED],  # sent, then the client gave up waiting
        "vcse-ok": [DISCLOSED],
        "gp-box": [NOT_DISCLOSED, NOT_DISCLOSED],  # no file written
    }
    by_sub = {d.subscription_id: d for d in services.outbox.listing()}
    assert by_sub["vcse-ok"].status == "delivered"
    assert by_sub["council-slow"].status == "failed"
    assert "may have been received" in str(by_sub["council-slow"].last_error)
    assert "nothing was sent" in str(by_sub["council-down"].last_error)

    sar = tmp_path / "sar.csv"
    said = await asyncio.to_thread(carehub, settings, "audit", "disclosures", "--nhs-number", NHS, "--csv", str(sar))
    assert said.returncode == 0, said.stdout + said.stderr
    summary = " ".join(said.stdout.split())
    assert (
        "9 decisions recorded about this person: 1 disclosure (0 by break-glass), 4 possibly disclosed "
        "(sent, but not known to have arrived), 4 not disclosed (permitted, but nothing was sent), 0 denials"
    ) in summary
    with sar.open() as out:
        rows = list(csv.DictReader(out))
    shown = sorted(row["disclosed"].split(":")[0] for row in rows)
    assert shown == sorted([DISCLOSED] + [POSSIBLY_DISCLOSED] * 4 + [NOT_DISCLOSED] * 4)
    assert all(row["ledger"] == "consistent" for row in rows)

    travel = tmp_path / "travel.csv"
    said = await asyncio.to_thread(carehub, settings, "audit", "time-travel", "--nhs-number", NHS, "--csv", str(travel))
    assert said.returncode == 0, said.stdout + said.stderr
    with travel.open() as out:
        rows = list(csv.DictReader(out))
    shown = sorted(row["disclosed"].split(":")[0] for row in rows)  # (a row per resource: two in each)
    assert shown == sorted([DISCLOSED] * 2 + [POSSIBLY_DISCLOSED] * 8 + [NOT_DISCLOSED] * 8)


def test_a_subscriber_with_a_long_queue_never_hides_anothers_due_deliveries(services: Services) -> None:
    now = datetime.now(UTC)
    queue(services, "council", "p1", now, n=60)  # its endpoint down: a long queue, all due
    vcse = queue(services, "vcse", "p2", now)
    due = services.outbox.due(now)
    assert [d.event_id for d in due if d.subscription_id == "vcse"] == vcse
    assert 0 < sum(d.subscription_id == "council" for d in due) < 60


async def test_a_slow_subscriber_holds_up_no_other_subscribers_deliveries(services: Services) -> None:
    receiver = Receiver(hold=120.0)
    person = person_key(services.secrets.key, NHS, None)
    subscribe(services, "council", COUNCIL, url=receiver.url("slow"), max_attempts=5)
    subscribe(services, "vcse", VCSE, url=receiver.url("ok"))
    now = datetime.now(UTC)
    council = queue(services, "council", person, now, n=5)  # queued first: lower outbox ids
    vcse = queue(services, "vcse", person, now)
    server = receiver.server()
    serving = asyncio.create_task(server.serve())
    stopping = asyncio.Event()
    client = httpx.AsyncClient(timeout=10.0)  # the hub's own timeout: the council's first POST waits it out
    sending = asyncio.create_task(
        WebhookSender(a_deliverer(services), client=client, env={SECRET_ENV: "s3cret"}, interval=0.05).run(stopping)
    )
    try:
        deadline = time.monotonic() + 150  # (the sender before this change reached the VCSE after 50 s)
        while not receiver.got.get("ok") and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert receiver.got.get("ok") == vcse
        # ordering, not timing: the VCSE delivery arrived while the council's first POST was still held
        assert len(receiver.got.get("slow", [])) <= 1, receiver.got

        # the council's first try runs out (the client's timeout): a later delivery must not go now
        def first_try_failed() -> bool:
            return any(is_result(e.body) and e.body["recipient_org"] == COUNCIL for e in services.ledger.entries())

        while not first_try_failed() and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert first_try_failed()
        receiver.release.set()  # the council's endpoint recovers: its queue goes, in order
        while len(set(receiver.got.get("slow", []))) < len(council) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        # each subscription's in outbox order: every POST, failed ones too, none of a later delivery
        # before the last of an earlier one (a later one never overtakes one backing off)
        assert set(receiver.got["slow"]) == set(council)
        assert receiver.got["slow"] == sorted(receiver.got["slow"], key=council.index), receiver.got["slow"]
    finally:
        receiver.release.set()
        stopping.set()
        await sending
        server.should_exit = True
        await serving
    assert verify(services.ledger.entries())[1] is None  # appends from side-by-side sends, one chain


def test_an_attempt_with_no_result_recorded_is_possibly_disclosed_never_disclosed(services: Services) -> None:
    """A crash between the POST and recording its result leaves the attempt: it reads as possibly
    disclosed (the ledger cannot know), neither as disclosed nor as not."""
    from hub.core.delivery import ledger_entries
    from hub.core.policy import Decision

    sub = Subscription(
        id="council", org=COUNCIL, events=("x",), webhook={"url": "http://h.invalid/", "secret_env": SECRET_ENV}
    )
    permit = Decision("permit", ("agreement",), ("test-locality-sharing@1",))
    patient = {"resourceType": "Patient", "id": "p1"}
    now = datetime.now(UTC)
    entries = ledger_entries(sub, "webhook", [(patient, permit)], now, event="ev-1", versions={}, attempt="a1")
    services.ledger.append(entries)
    came = results(services.ledger.about("p1"))
    assert [(r.outcome, r.detail) for r in came.values()] == [(POSSIBLY_DISCLOSED, NO_RESULT)]
