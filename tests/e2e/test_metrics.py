"""GET /metrics over real HTTP on a running hub, after messages over a real MLLP socket: ACKs counted by
sender and code, each sender's last message, the dead letters outstanding; no token, no patient data."""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path

import httpx
import pytest

from adapters.hl7v2.transport import MllpClient
from hub.bootstrap import running
from hub.settings import HttpSettings, KafkaSettings, MllpSettings, Settings
from tests.builders import an_adt

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(90)]
BAD_NHS = "9434765910"  # (fails Modulus 11: answered AE and dead-lettered)


def hub_settings(tmp_path: Path, bootstrap: str) -> Settings:
    return Settings(
        data_dir=tmp_path,
        kafka_bootstrap_servers=bootstrap,
        kafka=KafkaSettings(group_id=f"t{uuid.uuid4().hex[:8]}-record"),
        mllp=MllpSettings(port=0),
        http=HttpSettings(port=0),
    )


def samples(text: str) -> dict[str, float]:
    """Each sample line's name and labels -> its value (comment lines, # HELP and # TYPE, left out)."""
    pairs = (line.rsplit(" ", 1) for line in text.splitlines() if line and not line.startswith("#"))
    return {name: float(value) for name, value in pairs}


async def test_acks_by_sender_each_senders_last_message_and_dead_letters_are_scraped_without_a_token(
    tmp_path: Path, kafka_bootstrap: str
) -> None:
    async with running(hub_settings(tmp_path, kafka_bootstrap)) as run:
        before = time.time()
        client = await MllpClient.connect("127.0.0.1", run.mllp_port or 0)
        sent = [
            an_adt(sender="RXX", control_id="X1"),
            an_adt(sender="RXX", control_id="X2", nhs_number=BAD_NHS, mrn=None),
            an_adt(sender="RCB", control_id="C1"),
            an_adt(sender="RCB", control_id="C2", nhs_number="9990000018"),
            b"nothing the hub can read as HL7",
        ]
        acks = [await client.send(message) for message in sent]
        await client.close()
        after = time.time()
        assert [a.split(b"\r")[1].split(b"|")[1] for a in acks] == [b"AA", b"AE", b"AA", b"AA", b"AR"]
        deadline = time.perf_counter() + 30
        while run.kept < 2 and time.perf_counter() < deadline:  # (both rejected messages in the store)
            await asyncio.sleep(0.05)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{run.http_port}", timeout=10) as http:
            scraped = await http.get("/metrics")
    assert scraped.status_code == 200
    assert scraped.headers["content-type"].startswith("text/plain; version=0.0.4")
    assert BAD_NHS not in scraped.text and "SMITH" not in scraped.text
    said = samples(scraped.text)
    counted = {k: v for k, v in said.items() if k.startswith("carehub_mllp_acks_total")}
    assert counted == {
        'carehub_mllp_acks_total{sender="RCB",ack="AA"}': 2,
        'carehub_mllp_acks_total{sender="RXX",ack="AA"}': 1,
        'carehub_mllp_acks_total{sender="RXX",ack="AE"}': 1,
        'carehub_mllp_acks_total{sender="unknown",ack="AR"}': 1,
    }
    for sender in ("RXX", "RCB", "unknown"):
        assert before <= said[f'carehub_mllp_last_message_timestamp_seconds{{sender="{sender}"}}'] <= after
    assert said["carehub_dead_letters_outstanding"] == 2
    assert said["carehub_dead_letters_resolved"] == 0
    assert said["carehub_up"] == 1
    assert said["carehub_start_time_seconds"] <= before
    assert "# TYPE carehub_mllp_acks_total counter" in scraped.text
