"""Information sharing over real sockets: HL7 in over MLLP, reads over HTTP decided by agreements and
consent, changes applying within 2 seconds, every decision in the ledger."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from fhir.resources.R4B.auditevent import AuditEvent

from adapters.hl7v2.transport import MllpClient
from hub.api.auth import issue_token
from hub.bootstrap import build, running
from hub.core.ledger import verify
from hub.settings import HttpSettings, KafkaSettings, MllpSettings, Settings
from tests.builders import an_adt, an_agreement, an_objection

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(120)]
NHS = "https://fhir.nhs.uk/Id/nhs-number"
CAREHUB = str(Path(sys.executable).with_name("carehub"))
ODS = "https://fhir.nhs.uk/Id/ods-organization-code"


async def until(check, within: float = 2.0) -> float:  # type: ignore[no-untyped-def]
    started = time.perf_counter()
    while time.perf_counter() - started < within:
        if await check():
            return time.perf_counter() - started
        await asyncio.sleep(0.05)
    raise AssertionError(f"not true within {within}s")


async def test_reads_follow_agreements_and_consent_and_changes_apply_within_two_seconds(tmp_path: Path) -> None:
    settings = Settings(
        data_dir=tmp_path,
        kafka=KafkaSettings(group_id=f"t{uuid.uuid4().hex[:8]}-record"),
        mllp=MllpSettings(port=0),
        http=HttpSettings(port=0),
    )
    services = build(settings)
    services.agreements.load(an_agreement("RXX", "Y00001", "Y00003"), at=datetime.now(UTC))
    services.agreements.load(an_agreement("RXX", "Y00001", id="audit", purposes=("audit",)), at=datetime.now(UTC))
    async with running(settings, services=services) as run:
        secret = run.services.secrets.token

        def as_(org: str, role: str = "clinician") -> dict[str, str]:
            return {"Authorization": f"Bearer {issue_token(secret, org=org, role=role, now=datetime.now(UTC))}"}

        client = await MllpClient.connect("127.0.0.1", run.mllp_port or 0)
        for n, trigger in enumerate(["A01", "A03"]):
            await client.send(an_adt(trigger=trigger, control_id=f"S{n}", visit="V1"))
        await client.close()
        assert await run.caught_up(2, timeout=60)
        base = f"http://127.0.0.1:{run.http_port}/fhir"
        async with httpx.AsyncClient(base_url=base, timeout=5) as http:
            found = (await http.get(f"/Patient?identifier={NHS}|9434765919", headers=as_("Y00001"))).json()
            assert found["total"] == 1
            pid = found["entry"][0]["resource"]["id"]
            assert (await http.get(f"/Patient/{pid}/$everything", headers=as_("Y00001"))).status_code == 200

            # an organisation outside every agreement: withheld, 403, and told so
            outsider = await http.get(f"/Patient?identifier={NHS}|9434765919", headers=as_("Y00002"))
            assert outsider.json()["total"] == 0
            note = outsider.json()["entry"][-1]
            assert note["search"]["mode"] == "outcome"
            assert "1 resource(s) withheld" in note["resource"]["issue"][0]["diagnostics"]
            denied = await http.get(f"/Patient/{pid}", headers=as_("Y00002"))
            assert denied.status_code == 403
            assert denied.json()["resourceType"] == "OperationOutcome"
            assert "no agreement" in denied.json()["issue"][0]["diagnostics"]
            assert "RXX" not in denied.json()["issue"][0]["diagnostics"]  # where they are known: not told
            assert (await http.get(f"/Patient/{pid}/$everything", headers=as_("Y00002"))).status_code == 403
            assert (await http.get(f"/Patient/{pid}", headers=as_("Y00001", "admin"))).status_code == 403

            # break-glass: permitted, and marked
            glass = {**as_("Y00002"), "X-Break-Glass-Reason": "collapsed in clinic, no history"}
            assert (await http.get(f"/Patient/{pid}", headers=glass)).status_code == 200

            # the person objects to Y00001 seeing their encounters
            consent = an_objection("9434765919", "Y00001", category="encounters")
            created = await http.post("/Consent", json=consent, headers=as_("RXX", "coordinator"))
            assert created.status_code == 201, created.text

            async def encounters_hidden_from_y00001() -> bool:
                shown = (await http.get(f"/Encounter?patient={pid}", headers=as_("Y00001"))).json()
                return shown["total"] == 0

            await until(encounters_hidden_from_y00001, within=2.0)
            assert (
                await http.get(f"/Patient/{pid}", headers=as_("Y00001"))
            ).status_code == 200  # demographics still shared
            third = (await http.get(f"/Encounter?patient={pid}", headers=as_("Y00003"))).json()
            assert third["total"] == 1  # the objection named Y00001 only

            bad = await http.post("/Consent", json={"resourceType": "Consent"}, headers=as_("RXX"))
            assert bad.status_code == 400
            assert bad.json()["resourceType"] == "OperationOutcome"

            # the agreement ends (a new version with an end date in the past): Y00003 loses access
            ended = an_agreement(
                "RXX", "Y00001", "Y00003", version=2, valid_to=str(datetime.now(UTC).date() - timedelta(days=1))
            )
            run.services.agreements.load(ended, at=datetime.now(UTC))

            async def y00003_cut_off() -> bool:
                return (await http.get(f"/Patient/{pid}", headers=as_("Y00003"))).status_code == 403

            await until(y00003_cut_off, within=2.0)

            # auditors read the same ledger as FHIR AuditEvents; nobody else may
            assert (await http.get(f"/AuditEvent?patient={pid}", headers=as_("Y00001"))).status_code == 403
            audit = (await http.get(f"/AuditEvent?patient={pid}", headers=as_("RXX", "auditor"))).json()
            events = [e["resource"] for e in audit["entry"]]
            for event in events:
                AuditEvent.model_validate(event)
            assert {"0", "4"} <= {e["outcome"] for e in events}
            assert any(e.get("purposeOfEvent") for e in events)  # the break-glass read

        entries = list(run.services.ledger.entries())
        assert verify(iter(entries))[1] is None
        outcomes = {(e.body["recipient_org"], e.body["decision"]) for e in entries}
        told = [r for e in entries if e.body["recipient_org"] == "Y00002" for r in e.body["reasons"]]
        assert any(" from RXX with Y00002" in r for r in told)  # the ledger keeps the whole reason
        assert {("Y00001", "permit"), ("Y00002", "deny"), ("Y00002", "break-glass"), ("Y00003", "deny")} <= outcomes
        objected = [
            e.body
            for e in entries
            if e.body["recipient_org"] == "Y00001" and e.body["decision"] == "deny" and e.body["channel"] == "search"
        ]
        assert objected
        assert all(b["basis"]["consents"] and b["resources"][0].startswith("Encounter/") for b in objected)
        glass = next(e.body for e in entries if e.body["decision"] == "break-glass")
        assert "collapsed in clinic" in glass["reasons"][0]
        about = run.services.ledger.about(pid)

    # the person's subject-access request, as an operator answers it: who was given what, and why
    sar = await asyncio.to_thread(subject_access, "943 476 5919", tmp_path)
    assert sar.returncode == 0, sar.stdout + sar.stderr
    assert f"{len(about)} decisions recorded about this person" in sar.stdout
    assert len(about) >= 6
    for org, decision in [("Y00001", "permit"), ("Y00002", "deny"), ("Y00002", "break-glass"), ("Y00003", "deny")]:
        assert re.search(rf"{org} / .*{decision}", sar.stdout), (org, decision, sar.stdout)
    assert "collapsed in clinic" in sar.stdout
    nobody = await asyncio.to_thread(subject_access, "9990000018", tmp_path)  # (never seen: not "nothing disclosed")
    assert nobody.returncode == 1
    assert "no person with NHS number 9990000018 in the shared care record" in nobody.stdout


def subject_access(nhs_number: str, data_dir: Path) -> subprocess.CompletedProcess[str]:
    args = [CAREHUB, "audit", "disclosures", "--nhs-number", nhs_number, "--data-dir", str(data_dir)]
    env = {"PATH": "/usr/bin:/bin", "COLUMNS": "250"}
    return subprocess.run(args, capture_output=True, text=True, timeout=60, env=env, check=False)
