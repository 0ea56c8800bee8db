"""The `carehub` tables show what the hub holds as it is: a name, an event id or a webhook's error that
looks like Rich markup ("[bold]", "[/]") is printed as written, never read as markup (swallowed, or the
command failing with a MarkupError). Time travel's own test is in test_time_travel.py."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from hub.bootstrap import build
from hub.core.identity import person_key
from hub.core.ledger import Disclosure
from hub.settings import Settings
from schemas.subscriptions import Subscription

pytestmark = pytest.mark.timeout(120)
CAREHUB = str(Path(sys.executable).with_name("carehub"))
TREE = {"PYTHONPATH": os.environ["PYTHONPATH"]} if "PYTHONPATH" in os.environ else {}  # (another tree)
NHS = "9434765919"
SWALLOWED = "[bold]dr-jones[/bold]"  # (Rich printed "dr-jones")
CRASHED = "ward clerk [/]"  # (Rich raised MarkupError: nothing to close)
READ = ("Patient/p/_history/1#00",)


def carehub(*args: str) -> subprocess.CompletedProcess[str]:
    clean = {"PATH": "/usr/bin:/bin", "COLUMNS": "300"} | TREE
    return subprocess.run([CAREHUB, *args], capture_output=True, text=True, timeout=100, env=clean, check=False)


@pytest.fixture
def hub(tmp_path: Path) -> Path:
    """A hub whose ledger, subscriptions and outbox hold text that looks like markup."""
    data = tmp_path / "hub"
    services = build(Settings(data_dir=data))
    person = person_key(services.secrets.key, NHS, None)
    at = datetime.now(UTC) - timedelta(days=1)
    services.ledger.append(
        [
            Disclosure(at, "Y00001", SWALLOWED, "read", person, READ, "permit", ("[i]ok[/i]",)),
            Disclosure(at, "Y00002", CRASHED, "read", person, READ, "deny", ("no [/] agreement",)),
        ]
    )
    events = ("uk.nhs.carehub.[bold]referral[/bold].received.v1",)
    services.subscriptions.save(Subscription(id="council-referrals", org="LA123", events=events))
    services.outbox.enqueue(
        [{"subscription_id": "council-referrals", "event_id": "evt-[/]-1", "person_key": None, "body": {}}],
        now=at,
    )
    [queued] = services.outbox.listing()
    services.outbox.settle(queued.id, status="failed", attempts=6, next_attempt_at=at, error="HTTP 500: [bold]no[/]")
    services.engine.dispose()
    return data


def test_a_subject_access_request_shows_names_and_reasons_as_written(hub: Path) -> None:
    done = carehub("audit", "disclosures", "--nhs-number", NHS, "--data-dir", str(hub))
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"Y00001 / {SWALLOWED}" in done.stdout and "[i]ok[/i]" in done.stdout
    assert f"Y00002 / {CRASHED}" in done.stdout and "no [/] agreement" in done.stdout


def test_subscriptions_and_deliveries_show_event_types_ids_and_errors_as_written(hub: Path) -> None:
    subscriptions = carehub("subscriptions", "list", "--data-dir", str(hub))
    assert subscriptions.returncode == 0, subscriptions.stdout + subscriptions.stderr
    assert "uk.nhs.carehub.[bold]referral[/bold].received.v1" in subscriptions.stdout
    deliveries = carehub("deliveries", "list", "--data-dir", str(hub))
    assert deliveries.returncode == 0, deliveries.stdout + deliveries.stderr
    assert "evt-[/]-1" in deliveries.stdout and "HTTP 500: [bold]no[/]" in deliveries.stdout
