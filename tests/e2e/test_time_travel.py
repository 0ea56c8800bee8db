"""The policy time-travel report: a read permitted under last month's agreement, then the person
objects; `carehub audit time-travel` shows the permit and its basis then, and today's deny."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from adapters.hl7v2.to_fhir import map_message
from hub.bootstrap import build
from hub.core.identity import person_key
from hub.core.ledger import Disclosure, resource_ref
from hub.core.policy import Asker, consent_rule, decide
from hub.core.ports import RecordEvent
from hub.core.record import apply_events
from hub.instants import UK
from hub.settings import Settings
from schemas.events.consent import CONSENT_RECORDED
from tests.builders import an_adt, an_agreement, an_objection

NHS = "9434765919"
CAREHUB = str(Path(sys.executable).with_name("carehub"))


def a_permit_then_an_objection(data_dir: Path, *, user: str = "dr-jones", consents: tuple[str, ...] = ()) -> datetime:
    """A hub whose ledger holds a read `user` (of Y00001) was permitted a month ago, about a person
    who has objected since (so today's policy denies it); when the read was."""
    services = build(Settings(data_dir=data_dir))
    secret = services.secrets.key
    person = person_key(secret, NHS, None)
    events = [
        RecordEvent(m.event_id, m.event_type, m.source, m.event_time, m.person_key, m.payload)
        for m in map_message(an_adt(trigger="A01", nhs_number=NHS, control_id="T1", visit="V1"), key_secret=secret)
    ]
    with services.uow_factory() as uow:
        apply_events(uow, events)
        uow.commit()
    month_ago = datetime.now(UTC) - timedelta(days=30)
    services.agreements.load(an_agreement("RXX", "Y00001", valid_from="2026-01-01"), at=month_ago)
    [encounter] = services.reader.search("Encounter", person)
    then = decide(Asker("Y00001", "clinician", month_ago), encounter, services.agreements.current(), [])
    assert then.outcome == "permit"
    services.ledger.append(
        [
            Disclosure(
                at=month_ago,
                recipient_org="Y00001",
                recipient_user=user,
                channel="read",
                person_key=person,
                resources=(resource_ref(encounter),),
                decision=then.outcome,
                reasons=then.reasons,
                basis={"role": "clinician", "agreements": list(then.agreements), "consents": list(consents)},
            )
        ]
    )
    objection = an_objection(NHS, "Y00001") | {"id": "c1", "patient": {"reference": f"Patient/{person}"}}
    assert consent_rule(objection) is not None
    with services.uow_factory() as uow:
        apply_events(
            uow,
            [RecordEvent("consent-1", CONSENT_RECORDED.type, "urn:ods:Y00001", datetime.now(UTC), person, objection)],
        )
        uow.commit()
    services.engine.dispose()
    return month_ago


def time_travel(data_dir: Path, *more: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("CAREHUB_")} | {"COLUMNS": "260"}
    args = [CAREHUB, "audit", "time-travel", "--nhs-number", NHS, "--data-dir", str(data_dir), *more]
    return subprocess.run(args, env=clean | (env or {}), capture_output=True, text=True, timeout=60, check=False)


def test_the_report_shows_then_and_today_for_each_disclosure(tmp_path: Path) -> None:
    month_ago = a_permit_then_an_objection(tmp_path)
    env = {k: v for k, v in os.environ.items() if not k.startswith("CAREHUB_")} | {"COLUMNS": "260"}
    args = [CAREHUB, "audit", "time-travel", "--nhs-number", NHS, "--data-dir", str(tmp_path)]
    done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=60, check=False)

    assert done.returncode == 0, done.stderr
    row = next(line for line in done.stdout.splitlines() if "dr-jones" in line)
    assert row.index("permit") < row.index("deny")
    assert "test-locality-sharing@1" in row
    assert "Consent/c1" in row
    assert "today's policy differs on 1" in done.stdout
    sheet = tmp_path / "time-travel.csv"  # every column in full, whatever the terminal's width
    narrow = env | {"COLUMNS": "80"}
    saved = subprocess.run([*args, "--csv", str(sheet)], env=narrow, capture_output=True, text=True, timeout=60)
    assert saved.returncode == 0, saved.stdout + saved.stderr
    with sheet.open(newline="") as rows:
        [written] = [r for r in csv.DictReader(rows) if "dr-jones" in r["recipient"]]
    assert (written["then"], written["now"], written["changed"]) == ("permit", "deny", "True")
    assert "test-locality-sharing@1" in written["then_basis"]
    assert "Consent/c1" in written["now_basis"]
    unchanged = subprocess.run(
        [*args, "--changed", "--until", "2020-01-01"], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert "0 decision(s)" in unchanged.stdout
    day = month_ago.astimezone(UK).date().isoformat()  # a date alone: the whole of that UK day
    that_day = subprocess.run(
        [*args, "--since", day, "--until", day], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert "1 decision(s)" in that_day.stdout, that_day.stdout + that_day.stderr


@pytest.mark.parametrize(
    "user",
    ["[bold]dr-jones[/bold]", "dr-jones [/]"],  # (Rich read the first as markup, and failed on the second)
    ids=["swallowed", "crashed"],
)
def test_names_in_the_ledger_are_shown_as_they_are_not_read_as_markup(tmp_path: Path, user: str) -> None:
    a_permit_then_an_objection(tmp_path, user=user, consents=("Consent/[i]c0[/]",))
    done = time_travel(tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    row = next(line for line in done.stdout.splitlines() if "Y00001" in line)
    assert f"Y00001 / {user}" in row
    assert "Consent/[i]c0[/]" in row
    coloured = time_travel(tmp_path, env={"FORCE_COLOR": "1", "TERM": "xterm-256color"})
    assert coloured.returncode == 0, coloured.stdout + coloured.stderr
    assert "\x1b[1;33mdeny" in coloured.stdout  # the changed row's today still bold yellow
    assert f"Y00001 / {user}" in coloured.stdout
