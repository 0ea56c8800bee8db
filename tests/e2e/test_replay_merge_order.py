"""A merge across partitions replays to the record the live hub kept: the hub applies an event about
an identity, then (minutes later, sent late) an A40 dated before it that merges that identity away;
a replay applies them in the order they were written to the log, not partition by partition as
fetched (which put the A40, on the lower partition, first: the replayed record then differed from
the live one, found with two real UCLH sample messages). On the embedded broker with the real
consumers, the live record's hash against replays on two workers and on one."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from hub.bootstrap import build, running
from hub.replay import replay
from hub.settings import CoordinationSettings, HttpSettings, KafkaSettings, MllpSettings, Settings
from hub.store.database import open_engine
from hub.store.hashing import record_hash
from tests.e2e.test_referral_order import until
from tests.integration.test_replay_parallel import encounter, event, merge_event, partition_of, patient
from tests.kafka_log import produce

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(240)]


def people(same_worker: bool) -> tuple[str, str]:
    """(retired, survivor): the retired identity on a higher partition than the survivor, read by the
    same worker of two (partition mod 2) or not."""
    for n in range(2000):
        retired, survivor = f"f6{n:030x}", f"f7{n:030x}"
        higher = partition_of(retired) > partition_of(survivor)
        if higher and (partition_of(retired) % 2 == partition_of(survivor) % 2) == same_worker:
            return retired, survivor
    raise AssertionError("no such pair of keys")


@pytest.mark.parametrize("same_worker", [True, False], ids=["one worker's partitions", "two workers"])
async def test_an_a40_sent_after_news_of_the_identity_it_retires_replays_as_the_hub_applied_it(
    tmp_path: Path, same_worker: bool
) -> None:
    settings = Settings(
        data_dir=tmp_path / "hub",
        kafka=KafkaSettings(group_id=f"t{uuid.uuid4().hex[:8]}-record"),
        mllp=MllpSettings(port=0),
        http=HttpSettings(port=0),
        coordination=CoordinationSettings(enabled=False),
    )
    services = build(settings)
    retired, survivor = people(same_worker)
    news = event(10, retired, patient(retired, gender="female"), encounter("enc-r", retired))
    merge = merge_event(5, survivor, retired)  # dated before the news, sent after it

    def merged() -> bool:
        found = services.reader.read("Patient", retired) or {}
        return "link" in found

    async with running(settings, services=services, mllp=False, http=False) as run:
        await produce(run.bootstrap, [(news, None)])
        await until(lambda: services.reader.read("Encounter", "enc-r") is not None, 60, "the news applied")
        await produce(run.bootstrap, [(merge, None)])
        await until(merged, 60, "the merge applied")
        live = record_hash(services.engine)
        replays = []
        for workers in (2, 1):
            engine = open_engine(f"sqlite:///{tmp_path / f'replayed-{workers}.db'}")
            result = await replay(run.bootstrap, engine, workers=workers)
            replays.append((result.workers, record_hash(engine)))
            engine.dispose()

    assert replays == [(2, live), (1, live)]
    assert live[1:] == (5, 2)  # two Patients, the Encounter and a Provenance for each event
