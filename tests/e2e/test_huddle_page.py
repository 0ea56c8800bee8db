"""The huddle agenda page in a real browser: Debian's chromium driven by Playwright, against uvicorn on a
free port, over a SQLite record seeded by real events (HL7 v2 ADT through the hospital adapter's mapping,
coordination and consent events as CloudEvents) applied by the record's own rules.

Also `carehub huddle` as an operator runs it (real process, embedded broker)."""

from __future__ import annotations

import random
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from adapters.hl7v2.to_fhir import map_message
from hub.api.app import create_app
from hub.api.auth import TokenVerifier, issue_token
from hub.bootstrap import Services, build
from hub.core.identity import person_key
from hub.core.ports import RecordEvent
from hub.core.record import apply_events
from hub.settings import Settings
from schemas.envelope import Envelope
from schemas.events.consent import CONSENT_RECORDED
from schemas.events.coordination import (
    ATTENDED_EXTENSION,
    BUSINESS_STATUS_SYSTEM,
    CANCELLED_EXTENSION,
    CASELIST_ADDED,
    ELIGIBLE,
    FLAG_SYSTEM,
    REFERRAL_RECEIVED,
    TASK_OVERDUE,
    TASK_SYSTEM,
)
from tests.browser import CHROMIUM, CHROMIUM_ARGS, NO_CHROMIUM, SCREENSHOTS
from tests.builders import a_valid_nhs_number, an_adt, an_agreement, an_objection
from tests.serving import served

pytestmark = pytest.mark.timeout(120)
ODS = "https://fhir.nhs.uk/Id/ods-organization-code"
NHS = "https://fhir.nhs.uk/Id/nhs-number"
PRACTICE, OTHER_PRACTICE, PIC, VCS = "Y00001", "Y00002", "PIC01", "VCS01"
MEETING = date(2026, 11, 26)  # window: Thu 19 to Wed 25 November 2026
CAREHUB = str(Path(sys.executable).with_name("carehub"))


@dataclass(frozen=True)
class Person:
    nhs: str
    family: str
    given: str
    practice: str = PRACTICE


DISCHARGED = Person("9434765919", "SMITH", "JANE")
REFERRED = Person(a_valid_nhs_number(random.Random(1)), "JONES", "ARTHUR")
ELIGIBLE_PERSON = Person(a_valid_nhs_number(random.Random(2)), "BROWN", "EDITH")
OBJECTED = Person(a_valid_nhs_number(random.Random(3)), "HIDDEN", "HAROLD")
ELSEWHERE = Person(a_valid_nhs_number(random.Random(4)), "OTHER", "OLIVE", OTHER_PRACTICE)


def _event(type_: str, source: str, key: str, when: datetime, payload: dict[str, Any]) -> RecordEvent:
    """A CloudEvent as it travels on Kafka, read back the way the record consumer reads it."""
    envelope = Envelope(
        id=str(uuid.uuid4()), source=f"urn:ods:{source}", type=type_, time=when, subject=key, data=orjson.dumps(payload)
    )
    back = Envelope.from_kafka(envelope.data, envelope.kafka_headers())
    return RecordEvent(back.id, back.type, back.source, back.time, back.subject, orjson.loads(back.data))


def _stub(key: str, person: Person) -> dict[str, Any]:
    return {
        "resourceType": "Patient",
        "id": key,
        "identifier": [{"system": NHS, "value": person.nhs}],
        "name": [{"family": person.family, "given": [person.given]}],
        "birthDate": "1938-02-14",
        "generalPractitioner": [{"identifier": {"system": ODS, "value": person.practice}}],
    }


def _referral(key: str, person: Person, authored: str, reason: str) -> dict[str, Any]:
    request = {
        "resourceType": "ServiceRequest",
        "id": str(uuid.uuid4()),
        "status": "active",
        "intent": "order",
        "category": [{"coding": [{"system": "http://snomed.info/sct", "code": "3457005"}]}],
        "subject": {"reference": f"Patient/{key}", "identifier": {"system": NHS, "value": person.nhs}},
        "authoredOn": authored,
        "requester": {"identifier": {"system": ODS, "value": VCS}, "display": "Croydon Voluntary Action"},
        "performer": [{"identifier": {"system": ODS, "value": PIC}}],
        "reasonCode": [{"text": reason}],
    }
    return {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [{"resource": request}, {"resource": _stub(key, person)}],
    }


def seed(services: Services) -> dict[str, str]:
    """The week before the meeting, as events; returns person keys by family name."""
    secret = services.secrets.key
    keys = {
        p.family: person_key(secret, p.nhs, None) for p in (DISCHARGED, REFERRED, ELIGIBLE_PERSON, OBJECTED, ELSEWHERE)
    }
    at = datetime(2026, 11, 20, 9, 0, tzinfo=UTC)
    adt = [
        an_adt(trigger="A01", nhs_number=DISCHARGED.nhs, control_id="H1", visit="V1", event_time="202611150900"),
        an_adt(trigger="A03", nhs_number=DISCHARGED.nhs, control_id="H2", visit="V1", discharge="202611231100",
               event_time="202611231105"),
        an_adt(trigger="A01", nhs_number=ELIGIBLE_PERSON.nhs, mrn="M300", family="BROWN", given="EDITH",
               control_id="H3", visit="V3", event_time="202611180800"),
    ]  # fmt: skip
    events = [
        RecordEvent(m.event_id, m.event_type, m.source, m.event_time, m.person_key, m.payload)
        for raw in adt
        for m in map_message(raw, key_secret=secret)
    ]
    flag = {
        "resourceType": "Flag",
        "id": str(uuid.uuid4()),
        "status": "active",
        "code": {"coding": [{"system": FLAG_SYSTEM, "code": ELIGIBLE}]},
        "subject": {"reference": f"Patient/{keys['BROWN']}"},
        "period": {"start": "2026-11-24"},
        "author": {"identifier": {"system": ODS, "value": PRACTICE}},
    }
    task = {
        "resourceType": "Task",
        "id": str(uuid.uuid4()),
        "status": "requested",
        "intent": "order",
        "code": {"coding": [{"system": TASK_SYSTEM, "code": "first-contact", "display": "First contact"}]},
        "for": {"reference": f"Patient/{keys['JONES']}"},
        "owner": {"display": "PIC team south"},
        "restriction": {"period": {"end": "2026-11-22T17:00:00+00:00"}},
        "businessStatus": {"coding": [{"system": BUSINESS_STATUS_SYSTEM, "code": "overdue"}]},
    }
    objection = an_objection(OBJECTED.nhs, PRACTICE)
    objection |= {"id": str(uuid.uuid4()), "patient": {"reference": f"Patient/{keys['HIDDEN']}"}}

    def referred(person: Person, authored: str, reason: str) -> RecordEvent:
        key = keys[person.family]
        return _event(REFERRAL_RECEIVED.type, VCS, key, at, _referral(key, person, authored, reason))

    events += [
        referred(REFERRED, "2026-11-20", "lives alone, two falls"),
        referred(OBJECTED, "2026-11-21", "carer unwell"),
        referred(ELSEWHERE, "2026-11-21", "other practice"),
        _event(CASELIST_ADDED.type, PRACTICE, keys["BROWN"], at, flag),
        _event(TASK_OVERDUE.type, PIC, keys["JONES"], at, task),
        _event(CONSENT_RECORDED.type, PRACTICE, keys["HIDDEN"], at, objection),
    ]
    with services.uow_factory() as uow:
        assert apply_events(uow, events).applied == len(events)
        uow.commit()
    categories = ("demographics", "encounters", "referrals", "tasks", "provenance", "consents")
    services.agreements.load(an_agreement("RXX", PRACTICE, PIC, VCS, categories=categories), at=datetime.now(UTC))
    return keys


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[tuple[Services, dict[str, str], str]]:
    """A seeded record and the API over it, served by uvicorn on a free 127.0.0.1 port."""
    services = build(Settings(data_dir=tmp_path))
    keys = seed(services)
    app = create_app(services.reader, TokenVerifier(services.secrets.token), services.ledger, services.policy)
    try:
        with served(app, "huddle-page") as url:
            yield services, keys, url
    finally:
        services.engine.dispose()


def token(services: Services, org: str = PRACTICE, role: str = "coordinator") -> str:
    return issue_token(services.secrets.token, org=org, role=role, now=datetime.now(UTC))


@pytest.mark.browser
def test_the_huddle_page_in_chromium_lists_the_weeks_people_and_hides_the_one_who_objected(
    hub: tuple[Services, dict[str, str], str],
) -> None:
    if not CHROMIUM.exists():
        pytest.skip(NO_CHROMIUM)
    from playwright.sync_api import sync_playwright

    services, keys, base = hub
    url = f"{base}/huddle/{PRACTICE}?date={MEETING.isoformat()}&token={token(services)}"
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            response = page.goto(url)
            assert response is not None and response.status == 200
            rows = {
                section: page.locator(f"section#{section} tbody tr").all_inner_texts()
                for section in ("new-referral", "newly-eligible", "recent-discharge", "overdue-task")
            }
            withheld = page.locator("#withheld").inner_text()
            body = page.locator("body").inner_text()
            SCREENSHOTS.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(SCREENSHOTS / "huddle-page.png"), full_page=True)
            page.emulate_media(media="print")
            hint_hidden = page.locator(".hint").is_hidden()
            page.screenshot(path=str(SCREENSHOTS / "huddle-page-print.png"), full_page=True)
        finally:
            browser.close()

    [referral] = rows["new-referral"]
    assert "ARTHUR JONES" in referral and "lives alone, two falls" in referral and "Fri 20 Nov 2026" in referral
    assert REFERRED.nhs[:3] + " " + REFERRED.nhs[3:6] in referral  # spaced 3-3-4
    [eligible] = rows["newly-eligible"]
    assert "EDITH BROWN" in eligible and "Tue 24 Nov 2026" in eligible
    [discharge] = rows["recent-discharge"]
    assert "JANE SMITH" in discharge and "Discharged from RXX" in discharge and "Mon 23 Nov 2026 11:00" in discharge
    assert "to usual place of residence" in discharge and "destination 19" not in discharge  # (PV1-36 19, in words)
    [task] = rows["overdue-task"]
    assert "ARTHUR JONES" in task and "First contact" in task and "Sun 22 Nov 2026 17:00" in task
    spaced = f"{OBJECTED.nhs[:3]} {OBJECTED.nhs[3:6]} {OBJECTED.nhs[6:]}"
    assert "HIDDEN" not in body and "carer unwell" not in body and spaced not in body
    assert "OLIVE" not in body and "other practice" not in body  # another practice's patient: not counted either
    assert "1 person(s) and 1 item(s) withheld" in withheld
    assert hint_hidden
    assert (SCREENSHOTS / "huddle-page.png").stat().st_size > 10_000

    entries = [e.body for e in services.ledger.entries() if e.body["channel"] == "huddle"]
    assert {(e["person_key"], e["decision"]) for e in entries} >= {
        (keys["JONES"], "permit"),
        (keys["BROWN"], "permit"),
        (keys["SMITH"], "permit"),
        (keys["HIDDEN"], "deny"),
    }
    assert (keys["HIDDEN"], "permit") not in {(e["person_key"], e["decision"]) for e in entries}
    [hidden] = [e for e in entries if e["person_key"] == keys["HIDDEN"]]
    assert sorted(r.split("/")[0] for r in hidden["resources"]) == ["Patient", "ServiceRequest"]
    assert keys["OTHER"] not in {e["person_key"] for e in entries}


def test_the_page_and_its_fhir_list_need_a_token_and_the_list_matches_the_page(
    hub: tuple[Services, dict[str, str], str],
) -> None:
    services, _, base = hub
    with httpx.Client(base_url=base, timeout=10) as http:
        assert http.get(f"/huddle/{PRACTICE}").status_code == 401
        assert http.get(f"/huddle/{PRACTICE}", params={"token": "forged"}).status_code == 401
        assert http.get("/fhir/List", params={"practice": PRACTICE}).status_code == 401
        bearer = {"Authorization": f"Bearer {token(services)}"}
        assert http.get("/huddle/NOT-AN-ODS!", headers=bearer).status_code == 400
        page = http.get(f"/huddle/{PRACTICE}", params={"date": MEETING.isoformat()}, headers=bearer)
        listed = http.get("/fhir/List", params={"practice": PRACTICE, "date": MEETING.isoformat()}, headers=bearer)
        outsider = {"Authorization": f"Bearer {token(services, org='RYY')}"}  # (no party: all withheld)
        nothing = http.get("/fhir/List", params={"practice": PRACTICE, "date": MEETING.isoformat()}, headers=outsider)

    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert page.headers["referrer-policy"] == "no-referrer" and page.headers["cache-control"] == "no-store"
    assert "@media print" in page.text
    body = listed.json()
    assert (body["resourceType"], body["status"], body["mode"], body["date"]) == (
        "List",
        "current",
        "snapshot",
        "2026-11-26",
    )
    sections = [e["flag"]["coding"][0]["code"] for e in body["entry"]]
    assert sections == ["new-referral", "newly-eligible", "recent-discharge", "overdue-task"]
    assert "1 person(s) and 1 item(s) withheld" in body["note"][0]["text"]
    assert "entry" not in nothing.json() and nothing.json()["emptyReason"]["coding"][0]["code"] == "withheld"


@pytest.mark.kafka
def test_carehub_huddle_prints_the_agenda_and_publishes_it_into_the_record(tmp_path: Path) -> None:
    services = build(Settings(data_dir=tmp_path))
    seed(services)
    services.engine.dispose()

    result = subprocess.run(
        [
            *(CAREHUB, "huddle", "--practice", PRACTICE, "--date", MEETING.isoformat()),
            *("--attended", "--data-dir", str(tmp_path)),
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=100,
        env={"PATH": "/usr/bin:/bin", "COLUMNS": "220"},
    )

    assert result.returncode == 0, result.stderr
    for expected in ("ARTHUR JONES", "EDITH BROWN", "JANE SMITH", "First contact", "1 person(s), 1 item(s) withheld"):
        assert expected in result.stdout
    assert "HAROLD" not in result.stdout
    assert "published uk.nhs.carehub.huddle.agenda.v1" in result.stdout
    again = build(Settings(data_dir=tmp_path))
    [stored] = again.reader.search("List", None)
    assert [e["flag"]["coding"][0]["code"] for e in stored["entry"]] == [
        "new-referral",
        "newly-eligible",
        "recent-discharge",
        "overdue-task",
    ]
    assert {"url": ATTENDED_EXTENSION, "valueBoolean": True} in stored["extension"]  # counts in the KPIs
    again.engine.dispose()

    def huddle(*flags: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [
                CAREHUB,
                "huddle",
                "--practice",
                PRACTICE,
                "--date",
                MEETING.isoformat(),
                *flags,
                "--data-dir",
                str(tmp_path),
            ],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=100,
            env={"PATH": "/usr/bin:/bin", "COLUMNS": "220"},
        )

    published = huddle("--publish")  # (a huddle held, as the walkthrough's default was: now said)
    assert published.returncode == 0, published.stderr
    assert "published uk.nhs.carehub.huddle.agenda.v1" in published.stdout

    both = huddle("--attended", "--cancelled")
    assert both.returncode == 2
    assert "a meeting that did not take place was not attended" in both.stdout
    assert huddle("--cancelled", "--no-publish").returncode == 2
    cancelled = huddle("--cancelled")
    assert cancelled.returncode == 0, cancelled.stderr
    later = build(Settings(data_dir=tmp_path))
    [stored] = later.reader.search("List", None)
    assert {"url": CANCELLED_EXTENSION, "valueBoolean": True} in stored["extension"]  # not counted as held
    assert ATTENDED_EXTENSION not in {e["url"] for e in stored["extension"]}
    later.engine.dispose()
