"""Who may see a practice's huddle agenda, over a real socket (uvicorn on a free port) and as
`carehub huddle` runs (a real process): another GP practice is refused, whatever the agreements say,
the refusal recorded in the ledger; the organisations that attend huddles still see it; the practice's
admin role is told its role is why it sees no one; the agenda says where people went and who referred
them in words; and printing the agenda publishes nothing (a huddle viewed is no huddle held)."""

from __future__ import annotations

import subprocess
import uuid
from datetime import UTC, datetime
from html import unescape
from importlib import resources
from pathlib import Path
from typing import Any

import httpx
import pytest

from hub.api.app import create_app
from hub.api.auth import TokenVerifier
from hub.api.routes.coordination import CoordinationApi
from hub.bootstrap import Services, build
from hub.core.record import apply_events
from hub.settings import Settings
from schemas.events.coordination import REFERRAL_RECEIVED
from tests.browser import CHROMIUM, CHROMIUM_ARGS, NO_CHROMIUM, SCREENSHOTS
from tests.builders import an_agreement
from tests.e2e.test_huddle_page import (
    CAREHUB,
    DISCHARGED,
    MEETING,
    ODS,
    OTHER_PRACTICE,
    PIC,
    PRACTICE,
    REFERRED,
    VCS,
    _event,
    _referral,
    hub,
    seed,
    token,
)
from tests.serving import served

__all__ = ["hub"]  # (the fixture, shared with the page's own tests)
pytestmark = pytest.mark.timeout(120)
EMPTY_PRACTICE = "Y00009"  # a practice no one on the record is registered with
CATEGORIES = ("demographics", "encounters", "referrals", "tasks", "provenance", "consents")
Hub = tuple[Services, dict[str, str], str]


def both_practices_share(services: Services) -> None:
    """What the walkthrough found: one agreement naming both practices (direct care between them)."""
    shared = an_agreement(PRACTICE, OTHER_PRACTICE, "RXX", id="both-practices", categories=CATEGORIES)
    services.agreements.load(shared, at=datetime.now(UTC))


def test_another_gp_practice_is_refused_the_page_and_the_list_and_the_refusal_is_in_the_ledger(hub: Hub) -> None:
    services, _, base = hub
    both_practices_share(services)
    before = sum(1 for _ in services.ledger.entries())
    other = token(services, org=OTHER_PRACTICE, role="clinician")
    day = {"date": MEETING.isoformat()}
    with httpx.Client(base_url=base, timeout=10) as http:
        page = http.get(f"/huddle/{PRACTICE}", params={**day, "token": other})
        listed = http.get(
            "/fhir/List", params={"practice": PRACTICE, **day}, headers={"Authorization": f"Bearer {other}"}
        )
        empty = http.get(
            "/fhir/List", params={"practice": EMPTY_PRACTICE}, headers={"Authorization": f"Bearer {other}"}
        )
        empty_page = http.get(f"/huddle/{EMPTY_PRACTICE.lower()}", params={"token": other})

    assert page.status_code == 403 and page.headers["content-type"].startswith("text/html")
    assert page.headers["cache-control"] == "no-store" and page.headers["referrer-policy"] == "no-referrer"
    reason = (
        f"{OTHER_PRACTICE} is a GP practice, and a practice sees only its own huddle agenda: {PRACTICE}'s is for "
        f"{PRACTICE} and the organisations that attend its huddle under the sharing agreements"
    )
    assert reason in unescape(page.text) and "recorded in the disclosure ledger" in page.text
    for private in ("SMITH", "JONES", "BROWN", "lives alone", DISCHARGED.nhs[:3] + " " + DISCHARGED.nhs[3:6]):
        assert private not in page.text
    assert listed.status_code == 403
    [issue] = listed.json()["issue"]
    assert (issue["code"], issue["diagnostics"]) == ("forbidden", reason)
    # the same answer for a practice with no one registered: nothing said of who is on the record
    assert empty.status_code == empty_page.status_code == 403
    assert empty.json() == {
        "resourceType": "OperationOutcome",
        "issue": [{**issue, "diagnostics": reason.replace(PRACTICE, EMPTY_PRACTICE)}],
    }

    entries = [e.body for e in services.ledger.entries()][before:]
    assert len(entries) == 4  # one a request, about no one, naming no resource
    assert {(e["recipient_org"], e["channel"], e["decision"], e["person_key"]) for e in entries} == {
        (OTHER_PRACTICE, "huddle", "deny", None)
    }
    assert all(e["resources"] == [] and e["basis"]["role"] == "clinician" for e in entries)
    assert [e["basis"]["practice"] for e in entries] == [PRACTICE, PRACTICE, EMPTY_PRACTICE, EMPTY_PRACTICE]
    assert entries[0]["reasons"] == [reason]


@pytest.mark.parametrize("org", [PRACTICE, PIC, VCS, "RXX"])
def test_the_practice_and_the_organisations_that_attend_its_huddle_still_see_it(hub: Hub, org: str) -> None:
    services, _, base = hub
    with httpx.Client(base_url=base, timeout=10) as http:
        page = http.get(f"/huddle/{PRACTICE}", params={"date": MEETING.isoformat(), "token": token(services, org=org)})

    assert page.status_code == 200, page.text
    assert "JANE SMITH" in page.text  # (the discharge: encounters are shared with every party)


def test_a_pcn_and_a_coordination_service_whose_code_is_practice_shaped_see_it_as_the_policy_lets_them(
    tmp_path: Path,
) -> None:
    service = "Y02345"  # (the rules' service.ods: no practice, whatever its shape)
    rules = tmp_path / "rules.yaml"
    shipped = resources.files("hub.rules").joinpath("croydon-pic.v4.yaml").read_text(encoding="utf-8")
    rules.write_text(shipped.replace("ods: Y0PIC", f"ods: {service}"), encoding="utf-8")
    services = build(Settings(data_dir=tmp_path / "hub", coordination={"rules": rules}))
    seed(services)
    attending = an_agreement(PRACTICE, "U12345", service, "RXX", id="attending", categories=CATEGORIES)
    services.agreements.load(attending, at=datetime.now(UTC))

    async def publish(envelope: Any) -> None:
        return None

    commands = CoordinationApi(services.reader, services.coordination, services.rules, services.secrets.key, publish)
    tokens = TokenVerifier(services.secrets.token)
    app = create_app(services.reader, tokens, services.ledger, services.policy, publish, commands)
    day = {"date": MEETING.isoformat()}
    try:
        with served(app, "huddle-attending") as url, httpx.Client(base_url=url, timeout=10) as http:
            pcn, coordinator = (token(services, org=org) for org in ("U12345", service))
            page, served_page = (
                http.get(f"/huddle/{PRACTICE}", params={**day, "token": t}) for t in (pcn, coordinator)
            )
            listed = http.get(
                "/fhir/List", params={"practice": PRACTICE, **day}, headers={"Authorization": f"Bearer {pcn}"}
            )
            hub_page = http.get(f"/huddle/{PRACTICE}", params={**day, "token": token(services, org="Y02346")})
    finally:
        services.engine.dispose()

    for shown in (page, served_page):
        assert shown.status_code == 200, shown.text
        assert "JANE SMITH" in shown.text
    assert listed.status_code == 200 and listed.json()["resourceType"] == "List"
    assert hub_page.status_code == 403  # (another service of a practice-shaped code is taken for a practice)


def test_the_practice_admin_role_is_told_its_role_not_the_policy_hides_the_people(hub: Hub) -> None:
    services, _, base = hub
    admin = token(services, role="admin")
    with httpx.Client(base_url=base, timeout=10) as http:
        page = http.get(f"/huddle/{PRACTICE}", params={"date": MEETING.isoformat(), "token": admin})
        listed = http.get(
            "/fhir/List",
            params={"practice": PRACTICE, "date": MEETING.isoformat()},
            headers={"Authorization": f"Bearer {admin}"},
        )

    assert page.status_code == 200
    assert "JANE SMITH" not in page.text
    said = "4 person(s) and 5 item(s) not shown: the admin role does not see clinical detail"
    assert said in page.text and "information-sharing policy" not in page.text
    assert any(n["text"].startswith(said) for n in listed.json()["note"])


def test_the_page_says_where_people_went_and_names_the_practice_that_referred_them(hub: Hub) -> None:
    services, keys, base = hub
    key = keys[DISCHARGED.family]
    bundle: Any = _referral(key, DISCHARGED, "2026-11-24", "struggling at home")
    bundle["entry"][0]["resource"]["requester"] = {"identifier": {"system": ODS, "value": PRACTICE}}  # (no display)
    bundle["entry"][0]["resource"]["id"] = str(uuid.uuid4())
    with services.uow_factory() as uow:
        apply_events(uow, [_event(REFERRAL_RECEIVED.type, PRACTICE, key, datetime.now(UTC), bundle)])
        uow.commit()
    with httpx.Client(base_url=base, timeout=10) as http:
        page = http.get(f"/huddle/{PRACTICE}", params={"date": MEETING.isoformat(), "token": token(services)})

    assert page.status_code == 200
    assert "Discharged from RXX (inpatient) to usual place of residence" in page.text
    assert "destination 19" not in page.text
    assert "Referral from MALTON SURGERY: struggling at home" in page.text  # the PD1 practice's name on the record
    assert f"Referral from {PRACTICE}" not in page.text


def carehub(data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [CAREHUB, "huddle", "--date", MEETING.isoformat(), *args, "--data-dir", str(data_dir)],
        cwd=data_dir,
        capture_output=True,
        text=True,
        timeout=100,
        env={"PATH": "/usr/bin:/bin", "COLUMNS": "250"},
        check=False,
    )


def test_carehub_huddle_only_prints_the_agenda_unless_told_to_publish_it(tmp_path: Path) -> None:
    # (review: viewing it published a huddle.agenda, and the KPIs counted a huddle held, attended 0%)
    services = build(Settings(data_dir=tmp_path))
    seed(services)
    services.engine.dispose()

    viewed = carehub(tmp_path, "--practice", PRACTICE)

    assert viewed.returncode == 0, viewed.stdout + viewed.stderr
    assert "ARTHUR JONES" in viewed.stdout and "published" not in viewed.stdout.replace("not published", "")
    assert "printed only, not published: --publish publishes it" in viewed.stdout
    assert "broker" not in viewed.stdout + viewed.stderr  # (no log of its own to say it will lose)
    again = build(Settings(data_dir=tmp_path))
    assert again.reader.search("List", None) == []
    again.engine.dispose()


def test_carehub_huddle_for_another_practice_is_refused_and_recorded(tmp_path: Path) -> None:
    services = build(Settings(data_dir=tmp_path))
    seed(services)
    both_practices_share(services)
    services.engine.dispose()

    refused = carehub(tmp_path, "--practice", PRACTICE, "--org", OTHER_PRACTICE.lower())

    assert refused.returncode == 1
    told = " ".join(refused.stdout.split())
    assert told.startswith(f"--org {OTHER_PRACTICE}: {OTHER_PRACTICE} is a GP practice, and a practice sees only")
    assert "recorded in the disclosure ledger" in told
    assert "JONES" not in refused.stdout and REFERRED.nhs[:3] + " " + REFERRED.nhs[3:6] not in refused.stdout
    later = build(Settings(data_dir=tmp_path))
    [entry] = [e.body for e in later.ledger.entries() if e.body["channel"] == "huddle"]
    assert (entry["recipient_org"], entry["decision"], entry["person_key"], entry["basis"]["practice"]) == (
        OTHER_PRACTICE,
        "deny",
        None,
        PRACTICE,
    )
    later.engine.dispose()


@pytest.mark.browser
def test_in_chromium_another_practice_following_the_link_reads_why_it_is_refused(hub: Hub) -> None:
    if not CHROMIUM.exists():
        pytest.skip(NO_CHROMIUM)
    from playwright.sync_api import sync_playwright

    services, _, base = hub
    both_practices_share(services)
    url = f"{base}/huddle/{PRACTICE}?date={MEETING.isoformat()}&token={token(services, org=OTHER_PRACTICE)}"
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 700})
            response = page.goto(url)
            assert response is not None and response.status == 403
            heading = page.locator("h1").inner_text()
            refused = page.locator("#refused").inner_text()
            body = page.locator("body").inner_text()
            SCREENSHOTS.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(SCREENSHOTS / "huddle-page-refused.png"), full_page=True)
        finally:
            browser.close()

    assert heading == "Huddle / MDT agenda: not available to you"
    assert refused.startswith(f"{OTHER_PRACTICE} is a GP practice, and a practice sees only its own huddle agenda")
    assert "JANE SMITH" not in body and "ARTHUR JONES" not in body and "recorded in the disclosure ledger" in body
