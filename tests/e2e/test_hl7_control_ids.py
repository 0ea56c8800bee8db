"""Control IDs end to end (real MLLP socket, Kafka, the record): a resend is applied once, and another
message under a control ID already used (a sender that restarted its counter) is applied, not dropped."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from adapters.hl7v2.transport import MllpClient
from hub.bootstrap import running
from hub.settings import HttpSettings, KafkaSettings, MllpSettings, Settings
from tests.builders import a_valid_nhs_number, an_adt

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(90)]


def msa_code(ack: bytes) -> str:
    return next(s for s in ack.split(b"\r") if s.startswith(b"MSA")).split(b"|")[1].decode()


async def test_another_message_under_a_used_control_id_is_applied_and_a_resend_of_either_is_not(
    tmp_path: Path, kafka_bootstrap: str
) -> None:
    settings = Settings(
        data_dir=tmp_path,
        kafka_bootstrap_servers=kafka_bootstrap,
        kafka=KafkaSettings(group_id=f"t{uuid.uuid4().hex[:8]}-record"),
        mllp=MllpSettings(port=0),
        http=HttpSettings(port=0),
    )
    first = an_adt(trigger="A01", nhs_number="9434765919", control_id="REUSED", visit="V1")
    other = an_adt(trigger="A01", nhs_number=a_valid_nhs_number(), control_id="REUSED", visit="V2", family="JONES")
    async with running(settings) as run:
        client = await MllpClient.connect("127.0.0.1", run.mllp_port or 0)
        try:
            acks = [await client.send(message) for message in (first, other, first, other)]
        finally:
            await client.close()
        assert [msa_code(a) for a in acks] == ["AA"] * 4
        assert await run.caught_up(4, timeout=60)
        assert run.applied == 2
        encounters = run.services.reader.search("Encounter", None)
        assert sorted(e["identifier"][0]["value"] for e in encounters) == ["V1", "V2"]
        assert {e["meta"]["versionId"] for e in encounters} == {"1"}
        assert len(run.services.reader.search("Patient", None)) == 2
