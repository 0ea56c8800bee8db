"""The API under fuzzing: the real app over a real SQLite record (built by `hub.bootstrap.build`), a real
sharing agreement, the real disclosure ledger and token verifier; only the Kafka publisher is a list."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import pytest
from fastapi import FastAPI

from adapters.hl7v2.to_fhir import map_message
from hub.api.app import create_app
from hub.api.auth import TokenVerifier, issue_token
from hub.api.routes.coordination import CoordinationApi
from hub.bootstrap import Services, build
from hub.core.ports import RecordEvent
from hub.core.record import apply_events
from hub.settings import DatabaseSettings, SecuritySettings, Settings
from schemas.envelope import Envelope
from tests.builders import an_adt, an_agreement
from tests.conftest import fresh_postgres
from tests.serving import served

NHS = "https://fhir.nhs.uk/Id/nhs-number"
NHS_NUMBERS = ("9434765919", "9434765870")
TOKEN_SECRET = "fuzz-test-token-signing-secret-32b"  # fixed, so a token can be made before the app exists


def token(org: str = "Y00001", role: str = "clinician") -> str:
    """A token the fuzzed app accepts: by default a clinician of a party to the sharing agreement."""
    return issue_token(TOKEN_SECRET.encode(), org=org, role=role, now=datetime.now(UTC))


@dataclass
class LiveApi:
    """The app, what stands behind it, and what it published."""

    app: FastAPI
    services: Services
    published: list[Envelope] = field(default_factory=list)

    def patient_ids(self) -> list[str]:
        return [p["id"] for n in NHS_NUMBERS for p in self.services.reader.patients_by_identifier(NHS, n)]


def _events(key: bytes) -> list[RecordEvent]:
    messages = [
        an_adt(trigger="A01", nhs_number=NHS_NUMBERS[0], mrn="M100", control_id="F1", visit="V1"),
        an_adt(trigger="A03", nhs_number=NHS_NUMBERS[0], mrn="M100", control_id="F2", visit="V1"),
        an_adt(trigger="A01", nhs_number=NHS_NUMBERS[1], mrn="M200", control_id="F3", visit="V2", practice="Y00002"),
    ]
    return [
        RecordEvent(m.event_id, m.event_type, m.source, m.event_time, m.person_key, m.payload)
        for raw in messages
        for m in map_message(raw, key_secret=key)
    ]


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A fresh record database for one module: a SQLite file, or a new PostgreSQL database (dropped after)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path_factory.mktemp('fuzz-db') / 'carehub.db'}"
        return
    with fresh_postgres(request.getfixturevalue("postgres_admin_url"), prefix="carehub_fuzz") as url:
        yield url


@pytest.fixture(scope="module")
def live_api(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveApi]:
    data: Path = tmp_path_factory.mktemp("fuzz-api")
    security = SecuritySettings(key_secret="fuzz-test-person-key-secret", token_secret=TOKEN_SECRET)
    services = build(Settings(data_dir=data, db=DatabaseSettings(url=database_url), security=security))
    services.agreements.load(an_agreement("RXX", "Y00001"), at=datetime.now(UTC))
    with services.uow_factory() as uow:
        apply_events(uow, _events(services.secrets.key))
        uow.commit()
    live = LiveApi(app=FastAPI(), services=services)

    async def publish(envelope: Envelope) -> None:
        live.published.append(envelope)

    commands = CoordinationApi(
        reader=services.reader,
        coordination=services.coordination,
        engine=services.rules,
        key_secret=services.secrets.key,
        publish=publish,
    )
    live.app = create_app(
        services.reader, TokenVerifier(services.secrets.token), services.ledger, services.policy, publish, commands
    )
    assert len(live.patient_ids()) == 2
    try:
        yield live
    finally:
        services.engine.dispose()


@pytest.fixture(scope="module")
def base_url(live_api: LiveApi) -> Iterator[str]:
    """The same app served by uvicorn on a free 127.0.0.1 port, for clients that need a real socket."""
    with served(live_api.app, "fuzzed-api") as url:
        yield url
