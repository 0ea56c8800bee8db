"""The record follows A40 merges for deaths and reversals live (`carehub worker` on a real broker,
Tansu), and a replay of the log gives the same record hash.

Each of PEOPLE people is known by a hospital number alone (OLD<i>, keyed by it) and by their NHS number
(the survivor's key, on another partition as often as not), each with a stay. Then, by person:
    i % 3 == 1  the A40, then a death said under the old number alone (a hospital still using it)
    i % 3 == 2  the death under the old number first (dated after the A40, read before it), then the A40
    i % 3 == 0  the A40, then one reversing it (the old number survives), then a discharge under the
                number the reversal retired
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import orjson
import pytest
import sqlalchemy as sa

from adapters.hl7v2.to_fhir import map_message
from hub.core.deaths import death_said
from hub.core.ports import RecordEvent
from hub.replay import replay
from hub.store.database import open_engine
from hub.store.hashing import record_hash
from hub.store.tables import record_resource
from tests.builders import a_valid_nhs_number, an_adt
from tests.conftest import TansuProcess
from tests.crash_world import settled
from tests.integration.test_crash_safety import SECRET, Worker
from tests.kafka_log import produce

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(300)]
PEOPLE = 6


def mapped(raw: bytes) -> RecordEvent:
    [m] = map_message(raw, key_secret=SECRET.encode())
    return RecordEvent(m.event_id, m.event_type, m.source, m.event_time, m.person_key, m.payload)


def person(i: int) -> tuple[list[RecordEvent], str, str]:
    """The i-th person's events in the order sent, their old number's key and their NHS number's."""
    nhs, old, new = a_valid_nhs_number(random.Random(i)), f"OLD{i}", f"NEW{i}"
    stays = [
        mapped(an_adt(trigger="A01", nhs_number=None, mrn=old, control_id=f"A{i}", visit=f"VO{i}",
                      event_time="202611010900")),
        mapped(an_adt(trigger="A01", nhs_number=nhs, mrn=new, control_id=f"B{i}", visit=f"VN{i}",
                      event_time="202611011000")),
    ]  # fmt: skip
    merge = mapped(an_adt(trigger="A40", nhs_number=nhs, mrn=new, merged_mrn=old, control_id=f"M{i}",
                          event_time="202611021000"))  # fmt: skip
    retired, survivor = stays[0].subject, merge.subject
    if i % 3 == 0:
        undone = mapped(an_adt(trigger="A40", nhs_number=None, mrn=old, merged_mrn=new, control_id=f"R{i}",
                               event_time="202611031000"))  # fmt: skip
        # (its MRG names the NHS-numbered record by its hospital number alone: keyed as the first A40 did)
        undone = _retiring(undone, mapped(an_adt(trigger="A08", nhs_number=None, mrn=new)).subject, survivor)
        late = mapped(an_adt(trigger="A03", nhs_number=nhs, mrn=new, control_id=f"L{i}", visit=f"VN{i}",
                             event_time="202611041000"))  # fmt: skip
        return [*stays, merge, undone, late], retired, survivor
    death = mapped(an_adt(trigger="A03", nhs_number=None, mrn=old, control_id=f"D{i}", visit=f"VO{i}",
                          event_time="202611031200", died="202611031130", family="JONES"))  # fmt: skip
    assert death.subject == retired
    return [*stays, *((merge, death) if i % 3 == 1 else (death, merge))], retired, survivor


def _retiring(event: RecordEvent, named: str, key: str) -> RecordEvent:
    """A reversing A40 whose retired Patient, named by key `named`, is the person keyed `key`."""
    payload: dict[str, Any] = orjson.loads(orjson.dumps(event.payload).replace(named.encode(), key.encode()))
    return RecordEvent(event.id, event.type, event.source, event.time, event.subject, payload)


def the_record(url: str) -> dict[tuple[str, str], tuple[str | None, dict[str, Any]]]:
    engine = open_engine(url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                sa.select(
                    record_resource.c.resource_type, record_resource.c.id, record_resource.c.person_key,
                    record_resource.c.content,
                )
            )  # fmt: skip
            return {
                (kind, rid): (key, content if isinstance(content, dict) else orjson.loads(content))
                for kind, rid, key, content in rows
            }
    finally:
        engine.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "postgresql":
        return str(request.getfixturevalue("postgres_url"))
    return f"sqlite:///{(tmp_path / 'live' / 'carehub.db').resolve()}"


async def test_deaths_under_a_retired_number_and_reversed_merges_live_and_replayed(
    tmp_path: Path, tansu: TansuProcess, database: str
) -> None:
    url = database
    open_engine(url).dispose()
    on = {"CAREHUB_DATABASE_URL": url} if url.startswith("postgresql") else {}
    worker = Worker(tmp_path / "live", tansu.bootstrap, tmp_path / "worker.log", group="deaths", env=on).start()
    people = [person(i) for i in range(1, PEOPLE + 1)]
    try:  # each person's events sent one at a time, each applied before the next is sent (log order)
        sent: list[RecordEvent] = []
        for step in range(max(len(p[0]) for p in people)):
            now = [p[0][step] for p in people if step < len(p[0])]
            await produce(tansu.bootstrap, [(e, None) for e in now])
            sent += now
            await settled(tansu.bootstrap, {"deaths": url}, sent, within=240)
    finally:
        worker.stop()

    record = the_record(url)
    for i, (_, retired, survivor) in enumerate(people, 1):
        if i % 3 == 0:  # reversed: the old number survives, with both stays, and the NHS-numbered record is retired
            survivor, retired = retired, survivor
            stays = [
                key for (kind, _), (key, _) in record.items() if kind == "Encounter" and key in (survivor, retired)
            ]
            assert stays == [survivor, survivor], i
        _, theirs = record[("Patient", survivor)]
        _, gone = record[("Patient", retired)]
        assert gone["active"] is False and gone["link"][0]["other"]["reference"] == f"Patient/{survivor}"
        if i % 3:
            assert death_said(theirs) == "deceasedDateTime", i
            assert theirs["name"][0]["family"] == "SMITH"  # only the death is carried over

    rebuilt = open_engine(f"sqlite:///{tmp_path / 'replayed.db'}")
    await replay(tansu.bootstrap, rebuilt, workers=2)
    live = open_engine(url)
    assert record_hash(rebuilt) == record_hash(live)
    live.dispose()
    rebuilt.dispose()
