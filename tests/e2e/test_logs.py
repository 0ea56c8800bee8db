"""A full demo run's output and logs at INFO carry no NHS number, no patient name and no secret."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from adapters.hl7v2.synthetic import make_locality

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(240)]


def test_a_demo_run_logs_no_patient_identifiers_or_secrets(tmp_path: Path) -> None:
    people, seed = 60, 3
    exe = Path(sys.executable).with_name("carehub")
    env = {k: v for k, v in os.environ.items() if not k.startswith("CAREHUB_") and k != "KAFKA_BOOTSTRAP_SERVERS"}
    args = [str(exe), "demo", "--data-dir", str(tmp_path), "--mllp-port", "0", "--http-port", "0"]
    args += ["--people", str(people), "--days", "10", "--seed", str(seed)]
    run = subprocess.run(args, env=env, capture_output=True, text=True, timeout=200, check=False)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    output = run.stdout + run.stderr + (tmp_path / "broker.log").read_text(errors="replace")
    assert "INFO" in output  # the logs were really captured at INFO
    locality = make_locality(people=people, seed=seed)
    leaked = [p.nhs_number for p in locality.people if p.nhs_number in output]
    assert leaked == []
    spaced = [
        p.nhs_number for p in locality.people if f"{p.nhs_number[:3]} {p.nhs_number[3:6]} {p.nhs_number[6:]}" in output
    ]
    assert spaced == []
    assert not [p for p in locality.people if f"{p.family}^{p.given}" in output or p.postcode in output]
    secrets = json.loads((tmp_path / "secrets.json").read_text())
    assert all(value not in output for value in secrets.values())
