"""Care coordination end to end on a real broker, a real database and real HTTP.

1. The scripted locality month (tests/locality_month.py) goes onto the events topic with its clock
   ticks; the running hub's record ends with exactly the hand-computed tasks, the log holds exactly
   the hand-computed overdue events, and the caseloads answer over HTTP.
2. A coordinator's month over the API: a GP refers, a coordinator accepts (and is refused over the
   caseload cap), records a visit, closes the episode; the PIC summary lands in the practice's
   mailbox, the delivery is the receipt, and the PIC-summary task closes.
3. A task's lifecycle over the API (`$status`): permitted moves are recorded, forbidden ones and
   other organisations' tokens are refused with an OperationOutcome, and a completed task's clock stops.
"""

from __future__ import annotations

import asyncio
import csv
import os
import re
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import yaml
from aiokafka import AIOKafkaConsumer

from hub.api.auth import issue_token
from hub.bootstrap import Services, build, running
from hub.core.coordination import tick
from hub.core.ports import RecordEvent
from hub.rules import DEFAULT
from hub.settings import CoordinationSettings, HttpSettings, KafkaSettings, MllpSettings, Settings
from hub.store.coordination import SqlCoordinationStore
from hub.store.database import open_engine
from hub.store.hashing import record_hash
from schemas.events import coordination as co
from schemas.subscriptions import Subscription
from schemas.topics import EVENTS, subscriber_topic
from tests import locality_month as month
from tests.builders import an_agreement
from tests.kafka_log import header, produce, read_all

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(180)]
# the practice of the API walkthroughs below: a GP practice's code (a letter and five digits), as only a
# practice's `gp` referral makes it the person's practice (hub.api.routes.coordination.patient_stub)
GP_PRACTICE = "Y01001"
ODS = "https://fhir.nhs.uk/Id/ods-organization-code"


async def until(check: Any, within: float, what: str) -> None:
    deadline = time.perf_counter() + within
    while time.perf_counter() < deadline:
        if check():
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"{what}: not true within {within}s")


def settings_for(tmp_path: Path, **coordination: Any) -> Settings:
    return Settings(
        data_dir=tmp_path,
        kafka=KafkaSettings(group_id=f"t{uuid.uuid4().hex[:8]}-record"),
        mllp=MllpSettings(port=0),
        http=HttpSettings(port=0),
        coordination=CoordinationSettings(tick_s=0, **coordination),
    )


async def publish_timeline(bootstrap: str, items: list[tuple[datetime, int, RecordEvent | None]]) -> int:
    """Events keyed by person; a tick (None) goes onto every partition. Returns records sent."""
    targets: list[tuple[RecordEvent, int | None]] = []
    for at, _, event in items:
        targets += [(tick(p, at), p) for p in range(EVENTS.partitions)] if event is None else [(event, None)]
    return await produce(bootstrap, targets)


def record_tasks(services: Services) -> dict[str, dict[str, tuple[str, datetime, str, bool]]]:
    found: dict[str, dict[str, tuple[str, datetime, str, bool]]] = {}
    for who, key in month.PEOPLE.items():
        for task in services.reader.search("Task", key):
            code = task["code"]["coding"][0]["code"]
            due = datetime.fromisoformat(task["restriction"]["period"]["end"])
            owner = task["owner"]["identifier"]["value"]
            found.setdefault(who, {})[code] = (task["status"], due, owner, "businessStatus" in task)
    return found


async def log_events(bootstrap: str, type_: str) -> list[tuple[str, str, str]]:
    """(event id, subject, time) of every event of `type_` on the events topic, to the high watermark."""
    return [
        (header(r, "ce_id"), header(r, "ce_subject"), header(r, "ce_time"))
        for r in await read_all(bootstrap)
        if header(r, "ce_type") == type_
    ]


async def test_the_scripted_month_gives_the_hand_computed_tasks_overdues_and_caseloads(tmp_path: Path) -> None:
    settings = settings_for(tmp_path)
    services = build(settings)
    timeline = [(e.time, 1, e) for e in month.script()] + [(t, 0, None) for t in month.tick_times()]
    timeline.sort(key=lambda x: (x[0], x[1]))
    async with running(settings, services=services, mllp=False) as run:
        await publish_timeline(run.bootstrap, timeline)  # type: ignore[arg-type]
        await until(lambda: record_tasks(services) == month.EXPECTED_TASKS, 90, "the hand-computed tasks")
        await asyncio.sleep(1.5)  # nothing more arrives after the answer
        assert record_tasks(services) == month.EXPECTED_TASKS

        overdue = await log_events(run.bootstrap, co.TASK_OVERDUE.type)
        people = {key: who for who, key in month.PEOPLE.items()}
        assert len(overdue) == len({i for i, _, _ in overdue}) == len(month.EXPECTED_OVERDUE)
        assert {(people[s], datetime.fromisoformat(t)) for _, s, t in overdue} == {
            (who, due) for who, _, due in month.EXPECTED_OVERDUE
        }
        flags = {people[f["subject"]["reference"].removeprefix("Patient/")] for f in _all(services, "Flag")}
        assert flags == set(month.EXPECTED_CASE_LIST)

        token = issue_token(services.secrets.token, org=month.SERVICE, role="coordinator", now=datetime.now(UTC))
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{run.http_port}") as http:
            auth = {"Authorization": f"Bearer {token}"}
            loads = (await http.get("/coordination/caseloads", headers=auth)).json()
            assert {c["coordinator"]: c["people"] for c in loads["caseloads"]} == {"c-ann": 1}
            assert loads["cap"] == 28
            tasks = await http.get("/fhir/Task", params={"patient": month.PEOPLE["P3"]}, headers=auth)
            assert tasks.status_code == 200, tasks.text
            assert len(tasks.json()["entry"]) == len(month.EXPECTED_TASKS["P3"])
            refused = await http.get("/coordination/caseloads")
            assert refused.status_code == 401

        # the commissioner's report, from the same log, by the command a commissioner's analyst runs
        env = {k: v for k, v in os.environ.items() if not k.startswith("CAREHUB_")}
        env["KAFKA_BOOTSTRAP_SERVERS"] = run.bootstrap
        carehub = str(Path(sys.executable).with_name("carehub"))
        args = [carehub, "kpi", "--month", "2026-11", "--out", str(tmp_path / "kpi"), "--data-dir", str(tmp_path / "c")]
        done = await asyncio.to_thread(subprocess.run, args, env=env, capture_output=True, timeout=120, check=False)
        assert done.returncode == 0, done.stderr.decode()
        with (tmp_path / "kpi" / "kpi-2026-11.csv").open() as report:
            figures = {(r["kpi"], r["breakdown"]): float(r["value"]) for r in csv.DictReader(report)}
        assert figures == month.EXPECTED_KPIS
        html = (tmp_path / "kpi" / "kpi-2026-11.html").read_text()
        assert "<svg" in html
        assert "huddles attended" in html

        # replay: the record (tasks included) hashes the same, and the caseloads and clocks come back
        replayed = tmp_path / "replayed"
        args = [carehub, "replay", "--into", str(replayed)]
        done = await asyncio.to_thread(subprocess.run, args, env=env, capture_output=True, timeout=120, check=False)
        assert done.returncode == 0, done.stderr.decode()
        live = record_hash(services.engine)
        assert done.stdout.decode().strip().splitlines()[-1].startswith(live[0])
        again = open_engine(f"sqlite:///{replayed / 'carehub.db'}")
        assert SqlCoordinationStore(again).caseloads() == services.coordination.caseloads()
        assert SqlCoordinationStore(again).pending_clocks() == services.coordination.pending_clocks()
        again.dispose()


async def subscriber_records(bootstrap: str, topic: str, at_least: int, within: float = 20) -> list[Any]:
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, group_id=f"t-{uuid.uuid4().hex[:8]}", auto_offset_reset="earliest"
    )
    await consumer.start()
    seen: list[Any] = []
    try:
        deadline = time.perf_counter() + within
        while time.perf_counter() < deadline:
            batches = await consumer.getmany(timeout_ms=500)
            seen += [orjson.loads(r.value) for records in batches.values() for r in records]
            if len(seen) >= at_least and not batches:
                break
    finally:
        await consumer.stop()
    return seen


def pic_sharing(services: Services, tmp_path: Path, now: datetime) -> Path:
    """The service, the practice and the council share what coordination needs; the practice takes
    PIC summaries into a mailbox folder (returned)."""
    services.agreements.load(
        an_agreement(
            month.SERVICE, GP_PRACTICE, "LA123", categories=("demographics", "care-plans", "referrals", "tasks")
        ),
        at=now,
    )
    mailbox = tmp_path / "mailbox" / GP_PRACTICE
    services.subscriptions.save(
        Subscription(id="gp-pic", org=GP_PRACTICE, events=(co.PIC_SUMMARY_SENT.type,), mailbox=str(mailbox))
    )
    return mailbox


def _all(services: Services, kind: str) -> list[dict[str, Any]]:
    return [r for key in month.PEOPLE.values() for r in services.reader.search(kind, key)]


def _bearer(secret: bytes, org: str, role: str, now: datetime) -> dict[str, str]:
    """The Authorization header of a caller from `org` in `role`, with a token the hub signed."""
    return {"Authorization": f"Bearer {issue_token(secret, org=org, role=role, now=now)}"}


def _params(**values: str) -> dict[str, Any]:
    return {
        "resourceType": "Parameters",
        "parameter": [{"name": k.replace("_", "-"), "valueString": v} for k, v in values.items()],
    }


def _referral(nhs: str) -> dict[str, Any]:
    return {
        "resourceType": "ServiceRequest",
        "status": "active",
        "intent": "order",
        "subject": {"identifier": {"system": "https://fhir.nhs.uk/Id/nhs-number", "value": nhs}},
        "reasonCode": [{"text": "lives alone, two falls this autumn"}],
        "extension": [_source("gp")],
    }


def _source(code: str) -> dict[str, Any]:
    """The referral's source (UK Core SourceOfServiceRequest, CareHub's referral-source codes)."""
    return {
        "url": co.SOURCE_EXTENSION,
        "valueCodeableConcept": {"coding": [{"system": co.REFERRAL_SOURCE_SYSTEM, "code": code}]},
    }


async def test_a_coordinators_work_over_the_api_ends_with_the_pic_summary_at_the_gp(tmp_path: Path) -> None:
    rules = yaml.safe_load(DEFAULT.read_text()) | {"caseload_cap": 1, "version": 2}
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(rules))
    settings = settings_for(tmp_path, rules=tmp_path / "rules.yaml")
    services = build(settings)
    now = datetime.now(UTC)
    mailbox = pic_sharing(services, tmp_path, now)
    services.subscriptions.save(
        Subscription(
            id="council-referrals",
            org="LA123",
            purpose="care-coordination",
            events=(co.REFERRAL_RECEIVED.type,),
            scope="addressed",
        )
    )
    gp = _bearer(services.secrets.token, GP_PRACTICE, "clinician", now)
    pic = _bearer(services.secrets.token, month.SERVICE, "coordinator", now)

    async with (
        running(settings, services=services, mllp=False) as run,
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{run.http_port}/fhir") as http,
    ):
        bad = await http.post("/ServiceRequest", json=_referral("9434765918"), headers=gp)
        assert bad.status_code == 400
        assert bad.json()["issue"][0]["expression"] == ["ServiceRequest.subject.identifier"]
        short = await http.post("/ServiceRequest", json=_referral("943476591"), headers=gp)
        assert short.status_code == 400
        assert short.json()["issue"][0]["diagnostics"] == (
            "subject.identifier: NHS number must be 10 digits, got 9 characters"
        )
        draft = await http.post("/ServiceRequest", json=_referral("9434765919") | {"status": "draft"}, headers=gp)
        assert draft.status_code == 400, draft.text
        assert draft.json()["issue"][0]["expression"] == ["ServiceRequest.status"]
        # who refers is never taken for granted: a partner taken for a GP would become the person's practice
        unsaid = await http.post("/ServiceRequest", json=_referral("9434765919") | {"extension": []}, headers=gp)
        assert unsaid.status_code == 400, unsaid.text
        issue = unsaid.json()["issue"][0]
        assert (issue["code"], issue["expression"]) == ("required", ["ServiceRequest.extension"])
        assert "must say who refers" in issue["diagnostics"] and "adult-social-care" in issue["diagnostics"]
        unknown = await http.post(
            "/ServiceRequest", json=_referral("9434765919") | {"extension": [_source("G.P.")]}, headers=gp
        )
        assert unknown.status_code == 400, unknown.text
        assert unknown.json()["issue"][0]["code"] == "code-invalid"
        assert "'G.P.' is not one of gp, risk-stratification" in unknown.json()["issue"][0]["diagnostics"]

        first = await http.post("/ServiceRequest", json=_referral("9434765919"), headers=gp)
        second = await http.post("/ServiceRequest", json=_referral("9990000018"), headers=gp)
        assert first.status_code == second.status_code == 201, first.text
        referral, other = first.json(), second.json()
        person = referral["subject"]["reference"].removeprefix("Patient/")

        def open_tasks() -> dict[str, str]:
            return {t["code"]["coding"][0]["code"]: t["status"] for t in services.reader.search("Task", person)}

        await until(lambda: set(open_tasks()) == {"referral-triage", "first-visit"}, 30, "referral tasks")
        assert services.reader.search("Flag", person)  # a GP referral puts the person on the case list

        to_council = _referral("9990000026") | {"performer": [{"identifier": {"system": ODS, "value": "LA123"}}]}
        assert (await http.post("/ServiceRequest", json=to_council, headers=gp)).status_code == 201
        council = await subscriber_records(run.bootstrap, subscriber_topic("LA123").name, at_least=1)
        assert len(council) == 1  # only the referral addressed to the council, not those to the PIC service
        kinds = {e["resource"]["resourceType"]: e["resource"] for e in council[0]["entry"]}
        assert kinds["ServiceRequest"]["performer"][0]["identifier"]["value"] == "LA123"

        # adult social care refers people on too: its referral says nothing of anyone's GP, so the
        # PIC summary below still goes to the practice, and a person new to the record has no GP
        la = _bearer(services.secrets.token, "LA123", "clinician", now)
        for nhs in ("9434765919", "9999000037"):
            onward = _referral(nhs) | {
                "performer": [{"identifier": {"system": ODS, "value": "VCS01"}}],
                "extension": [
                    {
                        "url": co.SOURCE_EXTENSION,
                        "valueCodeableConcept": {
                            "coding": [{"system": co.REFERRAL_SOURCE_SYSTEM, "code": "adult-social-care"}]
                        },
                    }
                ],
            }
            made = await http.post("/ServiceRequest", json=onward, headers=la)
            assert made.status_code == 201, made.text
        newcomer = made.json()["subject"]["reference"].removeprefix("Patient/")
        await until(lambda: services.reader.read("Patient", newcomer) is not None, 30, "the newcomer's stub")
        assert "generalPractitioner" not in (services.reader.read("Patient", newcomer) or {})

        not_allowed = await http.post(
            f"/ServiceRequest/{referral['id']}/$accept", json=_params(coordinator="c-ann"), headers=gp
        )
        assert not_allowed.status_code == 403
        accepted = await http.post(
            f"/ServiceRequest/{referral['id']}/$accept", json=_params(coordinator="c-ann"), headers=pic
        )
        assert accepted.status_code == 201, accepted.text
        episode = accepted.json()
        await until(lambda: services.coordination.caseloads().get("c-ann") == 1, 30, "c-ann's caseload")
        over = await http.post(f"/ServiceRequest/{other['id']}/$accept", json=_params(coordinator="c-ann"), headers=pic)
        assert over.status_code == 409
        assert "cap 1" in over.json()["issue"][0]["diagnostics"]

        visit = await http.post(f"/Patient/{person}/$record-contact", json=_params(kind="face-to-face"), headers=pic)
        assert visit.status_code == 201, visit.text
        await until(lambda: open_tasks().get("first-visit") == "completed", 30, "first visit completed")
        assert open_tasks()["referral-triage"] == "completed"
        assert open_tasks()["review-6-weeks"] == "requested"

        closing = _params(
            goals="Goes to the lunch club weekly", interventions="Befriending; benefits check", follow_up="None"
        )
        closed = await http.post(f"/EpisodeOfCare/{episode['id']}/$close", json=closing, headers=pic)
        assert closed.status_code == 200, closed.text
        await until(lambda: any(mailbox.glob("*.json")), 30, "the PIC summary in the practice mailbox")
        [filed] = mailbox.glob("*.json")  # by day and NHS number, for the practice to sort and find
        assert re.fullmatch(r"\d{8}-9434765919-pic-summary-[0-9a-f]{8}\.json", filed.name), filed.name
        letter = orjson.loads(filed.read_bytes())
        assert (letter["type"], letter["entry"][0]["resource"]["resourceType"]) == ("document", "Composition")
        composition = next(e["resource"] for e in letter["entry"] if e["resource"]["resourceType"] == "Composition")
        assert [s["title"] for s in composition["section"]][:2] == ["Reason for referral", "Goals and outcomes"]
        assert "two falls" in composition["section"][0]["text"]["div"]
        await until(
            lambda: open_tasks().get("pic-summary") == "completed", 30, "the receipt closes the PIC-summary task"
        )
        assert open_tasks()["review-6-weeks"] == "cancelled"
        assert (services.reader.read("EpisodeOfCare", episode["id"]) or {})["status"] == "finished"
        again = await http.post(f"/EpisodeOfCare/{episode['id']}/$close", json=closing, headers=pic)
        assert again.status_code == 409


async def test_a_coordinator_who_finds_the_persons_practice_names_it_and_the_held_pic_summary_goes_there(
    tmp_path: Path,
) -> None:
    settings = settings_for(tmp_path)
    services = build(settings)
    now = datetime.now(UTC)
    mailbox = pic_sharing(services, tmp_path, now)
    # a practice that takes PIC summaries but whose only agreement with the service is for audit:
    # delivery would withhold the letter
    audit_only = an_agreement(month.SERVICE, "Y08888", id="audit-only", purposes=("audit",), categories=("care-plans",))
    services.agreements.load(audit_only, at=now)
    services.subscriptions.save(
        Subscription(id="y08888-pic", org="Y08888", events=(co.PIC_SUMMARY_SENT.type,), mailbox=str(tmp_path / "y8"))
    )
    answers = tmp_path / "la-answers"  # the council hears what became of the referrals it made
    services.subscriptions.save(
        Subscription(
            id="la123-answers", org="LA123", events=(co.REFERRAL_OUTCOME.type,), scope="requested", mailbox=str(answers)
        )
    )
    secret = services.secrets.token
    la = _bearer(secret, "LA123", "clinician", now)
    pic = _bearer(secret, month.SERVICE, "coordinator", now)

    async with (
        running(settings, services=services, mllp=False) as run,
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{run.http_port}/fhir") as http,
    ):
        social_care = _referral("9434765919") | {"extension": [_source("adult-social-care")]}
        # a requester is who sends it: naming another organisation would hand them the referral
        posing = social_care | {"requester": {"identifier": {"system": ODS, "value": "Y99999"}}}
        refused = await http.post("/ServiceRequest", json=posing, headers=la)
        assert refused.status_code == 400, refused.text
        assert refused.json()["issue"][0]["expression"] == ["ServiceRequest.requester"]
        made = await http.post("/ServiceRequest", json=social_care, headers=la)  # it names no GP
        assert made.status_code == 201, made.text
        referral = made.json()
        person = referral["subject"]["reference"].removeprefix("Patient/")

        def tasks() -> dict[str, dict[str, Any]]:
            return {t["code"]["coding"][0]["code"]: t for t in services.reader.search("Task", person)}

        await until(lambda: "referral-triage" in tasks(), 30, "the referral's tasks")
        accepted = await http.post(
            f"/ServiceRequest/{referral['id']}/$accept", json=_params(coordinator="c-ann"), headers=pic
        )
        assert accepted.status_code == 201, accepted.text
        episode = accepted.json()["id"]
        await until(lambda: services.reader.read("EpisodeOfCare", episode) is not None, 30, "the episode")
        await until(lambda: answers.exists() and any(answers.glob("*.json")), 30, "the acceptance, to the council")
        [answer] = [orjson.loads(f.read_bytes()) for f in answers.glob("*.json")]
        told = [e["resource"] for e in answer["entry"] if e["resource"]["resourceType"] == "ServiceRequest"]
        assert [r["id"] for r in told] == [referral["id"]], answer
        closed = await http.post(f"/EpisodeOfCare/{episode}/$close", json=_params(goals="Home"), headers=pic)
        assert closed.status_code == 200, closed.text
        await until(lambda: "find-gp-practice" in tasks(), 30, "the task to find the practice")
        find, triage = tasks()["find-gp-practice"], tasks()["referral-triage"]
        assert not mailbox.exists() or not any(mailbox.glob("*.json"))  # held, not sent to no one

        for task, params, code, why in [
            (
                triage,
                _params(status="completed", practice=GP_PRACTICE),
                400,
                "only on completing a find-gp-practice",
            ),
            (find, _params(status="in-progress", practice=GP_PRACTICE), 400, "only with status completed"),
            (find, _params(status="completed", practice="Y01 surgery"), 400, "'Y01 surgery' is not an ODS code"),
            (find, _params(status="completed"), 400, "completing a find-gp-practice task names the practice found"),
            (find, _params(status="completed", practice=month.SERVICE), 409, "is the coordination service itself"),
            (
                find,
                _params(status="completed", practice="Y09999"),
                409,
                "practice Y09999 has no subscription that takes PIC summaries",
            ),
            (
                find,
                _params(status="completed", practice="Y08888"),
                409,
                "no agreement in force shares care-plans from Y0PIC with Y08888",
            ),
        ]:
            refused = await http.post(f"/Task/{task['id']}/$status", json=params, headers=pic)
            assert refused.status_code == code, refused.text
            issue = refused.json()["issue"][0]
            assert why in issue["diagnostics"] and issue["expression"] == ["Parameters.parameter[practice]"]
        assert not mailbox.exists() or not any(mailbox.glob("*.json"))  # (none of them sent it anywhere)

        named = _params(status="completed", practice=GP_PRACTICE.lower())
        answer = await http.post(f"/Task/{find['id']}/$status", json=named, headers=pic)
        assert answer.status_code == 200, answer.text
        [output] = answer.json()["output"]
        assert output["valueReference"]["identifier"] == {"system": ODS, "value": GP_PRACTICE}
        await until(lambda: any(mailbox.glob("*.json")), 30, "the held PIC summary in the practice's mailbox")
        [sent] = [orjson.loads(f.read_bytes()) for f in mailbox.glob("*.json")]
        kinds = {e["resource"]["resourceType"]: e["resource"] for e in sent["entry"]}
        assert kinds["Composition"]["id"] == find["focus"]["reference"].removeprefix("Composition/")
        assert kinds["Patient"]["generalPractitioner"][0]["identifier"]["value"] == GP_PRACTICE
        kept = services.reader.read("Task", find["id"]) or {}
        assert (kept["status"], kept["output"]) == ("completed", [output])


async def test_a_referral_sent_again_with_its_referrers_identifier_is_made_once(tmp_path: Path) -> None:
    settings = settings_for(tmp_path)
    services = build(settings)
    now = datetime.now(UTC)
    secret = services.secrets.token
    gp = _bearer(secret, GP_PRACTICE, "clinician", now)
    other = _bearer(secret, "Y02", "clinician", now)
    body = _referral("9434765919") | {"identifier": [{"system": "https://gp.example/referrals", "value": "R-1"}]}

    async with (
        running(settings, services=services, mllp=False) as run,
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{run.http_port}/fhir") as http,
    ):
        # a client that retries at once (its first answer lost), then again once the record has it
        first, retried = [await http.post("/ServiceRequest", json=body, headers=gp) for _ in range(2)]
        assert first.status_code == 201, first.text
        made = first.json()["id"]
        assert retried.status_code in (200, 201)  # (201 while the record has yet to apply the first)
        assert retried.headers["location"] == first.headers["location"] == f"/fhir/ServiceRequest/{made}"
        person = first.json()["subject"]["reference"].removeprefix("Patient/")
        await until(lambda: services.reader.read("ServiceRequest", made) is not None, 30, "the referral")
        again = await http.post("/ServiceRequest", json=body, headers=gp)
        assert again.status_code == 200, again.text
        assert again.headers["location"] == f"/fhir/ServiceRequest/{made}"
        issue = again.json()["issue"][0]  # nothing of the referral as it now stands, only that it exists
        assert (again.json()["resourceType"], issue["severity"], issue["code"]) == (
            "OperationOutcome",
            "information",
            "duplicate",
        )
        elsewhere = await http.post("/ServiceRequest", json=body, headers=other)  # another referrer's R-1
        assert elsewhere.status_code == 201 and elsewhere.json()["id"] != made
        someone_else = body | {"subject": _referral("9990000018")["subject"]}  # R-1 reused for another person
        theirs = await http.post("/ServiceRequest", json=someone_else, headers=gp)
        assert theirs.status_code == 201 and theirs.json()["id"] != made
        other_person = theirs.json()["subject"]["reference"].removeprefix("Patient/")
        await until(lambda: len(services.reader.search("ServiceRequest", person)) == 2, 30, "both referrers' referrals")
        await until(lambda: len(services.reader.search("Task", person)) == 4, 30, "each referral's two tasks")
        await until(lambda: len(services.reader.search("Task", other_person)) == 2, 30, "the other person's tasks")
        await asyncio.sleep(1.5)  # nothing more arrives: the retry made no second set of tasks
        codes = sorted(t["code"]["coding"][0]["code"] for t in services.reader.search("Task", person))
        assert codes == ["first-visit", "first-visit", "referral-triage", "referral-triage"]
        assert (services.reader.read("ServiceRequest", made) or {})["subject"]["reference"] == f"Patient/{person}"


async def test_a_time_in_the_future_is_refused_400_naming_the_field_and_never_reaches_the_log(tmp_path: Path) -> None:
    settings = settings_for(tmp_path)
    services = build(settings)
    now = datetime.now(UTC)
    secret = services.secrets.token
    gp = _bearer(secret, GP_PRACTICE, "clinician", now)
    pic = _bearer(secret, month.SERVICE, "coordinator", now)
    ahead = (now + timedelta(days=57)).isoformat()  # 2027-02-01, said on 2026-12-06: February's KPIs

    async with (
        running(settings, services=services, mllp=False) as run,
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{run.http_port}/fhir") as http,
    ):
        future = await http.post("/ServiceRequest", json=_referral("9434765919") | {"authoredOn": ahead}, headers=gp)
        assert future.status_code == 400, future.text
        issue = future.json()["issue"][0]
        assert (future.json()["resourceType"], issue["code"]) == ("OperationOutcome", "value")
        assert issue["expression"] == ["ServiceRequest.authoredOn"]
        assert issue["diagnostics"].startswith(f"ServiceRequest.authoredOn {ahead} is in the future (later than now")
        fast = (now + timedelta(minutes=2)).isoformat()  # a caller's clock a little fast is no reason to refuse
        made = await http.post("/ServiceRequest", json=_referral("9434765919") | {"authoredOn": fast}, headers=gp)
        assert made.status_code == 201, made.text
        referral = made.json()["id"]
        person = made.json()["subject"]["reference"].removeprefix("Patient/")
        await until(lambda: services.reader.read("ServiceRequest", referral) is not None, 30, "the referral")

        for path, params in [
            (f"/ServiceRequest/{referral}/$accept", _params(coordinator="c-ann", at=ahead)),
            (f"/ServiceRequest/{referral}/$decline", _params(reason="moved away", at=ahead)),
            (f"/Patient/{person}/$record-contact", _params(kind="face-to-face", at=ahead)),
        ]:
            refused = await http.post(path, json=params, headers=pic)
            assert refused.status_code == 400, (path, refused.text)
            issue = refused.json()["issue"][0]
            assert issue["expression"] == ["Parameters.at"]
            assert issue["diagnostics"].startswith(f"Parameters.at {ahead} is in the future"), issue
        accepted = await http.post(
            f"/ServiceRequest/{referral}/$accept", json=_params(coordinator="c-ann"), headers=pic
        )
        assert accepted.status_code == 201, accepted.text
        episode = accepted.json()["id"]
        await until(lambda: services.reader.read("EpisodeOfCare", episode) is not None, 30, "the episode")
        refused = await http.post(f"/EpisodeOfCare/{episode}/$close", json=_params(at=ahead), headers=pic)
        assert refused.status_code == 400, refused.text
        assert refused.json()["issue"][0]["expression"] == ["Parameters.at"]

        # what was refused was never an event: only the referral and its acceptance, at times already come
        for kind, expected in [
            (co.REFERRAL_RECEIVED, 1),
            (co.REFERRAL_OUTCOME, 1),
            (co.CONTACT_RECORDED, 0),
            (co.EPISODE_CLOSED, 0),
        ]:
            times = [datetime.fromisoformat(t) for _, _, t in await log_events(run.bootstrap, kind.type)]
            assert len(times) == expected, (kind.type, times)
            assert all(t <= datetime.now(UTC) + timedelta(minutes=5) for t in times)


async def read_until(http: httpx.AsyncClient, path: str, headers: dict[str, str], check: Any, what: str) -> Any:
    """GET `path` until `check(resource)` holds (a command's effect reaches the record through the log)."""
    deadline = time.perf_counter() + 30
    while time.perf_counter() < deadline:
        answer = await http.get(path, headers=headers)
        if answer.status_code == 200 and check(answer.json()):
            return answer.json()
        await asyncio.sleep(0.1)
    raise AssertionError(f"{what}: not read within 30s (last answer {answer.status_code}: {answer.text[:300]})")


async def test_a_coordinator_moves_a_task_through_permitted_statuses_only(tmp_path: Path) -> None:
    settings = settings_for(tmp_path)
    services = build(settings)
    now = datetime.now(UTC)
    secret = services.secrets.token
    gp = _bearer(secret, GP_PRACTICE, "clinician", now)
    pic = _bearer(secret, month.SERVICE, "coordinator", now)
    council = _bearer(secret, "LA123", "coordinator", now)

    async with (
        running(settings, services=services, mllp=False) as run,
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{run.http_port}/fhir") as http,
    ):
        referral = await http.post("/ServiceRequest", json=_referral("9434765919"), headers=gp)
        assert referral.status_code == 201, referral.text
        person = referral.json()["subject"]["reference"].removeprefix("Patient/")
        await until(lambda: len(services.reader.search("Task", person)) == 2, 30, "the referral's tasks")
        tasks = {t["code"]["coding"][0]["code"]: t for t in services.reader.search("Task", person)}
        triage, visit = tasks["referral-triage"], tasks["first-visit"]
        path = f"/Task/{triage['id']}"
        assert triage["status"] == "requested"

        for who in (gp, council):  # a practice clinician; a coordinator, but of another organisation
            refused = await http.post(f"{path}/$status", json=_params(status="in-progress"), headers=who)
            assert refused.status_code == 403, refused.text
            assert refused.json()["resourceType"] == "OperationOutcome"
            assert refused.json()["issue"][0]["code"] == "forbidden"
        unauthenticated = await http.post(f"{path}/$status", json=_params(status="in-progress"))
        assert unauthenticated.status_code == 401

        started = await http.post(f"{path}/$status", json=_params(status="in-progress"), headers=pic)
        assert started.status_code == 200, started.text
        assert started.json()["status"] == "in-progress"
        await read_until(http, path, pic, lambda t: t["status"] == "in-progress", "the task in progress")

        made_up = await http.post(f"{path}/$status", json=_params(status="done"), headers=pic)
        assert made_up.status_code == 400, made_up.text
        assert made_up.json()["issue"][0]["code"] == "code-invalid"
        assert "in-progress" in made_up.json()["issue"][0]["diagnostics"]  # the statuses it may be

        backwards = await http.post(f"{path}/$status", json=_params(status="requested"), headers=pic)
        assert backwards.status_code == 409, backwards.text
        issue = backwards.json()["issue"][0]
        assert backwards.json()["resourceType"] == "OperationOutcome"
        assert (issue["code"], issue["expression"]) == ("business-rule", ["Parameters.status"])
        assert "cannot become requested; allowed: cancelled, completed, failed, on-hold" in issue["diagnostics"]

        done = await http.post(f"{path}/$status", json=_params(status="completed"), headers=pic)
        assert done.status_code == 200, done.text
        await read_until(http, path, pic, lambda t: t["status"] == "completed", "the task completed")
        reopened = await http.post(f"{path}/$status", json=_params(status="in-progress"), headers=pic)
        assert reopened.status_code == 409
        assert "allowed: none (it is finished)" in reopened.json()["issue"][0]["diagnostics"]
        unknown = await http.post(f"/Task/{uuid.uuid4()}/$status", json=_params(status="completed"), headers=pic)
        assert unknown.status_code == 404

        # the completed task's clock stopped: a tick past both deadlines makes only the first visit overdue
        # (a tick fires every due clock of its partition in due order, so the triage would have come first)
        await publish_timeline(run.bootstrap, [(now + timedelta(days=29), 0, None)])
        overdue = await read_until(http, f"/Task/{visit['id']}", pic, lambda t: "businessStatus" in t, "visit overdue")
        assert overdue["owner"]["identifier"]["value"] == "team-lead"
        final = (await http.get(path, headers=pic)).json()
        assert (final["status"], "businessStatus" in final) == ("completed", False)
