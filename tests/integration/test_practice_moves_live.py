"""Practice moves through the live hub: hospital ADT and GP register rows on a real Kafka-protocol
broker (Tansu), applied by `carehub worker` to its SQLite record, whose Patients name the practice
the newest word says (hub.core.record, "practice"), and whose huddle groups them so; a replay of the
same log builds a record that hashes the same (`carehub record hash`)."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import pytest

from hub.core.huddle import agenda, practice_codes
from hub.core.ports import RecordEvent
from hub.replay import replay
from hub.store.database import open_engine
from hub.store.hashing import record_hash
from hub.store.sql import SqlRecordReader
from hub.web.views import gather
from tests.conftest import TansuProcess
from tests.integration.test_crash_safety import Worker, applied, produce, reference_hash, wait_until
from tests.unit.test_practice_moves import NEW, OLD, THIRD, hospital, register_row

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(300)]


def people() -> dict[str, list[RecordEvent]]:
    """Three people's events, in the order the log holds them (sent late where dated earlier); each
    person's stay has its own visit number (one the hospital gave two people would be one Encounter)."""
    moved = [
        *hospital("A01", "M1", "202611010930", nhs_number="9990000018", visit="V18"),  # Y00001
        *register_row(NEW, "2026-11-15", nhs_number="9990000018"),
        *register_row(OLD, "2026-11-10", nhs_number="9990000018"),  # stale: extracted before the move
        *hospital("A08", "M2", "202611121000", nhs_number="9990000018", visit="V18"),  # Y00001 again, sent late
        *hospital(
            "A03", "M3", "202611201105", discharge="202611201100", practice=None, nhs_number="9990000018", visit="V18"
        ),
    ]
    newcomer = [  # known first from the register, then from an older admission
        *register_row(NEW, "2026-11-15", nhs_number="9990000026"),
        *hospital("A01", "N1", "202611010930", nhs_number="9990000026", visit="V26"),
    ]
    moved_again = [  # the register, then a newer hospital Patient naming a third practice
        *register_row(NEW, "2026-11-15", nhs_number="9990000034"),
        *hospital("A08", "T1", "202611201000", practice=THIRD, nhs_number="9990000034", visit="V34"),
    ]
    return {"moved": moved, "newcomer": newcomer, "moved-again": moved_again}


async def test_the_live_record_and_its_replay_name_the_newest_practice_and_hash_the_same(
    tmp_path: Path, tansu: TansuProcess
) -> None:
    said = people()
    events = [e for batch in said.values() for e in batch]
    await produce(tansu.bootstrap, events)
    data = tmp_path / "live"
    url = f"sqlite:///{(data / 'carehub.db').resolve()}"
    open_engine(url).dispose()
    worker = Worker(data, tansu.bootstrap, tmp_path / "worker.log", group="practice-moves").start()
    try:
        await wait_until(lambda: applied(url) >= len(events), 120, "every event applied")
    finally:
        worker.stop()
    assert "Traceback" not in (tmp_path / "worker.log").read_text(errors="replace")

    live = open_engine(url)
    reader = SqlRecordReader(live)
    organizations = {f"Organization/{o['id']}": o for o in reader.search("Organization", None)}
    practice = {
        who: practice_codes(reader.read("Patient", batch[0].subject) or {}, organizations)
        for who, batch in said.items()
    }
    assert practice == {"moved": {NEW}, "newcomer": {NEW}, "moved-again": {THIRD}}
    new = agenda(NEW, date(2026, 11, 26), gather(reader, NEW))
    assert [(i.section, i.person_key) for i in new.items] == [("recent-discharge", said["moved"][0].subject)]
    assert agenda(OLD, date(2026, 11, 26), gather(reader, OLD)).items == ()
    live_hash = record_hash(live)
    live.dispose()

    replayed = open_engine(f"sqlite:///{tmp_path / 'replayed.db'}")
    result = await replay(tansu.bootstrap, replayed)
    assert result.events == len(events)
    assert record_hash(replayed) == live_hash == reference_hash(tmp_path, events)
    replayed.dispose()
