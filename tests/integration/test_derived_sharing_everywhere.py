"""What the rules engine derives from a voluntary organisation's referral (the first-contact Task on
it, the case-list Flag it raises) is shared no further than the referral, wherever the hub discloses
it, not in FHIR reads alone: the huddle page (uvicorn on a free port, real HTTP), `carehub huddle` and
`carehub audit time-travel` (real processes), over a SQLite record filled by the real engine and the
record's own rules. A GP's referral beside it shows that nothing is withheld that was shared before."""

from __future__ import annotations

import csv
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from hub.api.app import create_app
from hub.api.auth import TokenVerifier, issue_token
from hub.bootstrap import Services, build
from hub.core.coordination import Positioned, process, tick
from hub.core.ledger import Disclosure, resource_ref
from hub.core.policy import origins_of
from hub.core.ports import Json, RecordEvent
from hub.core.record import apply_events
from hub.settings import Settings
from schemas.events import coordination as co
from tests import locality_month as month
from tests.builders import an_agreement
from tests.serving import served

pytestmark = pytest.mark.timeout(120)
CAREHUB = str(Path(sys.executable).with_name("carehub"))
PRACTICE, PIC, VCS = month.PRACTICE, month.SERVICE, "VCS01"
VOLUNTARY, GP = "P1", "P2"  # referred by a voluntary organisation; by their practice
MEETING = date(2026, 11, 26)  # the window: Thu 19 to Wed 25 November 2026
EVERYTHING = ("demographics", "encounters", "referrals", "tasks", "care-plans", "provenance", "consents")


def seed(services: Services) -> None:
    """Both referrals through the rules engine (its state in SQLite), a clock tick once their first
    contacts are overdue, and all of it applied to the record; agreements under which the practice
    sees the coordination service's work and the person's demographics, but not the VCSE's referral."""
    referrals = [
        month.referral(VOLUNTARY, month.at(20, 9), "voluntary-sector", by=VCS),
        month.referral(GP, month.at(20, 10), "gp"),
    ]
    derived: list[RecordEvent] = []
    for event in [*referrals, tick(0, month.at(25, 12))]:
        with services.coordination.unit_of_work() as uow:
            derived += process(services.rules, uow, [Positioned(event, 0)])
            uow.commit()
    with services.uow_factory() as uow:
        apply_events(uow, [*referrals, *derived])
        uow.commit()
    loaded = datetime.now(UTC) - timedelta(days=40)
    for agreement in (
        an_agreement(PRACTICE, PIC, id="practice-pic", categories=EVERYTHING),
        an_agreement(VCS, PIC, id="vcs-pic", categories=EVERYTHING),
        an_agreement(VCS, PRACTICE, id="vcs-practice", categories=("demographics",)),
    ):
        services.agreements.load(agreement, at=loaded)


def derived_of(services: Services, who: str) -> tuple[Json, Json]:
    """The person's case-list Flag and overdue first-contact Task, as the record holds them."""
    key = month.PEOPLE[who]
    [flag] = [f for f in services.reader.search("Flag", key) if f["code"]["coding"][0]["code"] == co.ELIGIBLE]
    [task] = [t for t in services.reader.search("Task", key) if "businessStatus" in t]
    return flag, task


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[tuple[Services, str]]:
    services = build(Settings(data_dir=tmp_path))
    seed(services)
    app = create_app(services.reader, TokenVerifier(services.secrets.token), services.ledger, services.policy)
    try:
        with served(app, "derived-sharing") as url:
            yield services, url
    finally:
        services.engine.dispose()


def people_by_section(page: str) -> dict[str, set[str]]:
    """Whom each section of the page lists (its rows' data-person)."""
    sections = re.findall(r'<section id="([a-z-]+)"(.*?)</section>', page, flags=re.DOTALL)
    return {name: set(re.findall(r'data-person="([^"]+)"', block)) for name, block in sections}


def test_a_case_list_flag_raised_by_a_referral_names_it_so_its_origin_is_found(
    hub: tuple[Services, str],
) -> None:
    services, _ = hub
    for who in (VOLUNTARY, GP):
        flag, task = derived_of(services, who)
        [referral] = [r["id"] for r in services.reader.search("ServiceRequest", month.PEOPLE[who])]
        referral_ref = f"ServiceRequest/{referral}"
        named = [e["url"] for e in flag["extension"] if e.get("valueReference", {}).get("reference") == referral_ref]
        assert named == ["https://carehub.invalid/StructureDefinition/case-listing-referral"]
        assert origins_of(flag) == origins_of(task) == [("ServiceRequest", referral)]


def test_the_huddle_page_withholds_what_a_vcse_referral_raised_from_a_practice_it_is_not_shared_with(
    hub: tuple[Services, str],
) -> None:
    services, base = hub
    bearer = issue_token(services.secrets.token, org=PRACTICE, role="coordinator", now=datetime.now(UTC))
    with httpx.Client(base_url=base, timeout=10) as http:
        page = http.get(f"/huddle/{PRACTICE}", params={"date": MEETING.isoformat(), "token": bearer})

    assert page.status_code == 200, page.text
    shown = people_by_section(page.text)
    voluntary, gp = month.PEOPLE[VOLUNTARY], month.PEOPLE[GP]
    assert voluntary not in shown["new-referral"] | shown["newly-eligible"] | shown["overdue-task"]
    assert gp in shown["new-referral"] and gp in shown["newly-eligible"] and gp in shown["overdue-task"]
    flag, task = derived_of(services, VOLUNTARY)
    refused = {
        r.split("/_history")[0]: e.body["reasons"][0]
        for e in services.ledger.entries()
        if e.body["channel"] == "huddle" and e.body["decision"] == "deny"
        for r in e.body["resources"]
    }
    for resource in (flag, task):
        reason = refused[resource_ref(resource).split("/_history")[0]]
        assert "reveals a referrals record that is not shared with Y01" in reason


def huddle(data_dir: Path) -> subprocess.CompletedProcess[str]:
    args = [CAREHUB, "huddle", "--practice", PRACTICE, "--date", MEETING.isoformat(), "--no-publish"]
    return subprocess.run(
        [*args, "--data-dir", str(data_dir)],
        cwd=data_dir,
        capture_output=True,
        text=True,
        timeout=100,
        env={"PATH": "/usr/bin:/bin", "COLUMNS": "220"},
        check=False,
    )


def test_carehub_huddle_withholds_them_as_the_page_does(tmp_path: Path) -> None:
    services = build(Settings(data_dir=tmp_path))
    seed(services)
    services.engine.dispose()

    done = huddle(tmp_path)

    assert done.returncode == 0, done.stdout + done.stderr
    rows = [line for line in done.stdout.splitlines() if "9990000" in line.replace(" ", "")]
    assert {n for n in ("9990000018", "9990000026") if any(n in r.replace(" ", "") for r in rows)} == {"9990000026"}
    assert "make first contact" in done.stdout  # (the GP's referral's, still shown)
    assert "3 item(s) withheld by the policy" in done.stdout  # the VCSE referral, its Flag and its Task


def test_time_travel_bounds_a_task_by_its_referral_though_the_referral_was_never_disclosed(tmp_path: Path) -> None:
    services = build(Settings(data_dir=tmp_path))
    seed(services)
    _, task = derived_of(services, VOLUNTARY)
    services.ledger.append(
        [
            Disclosure(
                at=datetime.now(UTC) - timedelta(days=30),
                recipient_org=PRACTICE,
                recipient_user="practice-lead",
                channel="huddle",
                person_key=month.PEOPLE[VOLUNTARY],
                resources=(resource_ref(task),),
                decision="permit",
                reasons=("shared under practice-pic@1 for care-coordination",),
                basis={"role": "coordinator", "agreements": ["practice-pic@1"], "consents": []},
            )
        ]
    )
    services.engine.dispose()
    sheet = tmp_path / "time-travel.csv"
    env = {k: v for k, v in os.environ.items() if not k.startswith("CAREHUB_")} | {"COLUMNS": "260"}
    args = [CAREHUB, "audit", "time-travel", "--data-dir", str(tmp_path), "--csv", str(sheet)]

    done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=60, check=False)

    assert done.returncode == 0, done.stdout + done.stderr
    with sheet.open(newline="") as rows:
        [row] = [r for r in csv.DictReader(rows) if r["resource"].startswith(f"Task/{task['id']}")]
    assert (row["then"], row["now"], row["changed"]) == ("permit", "deny", "True")
    assert "reveals a referrals record that is not shared with Y01" in row["now_basis"]
