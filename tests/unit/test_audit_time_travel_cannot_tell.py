"""`carehub audit time-travel --cannot-tell`: the rows whose today is "cannot tell" (decided again on
other content than was disclosed), which --changed only counts, listed in the same table with their
reason; with --changed, together with the changed rows. Run as the auditor runs it, on a real hub."""

from __future__ import annotations

import csv
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from hub.bootstrap import build
from hub.core.ledger import Disclosure, resource_ref
from hub.core.ports import RecordEvent
from hub.core.record import apply_events
from hub.settings import Settings
from schemas.events.encounter import ENCOUNTER_ADMITTED
from tests.builders import an_agreement

pytestmark = pytest.mark.timeout(120)
CAREHUB = str(Path(sys.executable).with_name("carehub"))
THEN = datetime.now(UTC) - timedelta(days=30)
REASON = (
    "today deny on no agreement in force shares encounters from RZZ with Y00001 for direct-care, but decided "
    "on version 2: version 1 was disclosed: the difference may be the content's, not the policy's"
)


def admitted(encounter: str, sender: str, at: datetime, status: str = "in-progress") -> RecordEvent:
    payload = {"resourceType": "Encounter", "id": encounter, "status": status, "subject": {"reference": "Patient/p1"}}
    return RecordEvent(f"{encounter}-{sender}", ENCOUNTER_ADMITTED.type, f"urn:ods:{sender}", at, "p1", payload)


@pytest.fixture
def hub(tmp_path: Path) -> Path:
    """Three reads a month ago: enc-1, permitted, since changed by a supplier no agreement names
    (cannot tell); enc-2, permitted and unchanged; enc-3, denied then and permitted today (changed)."""
    data = tmp_path / "hub"
    services = build(Settings(data_dir=data))
    services.agreements.load(an_agreement("RXX", "Y00001"), at=THEN - timedelta(days=1))
    with services.uow_factory() as uow:
        apply_events(uow, [admitted(f"enc-{n}", "RXX", THEN) for n in (1, 2, 3)])
        uow.commit()
    for n, decision, why in [(1, "permit", ()), (2, "permit", ()), (3, "deny", ("no agreement in force",))]:
        held = services.reader.read("Encounter", f"enc-{n}")
        assert held is not None
        agreements = ["test-locality-sharing@1"] if decision == "permit" else []
        disclosure = Disclosure(
            at=THEN,
            recipient_org="Y00001",
            recipient_user="dr-jones",
            channel="read",
            person_key="p1",
            resources=(resource_ref(held),),
            decision=decision,
            reasons=why,
            basis={"role": "clinician", "agreements": agreements, "consents": []},
        )
        services.ledger.append([disclosure])
    with services.uow_factory() as uow:
        apply_events(uow, [admitted("enc-1", "RZZ", THEN + timedelta(days=1), status="finished")])
        uow.commit()
    services.engine.dispose()
    return data


def time_travel(hub: Path, *args: str) -> tuple[list[str], str]:
    """The report's rows, by resource (in the order listed), and its last line."""
    env = {"PATH": "/usr/bin:/bin", "COLUMNS": "400"}
    command = [CAREHUB, "audit", "time-travel", *args, "--data-dir", str(hub)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=100, env=env, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    listed = [word.split("/")[1] for line in done.stdout.splitlines() for word in line.split() if "/_history/" in word]
    return listed, done.stdout.splitlines()[-1]


def test_cannot_tell_lists_the_rows_changed_only_counts_with_their_reason(hub: Path, tmp_path: Path) -> None:
    summary = (
        "3 decision(s) about 3 ledger entries; today's policy differs on 1; "
        "1 cannot tell (decided again on other content than was disclosed)"
    )
    assert time_travel(hub) == (["enc-1", "enc-2", "enc-3"], summary)  # (the default, as it was)
    assert time_travel(hub, "--changed") == (["enc-3"], summary)
    assert time_travel(hub, "--cannot-tell") == (["enc-1"], summary)
    sheet = tmp_path / "rows.csv"
    assert time_travel(hub, "--changed", "--cannot-tell", "--csv", str(sheet)) == (["enc-1", "enc-3"], summary)
    with sheet.open(newline="") as rows:
        found = [(r["resource"], r["then"], r["now"], r["now_basis"], r["changed"]) for r in csv.DictReader(rows)]
    assert found == [
        ("Encounter/enc-1/_history/1", "permit", "cannot tell", REASON, "False"),
        ("Encounter/enc-3/_history/1", "deny", "permit", "test-locality-sharing@1", "True"),
    ]


def test_the_option_is_in_the_commands_help() -> None:
    env = {"PATH": "/usr/bin:/bin", "COLUMNS": "400"}
    done = subprocess.run(
        [CAREHUB, "audit", "time-travel", "--help"], capture_output=True, text=True, timeout=100, env=env, check=False
    )
    assert done.returncode == 0, done.stderr
    assert "--cannot-tell" in done.stdout
    assert "which --changed counts but does not list" in " ".join(done.stdout.split())
