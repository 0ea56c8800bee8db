"""A practice move reaches `registered` webhook deliveries: a practice's register row is its word that
the person is registered there, so a hospital's discharge without PD1 after the row goes to the new
practice's endpoint, not the old one's; a stale row, or a referral's practice, moves no one. The
delivery consumer over the real SQLite (and PostgreSQL) record and stores, the register row through
the GP register adapter, each webhook POSTed by the sender to a real receiver on a real socket."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

import httpx
import pytest

from adapters.referrals.rows import Format, Row
from adapters.referrals.to_fhir import map_row
from consumers.delivery import Deliverer
from consumers.delivery_sender import WebhookSender
from hub.bootstrap import Services, build
from hub.core.ports import RecordEvent
from hub.settings import DatabaseSettings, SecuritySettings, Settings
from hub.store.agreements import PolicySource
from schemas.events.coordination import REFERRAL_RECEIVED
from schemas.subscriptions import Subscription, Webhook
from schemas.topics import subscriber_topic
from tests.builders import an_agreement
from tests.integration.test_registered_delivery import ADMITTED, DISCHARGED, ODS, Topics, adt
from tests.integration.test_webhook_truth import Receiver
from tests.unit.test_practice_moves import NEW, NHS, NOW, OLD

pytestmark = pytest.mark.timeout(120)
SECRET_ENV = "MOVES_HOOK_SECRET"
PRACTICES = (OLD, NEW)


SERVER_SECRETS = SecuritySettings(
    key_secret="moves-key-secret", token_secret="moves-token-secret-at-least-32-bytes-long"
)  # type: ignore[arg-type]


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def settings(request: pytest.FixtureRequest, tmp_path: Path) -> Settings:
    if request.param == "sqlite":
        return Settings(data_dir=tmp_path)
    url = str(request.getfixturevalue("postgres_url"))  # (a server's database: the secrets are configured)
    return Settings(data_dir=tmp_path, db=DatabaseSettings(url=url), security=SERVER_SECRETS)


@pytest.fixture
def receiver() -> Receiver:
    return Receiver(hold=5.0)


@pytest.fixture
def services(settings: Settings, receiver: Receiver) -> Iterator[Services]:
    made = build(settings)
    made.agreements.load(an_agreement("RXX", *PRACTICES), at=datetime.now(UTC) - timedelta(days=1))
    for org in PRACTICES:
        hook = Webhook(url=receiver.url(org.lower()), secret_env=SECRET_ENV)
        made.subscriptions.save(
            Subscription(id=f"gp-{org.lower()}", org=org, events=(ADMITTED, DISCHARGED), webhook=hook)
        )
    yield made
    made.engine.dispose()


def rows(services: Services, *said: tuple[str, str]) -> list[RecordEvent]:
    """The person's rows of practices' at-risk registers (practice, extracted on), through the GP
    register adapter, keyed as this hub keys people."""
    made = []
    for practice, day in said:
        values = {
            "nhs_number": NHS,
            "practice_ods": practice,
            "non_elective_admissions_12m": "0",
            "long_term_conditions": "1",
            "frailty": "mild",
            "birth_date": "1938-02-01",
            "extracted_on": day,
        }
        m = map_row(Format.REGISTER, Row(2, values, b""), key_secret=services.secrets.key, now=NOW)
        made.append(RecordEvent(m.event_id, m.event_type, m.source, m.event_time, m.person_key, m.payload))
    return made


async def deliver_and_send(
    services: Services, receiver: Receiver, batches: list[list[RecordEvent]]
) -> dict[str, list[str]]:
    """Each batch through a delivery consumer just started, then the webhook sender's passes: what
    each practice's endpoint received (event ids, in order)."""
    for batch in batches:
        deliverer = Deliverer(
            broker=cast(Any, Topics()),
            bootstrap="",
            uow_factory=services.uow_factory,
            subscriptions=services.subscriptions,
            outbox=services.outbox,
            policy=PolicySource(services.agreements, services.reader),
            ledger=services.ledger,
            registrations=services.registrations,
            clock=lambda: datetime.now(UTC),
        )
        deliverer._topics.update(subscriber_topic(org).name for org in PRACTICES)  # (no broker admin here)
        await deliverer.handle(batch, None)
    server = receiver.server()
    serving = asyncio.create_task(server.serve())
    client = httpx.AsyncClient(timeout=5.0)
    sender = WebhookSender(a_deliverer(services), client=client, env={SECRET_ENV: "s3cret"})
    try:
        await asyncio.sleep(0.3)  # (the receiver listening)
        await sender.once()
    finally:
        await client.aclose()
        server.should_exit = True
        await serving
    return {path.upper(): got for path, got in receiver.got.items()}


def a_deliverer(services: Services) -> Deliverer:
    return Deliverer(
        broker=cast(Any, None),  # (the sender publishes only a PIC summary's receipt: none here)
        bootstrap="",
        uow_factory=services.uow_factory,
        subscriptions=services.subscriptions,
        outbox=services.outbox,
        policy=PolicySource(services.agreements, services.reader),
        ledger=services.ledger,
        registrations=services.registrations,
        clock=lambda: datetime.now(UTC),
    )


async def test_a_discharge_after_a_register_row_of_the_new_practice_goes_to_the_new_practice(
    services: Services, receiver: Receiver
) -> None:
    admit = adt(services, trigger="A01", control_id="G1", practice=OLD, event_time="202611010930")
    moved = rows(services, (NEW, "2026-11-15"))
    discharge = adt(services, trigger="A03", control_id="G2", practice=None, event_time="202611201105")

    got = await deliver_and_send(services, receiver, [admit, moved, discharge])

    assert got == {OLD: [admit[0].id], NEW: [discharge[0].id]}


async def test_a_stale_register_row_from_the_old_practice_does_not_take_the_person_back(
    services: Services, receiver: Receiver
) -> None:
    admit = adt(services, trigger="A01", control_id="H1", practice=OLD, event_time="202611010930")
    moved_then_stale = rows(services, (NEW, "2026-11-15"), (OLD, "2026-11-10"))  # extracted before the move
    discharge = adt(services, trigger="A03", control_id="H2", practice=None, event_time="202611201105")

    got = await deliver_and_send(services, receiver, [admit, moved_then_stale, discharge])

    assert got == {OLD: [admit[0].id], NEW: [discharge[0].id]}


async def test_a_newer_hospital_word_still_wins_over_an_older_register_row_and_a_referral_moves_no_one(
    services: Services, receiver: Receiver
) -> None:
    admit = adt(services, trigger="A01", control_id="J1", practice=None, event_time="202611010930")
    named = adt(services, trigger="A08", control_id="J2", practice=OLD, event_time="202611160900")
    older_row = rows(services, (NEW, "2026-11-15"))  # sent after the hospital's newer word
    person = admit[0].subject
    stub: dict[str, Any] = {"resourceType": "Patient", "id": person, "identifier": [{"system": "x", "value": NHS}]}
    stub["generalPractitioner"] = [{"identifier": {"system": ODS, "value": NEW}}]
    bundle = {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": stub}]}
    at = datetime(2026, 11, 18, 9, tzinfo=UTC)
    referral = RecordEvent(str(uuid.uuid4()), REFERRAL_RECEIVED.type, "urn:ods:VCS01", at, person, bundle)
    discharge = adt(services, trigger="A03", control_id="J3", practice=None, event_time="202611201105")

    got = await deliver_and_send(services, receiver, [admit, named, older_row, [referral], discharge])

    assert got == {OLD: [discharge[0].id]}  # (the admission named no practice: registered with none then)


async def test_the_practice_said_again_as_held_keeps_its_date_so_a_row_read_after_moves_the_person(
    services: Services, receiver: Receiver
) -> None:
    # (the record writes no Patient version for the A08, so its practice is still dated 1 Nov)
    admit = adt(services, trigger="A01", control_id="K1", practice=OLD, event_time="202611010930")
    restated = adt(services, trigger="A08", control_id="K2", practice=OLD, event_time="202611160900")
    row = rows(services, (NEW, "2026-11-15"))  # extracted after the A01, sent after the A08
    discharge = adt(services, trigger="A03", control_id="K3", practice=None, event_time="202611201105")

    got = await deliver_and_send(services, receiver, [admit, restated, row, discharge])

    assert got == {OLD: [admit[0].id], NEW: [discharge[0].id]}
