"""The `carehub` command as an operator runs it: real processes, real sockets."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import jwt
import pytest

from hub.api.auth import AUDIENCE

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(120)]
CAREHUB = str(Path(sys.executable).with_name("carehub"))


def carehub(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [CAREHUB, *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=100,
        env={"PATH": "/usr/bin:/bin", "COLUMNS": "200"} | (env or {}),
    )


def test_ingest_of_every_sample_reports_each_message_and_keeps_the_rejected(tmp_path: Path, samples: Path) -> None:
    result = carehub("ingest", "hl7", str(samples / "hl7v2"), "--data-dir", str(tmp_path), cwd=tmp_path)
    assert result.returncode == 1, result.stderr  # some samples are rightly rejected
    assert "AA" in result.stdout and ("AE" in result.stdout or "AR" in result.stdout)
    assert "itk-v2.4-ADT_A03-discharge" in result.stdout
    kept = carehub("deadletters", "--data-dir", str(tmp_path), cwd=tmp_path)
    assert kept.returncode == 0
    assert "urn:ods:" in kept.stdout or "file:" in kept.stdout


def test_ingest_of_a_missing_path_names_it(tmp_path: Path) -> None:
    result = carehub("ingest", "hl7", str(tmp_path / "nope.hl7"), "--data-dir", str(tmp_path), cwd=tmp_path)
    assert result.returncode == 2
    assert "nope.hl7" in result.stdout


def test_up_listens_where_it_says_serves_fhir_with_a_token_from_the_cli_and_stops_on_sigterm(
    tmp_path: Path,
) -> None:
    proc = subprocess.Popen(
        [CAREHUB, "up", "--mllp-port", "0", "--http-port", "0", "--data-dir", str(tmp_path)],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={"PATH": "/usr/bin:/bin", "COLUMNS": "200"},
    )
    try:
        lines = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = proc.stdout.readline() if proc.stdout else ""
            lines.append(line)
            if "Ctrl-C" in line or proc.poll() is not None:
                break
        text = "".join(lines)
        api = re.search(r"http://127\.0\.0\.1:(\d+)/fhir", text)
        assert api, text + (proc.stderr.read() if proc.stderr and proc.poll() is not None else "")
        base = f"http://127.0.0.1:{api.group(1)}/fhir"
        assert re.search(r"MLLP \(HL7 v2\)\s*│?\s*127\.0\.0\.1:(\d+)", text)
        assert httpx.get(f"{base}/metadata").status_code == 200
        assert httpx.get(f"{base}/Patient/x").status_code == 401
        token = carehub("token", "--org", "Y90001", "--role", "clinician", "--data-dir", str(tmp_path), cwd=tmp_path)
        assert token.returncode == 0 and token.stdout.count(".") == 2 and token.stderr == ""
        read = httpx.get(f"{base}/Patient/nobody", headers={"Authorization": f"Bearer {token.stdout.strip()}"})
        assert read.status_code == 404
        assert read.json()["resourceType"] == "OperationOutcome"
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0


def test_token_with_an_unknown_role_is_refused(tmp_path: Path) -> None:
    result = carehub("token", "--org", "Y90001", "--role", "wizard", "--data-dir", str(tmp_path), cwd=tmp_path)
    assert result.returncode == 2
    assert "role" in result.stdout


def test_a_token_for_a_data_dir_with_no_hub_is_refused_not_signed_with_a_new_secret(tmp_path: Path) -> None:
    typo = tmp_path / "typo"
    result = carehub("token", "--org", "Y90001", "--role", "clinician", "--data-dir", str(typo), cwd=tmp_path)
    assert result.returncode == 2
    assert " ".join(result.stdout.split()) == (
        f"no CareHub state in {typo} (no secrets.json, whose secret signs the tokens its hub accepts): "
        "check --data-dir, or start the hub there first (carehub up)"
    )
    assert not typo.exists()
    # a token secret configured (as in production) signs it, and nothing is made in --data-dir
    secret = {"CAREHUB_SECURITY__TOKEN_SECRET": "s" * 40}
    signed = carehub(
        "token", "--org", "y90001", "--role", "clinician", "--data-dir", str(typo), cwd=tmp_path, env=secret
    )
    assert signed.returncode == 0 and signed.stderr == ""  # (no warning about the key either)
    claims = jwt.decode(signed.stdout.strip(), "s" * 40, algorithms=["HS256"], audience=AUDIENCE)
    assert (claims["org"], claims["role"]) == ("Y90001", "clinician")
    assert not typo.exists()


def test_agreements_load_names_the_bad_file_and_field_and_keeps_the_good_one(tmp_path: Path) -> None:
    good = Path(__file__).resolve().parents[2] / "schemas" / "examples" / "agreement.example.yaml"
    bad = tmp_path / "bad.yaml"
    bad.write_text("id: Not An Id\nversion: 1\n")
    result = carehub("agreements", "load", str(good), str(bad), "--data-dir", str(tmp_path), cwd=tmp_path)
    assert result.returncode == 1
    assert f"{bad}: id: String should match pattern '^[a-z0-9][a-z0-9-]{{1,63}}$'" in result.stdout
    assert "example-locality-pisa version 1 loaded" in result.stdout
    listed = carehub("agreements", "list", "--data-dir", str(tmp_path), cwd=tmp_path)
    assert "example-locality-pisa" in listed.stdout


def test_subscriptions_load_refuses_an_event_type_no_one_publishes_and_saves_the_good_one(tmp_path: Path) -> None:
    good = Path(__file__).resolve().parents[2] / "schemas" / "examples" / "subscription.example.yaml"
    typo = tmp_path / "typo.yaml"
    typo.write_text(
        "id: council-referrals\norg: LA123\nscope: addressed\nevents:\n  - uk.nhs.carehub.referal.received.v1\n"
    )
    result = carehub("subscriptions", "load", str(typo), str(good), "--data-dir", str(tmp_path), cwd=tmp_path)
    assert result.returncode == 1
    said = " ".join(result.stdout.split())
    assert (
        f"{typo}: events.0: unknown event type 'uk.nhs.carehub.referal.received.v1' (did you mean "
        "uk.nhs.carehub.referral.received.v1?); not saved. The event types: " in said
    ), said
    listed = carehub("subscriptions", "list", "--data-dir", str(tmp_path), cwd=tmp_path)
    assert "council-referrals" not in listed.stdout
    assert "saved" in said and listed.returncode == 0


def _column(stdout: str, index: int) -> str:
    """A Rich table's column, its folded lines joined again."""
    return "".join(line.split("│")[index].strip() for line in stdout.splitlines() if line.startswith("│"))


def test_tables_in_a_pipe_fold_long_values_rather_than_cut_them(tmp_path: Path) -> None:
    # a pipe is 80 columns to Rich: a dead letter's file path used to end in an ellipsis there
    rejected = tmp_path / "a-file-from-the-hospital-interface-engine-with-a-long-name-0001.hl7"
    rejected.write_bytes(b"this is not an HL7 message at all")
    narrow = {"COLUMNS": "80"}
    ingested = carehub("ingest", "hl7", str(rejected), "--data-dir", str(tmp_path), cwd=tmp_path, env=narrow)
    assert ingested.returncode == 1, ingested.stderr
    assert rejected.name in _column(ingested.stdout, 1)
    kept = carehub("deadletters", "--data-dir", str(tmp_path), cwd=tmp_path, env=narrow)
    assert kept.returncode == 0, kept.stderr
    assert "…" not in kept.stdout
    assert f"file:{rejected}" in _column(kept.stdout, 3)  # (the source column, after id and received)


def test_an_ingest_table_shows_a_file_name_with_brackets_as_it_is(tmp_path: Path) -> None:
    # Rich reads "[...]" in a cell as markup: "[bold]" vanished (and a reason quoting "[/]" crashed it)
    rejected = tmp_path / "export [bold]ward 3.hl7"
    rejected.write_bytes(b"this is not an HL7 message at all")
    ingested = carehub("ingest", "hl7", str(rejected), "--data-dir", str(tmp_path), cwd=tmp_path)
    assert ingested.returncode == 1, ingested.stderr
    assert "MarkupError" not in ingested.stderr
    assert rejected.name in _column(ingested.stdout, 1)


def test_a_huddle_yet_to_be_held_cannot_be_said_attended(tmp_path: Path) -> None:
    # (review: the KPIs counted a meeting a week ahead as attended)
    ahead = (datetime.now(UTC) + timedelta(days=7)).date().isoformat()
    said = carehub("huddle", "--practice", "Y00001", "--date", ahead, "--attended", "--data-dir", "d", cwd=tmp_path)
    assert said.returncode == 2, said.stdout + said.stderr
    assert f"--attended: the meeting on {ahead} has not been held yet" in said.stdout
