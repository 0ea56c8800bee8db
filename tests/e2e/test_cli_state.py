"""The `carehub` commands that only read a hub's state, run as an operator runs them: a --data-dir
that holds no hub is refused (never read as an empty hub, never made into one), a person's decisions
are told apart, and a path that cannot be used is one line, not a traceback."""

from __future__ import annotations

import csv
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

pytestmark = pytest.mark.timeout(120)
CAREHUB = str(Path(sys.executable).with_name("carehub"))
NHS = "9434765919"
READ_ONLY = [
    ("audit", "verify"),
    ("audit", "disclosures", "--nhs-number", NHS),
    ("audit", "time-travel"),
    ("record", "hash"),
    ("agreements", "list"),
    ("subscriptions", "list"),
    ("deliveries", "list"),
    ("deliveries", "redeliver", "--all-failed"),
    ("deadletters",),
    ("huddle", "--practice", "Y01"),  # (it reads the record for the agenda; it publishes only when told to)
]


def carehub(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = {"PATH": "/usr/bin:/bin", "COLUMNS": "250"} | (env or {})
    return subprocess.run([CAREHUB, *args], capture_output=True, text=True, timeout=100, env=clean, check=False)


@pytest.fixture
def hub(tmp_path: Path) -> Path:
    """A hub's data directory whose ledger holds four decisions about one person: a permit, a
    break-glass read and two denials."""
    data = tmp_path / "hub"
    services = build(Settings(data_dir=data))
    person = person_key(services.secrets.key, NHS, None)
    at = datetime.now(UTC) - timedelta(days=1)
    services.ledger.append(
        [
            Disclosure(at, org, "someone", "read", person, ("Patient/p/_history/1#00",), decision, (why,))
            for org, decision, why in [
                ("Y00001", "permit", "agreement covers it"),
                ("Y00002", "break-glass", "collapsed in clinic"),
                ("AUD01", "deny", "no agreement"),
                ("AUD01", "deny", "no agreement"),
            ]
        ]
    )
    services.engine.dispose()
    return data


@pytest.mark.parametrize("command", READ_ONLY, ids=" ".join)
def test_a_read_only_command_refuses_a_data_dir_with_no_hub_and_creates_nothing_there(
    tmp_path: Path, command: tuple[str, ...]
) -> None:
    typo = tmp_path / "typo"
    done = carehub(*command, "--data-dir", str(typo))
    assert done.returncode == 2, done.stdout + done.stderr
    assert done.stdout.strip() == f"no CareHub state in {typo} (no carehub.db): check --data-dir " + (
        "(or set CAREHUB_DATABASE_URL to the hub's database)"
    )
    assert not typo.exists()
    (tmp_path / "empty").mkdir()
    assert carehub(*command, "--data-dir", str(tmp_path / "empty")).returncode == 2
    assert list((tmp_path / "empty").iterdir()) == []


def test_the_same_commands_read_a_hub_that_is_there(hub: Path) -> None:
    for command in READ_ONLY:
        done = carehub(*command, "--data-dir", str(hub))
        assert done.returncode == 0, (command, done.stdout + done.stderr)
    assert "ledger chain consistent: 4 entries" in carehub("audit", "verify", "--data-dir", str(hub)).stdout


def test_with_a_database_url_the_data_dir_needs_no_database_but_finding_a_person_needs_the_key(
    hub: Path, tmp_path: Path
) -> None:
    url = {"CAREHUB_DATABASE_URL": f"sqlite:///{hub / 'carehub.db'}"}
    elsewhere = tmp_path / "elsewhere"
    verified = carehub("audit", "verify", "--data-dir", str(elsewhere), env=url)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert "ledger chain consistent: 4 entries" in verified.stdout
    keyless = carehub("audit", "disclosures", "--nhs-number", NHS, "--data-dir", str(elsewhere), env=url)
    assert keyless.returncode == 2
    assert f"no CareHub state in {elsewhere} (no secrets.json" in keyless.stdout
    assert "CAREHUB_SECURITY__KEY_SECRET" in keyless.stdout
    assert not elsewhere.exists()  # (a new key would have found nobody, and passed for the hub's)
    missing = {"CAREHUB_DATABASE_URL": f"sqlite:///{tmp_path / 'nothere.db'}"}
    refused = carehub("record", "hash", "--data-dir", str(hub), env=missing)
    assert refused.returncode == 2
    assert f"no CareHub state in sqlite:///{tmp_path / 'nothere.db'}" in refused.stdout
    assert "check CAREHUB_DATABASE_URL" in refused.stdout
    assert not (tmp_path / "nothere.db").exists()


def test_a_subject_access_request_counts_disclosures_and_denials_apart(hub: Path) -> None:
    done = carehub("audit", "disclosures", "--nhs-number", NHS, "--data-dir", str(hub))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "4 decisions recorded about this person: 2 disclosures (1 by break-glass), 2 denials" in done.stdout
    assert "collapsed in clinic" in done.stdout


def test_a_person_the_hub_has_never_seen_is_said_to_be_unknown_not_undisclosed(hub: Path) -> None:
    # a check-digit valid typo must not read as "nothing was disclosed about this person"
    for command in ("disclosures", "time-travel"):
        nobody = carehub("audit", command, "--nhs-number", "9990000018", "--data-dir", str(hub))
        assert nobody.returncode == 1, nobody.stdout + nobody.stderr
        assert " ".join(nobody.stdout.split()) == (
            "no person with NHS number 9990000018 in the shared care record, and no disclosures recorded "
            "about them: check the number"
        )
    known = carehub("audit", "time-travel", "--nhs-number", NHS, "--data-dir", str(hub))
    assert known.returncode == 0, known.stdout + known.stderr  # (the ledger knows them, the record need not)


def test_time_travel_refuses_a_period_that_ends_before_it_starts(hub: Path) -> None:
    args = ("audit", "time-travel", "--data-dir", str(hub))
    backwards = carehub(*args, "--since", "2026-12-07", "--until", "2026-12-01")
    assert backwards.returncode == 2
    said = "--since 2026-12-07 00:00 GMT is after --until 2026-12-01 23:59 GMT: the period ends before it starts"
    assert backwards.stdout.strip() == said
    whole = carehub(*args)
    assert whole.returncode == 0, whole.stdout + whole.stderr
    assert "4 decision(s) about 4 ledger entries;" in whole.stdout
    one = carehub(*args, "--nhs-number", NHS, "--since", (datetime.now(UTC) + timedelta(days=1)).date().isoformat())
    assert "0 decision(s) about 0 ledger entries;" in one.stdout


def test_a_uk_time_the_clocks_skip_is_refused_on_the_command_line(hub: Path) -> None:
    done = carehub("audit", "time-travel", "--since", "2026-03-29T01:30", "--data-dir", str(hub))
    assert done.returncode == 2
    said = " ".join(done.stderr.replace("│", " ").split())
    assert "'2026-03-29T01:30' is not a UK time: the clocks go forward an hour over it that night" in said


@pytest.mark.parametrize("command", [("record", "hash"), ("audit", "verify"), ("deadletters",)], ids=" ".join)
def test_a_data_dir_that_is_a_file_is_named_in_one_line(tmp_path: Path, command: tuple[str, ...]) -> None:
    afile = tmp_path / "afile"
    afile.write_text("not a hub")
    done = carehub(*command, "--data-dir", str(afile))
    assert done.returncode == 2
    assert done.stdout.strip() == f"--data-dir {afile} is a file: give the folder the hub keeps its state in"
    assert "Traceback" not in done.stderr and "Error" not in done.stderr


def test_a_path_the_command_cannot_use_is_one_line_from_the_console_script_not_a_traceback(tmp_path: Path) -> None:
    afile = tmp_path / "afile"
    afile.write_text("")
    # a file where a folder must be made (the database's folder): caught where the command ends
    done = carehub("agreements", "list", env={"CAREHUB_DATABASE_URL": f"sqlite:///{afile}/sub/carehub.db"})
    assert done.returncode == 2, done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    assert done.stdout.strip().startswith("no CareHub state in sqlite:///")
    loaded = carehub(
        "agreements",
        "load",
        str(Path(__file__).resolve().parents[2] / "schemas" / "examples" / "agreement.example.yaml"),
        "--data-dir",
        str(afile / "sub"),
    )
    assert loaded.returncode == 2, loaded.stdout + loaded.stderr
    assert "Traceback" not in loaded.stderr
    assert loaded.stdout.strip() == f"carehub: {afile / 'sub'}: part of it is a file, not a folder"


def test_the_console_script_is_the_wrapped_app() -> None:
    assert "from hub.cli import main" in Path(CAREHUB).read_text()
    assert os.access(CAREHUB, os.X_OK)


def _tamper(hub: Path, sql: str) -> None:
    import sqlite3

    with sqlite3.connect(hub / "carehub.db") as db:
        assert db.execute(sql).rowcount == 1


@pytest.mark.parametrize(
    ("tampering", "said"),
    [
        # a denial made to read as a disclosure (its hash not recomputed): the count would be wrong
        (
            "UPDATE disclosure_ledger SET body = replace(body, '\"deny\"', '\"permit\"') WHERE seq = 3",
            "ledger broken at entry 3: entry 3 was altered",
        ),
        # an entry filed under another person: a subject-access request would leave it out
        (
            "UPDATE disclosure_ledger SET person_key = 'someone-else' WHERE seq = 1",
            "ledger broken at entry 1: entry 1 is filed under another person",
        ),
    ],
    ids=["altered", "refiled"],
)
def test_a_report_on_a_broken_ledger_is_refused_and_given_only_when_asked_marked_as_such(
    hub: Path, tampering: str, said: str
) -> None:
    _tamper(hub, tampering)
    for command in (("disclosures", "--nhs-number", NHS), ("time-travel", "--nhs-number", NHS), ("time-travel",)):
        refused = carehub("audit", *command, "--data-dir", str(hub))
        assert refused.returncode == 1, refused.stdout + refused.stderr
        flat = " ".join(refused.stdout.split())
        assert flat.startswith(said), flat
        assert "--unverified" in flat
        assert "Policy time travel" not in flat and "decisions recorded" not in flat  # (no report)
        marked = carehub("audit", *command, "--unverified", "--data-dir", str(hub))
        assert marked.returncode == 0, marked.stdout + marked.stderr
        assert " ".join(marked.stdout.split()).startswith(f"WARNING: {said}")
    sheet = hub.parent / "time-travel.csv"  # (a spreadsheet travels without the console's warning)
    assert carehub("audit", "time-travel", "--unverified", "--csv", str(sheet), "--data-dir", str(hub)).returncode == 0
    with sheet.open() as rows:
        assert {row["ledger"].startswith(f"NOT VERIFIED: {said}") for row in csv.DictReader(rows)} == {True}


def test_verify_takes_a_head_in_either_case_and_refuses_one_that_proves_nothing(hub: Path) -> None:
    args = ("audit", "verify", "--data-dir", str(hub))
    head = next(w for w in carehub(*args).stdout.split() if w.startswith("4:"))
    upper = carehub(*args, "--head", head.upper())  # (copied through a letter or a spreadsheet)
    assert upper.returncode == 0, upper.stdout + upper.stderr
    assert "ledger intact: 4 entries" in upper.stdout
    for nonsense in ("0:" + "0" * 64, "4:" + "z" * 64, "4:" + head[2:-1], "\u00b2:" + head[2:]):
        refused = carehub(*args, "--head", nonsense)
        assert refused.returncode == 2, (nonsense, refused.stdout)
        assert "--head: give SEQ:HASH" in refused.stdout
