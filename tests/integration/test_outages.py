"""Dependencies failing: the hub never says AA for what Kafka did not keep, and resumes after."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from adapters.hl7v2.transport import MllpClient
from hub.bootstrap import running
from hub.kafka import create_topics
from hub.settings import HttpSettings, KafkaSettings, MllpSettings, Settings
from tests.builders import an_adt
from tests.conftest import TansuProcess

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(120)]


def msa_code(ack: bytes) -> str:
    segment = next(s for s in ack.split(b"\r") if s.startswith(b"MSA"))
    return segment.decode().split("|")[1]


async def test_mllp_answers_AE_while_kafka_is_unreachable_and_the_senders_retry_then_succeeds(
    tmp_path: Path, tansu: TansuProcess
) -> None:
    settings = Settings(
        data_dir=tmp_path,
        kafka_bootstrap_servers=tansu.bootstrap,
        kafka=KafkaSettings(publish_timeout_s=2.0),
        mllp=MllpSettings(port=0),
        http=HttpSettings(port=0),
    )
    message = an_adt(trigger="A03", nhs_number="9434765919", control_id="OUT1", visit="V9")
    async with running(settings, http=False) as run:
        client = await MllpClient.connect("127.0.0.1", run.mllp_port or 0)
        assert msa_code(await client.send(an_adt(trigger="A01", nhs_number="9434765919", control_id="IN1"))) == "AA"
        tansu.stop()
        started = time.perf_counter()
        down = await client.send(message)
        assert msa_code(down) == "AE"
        assert b"send it again" in down
        assert time.perf_counter() - started < 10
        tansu.start()
        await create_topics(tansu.bootstrap)
        for _ in range(20):
            retry = await client.send(message)
            if msa_code(retry) == "AA":
                break
        assert msa_code(retry) == "AA"
        assert await run.caught_up(1, timeout=30)
        await client.close()
