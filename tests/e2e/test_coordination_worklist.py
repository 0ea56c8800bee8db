"""The walkthrough that found the gap, on a running hub (embedded broker, SQLite, real HTTP, the hub's
own clock ticking): a hospital trust's community nursing referral for a person no practice knows goes
overdue to the team lead and is on no practice's huddle; the coordinator finds it on the worklist (its
id, its tasks, the triage overdue), finds the triage among the team lead's tasks, accepts it by that
id, and it leaves the worklist while the coordinator's review tasks arrive on theirs."""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from hub.api.auth import issue_token
from hub.bootstrap import build, running
from hub.core.worklist import OVERDUE_EXTENSION
from hub.settings import CoordinationSettings, HttpSettings, KafkaSettings, MllpSettings, Settings
from schemas.events import coordination as co
from tests.builders import an_agreement
from tests.e2e.test_coordination import until

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(180)]
PIC, TRUST = "Y0PIC", "RZZ"
NHS = "9990002037"  # (no practice's register, no hospital ADT: no practice knows them)


def bearer(secret: bytes, org: str, role: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {issue_token(secret, org=org, role=role, now=datetime.now(UTC))}"}


def codes(bundle: dict[str, Any]) -> list[tuple[str, str, bool]]:
    """(code, owner, overdue) of each Task entry."""
    return [
        (
            e["resource"]["code"]["coding"][0]["code"],
            e["resource"]["owner"]["identifier"]["value"],
            next(x["valueBoolean"] for x in e["extension"] if x["url"] == OVERDUE_EXTENSION),
        )
        for e in bundle["entry"]
        if e["resource"]["resourceType"] == "Task"
    ]


async def test_a_referral_no_practice_knows_is_found_on_the_worklist_accepted_by_its_id_and_leaves_it(
    tmp_path: Path,
) -> None:
    settings = Settings(
        data_dir=tmp_path,
        kafka=KafkaSettings(group_id=f"t{uuid.uuid4().hex[:8]}-record"),
        mllp=MllpSettings(port=0),
        http=HttpSettings(port=0),
        coordination=CoordinationSettings(tick_s=1),
    )
    services = build(settings)
    categories = ("demographics", "referrals", "tasks", "care-plans")
    services.agreements.load(an_agreement(TRUST, PIC, id="trust-pic", categories=categories), at=datetime.now(UTC))
    secret = services.secrets.token
    coordinator = bearer(secret, PIC, "coordinator")
    authored = (datetime.now(UTC) - timedelta(days=6)).replace(microsecond=0)
    source = {"coding": [{"system": co.REFERRAL_SOURCE_SYSTEM, "code": "community-nursing"}]}
    body = {
        "resourceType": "ServiceRequest",
        "status": "active",
        "intent": "order",
        "subject": {"identifier": {"system": "https://fhir.nhs.uk/Id/nhs-number", "value": NHS}},
        "authoredOn": authored.isoformat(),
        "extension": [{"url": co.SOURCE_EXTENSION, "valueCodeableConcept": source}],
    }

    async with (
        running(settings, services=services, mllp=False) as run,
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{run.http_port}", timeout=30) as http,
    ):
        made = await http.post("/fhir/ServiceRequest", json=body, headers=bearer(secret, TRUST, "clinician"))
        assert made.status_code == 201, made.text
        referral = made.json()["id"]
        person = made.json()["subject"]["reference"].removeprefix("Patient/")

        def escalated() -> bool:
            return any("businessStatus" in t for t in services.reader.search("Task", person))

        await until(escalated, 60, "the triage overdue to the team lead")
        huddle = await http.get("/fhir/List", params={"practice": "Y90001"}, headers=coordinator)
        assert huddle.status_code == 200 and referral not in huddle.text  # (no practice's agenda has it)

        waiting = (await http.get("/coordination/worklist/referrals", headers=coordinator)).json()
        assert [e["resource"]["id"] for e in waiting["entry"] if e["search"]["mode"] == "match"] == [referral]
        assert codes(waiting) == [("referral-triage", "team-lead", True), ("first-visit", PIC, False)]
        lead = (await http.get("/coordination/worklist/tasks?owner=team-lead", headers=coordinator)).json()
        assert codes(lead) == [("referral-triage", "team-lead", True)]

        given = [{"name": "coordinator", "valueString": "c-amara"}]
        accepted = await http.post(
            f"/fhir/ServiceRequest/{referral}/$accept",
            json={"resourceType": "Parameters", "parameter": given},
            headers=coordinator,
        )
        assert accepted.status_code == 201, accepted.text

        after = (await http.get("/coordination/worklist/referrals", headers=coordinator)).json()
        assert after["total"] == 0 and referral not in str(after)

        async def reviews() -> list[tuple[str, str, bool]]:
            answer = await http.get("/coordination/worklist/tasks", params={"owner": "c-amara"}, headers=coordinator)
            assert answer.status_code == 200, answer.text
            return codes(answer.json())

        deadline = time.monotonic() + 30  # (the reviews arrive once the consumers have the accept)
        while len(found := await reviews()) < 3 and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        assert sorted(found) == [  # the first visit the team had, now the accepting coordinator's
            ("first-visit", "c-amara", False),
            ("review-12-weeks", "c-amara", False),
            ("review-6-weeks", "c-amara", False),
        ]
