"""`Running.settled`: done means every consumer group has committed to the end of the log, not that
the consumers have been quiet for a moment (a consumer waiting out a slow dependency is quiet too;
the demo once reported its coordinator tasks before the rules engine had made them)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from adapters.hl7v2.to_fhir import map_message
from hub.bootstrap import build, running
from hub.core.ports import RecordEvent
from hub.kafka import behind, create_topics, embedded_broker
from hub.settings import CoordinationSettings, Settings
from schemas.topics import EVENTS
from tests.builders import an_adt
from tests.crash_world import processed_ids
from tests.kafka_log import produce

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(120)]
STALL_S = 4.0  # well beyond the 1.5 s of quiet the demo used to take for done


def events() -> list[tuple[RecordEvent, int | None]]:
    out: list[tuple[RecordEvent, int | None]] = []
    for control, trigger in (("S1", "A01"), ("S2", "A03")):
        raw = an_adt(trigger=trigger, nhs_number="9434765919", control_id=control, visit="V1")
        for m in map_message(raw, key_secret=b"settled"):
            out.append((RecordEvent(m.event_id, m.event_type, m.source, m.event_time, m.person_key, m.payload), None))
    return out


async def test_behind_counts_what_each_group_has_not_committed() -> None:
    async with embedded_broker() as bootstrap:
        await create_topics(bootstrap)
        await produce(bootstrap, [(e, 0) for e, _ in events()] + [(e, 1) for e, _ in events()])
        assert await behind(bootstrap, ["nobody"]) == {"nobody": 4}
        consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id="halfway", enable_auto_commit=False)
        await consumer.start()
        try:
            offsets = {TopicPartition(EVENTS.name, 0): 2, TopicPartition(EVENTS.name, 1): 1}
            consumer.assign(list(offsets))
            await consumer.commit(offsets)
        finally:
            await consumer.stop()
        assert await behind(bootstrap, ["halfway", "nobody"]) == {"halfway": 1, "nobody": 4}


async def test_settled_waits_for_a_consumer_that_is_stalled_not_for_quiet(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, coordination=CoordinationSettings(tick_s=0))
    services = build(settings)
    factory = services.coordination.unit_of_work
    stalled = [True]

    def slow() -> Any:  # the rules engine's first transaction waits on a slow database
        if stalled.pop() if stalled else False:
            time.sleep(STALL_S)
        return factory()

    services.coordination.unit_of_work = slow  # type: ignore[method-assign]
    sent = events()
    async with running(settings, services=services, mllp=False, http=False) as run:
        await produce(run.bootstrap, sent)
        group = next(g for g in run.consumer_groups if g.endswith("-coordination"))
        assert group in await run.settled(timeout=0)  # stalled: behind, however quiet it is
        assert await run.settled(timeout=60) == {}
        url = services.engine.url.render_as_string(hide_password=False)
        ids = {e.id for e, _ in sent}
        assert ids <= processed_ids(url, "coordination")
        assert ids <= processed_ids(url, "record")
