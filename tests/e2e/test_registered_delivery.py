"""A practice subscribed to its registered patients' events hears of a discharge whose message leaves
PD1 out (as real A02s and A03s often do): the record keeps the registration the admission gave, and a
`registered` subscription reads it there, not only in the event. Real sockets: MLLP in, the
subscriber's Kafka topic out."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest

from adapters.hl7v2.transport import MllpClient
from hub.bootstrap import build, running
from hub.settings import HttpSettings, KafkaSettings, MllpSettings, Settings
from schemas.subscriptions import Subscription
from schemas.topics import subscriber_topic
from tests.builders import an_adt, an_agreement
from tests.e2e.test_deliveries import topic_events, until

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(150)]
EVENTS = ("uk.nhs.carehub.encounter.admitted.v1", "uk.nhs.carehub.encounter.discharged.v1")


async def test_a_discharge_without_pd1_reaches_the_practice_the_record_has_them_registered_with(
    tmp_path: Path,
) -> None:
    settings = Settings(
        data_dir=tmp_path,
        kafka=KafkaSettings(group_id=f"t{uuid.uuid4().hex[:8]}-record"),
        mllp=MllpSettings(port=0),
        http=HttpSettings(port=0),
    )
    services = build(settings)
    services.agreements.load(an_agreement("RXX", "Y00001", "Y00002"), at=datetime.now(UTC))
    services.subscriptions.save(Subscription(id="gp", org="Y00001", events=EVENTS, scope="registered"))
    services.subscriptions.save(Subscription(id="other-gp", org="Y00002", events=EVENTS, scope="registered"))
    async with running(settings, services=services) as run:
        client = await MllpClient.connect("127.0.0.1", run.mllp_port or 0)
        admitted = an_adt(trigger="A01", control_id="R1", practice="Y00001")
        discharged = an_adt(trigger="A03", control_id="R2", practice=None)  # no PD1
        for message in (admitted, discharged):
            assert b"MSA|AA" in await client.send(message)
        await client.close()
        assert await run.caught_up(2, timeout=60)

        def decided() -> int:
            return sum(1 for e in services.ledger.entries() if e.body["recipient_org"] == "Y00001")

        await until(lambda: decided() >= 2, within=60)
        on_topic = await topic_events(run.bootstrap, subscriber_topic("Y00001").name, at_least=2)
        assert len(on_topic) == 2, on_topic  # the admission and the discharge
        elsewhere = await topic_events(run.bootstrap, subscriber_topic("Y00002").name, at_least=0, within=2)
        assert elsewhere == []  # registered with Y00001, not Y00002
    patient = services.reader.search("Patient", None)[0]
    assert patient["generalPractitioner"]
