"""A PIC summary's receipt is the GP's alone, on a real broker, a real database, real HTTP and real
mailbox folders (`hub.bootstrap.running`, as tests/e2e/test_coordination.py runs the hub).

Three practices each refer a person (source gp) and the service closes each stay with a summary. A
fourth practice subscribes to PIC summaries for everyone (`scope: all-permitted`) and gets every
letter. The first practice's mailbox share is down (a folder under /dev/null, two attempts), the
second takes PIC summaries at `content: empty`, the third at `full-resource`. Only the third's
delivery is a receipt: the others' letters are delivered and ledgered all the same, but publish no
receipt, so their PIC-summary tasks stay open and the KPIs count no letter for them (the KPIs fold
the log, as `carehub kpi` does). Once the first practice's share is back and its failed delivery is
redelivered, its own receipt closes its task.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from consumers.decoding import decode_all
from hub.api.auth import issue_token
from hub.bootstrap import Services, build, running
from hub.core.kpis import KpiFold
from hub.core.ports import RecordEvent
from hub.settings import CoordinationSettings, HttpSettings, KafkaSettings, MllpSettings, Settings
from schemas.events import coordination as co
from schemas.subscriptions import Subscription
from tests.builders import an_agreement
from tests.kafka_log import read_all

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(180)]
ODS = "https://fhir.nhs.uk/Id/ods-organization-code"
SERVICE = "Y0PIC"  # the PIC service of the default rules
DOWN, EMPTY, WHOLE, EVERYONE = "Y90002", "Y90005", "Y90007", "Y90001"
NHS = {DOWN: "9434765919", EMPTY: "9990000018", WHOLE: "9990000026"}
COORDINATOR = {DOWN: "c-ann", EMPTY: "c-bob", WHOLE: "c-cat"}


async def until(check: Any, within: float, what: str) -> None:
    deadline = time.perf_counter() + within
    while time.perf_counter() < deadline:
        if await asyncio.to_thread(check):
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"{what}: not true within {within}s")


def bearer(services: Services, org: str, role: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {issue_token(services.secrets.token, org=org, role=role, now=datetime.now(UTC))}"}


def params(**values: str) -> dict[str, Any]:
    return {
        "resourceType": "Parameters",
        "parameter": [{"name": k.replace("_", "-"), "valueString": v} for k, v in values.items()],
    }


def referral(nhs: str) -> dict[str, Any]:
    return {
        "resourceType": "ServiceRequest",
        "status": "active",
        "intent": "order",
        "subject": {"identifier": {"system": "https://fhir.nhs.uk/Id/nhs-number", "value": nhs}},
        "reasonCode": [{"text": "lives alone, two falls this autumn"}],
        "extension": [
            {
                "url": co.SOURCE_EXTENSION,
                "valueCodeableConcept": {"coding": [{"system": co.REFERRAL_SOURCE_SYSTEM, "code": "gp"}]},
            }
        ],
    }


def subscribe(services: Services, tmp_path: Path) -> dict[str, Path]:
    """The locality's sharing and the four practices' subscriptions; their mailbox folders."""
    services.agreements.load(
        an_agreement(SERVICE, DOWN, EMPTY, WHOLE, EVERYONE, categories=("demographics", "care-plans", "referrals")),
        at=datetime.now(UTC),
    )
    folders = {EVERYONE: tmp_path / "y90001", EMPTY: tmp_path / "y90005", WHOLE: tmp_path / "y90007"}
    folders[DOWN] = Path("/dev/null/y90002")  # the practice's share down: "Not a directory"
    letters = (co.PIC_SUMMARY_SENT.type,)
    for sub in (
        Subscription(id="y90001-all-letters", org=EVERYONE, events=letters, scope="all-permitted"),
        Subscription(id="pic-summary-y90002", org=DOWN, events=letters, max_attempts=2),
        Subscription(id="pic-summary-y90005", org=EMPTY, events=letters, content="empty"),
        Subscription(id="pic-summary-y90007", org=WHOLE, events=letters),
    ):
        services.subscriptions.save(sub.model_copy(update={"mailbox": str(folders[sub.org])}))
    return folders


def tasks(services: Services, person: str) -> dict[str, str]:
    return {t["code"]["coding"][0]["code"]: t["status"] for t in services.reader.search("Task", person)}


def outbox(services: Services) -> dict[tuple[str, str], tuple[str, str | None]]:
    """(subscription, person) -> (status, last error) of each PIC summary delivery."""
    return {(d.subscription_id, str(d.person_key)): (d.status, d.last_error) for d in services.outbox.listing()}


async def receipts(bootstrap: str) -> dict[str, list[str]]:
    """Person -> the recipients (ODS) each receipt on the log names."""
    found: dict[str, list[str]] = {}
    for event in await the_log(bootstrap):
        if event.type == co.PIC_SUMMARY_RECEIPT.type:  # (a Communication)
            found.setdefault(event.subject, []).append(event.payload["recipient"][0]["identifier"]["value"])
    return found


async def the_log(bootstrap: str) -> list[RecordEvent]:
    return [event for _, event in decode_all(await read_all(bootstrap))[0]]


async def letters_counted(bootstrap: str, episodes: dict[str, str]) -> dict[str, bool]:
    """Practice -> whether the KPIs, folding the log, count a GP letter for its person's discharge."""
    fold = KpiFold(service=SERVICE)
    for event in await the_log(bootstrap):
        fold.add(event)
    stays = {e.id: e for e in fold.stays()}
    return {practice: stays[episode].letter is not None for practice, episode in episodes.items()}


async def test_only_the_gps_own_delivery_of_the_summary_is_its_receipt(tmp_path: Path) -> None:
    settings = Settings(
        data_dir=tmp_path,
        kafka=KafkaSettings(group_id=f"t{uuid.uuid4().hex[:8]}-record"),
        mllp=MllpSettings(port=0),
        http=HttpSettings(port=0),
        coordination=CoordinationSettings(tick_s=0),
    )
    services = build(settings)
    folders = subscribe(services, tmp_path)
    pic = bearer(services, SERVICE, "coordinator")

    async with (
        running(settings, services=services, mllp=False) as run,
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{run.http_port}/fhir") as http,
    ):
        people, episodes = {}, {}
        for practice, nhs in NHS.items():
            made = await http.post(
                "/ServiceRequest", json=referral(nhs), headers=bearer(services, practice, "clinician")
            )
            assert made.status_code == 201, made.text
            people[practice] = made.json()["subject"]["reference"].removeprefix("Patient/")
            rid = made.json()["id"]
            await until(lambda rid=rid: services.reader.read("ServiceRequest", rid) is not None, 30, "the referral")
            accepted = await http.post(
                f"/ServiceRequest/{rid}/$accept", json=params(coordinator=COORDINATOR[practice]), headers=pic
            )
            assert accepted.status_code == 201, accepted.text
            episodes[practice] = eid = accepted.json()["id"]
            await until(lambda eid=eid: services.reader.read("EpisodeOfCare", eid) is not None, 30, "the episode")
            contact = await http.post(
                f"/Patient/{people[practice]}/$record-contact", json=params(kind="face-to-face"), headers=pic
            )
            assert contact.status_code == 201, contact.text
            closed = await http.post(f"/EpisodeOfCare/{eid}/$close", json=params(goals="Home, managing"), headers=pic)
            assert closed.status_code == 200, closed.text

        # the practice whose delivery carried the summary: its receipt closes its task
        await until(lambda: tasks(services, people[WHOLE]).get("pic-summary") == "completed", 60, "Y90007's receipt")
        settled = {(f"pic-summary-{p.lower()}", people[p]) for p in NHS} | {
            ("y90001-all-letters", people[p]) for p in NHS
        }
        await until(
            lambda: all(outbox(services).get(k, ("pending",))[0] != "pending" for k in settled), 60, "every delivery"
        )
        sent = outbox(services)
        assert sent[("pic-summary-y90002", people[DOWN])] == ("failed", "mailbox: Not a directory")
        assert {sent[("y90001-all-letters", people[p])][0] for p in NHS} == {"delivered"}
        assert sent[("pic-summary-y90005", people[EMPTY])][0] == "delivered"
        assert len(list(folders[EVERYONE].glob("*.json"))) == 3  # Y90001 still gets every letter
        [empty] = [orjson.loads(f.read_bytes()) for f in folders[EMPTY].glob("*.json")]
        assert "entry" not in empty  # `empty`: that something happened, no letter
        disclosed = {(e.body["recipient_org"], e.body["person_key"]) for e in services.ledger.entries()}
        assert {(EVERYONE, people[p]) for p in NHS} <= disclosed  # and each is ledgered

        # every receipt was published before its delivery settled: the log holds them all by now
        assert await receipts(run.bootstrap) == {people[WHOLE]: [WHOLE]}
        await asyncio.sleep(2)  # (time for the rules engine to act on one, were there any)
        assert tasks(services, people[DOWN])["pic-summary"] == "requested"  # someone chases the real GP
        assert tasks(services, people[EMPTY])["pic-summary"] == "requested"
        counted = await letters_counted(run.bootstrap, episodes)
        assert counted == {DOWN: False, EMPTY: False, WHOLE: True}

        # the practice's share is back: its own delivery, redelivered, is its receipt
        services.subscriptions.save(
            Subscription(
                id="pic-summary-y90002", org=DOWN, events=(co.PIC_SUMMARY_SENT.type,), mailbox=str(tmp_path / "y90002")
            )
        )
        assert services.outbox.redeliver(None, now=datetime.now(UTC)) == 1
        await until(lambda: tasks(services, people[DOWN]).get("pic-summary") == "completed", 60, "Y90002's receipt")
        assert (await receipts(run.bootstrap))[people[DOWN]] == [DOWN]
        assert (await letters_counted(run.bootstrap, episodes))[DOWN] is True
