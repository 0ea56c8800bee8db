"""A person's objection holds for every identity the record knows them by: after a merge (A40), the
retired Patient, late events sent under the old identity and their deliveries are decided under the
survivor's consents, and a subject-access request finds what was disclosed under the old identity.
Real sockets: HL7 in over MLLP, reads over HTTP, deliveries on the subscriber's Kafka topic."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from adapters.hl7v2.transport import MllpClient
from hub.api.auth import issue_token
from hub.bootstrap import build, running
from hub.core.identity import identities
from hub.core.ledger import verify
from schemas.subscriptions import Subscription
from tests.builders import an_adt, an_agreement, an_objection
from tests.e2e.test_deliveries import hub_settings, until

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(150)]
NHS = "https://fhir.nhs.uk/Id/nhs-number"
EVENTS = (
    "uk.nhs.carehub.encounter.admitted.v1",
    "uk.nhs.carehub.encounter.discharged.v1",
    "uk.nhs.carehub.patient.merged.v1",
)


async def test_an_objection_holds_for_the_identity_merged_away_and_its_late_events(tmp_path: Path) -> None:
    settings = hub_settings(tmp_path)
    services = build(settings)
    services.agreements.load(an_agreement("RXX", "Y00001"), at=datetime.now(UTC))
    services.subscriptions.save(Subscription(id="gp-topic", org="Y00001", events=EVENTS))
    async with running(settings, services=services) as run:
        secret = run.services.secrets.token

        def as_(org: str, role: str = "clinician") -> dict[str, str]:
            return {"Authorization": f"Bearer {issue_token(secret, org=org, role=role, now=datetime.now(UTC))}"}

        def to_gp(decision: str) -> list[dict[str, object]]:
            return [
                e.body
                for e in services.ledger.entries()
                if e.body["recipient_org"] == "Y00001"
                and e.body["channel"] == "topic"
                and e.body["decision"] == decision
            ]

        client = await MllpClient.connect("127.0.0.1", run.mllp_port or 0)
        # the same person known twice: by the hospital number alone, then with their NHS number
        assert b"MSA|AA" in await client.send(an_adt(trigger="A01", control_id="M1", nhs_number=None, mrn="MOLD"))
        assert b"MSA|AA" in await client.send(an_adt(trigger="A01", control_id="M2", mrn="M100", visit="V2"))
        assert await run.caught_up(2, timeout=60)
        await until(lambda: len(to_gp("permit")) >= 2, within=60)
        patients = services.reader.search("Patient", None)
        old = next(str(p["id"]) for p in patients if not any(i.get("system") == NHS for i in p["identifier"]))
        survivor = next(str(p["id"]) for p in patients if str(p["id"]) != old)

        base = f"http://127.0.0.1:{run.http_port}/fhir"
        async with httpx.AsyncClient(base_url=base, timeout=5) as http:
            assert (await http.get(f"/Patient/{old}", headers=as_("Y00001"))).status_code == 200
            # the person objects to the practice seeing anything, told under the identity the ward knew
            objection = an_objection("9434765919", "Y00001") | {"patient": {"reference": f"Patient/{old}"}}
            made = await http.post("/Consent", json=objection, headers=as_("RXX", "coordinator"))
            assert made.status_code == 201, made.text
            await until(lambda: bool(services.reader.search("Consent", old)), within=60)

            merge = an_adt(trigger="A40", control_id="M3", mrn="M100", merged_mrn="MOLD")
            late = an_adt(trigger="A03", control_id="M4", nhs_number=None, mrn="MOLD")  # sent late, old identity
            for message in (merge, late):
                assert b"MSA|AA" in await client.send(message)
            await client.close()
            assert await run.caught_up(5, timeout=60)
            await until(lambda: services.reader.filed_under([old]) == {old: survivor}, within=60)
            # the merge and the late A03, each refused
            await until(lambda: len({e.get("event") for e in to_gp("deny")}) >= 2, within=60)

            # nothing about the person reached the practice after the objection, under either identity
            permitted_events = {e.get("event") for e in to_gp("permit")}
            assert len(permitted_events) == 2, permitted_events  # the two admissions, before it
            for path in (f"/Patient/{old}", f"/Patient/{old}/$everything", f"/Patient/{survivor}"):
                refused = await http.get(path, headers=as_("Y00001"))
                assert refused.status_code == 403, (path, refused.text)
                assert "objected" in refused.json()["issue"][0]["diagnostics"]
            found = await http.get("/Patient", params={"identifier": f"{NHS}|9434765919"}, headers=as_("Y00001"))
            assert found.json()["total"] == 0
            assert (await http.get(f"/Patient/{old}", headers=as_("RXX"))).status_code == 200  # its supplier

    # a subject-access request about the person finds what was disclosed under the old identity too
    about = services.ledger.about(*identities(services.reader, survivor))
    assert {e.body["person_key"] for e in about} >= {old, survivor}
    assert any(e.body["person_key"] == old and e.body["decision"] == "permit" for e in about)
    assert services.ledger.about(*identities(services.reader, old)) == about
    assert verify(services.ledger.entries())[1] is None
