"""A death stops the coordination work, end to end (real MLLP socket, broker, database and HTTP): a GP
refers, a coordinator accepts, then the hospital's A01 and A03 say the person died (PV1-36 41, PID-29,
PID-30 Y). Their visits and reviews are cancelled naming the death, no discharge follow-up opens, and
the practice's huddle agenda no longer lists them as a new referral but says they died."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import httpx
import pytest

from adapters.hl7v2.transport import MllpClient
from hub.bootstrap import build, running
from hub.settings import CoordinationSettings
from tests import locality_month as month
from tests.builders import an_adt, an_agreement
from tests.e2e.test_coordination import _bearer, _params, _referral, until
from tests.e2e.test_deliveries import hub_settings

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(180)]
UK = ZoneInfo("Europe/London")
NHS = "9434765919"
VISITS = {"first-visit", "review-6-weeks", "review-12-weeks"}  # (the accept completed the triage)


def hl7_time(at: datetime, seconds: bool = False) -> str:
    return at.astimezone(UK).strftime("%Y%m%d%H%M%S" if seconds else "%Y%m%d%H%M")


def admitted_and_died(now: datetime) -> list[bytes]:
    """The hospital's A01, three hours ago, and the A03 of a death an hour ago."""
    admit, death = now - timedelta(hours=3), now - timedelta(hours=1)

    def adt(trigger: str, at: datetime, discharge: str | None = None) -> bytes:
        control_id = f"{trigger}-{uuid.uuid4().hex[:8]}"
        return an_adt(
            trigger=trigger,
            nhs_number=NHS,
            practice=month.PRACTICE,
            control_id=control_id,
            admit=hl7_time(admit),
            discharge=discharge,
            event_time=hl7_time(at),
        )

    a03 = adt("A03", death + timedelta(minutes=5), discharge=hl7_time(death))
    pid_29_30 = f"||||||||||||||||||{hl7_time(death, seconds=True)}|Y||NSTS01".encode()
    return [adt("A01", admit), a03.replace(b"|||||||||||||||||||||NSTS01", pid_29_30).replace(b"|||19|", b"|||41|")]


async def test_a_death_from_the_hospital_cancels_the_visits_opens_no_follow_up_and_the_huddle_says_so(
    tmp_path: Path,
) -> None:
    settings = hub_settings(tmp_path).model_copy(update={"coordination": CoordinationSettings(tick_s=0)})
    services = build(settings)
    now = datetime.now(UTC)
    categories = ("demographics", "encounters", "care-plans", "referrals", "tasks")
    services.agreements.load(an_agreement(month.SERVICE, month.PRACTICE, "RXX", categories=categories), at=now)
    gp = _bearer(services.secrets.token, month.PRACTICE, "clinician", now)
    pic = _bearer(services.secrets.token, month.SERVICE, "coordinator", now)

    async with (
        running(settings, services=services) as run,
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{run.http_port}") as http,
    ):
        referred = await http.post("/fhir/ServiceRequest", json=_referral(NHS), headers=gp)
        assert referred.status_code == 201, referred.text
        person = referred.json()["subject"]["reference"].removeprefix("Patient/")

        def tasks() -> dict[str, dict[str, object]]:
            return {t["code"]["coding"][0]["code"]: t for t in services.reader.search("Task", person)}

        await until(lambda: {"referral-triage", "first-visit"} <= set(tasks()), 30, "the referral's tasks")
        accepted = await http.post(
            f"/fhir/ServiceRequest/{referred.json()['id']}/$accept", json=_params(coordinator="c-ann"), headers=pic
        )
        assert accepted.status_code == 201, accepted.text
        await until(lambda: set(tasks()) == {"referral-triage", *VISITS}, 30, "the reviews")

        client = await MllpClient.connect("127.0.0.1", run.mllp_port or 0)
        try:
            acks = [await client.send(message) for message in admitted_and_died(now)]
        finally:
            await client.close()
        assert all(b"MSA|AA" in ack for ack in acks), acks

        def cancelled() -> bool:
            return all(tasks()[rule]["status"] == "cancelled" for rule in VISITS)

        await until(cancelled, 30, "the visit and reviews cancelled")
        await until(lambda: "deceasedDateTime" in (services.reader.read("Patient", person) or {}), 30, "the death")
        await until(lambda: bool(services.reader.search("Encounter", person)), 30, "the hospital stay")
        assert tasks()["referral-triage"]["status"] == "completed"  # a finished task stays as it was
        for rule in VISITS:
            reason = tasks()[rule]["statusReason"]
            assert reason["coding"][0]["code"] == "person-died"  # type: ignore[index]

        meeting = (now.astimezone(UK) + timedelta(days=1)).date().isoformat()
        listed = await http.get("/fhir/List", params={"practice": month.PRACTICE, "date": meeting}, headers=gp)
        assert listed.status_code == 200, listed.text
        sections = {e["item"]["reference"]: e["flag"]["coding"][0]["code"] for e in listed.json().get("entry", [])}
        assert f"ServiceRequest/{referred.json()['id']}" not in sections
        assert "recent-discharge" in sections.values(), listed.json()
        notes = [n["text"] for n in listed.json().get("note", [])]
        assert any(n.startswith(f"Patient/{person}: Died ") and "episode of care should be closed" in n for n in notes)
        await asyncio.sleep(1.5)  # (a follow-up task would have come from the A03, with the cancellations)
        assert "discharge-follow-up" not in tasks()  # no one phones a bereaved family to follow up
