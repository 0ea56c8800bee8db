"""Over a real MLLP socket, Kafka and the record: a later message that says less keeps what the record
knows (an NHS number's verification status without PID-32, an inpatient class without PV1-2), and
PID-30 `N` withdraws a recorded death."""

from __future__ import annotations

from pathlib import Path

import pytest

from adapters.hl7v2.transport import MllpClient
from hub.bootstrap import running
from tests.builders import a_valid_nhs_number, an_adt
from tests.e2e.test_deliveries import hub_settings
from tests.e2e.test_hl7_control_ids import msa_code

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(90)]
NHS = "https://fhir.nhs.uk/Id/nhs-number"


async def test_updates_that_say_less_keep_status_and_class_and_pid_30_n_withdraws_a_death(
    tmp_path: Path, kafka_bootstrap: str
) -> None:
    settings = hub_settings(tmp_path).model_copy(update={"kafka_bootstrap_servers": kafka_bootstrap})
    dead, traced, inpatient = "9434765919", a_valid_nhs_number(), a_valid_nhs_number()
    messages = [
        an_adt(
            trigger="A08",
            nhs_number=dead,
            control_id="D1",
            event_time="202612021130",
            died="20261202103000",
            death_indicator="Y",
        ),
        an_adt(trigger="A08", nhs_number=dead, control_id="D2", event_time="202612021230", death_indicator="N"),
        an_adt(trigger="A28", nhs_number=traced, mrn="T1", control_id="R1", event_time="202611010900"),
        an_adt(trigger="A01", nhs_number=traced, mrn="T1", control_id="R2", visit="VT", reliability=""),
        an_adt(trigger="A01", nhs_number=inpatient, mrn="I1", control_id="C1", visit="VI", event_time="202611010930"),
        an_adt(trigger="A03", nhs_number=inpatient, mrn="I1", control_id="C2", visit="VI", patient_class=""),
    ]
    async with running(settings) as run:
        client = await MllpClient.connect("127.0.0.1", run.mllp_port or 0)
        try:
            acks = [await client.send(message) for message in messages]
        finally:
            await client.close()
        assert [msa_code(a) for a in acks] == ["AA"] * len(messages)
        assert await run.caught_up(len(messages), timeout=60)
        patients = {
            p["identifier"][0]["value"]: p for p in run.services.reader.search("Patient", None) if p["identifier"]
        }
        assert {k: v for k, v in patients[dead].items() if k.startswith("deceased")} == {"deceasedBoolean": False}
        assert patients[dead]["meta"]["versionId"] == "2"
        [status] = patients[traced]["identifier"][0]["extension"]
        assert status["valueCodeableConcept"]["coding"][0]["code"] == "01"
        [stay] = [e for e in run.services.reader.search("Encounter", None) if e["identifier"][0]["value"] == "VI"]
        assert stay["class"] == {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "IMP"}
        assert stay["status"] == "finished"
