"""Subscriptions end to end over real sockets: MLLP in, subscriber topic and signed webhook out,
retries, failure and redelivery, an objection that stops every later delivery about the person, and
the disclosure ledger naming what each delivery disclosed (record version, hash, channel)."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import uvicorn
from aiokafka import AIOKafkaConsumer
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from adapters.hl7v2.transport import MllpClient
from hub.api.auth import issue_token
from hub.bootstrap import build, running
from hub.core.ledger import canonical, verify
from hub.kafka import free_port
from hub.settings import HttpSettings, KafkaSettings, MllpSettings, Settings
from schemas.subscriptions import Subscription
from schemas.topics import subscriber_topic
from tests.builders import an_adt, an_agreement, an_objection

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(150)]
NHS = "https://fhir.nhs.uk/Id/nhs-number"
ODS = "https://fhir.nhs.uk/Id/ods-organization-code"
SECRET = "webhook-test-secret"
DISCHARGED = "uk.nhs.carehub.encounter.discharged.v1"
EVENTS = ("uk.nhs.carehub.encounter.admitted.v1", DISCHARGED, "uk.nhs.carehub.patient.updated.v1")


class Receiver:
    """A practice's webhook endpoint on a real socket; fails the first `fail_first` requests."""

    def __init__(self, fail_first: int) -> None:
        self.fail_first = fail_first
        self.calls = 0
        self.received: list[tuple[dict[str, str], bytes]] = []
        self.port = free_port()
        app = Starlette(routes=[Route("/hook", self.hook, methods=["POST"])])
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    async def hook(self, request: Request) -> Response:
        self.calls += 1
        if self.calls <= self.fail_first:
            return Response(status_code=503)
        self.received.append((dict(request.headers), await request.body()))
        return Response(status_code=204)

    def events(self) -> list[str]:
        return [h["x-carehub-event-id"] for h, _ in self.received]


async def until(check: Any, within: float) -> None:
    deadline = time.perf_counter() + within
    while time.perf_counter() < deadline:
        if check():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"not true within {within}s")


async def topic_events(bootstrap: str, topic: str, at_least: int, within: float = 10) -> list[str]:
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, group_id=f"t-{uuid.uuid4().hex[:8]}", auto_offset_reset="earliest"
    )
    await consumer.start()
    seen: list[str] = []
    try:
        deadline = time.perf_counter() + within
        while time.perf_counter() < deadline:
            batches = await consumer.getmany(timeout_ms=300)
            for records in batches.values():
                seen += [dict(r.headers)["ce_id"].decode() for r in records]
            if len(seen) >= at_least and not batches:
                break
    finally:
        await consumer.stop()
    return seen


def hub_settings(tmp_path: Path) -> Settings:
    """A hub on free ports with its own consumer groups."""
    return Settings(
        data_dir=tmp_path,
        kafka=KafkaSettings(group_id=f"t{uuid.uuid4().hex[:8]}-record"),
        mllp=MllpSettings(port=0),
        http=HttpSettings(port=0),
    )


async def test_subscribers_get_what_policy_allows_signed_retried_and_redecided(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CAREHUB_TEST_HOOK", SECRET)
    receiver = Receiver(fail_first=2)
    serving = asyncio.create_task(receiver.server.serve())
    settings = hub_settings(tmp_path)
    services = build(settings)
    services.agreements.load(an_agreement("RXX", "Y00001"), at=datetime.now(UTC))
    hook = {"url": receiver.url, "secret_env": "CAREHUB_TEST_HOOK"}
    services.subscriptions.save(Subscription(id="gp-adt", org="Y00001", events=EVENTS, webhook=hook))
    dead = {"url": f"http://127.0.0.1:{free_port()}/nobody", "secret_env": "CAREHUB_TEST_HOOK"}
    services.subscriptions.save(
        Subscription(id="gp-dead", org="Y00001", events=(DISCHARGED,), webhook=dead, max_attempts=2)
    )
    services.subscriptions.save(
        Subscription(id="outsider", org="Y00002", events=EVENTS, scope="all-permitted", content="id-only")
    )
    try:
        async with running(settings, services=services) as run:
            client = await MllpClient.connect("127.0.0.1", run.mllp_port or 0)
            admit = an_adt(trigger="A01", control_id="D1", visit="V1")
            discharge = an_adt(trigger="A03", control_id="D2", visit="V1")
            elsewhere = an_adt(trigger="A01", control_id="D3", nhs_number="9990000018", mrn="M9", practice="Y00009")
            for message in (admit, discharge, elsewhere):
                assert b"MSA|AA" in await client.send(message)
            await until(lambda: len(receiver.received) >= 2, within=60)
            assert receiver.calls >= 4  # two refused, then both delivered
            for headers, body in receiver.received:
                expected = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
                assert headers["x-carehub-signature"] == expected
                kinds = {e["resource"]["resourceType"] for e in orjson.loads(body)["entry"]}
                assert {"Patient", "Encounter"} <= kinds
            delivered = receiver.events()
            on_topic = await topic_events(run.bootstrap, subscriber_topic("Y00001").name, at_least=3)
            assert set(delivered) <= set(on_topic)
            await until(lambda: any(d.status == "failed" for d in services.outbox.listing("failed")), within=60)

            # the person objects to any sharing with Y00001; later events about them go nowhere
            token = issue_token(services.secrets.token, org="RXX", role="coordinator", now=datetime.now(UTC))
            objection = an_objection("9434765919", "Y00001")
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{run.http_port}/fhir") as http:
                created = await http.post("/Consent", json=objection, headers={"Authorization": f"Bearer {token}"})
            assert created.status_code == 201, created.text

            def refusals() -> int:
                said = ((e.body["recipient_org"], e.body["decision"]) for e in services.ledger.entries())
                return sum(s == ("Y00001", "deny") for s in said)

            before = refusals()
            update = an_adt(trigger="A08", control_id="D4", visit="V1", family="PRIVATE")
            assert b"MSA|AA" in await client.send(update)
            await client.close()
            assert await run.caught_up(5, timeout=60)
            await until(lambda: refusals() > before, within=60)  # the A08 refused before it is checked as not sent
            assert len(receiver.received) == 2
            after = await topic_events(run.bootstrap, subscriber_topic("Y00001").name, at_least=len(on_topic))
            assert sorted(after) == sorted(on_topic)
            assert b"PRIVATE" not in b"".join(body for _, body in receiver.received)
            outsider = await topic_events(run.bootstrap, subscriber_topic("Y00002").name, at_least=0, within=2)
            assert outsider == []

            # the failed delivery, sent again, is decided again under today's policy: withheld
            services.subscriptions.save(Subscription(id="gp-dead", org="Y00001", events=(DISCHARGED,), webhook=hook))
            assert services.outbox.redeliver(None, now=datetime.now(UTC)) == 1
            await until(lambda: any(d.status == "withheld" for d in services.outbox.listing("withheld")), within=60)
            assert len(receiver.received) == 2

            entries = list(services.ledger.entries())
            assert verify(iter(entries))[1] is None
            seen = {(e.body["recipient_org"], e.body["channel"], e.body["decision"]) for e in entries}
            assert ("Y00001", "topic", "permit") in seen
            assert ("Y00001", "webhook", "permit") in seen
            assert ("Y00001", "topic", "deny") in seen
            assert ("Y00001", "webhook", "deny") in seen
            assert ("Y00002", "topic", "deny") in seen
    finally:
        receiver.server.should_exit = True
        await serving


async def test_the_ledger_names_the_record_version_each_delivery_disclosed_and_mailboxes_apart(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CAREHUB_TEST_HOOK", SECRET)
    receiver = Receiver(fail_first=0)
    serving = asyncio.create_task(receiver.server.serve())
    settings = hub_settings(tmp_path)
    services = build(settings)
    services.agreements.load(an_agreement("RXX", "Y00001"), at=datetime.now(UTC))
    hook = {"url": receiver.url, "secret_env": "CAREHUB_TEST_HOOK"}
    mailbox = tmp_path / "mailbox" / "Y00001"
    services.subscriptions.save(Subscription(id="gp-hook", org="Y00001", events=EVENTS, webhook=hook))
    services.subscriptions.save(Subscription(id="gp-box", org="Y00001", events=EVENTS, mailbox=str(mailbox)))
    try:
        async with running(settings, services=services) as run:
            client = await MllpClient.connect("127.0.0.1", run.mllp_port or 0)
            messages = (
                an_adt(trigger="A01", control_id="L1", visit="V1", event_time="202611010930"),
                an_adt(trigger="A08", control_id="L2", visit="V1", family="JONES", event_time="202611020900"),
                an_adt(trigger="A03", control_id="L3", visit="V1", family="JONES", event_time="202611031105"),
            )
            for message in messages:
                assert b"MSA|AA" in await client.send(message)
            await client.close()
            await until(lambda: len(receiver.received) >= 3 and len(list(mailbox.glob("*.json"))) >= 3, within=30)
            sent = {("gp-hook", h["x-carehub-event-id"]): orjson.loads(body) for h, body in receiver.received}
            sent |= {("gp-box", f.stem): orjson.loads(f.read_bytes()) for f in mailbox.glob("*.json")}
            # patient data: never readable by everyone, whatever the umask (the hub made both folders)
            assert {f.stat().st_mode & 0o777 for f in mailbox.glob("*.json")} == {0o640}
            assert {d.stat().st_mode & 0o777 for d in (mailbox, mailbox.parent)} == {0o750}
            entries = [e for e in services.ledger.entries() if e.body["recipient_user"].startswith("subscription:")]
    finally:
        receiver.server.should_exit = True
        await serving

    assert verify(iter(services.ledger.entries()))[1] is None
    channels = {(e.body["recipient_user"], e.body["channel"], e.body["decision"]) for e in entries}
    assert channels == {
        ("subscription:gp-hook", "topic", "permit"),
        ("subscription:gp-hook", "webhook", "permit"),
        ("subscription:gp-box", "topic", "permit"),
        ("subscription:gp-box", "mailbox", "permit"),
    }
    shown: dict[str, set[str]] = {}  # event type -> the resources its deliveries named (without hashes)
    for entry in entries:
        event = entry.body["event"]  # whose content was delivered
        provenance = services.reader.read("Provenance", event)  # the versions the record says the event wrote
        assert provenance is not None
        written = dict(str(t["reference"]).split("/_history/") for t in provenance["target"])
        for ref in entry.body["resources"]:
            kind_id, _, version = ref.split("#")[0].partition("/_history/")
            assert version == written.get(kind_id, ""), ref  # the version the event wrote, or none: "Type/id#"
        shown.setdefault(provenance["activity"]["text"], set()).update(r.split("#")[0] for r in entry.body["resources"])
        if entry.body["channel"] != "topic":
            sub = entry.body["recipient_user"].removeprefix("subscription:")
            hashes = {
                f"{r['resourceType']}/{r['id']}": hashlib.sha256(canonical(r)).hexdigest()
                for r in (e["resource"] for e in sent[(sub, event)]["entry"])
            }
            for ref in entry.body["resources"]:  # each names exactly what was sent, by hash
                named, digest = ref.split("#")
                assert hashes[named.split("/_history/")[0]] == digest, ref
    admitted = shown["uk.nhs.carehub.encounter.admitted.v1"]
    assert {r.split("/")[0] for r in admitted} == {"Patient", "Encounter"}
    assert all(r.endswith("/_history/1") for r in admitted)  # each resource delivered: a real version
    assert any(r.startswith("Patient/") and r.endswith("/_history/2") for r in shown[EVENTS[2]])  # renamed
    discharged = shown[DISCHARGED]
    assert any(r.startswith("Encounter/") and "/_history/" in r for r in discharged)
    assert any(r.startswith("Patient/") and "/_history/" not in r for r in discharged)  # said again: no new version
