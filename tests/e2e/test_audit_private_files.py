"""Files the audit commands write hold patient data (names, NHS numbers, who was shown what), so they
are readable by their owner alone (0600) whatever the umask, a file they replace too; `-` for a file
is refused in one line (a file named "-" was written), since each is a file, not standard output."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from hub.bootstrap import build
from hub.core.identity import person_key
from hub.core.ledger import Disclosure
from hub.settings import Settings

pytestmark = pytest.mark.timeout(120)
CAREHUB = str(Path(sys.executable).with_name("carehub"))
NHS = "9434765919"
REPORTS = [("audit", "disclosures", "--nhs-number", NHS), ("audit", "time-travel", "--nhs-number", NHS)]


@pytest.fixture(autouse=True)
def everyone_may_read() -> Iterator[None]:
    """The usual umask, 022: a file made without a mode of its own is 0644, readable by every user."""
    before = os.umask(0o022)
    yield
    os.umask(before)


@pytest.fixture
def hub(tmp_path: Path) -> Path:
    data = tmp_path / "hub"
    services = build(Settings(data_dir=data))
    person = person_key(services.secrets.key, NHS, None)
    at = datetime.now(UTC) - timedelta(days=1)
    services.ledger.append(
        [Disclosure(at, "Y00001", "someone", "read", person, ("Patient/p/_history/1#00",), "permit")]
    )
    services.engine.dispose()
    return data


def carehub(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {"PATH": "/usr/bin:/bin", "COLUMNS": "250", "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:9"}
    return subprocess.run([CAREHUB, *args], capture_output=True, text=True, timeout=100, env=env, cwd=cwd, check=False)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize("report", REPORTS, ids=["disclosures", "time-travel"])
def test_a_reports_csv_is_readable_by_its_owner_alone_made_or_replaced(
    hub: Path, tmp_path: Path, report: tuple[str]
) -> None:
    made = tmp_path / "made.csv"
    done = carehub(tmp_path, *report, "--csv", str(made), "--data-dir", str(hub))
    assert done.returncode == 0, done.stdout + done.stderr
    assert mode(made) == 0o600 and "Y00001" in made.read_text()

    replaced = tmp_path / "replaced.csv"
    replaced.write_text("last month's, open to all\n")
    replaced.chmod(0o644)
    done = carehub(tmp_path, *report, "--csv", str(replaced), "--data-dir", str(hub))
    assert done.returncode == 0, done.stdout + done.stderr
    assert mode(replaced) == 0o600 and "Y00001" in replaced.read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hub", "made.csv", "replaced.csv"]  # (no temporary left)


@pytest.mark.parametrize("report", REPORTS, ids=["disclosures", "time-travel"])
def test_a_csv_to_dash_is_refused_in_one_line_and_writes_no_file_named_dash(
    hub: Path, tmp_path: Path, report: tuple[str]
) -> None:
    refused = carehub(tmp_path, *report, "--csv", "-", "--data-dir", str(hub))
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert " ".join(refused.stdout.split()) == (
        "--csv -: the CSV is written to a file, readable by you alone, never to standard output (the table "
        "is printed there): give a file, e.g. --csv report.csv"
    )
    assert not (tmp_path / "-").exists()


def test_an_export_to_dash_is_refused_in_one_line_and_writes_no_file_named_dash(hub: Path, tmp_path: Path) -> None:
    refused = carehub(tmp_path, "audit", "export", "--out", "-", "--data-dir", str(hub))
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert " ".join(refused.stdout.split()) == (
        "--out -: the export is written to a file, readable by you alone, with its public key beside it "
        "(FILE.pub.pem), never to standard output: give a file, e.g. --out log.ndjson"
    )
    assert not (tmp_path / "-").exists() and not (tmp_path / "-.pub.pem").exists()
