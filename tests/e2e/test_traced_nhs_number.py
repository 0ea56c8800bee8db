"""A person admitted under a hospital number alone (their NHS number not yet traced), then sent with
both: the record holds them once, under the NHS number, with the stay from before the trace, and the
hospital-number record retired into them, as an A40 would have done. Real sockets: HL7 in over
MLLP, the log on a Kafka-protocol broker, the record in SQLite."""

from __future__ import annotations

from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer

from adapters.hl7v2.transport import MllpClient
from hub.bootstrap import build, running
from hub.core.record_content import MERGED
from schemas.topics import EVENTS
from tests.builders import an_adt
from tests.e2e.test_deliveries import hub_settings, until

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(150)]
NHS = "https://fhir.nhs.uk/Id/nhs-number"
NHS_NUMBER = "9434765919"


async def merges_on_the_log(bootstrap: str) -> list[str]:
    consumer = AIOKafkaConsumer(EVENTS.name, bootstrap_servers=bootstrap, group_id=None, auto_offset_reset="earliest")
    await consumer.start()
    found: list[str] = []
    try:
        for records in (await consumer.getmany(timeout_ms=2000, max_records=1000)).values():
            found += [
                dict(r.headers)["ce_id"].decode() for r in records if dict(r.headers)["ce_type"] == MERGED.encode()
            ]
    finally:
        await consumer.stop()
    return found


async def test_a_hospital_number_record_joins_the_person_once_their_nhs_number_is_traced(tmp_path: Path) -> None:
    settings = hub_settings(tmp_path)
    services = build(settings)
    async with running(settings, services=services) as run:
        client = await MllpClient.connect("127.0.0.1", run.mllp_port or 0)
        admit = an_adt(
            trigger="A01", control_id="T1", nhs_number=None, mrn="M100", visit="V1", event_time="202611010930"
        )
        assert b"MSA|AA" in await client.send(admit)
        assert await run.caught_up(1, timeout=60)
        [alias] = [str(p["id"]) for p in services.reader.search("Patient", None)]

        traced = an_adt(trigger="A08", control_id="T2", nhs_number=NHS_NUMBER, mrn="M100", visit="V1",
                        event_time="202611011200")  # fmt: skip
        discharge = an_adt(trigger="A03", control_id="T3", nhs_number=NHS_NUMBER, mrn="M100", visit="V1")
        for message in (traced, discharge, traced):  # (the A08 sent twice: links once)
            assert b"MSA|AA" in await client.send(message)
        await client.close()
        assert await run.caught_up(4, timeout=60)
        [person] = services.reader.patients_by_identifier(NHS, NHS_NUMBER)
        await until(lambda: services.reader.filed_under([alias]) == {alias: person["id"]}, within=60)

        everything = services.reader.everything(str(person["id"]))
        stays = [r for r in everything if r["resourceType"] == "Encounter"]
        assert len(stays) == 1 and stays[0]["subject"]["reference"] == f"Patient/{person['id']}"
        assert stays[0]["status"] == "finished"  # the stay admitted before the trace, discharged after it
        retired = services.reader.read("Patient", alias)
        assert retired is not None and retired["active"] is False
        assert retired["link"] == [{"other": {"reference": f"Patient/{person['id']}"}, "type": "replaced-by"}]
        # one merge: each message sent before the record applied it says it again, as the same event
        assert len(set(await merges_on_the_log(run.bootstrap))) == 1

        # a message under the hospital number alone, after the trace, lands on the person too
        late = an_adt(trigger="A08", control_id="T4", nhs_number=None, mrn="M100", visit="V1", family="JONES")
        client = await MllpClient.connect("127.0.0.1", run.mllp_port or 0)
        assert b"MSA|AA" in await client.send(late)
        await client.close()
        assert await run.caught_up(5, timeout=60)
        assert [r["id"] for r in services.reader.everything(str(person["id"])) if r["resourceType"] == "Encounter"] == [
            stays[0]["id"]
        ]
