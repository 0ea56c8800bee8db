"""Coverage-guided fuzzing (atheris, libFuzzer) of the HL7 v2 adapter for a fixed time: whatever bytes
arrive, parse / map_message / the ACK raise nothing but HubError. The target is tests/fuzz/hl7_target.py,
run in a subprocess (libFuzzer owns the process), seeded with the builders' messages and the shared
samples. Budget: CAREHUB_ATHERIS_SECONDS (default 20); a crash leaves crash-* in the test's tmp dir and
its bytes in the failure message.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.builders import an_adt
from tests.conftest import SAMPLES

pytest.importorskip("atheris", reason="atheris (libFuzzer for Python) is not installed")
pytestmark = pytest.mark.timeout(300)

ROOT = Path(__file__).resolve().parents[2]
TARGET = Path(__file__).with_name("hl7_target.py")
SECONDS = int(os.environ.get("CAREHUB_ATHERIS_SECONDS", "20"))
TRIGGERS = ("A01", "A02", "A03", "A08", "A11", "A13", "A28", "A31", "A40")


def seed(corpus: Path) -> int:
    corpus.mkdir()
    seeds = [an_adt(trigger=t, control_id=f"S{t}") for t in TRIGGERS]
    seeds.append(an_adt(trigger="A03", seg_end=b"\r\n", charset="8859/1", family="JOSÉ", encoding="latin-1"))
    seeds.append(b"FHS|^~\\&|PAS\rBHS|^~\\&|PAS\r" + an_adt(control_id="B1") + an_adt(control_id="B2") + b"BTS|2\r")
    seeds += [p.read_bytes() for p in sorted(SAMPLES.glob("hl7v2/*/*.hl7"))]
    for n, raw in enumerate(seeds):
        (corpus / f"seed-{n:03d}.hl7").write_bytes(raw)
    return len(seeds)


def fuzz(tmp: Path, *args: str, canary: str = "") -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "CAREHUB_ATHERIS_CANARY": canary}
    command = [sys.executable, str(TARGET), *args, f"-artifact_prefix={tmp}/", "-rss_limit_mb=2048", "-timeout=20"]
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=SECONDS + 120)


def crashes(tmp: Path) -> str:
    return "\n".join(f"{p.name}: {p.read_bytes()[:2000]!r}" for p in sorted(tmp.glob("crash-*")))


def test_the_hl7_adapter_raises_only_hub_errors_under_coverage_guided_fuzzing(tmp_path: Path) -> None:
    seeds = seed(tmp_path / "corpus")

    run = fuzz(tmp_path, str(tmp_path / "corpus"), f"-max_total_time={SECONDS}", "-seed=1", "-max_len=4096")

    assert run.returncode == 0, f"{crashes(tmp_path)}\n{run.stdout[-4000:]}\n{run.stderr[-4000:]}"
    done = re.search(r"Done (\d+) runs", run.stderr)
    assert done and int(done.group(1)) > seeds, run.stderr[-3000:]  # it fuzzed, not just replayed the seeds
    assert "INFO: Instrumenting adapters.hl7v2.to_fhir" in run.stderr  # and was coverage-guided


def test_the_harness_reports_an_exception_that_is_not_a_hub_error(tmp_path: Path) -> None:
    crafted = tmp_path / "input.hl7"
    crafted.write_bytes(an_adt(family="CANARY"))

    run = fuzz(tmp_path, str(crafted), canary="CANARY")

    assert run.returncode != 0
    assert "canary: the harness reports" in run.stdout + run.stderr
