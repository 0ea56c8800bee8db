"""The auditors' log export: NDJSON with payload hashes and signed checkpoints from a real log,
payloads only where the auditor's agreement covers them (and in the ledger), and a verifier that
needs only the file and the public key, and names the line where a tampered copy breaks."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from datetime import UTC, datetime
from pathlib import Path

import httpx
import orjson
import pytest

from hub.api.auth import issue_token
from hub.bootstrap import build, running
from hub.export_verify import verify
from hub.settings import CoordinationSettings, HttpSettings, KafkaSettings, MllpSettings, Settings
from tests.builders import an_adt, an_agreement, an_objection

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(180)]
VERIFIER = Path(__file__).parents[2] / "hub" / "export_verify.py"


def run_verifier(export: Path, key: Path) -> subprocess.CompletedProcess[str]:
    # the verifier stands alone: run it from a bare folder with nothing of CareHub's on the path
    bare = export.parent / "bare"
    bare.mkdir(exist_ok=True)
    copy = bare / "export_verify.py"
    copy.write_text(VERIFIER.read_text())
    return subprocess.run(
        [sys.executable, "-I", str(copy), str(export), str(key)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


async def test_the_export_verifies_without_the_hub_and_tampering_is_named(tmp_path: Path) -> None:
    settings = Settings(
        data_dir=tmp_path,
        kafka=KafkaSettings(group_id=f"t{uuid.uuid4().hex[:8]}-record"),
        mllp=MllpSettings(port=0),
        http=HttpSettings(port=0),
        coordination=CoordinationSettings(tick_s=0),
    )
    services = build(settings)
    services.agreements.load(
        an_agreement(
            "RXX",
            "AUD01",
            "Y00001",
            id="audit",
            purposes=("audit", "direct-care"),
            categories=("demographics", "encounters"),
        ),
        at=datetime.now(UTC),
    )
    async with running(settings, services=services) as run:
        messages = [an_adt(trigger="A01", control_id=f"X{i}", visit=f"V{i}", mrn=f"M{i}") for i in range(4)]
        outcomes = [o for m in messages for o in await run.intake.ingest(m, "test")]
        assert {o.code for o in outcomes} == {"AA"}
        assert await run.applied_ids([i for o in outcomes for i in o.event_ids])
        token = issue_token(services.secrets.token, org="Y00001", role="clinician", now=datetime.now(UTC))
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{run.http_port}/fhir") as http:
            made = await http.post(
                "/Consent", json=an_objection("9434765919", "RYY"), headers={"Authorization": f"Bearer {token}"}
            )
            assert made.status_code == 201, made.text

        out = tmp_path / "audit" / "log.ndjson"
        env = {k: v for k, v in os.environ.items() if not k.startswith("CAREHUB_")} | {
            "KAFKA_BOOTSTRAP_SERVERS": run.bootstrap
        }
        carehub = str(Path(sys.executable).with_name("carehub"))
        args = [carehub, "audit", "export", "--out", str(out), "--payloads", "--org", "AUD01", "--user", "ms-audit"]
        args += ["--checkpoint-every", "2", "--data-dir", str(tmp_path)]
        done = await asyncio.to_thread(
            subprocess.run, args, env=env, capture_output=True, text=True, timeout=120, check=False
        )
        assert done.returncode == 0, done.stdout + done.stderr

    key = out.with_name("log.ndjson.pub.pem")
    verified = run_verifier(out, key)
    assert verified.returncode == 0, verified.stdout
    assert "verified: 5 events, 3 signed checkpoints" in verified.stdout

    lines = out.read_bytes().splitlines(keepends=True)
    events = [orjson.loads(line) for line in lines if b'"checkpoint"' not in line]
    assert all(len(e["payload_sha256"]) == 64 for e in events)
    assert sum("payload" in e for e in events) == 4  # the ADT: demographics and encounters are covered
    [consent] = [e for e in events if "payload_withheld" in e]  # consents are not in the auditor's agreement
    assert consent["type"] == "uk.nhs.carehub.consent.recorded.v1"
    channels = [(e.body["channel"], e.body["decision"]) for e in services.ledger.entries()]
    assert ("export", "permit") in channels
    assert ("export", "deny") in channels

    first_event = next(i for i, line in enumerate(lines) if b'"checkpoint"' not in line)
    altered = list(lines)
    altered[first_event] = altered[first_event].replace(b'"offset":0', b'"offset":9')
    removed = [line for i, line in enumerate(lines) if i != first_event]
    swapped = list(lines)
    swapped[0], swapped[1] = swapped[1], swapped[0]
    cut = [line for line in lines[:-1]]
    for name, copy in (("altered", altered), ("removed", removed), ("swapped", swapped), ("cut", cut)):
        bad = tmp_path / f"{name}.ndjson"
        bad.write_bytes(b"".join(copy))
        verdict = verify(bad, key.read_bytes())
        assert not verdict.ok, name
        assert verdict.problem, name
    assert "line 3" in (verify(tmp_path / "altered.ndjson", key.read_bytes()).problem or "")
