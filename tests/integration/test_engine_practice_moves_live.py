"""The rules engine takes a practice move as the record does, live (`carehub worker` on a real broker,
Tansu, its SQLite or PostgreSQL database): a stale register row or an older hospital message sent
late leaves the person where the newest word put them, so the PIC summary goes to the practice the
record's Patient names; and a replay of the log rebuilds the same coordination state and clocks."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest

from hub.core.huddle import practice_codes
from hub.core.ports import RecordEvent
from hub.core.tasks import Engine
from hub.replay import replay
from hub.replay_coordination import rebuild
from hub.rules import load_rules
from hub.settings import Settings
from hub.store.database import open_engine
from hub.store.sql import SqlRecordReader
from schemas.events import coordination as co
from tests.conftest import TansuProcess
from tests.crash_world import settled
from tests.integration.test_crash_safety import Worker
from tests.integration.test_engine_merges_live import states
from tests.integration.test_practice_moves_live import people
from tests.kafka_log import header, produce
from tests.unit.test_practice_moves import NEW, THIRD

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(300)]


def closing(person: str) -> list[RecordEvent]:
    """The coordination service's stay for the person, opened and closed with its PIC summary."""
    episode: dict[str, Any] = {
        "resourceType": "EpisodeOfCare",
        "id": f"episode-{person[:8]}",
        "status": "active",
        "patient": {"reference": f"Patient/{person}"},
        "careManager": {"identifier": {"system": co.COORDINATOR_SYSTEM, "value": "c-ann"}},
        "managingOrganization": {
            "identifier": {"system": "https://fhir.nhs.uk/Id/ods-organization-code", "value": "Y0PIC"}
        },
        "period": {"start": "2026-11-21T09:00:00+00:00"},
    }
    closed = episode | {"status": "finished", "period": episode["period"] | {"end": "2026-11-25T09:00:00+00:00"}}
    summary = {"resourceType": "Composition", "id": f"pic-{person[:8]}", "status": "final", "title": "PIC summary"}

    def service(kind: str, resources: list[dict[str, Any]], at: datetime) -> RecordEvent:
        bundle = {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": r} for r in resources]}
        return RecordEvent(f"{kind}-{person[:8]}", kind, "urn:ods:Y0PIC", at, person, bundle)

    return [
        service(co.EPISODE_OPENED.type, [episode], datetime(2026, 11, 21, 9, tzinfo=UTC)),
        service(co.EPISODE_CLOSED.type, [closed, summary], datetime(2026, 11, 25, 9, tzinfo=UTC)),
    ]


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The live hub's database: a SQLite file in its data folder, or a fresh PostgreSQL database."""
    if request.param == "postgresql":
        return str(request.getfixturevalue("postgres_url"))
    return f"sqlite:///{(tmp_path / 'live' / 'carehub.db').resolve()}"


async def test_the_live_engine_sends_the_letter_where_the_record_says_and_a_replay_rebuilds_the_same(
    tmp_path: Path, tansu: TansuProcess, database: str
) -> None:
    said = people()
    keys = {who: batch[0].subject for who, batch in said.items()}
    events = [e for batch in said.values() for e in batch] + [e for key in keys.values() for e in closing(key)]
    url = database
    open_engine(url).dispose()
    on = {"CAREHUB_DATABASE_URL": url} if url.startswith("postgresql") else {}
    worker = Worker(tmp_path / "live", tansu.bootstrap, tmp_path / "worker.log", group="moves", env=on).start()
    try:
        await produce(tansu.bootstrap, [(e, None) for e in events])
        log = await settled(tansu.bootstrap, {"moves": url}, events, within=240)
    finally:
        worker.stop()
    assert "Traceback" not in (tmp_path / "worker.log").read_text(errors="replace")

    live = open_engine(url)
    reader = SqlRecordReader(live)
    organizations = {f"Organization/{o['id']}": o for o in reader.search("Organization", None)}
    on_record = {who: practice_codes(reader.read("Patient", key) or {}, organizations) for who, key in keys.items()}
    live.dispose()
    letters = {}
    for r in log:
        if header(r, "ce_type") == co.PIC_SUMMARY_SENT.type:
            bundle = orjson.loads(r.value)
            [patient] = [e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Patient"]
            letters[patient["id"]] = {patient["generalPractitioner"][0]["identifier"]["value"]}
    expected = {"moved": {NEW}, "newcomer": {NEW}, "moved-again": {THIRD}}
    assert on_record == expected == {who: letters[key] for who, key in keys.items()}
    live_states, live_clocks = states(url)
    assert {who: live_states[key]["practice"] for who, key in keys.items()} == {
        who: next(iter(p)) for who, p in expected.items()
    }

    rebuilt = open_engine(f"sqlite:///{tmp_path / 'replayed.db'}")
    await replay(tansu.bootstrap, rebuilt, workers=2)
    await rebuild(tansu.bootstrap, rebuilt, Engine(load_rules(Settings().coordination.rules)))
    replayed_url = str(rebuilt.url)
    rebuilt.dispose()
    assert states(replayed_url) == (live_states, live_clocks)
