"""A nested objection holds for pushes as for reads, over real sockets and a real Kafka-protocol broker:
a Consent in FHIR's usual shape (a permit with a nested deny naming the council), posted over HTTP,
stops the person's later events reaching the council's subscription, and only the council's; ended
(PUT, status inactive), it stops them no more."""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from adapters.hl7v2.transport import MllpClient
from hub.api.auth import issue_token
from hub.bootstrap import build, running
from hub.settings import HttpSettings, KafkaSettings, MllpSettings, Settings
from schemas.subscriptions import Subscription
from tests.builders import an_adt, an_agreement

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(150)]
COUNCIL, GP, HOSPITAL = "E10000023", "Y00001", "RXX"
EVENTS = ("uk.nhs.carehub.encounter.admitted.v1", "uk.nhs.carehub.patient.updated.v1")
IRCP = {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType", "code": "IRCP"}]}
NESTED_DENY = {
    "resourceType": "Consent",
    "status": "active",
    "scope": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "patient-privacy"}]},
    "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
    "patient": {"identifier": {"system": "https://fhir.nhs.uk/Id/nhs-number", "value": "9434765919"}},
    "provision": {
        "type": "permit",
        "provision": [
            {
                "type": "deny",
                "actor": [
                    {
                        "role": IRCP,
                        "reference": {
                            "identifier": {"system": "https://fhir.nhs.uk/Id/ods-organization-code", "value": COUNCIL}
                        },
                    }
                ],
            }
        ],
    },
}


async def until(check: Any, within: float) -> None:
    deadline = time.perf_counter() + within
    while time.perf_counter() < deadline:
        if check():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"not true within {within}s")


async def test_a_nested_deny_naming_the_council_stops_its_deliveries_and_no_one_elses(tmp_path: Path) -> None:
    settings = Settings(
        data_dir=tmp_path,
        kafka=KafkaSettings(group_id=f"t{uuid.uuid4().hex[:8]}-record"),
        mllp=MllpSettings(port=0),
        http=HttpSettings(port=0),
    )
    services = build(settings)
    services.agreements.load(an_agreement(HOSPITAL, GP, COUNCIL), at=datetime.now(UTC))
    for org in (COUNCIL, GP):
        services.subscriptions.save(
            Subscription(id=f"{org.lower()}-adt", org=org, events=EVENTS, scope="all-permitted")
        )

    def topic(org: str) -> dict[str, set[str]]:
        """Each event's topic decisions for `org`, from the disclosure ledger."""
        found: dict[str, set[str]] = {}
        for body in (e.body for e in services.ledger.entries()):
            if (body["recipient_org"], body["channel"]) == (org, "topic"):
                found.setdefault(str(body.get("event")), set()).add(str(body["decision"]))
        return found

    async with running(settings, services=services) as run:
        client = await MllpClient.connect("127.0.0.1", run.mllp_port or 0)
        assert b"MSA|AA" in await client.send(an_adt(trigger="A01", control_id="N1", visit="V1"))
        await until(lambda: topic(COUNCIL) and topic(GP), within=60)
        before = set(topic(COUNCIL))
        assert {d for ds in topic(COUNCIL).values() for d in ds} == {"permit"}
        token = issue_token(services.secrets.token, org=HOSPITAL, role="clinician", now=datetime.now(UTC))
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{run.http_port}/fhir") as http:
            created = await http.post("/Consent", json=NESTED_DENY, headers={"Authorization": f"Bearer {token}"})
        assert created.status_code == 201, created.text

        assert b"MSA|AA" in await client.send(an_adt(trigger="A08", control_id="N2", visit="V1", family="PRIVATE"))
        await client.close()
        await until(lambda: set(topic(COUNCIL)) - before and set(topic(GP)) - before, within=60)

        [update] = set(topic(COUNCIL)) - before
        assert topic(COUNCIL)[update] == {"deny"}
        assert topic(GP)[update] == {"permit"}

        # the person changes their mind: the Consent ended (PUT, status inactive), later events reach the council
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{run.http_port}/fhir") as http:
            ended = await http.put(
                f"/Consent/{created.json()['id']}",
                json=created.json() | {"status": "inactive"},
                headers={"Authorization": f"Bearer {token}"},
            )
        assert ended.status_code == 200, ended.text
        await until(lambda: (services.reader.read("Consent", ended.json()["id"]) or {}).get("status") == "inactive", 30)
        denied = set(topic(COUNCIL))
        client = await MllpClient.connect("127.0.0.1", run.mllp_port or 0)
        assert b"MSA|AA" in await client.send(an_adt(trigger="A08", control_id="N3", visit="V1", family="PUBLIC"))
        await client.close()
        await until(lambda: set(topic(COUNCIL)) - denied, within=60)
        [later] = set(topic(COUNCIL)) - denied
        assert topic(COUNCIL)[later] == {"permit"}
