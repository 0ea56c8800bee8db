"""The rules engine follows A40 merges live (`carehub worker` on a real broker, Tansu), and a replay of
the log rebuilds what it did: the same record hash, the same coordination state and clocks.

Each of PEOPLE people is known to the hospital first by a hospital number alone (so keyed by it) and
referred under that key; the A40 that merges the number into their NHS-numbered record comes on the
survivor's partition (usually another than the retired key's). Then half have their first visit
recorded under the survivor (it completes the task the retired key opened, so it never goes overdue),
and half die, said by a message still naming them by the old number alone (a death the survivor's
state knows: their visits are cancelled). The hub's clock ticks onto every partition until every
first visit would have run out.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
import sqlalchemy as sa

from adapters.hl7v2.to_fhir import map_message
from hub.core.coordination import tick
from hub.core.identity import stable_id
from hub.core.ports import RecordEvent
from hub.core.tasks import Engine
from hub.replay import replay
from hub.replay_coordination import rebuild
from hub.rules import load_rules
from hub.settings import Settings
from hub.store.database import open_engine
from hub.store.hashing import record_hash
from hub.store.tables import coordination_clock, coordination_state, record_resource
from schemas.events import coordination as co
from schemas.topics import EVENTS
from tests import locality_month as month
from tests.builders import a_valid_nhs_number, an_adt
from tests.conftest import TansuProcess
from tests.crash_world import settled
from tests.integration.test_crash_safety import Worker
from tests.kafka_log import header, produce

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(300)]
PEOPLE = 8
SECRET = b"engine-merges-key-secret"
START = datetime(2026, 11, 2, 9, tzinfo=UTC)


def mapped(raw: bytes) -> RecordEvent:
    [m] = map_message(raw, key_secret=SECRET)
    return RecordEvent(m.event_id, m.event_type, m.source, m.event_time, m.person_key, m.payload)


def as_(key: str, event: RecordEvent, i: int) -> RecordEvent:
    """A locality-month event about P1 as one about person key `key` (its ids made the i-th person's)."""
    text = orjson.dumps(event.payload).replace(month.PEOPLE["P1"].encode(), key.encode())
    payload: dict[str, Any] = orjson.loads(
        text.replace(month.referral_id("P1").encode(), stable_id("ref", str(i)).encode())
    )
    return RecordEvent(stable_id(event.id, key), event.type, event.source, event.time, key, payload)


def person(i: int) -> tuple[list[RecordEvent], str, str]:
    """The i-th person's events, and their retired and surviving keys."""
    nhs, mrn, day = a_valid_nhs_number(random.Random(i)), f"OLD{i}", START + timedelta(minutes=i)
    merge = mapped(
        an_adt(trigger="A40", control_id=f"M{i}", nhs_number=nhs, merged_mrn=mrn, event_time=f"202611100{i}00")
    )
    survivor = merge.subject
    retired = next(e["resource"]["id"] for e in merge.payload["entry"] if e["resource"].get("active") is False)
    referral = as_(retired, month.referral("P1", day + timedelta(days=2), "gp"), i)
    if i % 2:
        later = as_(survivor, month.contact("P1", day + timedelta(days=18), "face-to-face"), i)
    else:
        later = mapped(
            an_adt(
                trigger="A08", control_id=f"D{i}", nhs_number=None, mrn=mrn, event_time="202611120900",
                died="202611120800", death_indicator="Y",
            )
        )  # fmt: skip
        assert later.subject == retired
    return [referral, merge, later], retired, survivor


def the_log() -> tuple[list[RecordEvent], list[tuple[str, str]]]:
    events, pairs = [], []
    for i in range(1, PEOPLE + 1):
        theirs, retired, survivor = person(i)
        events += theirs
        pairs.append((retired, survivor))
    ticks = [tick(p, START + timedelta(days=d)) for d in (5, 15, 25, 35, 45) for p in range(EVENTS.partitions)]
    return sorted([*events, *ticks], key=lambda e: (e.time, e.type == co.CLOCK_TICK.type)), pairs


def states(url: str) -> tuple[dict[str, Any], set[tuple[str, str, str, str, int]]]:
    engine = open_engine(url)
    try:
        with engine.connect() as conn:
            found = {
                k: dict(s)
                for k, s in conn.execute(sa.select(coordination_state.c.person_key, coordination_state.c.state))
            }
            clocks = {
                (r.id, r.person_key, r.due.isoformat(), r.kind, r.partition)
                for r in conn.execute(sa.select(coordination_clock))
            }
    finally:
        engine.dispose()
    return found, clocks


def tasks_on_the_record(url: str) -> dict[str, tuple[str, str, str, str | None]]:
    """Task id -> (person key it is filed under, rule, status, status reason) on the record."""
    engine = open_engine(url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                sa.select(record_resource.c.id, record_resource.c.person_key, record_resource.c.content).where(
                    record_resource.c.resource_type == "Task"
                )
            )
            found = {}
            for rid, key, content in rows:
                task = content if isinstance(content, dict) else orjson.loads(content)
                reason = ((task.get("statusReason") or {}).get("coding") or [{}])[0].get("code")
                found[rid] = (key, task["code"]["coding"][0]["code"], task["status"], reason)
            return found
    finally:
        engine.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The live hub's database: a SQLite file in its data folder, or a fresh PostgreSQL database."""
    if request.param == "postgresql":
        return str(request.getfixturevalue("postgres_url"))
    return f"sqlite:///{(tmp_path / 'live' / 'carehub.db').resolve()}"


async def test_the_engine_follows_merges_live_and_a_replay_rebuilds_the_same(
    tmp_path: Path, tansu: TansuProcess, database: str
) -> None:
    events, pairs = the_log()
    url = database
    open_engine(url).dispose()
    on = {"CAREHUB_DATABASE_URL": url} if url.startswith("postgresql") else {}
    worker = Worker(tmp_path / "live", tansu.bootstrap, tmp_path / "worker.log", group="merges", env=on).start()
    try:  # a hub that keeps up: each day's events applied before the next day's come
        sent: list[RecordEvent] = []
        for day in sorted({e.time.date() for e in events}):
            now = [e for e in events if e.time.date() == day]
            await produce(tansu.bootstrap, [(e, _tick_partition(e)) for e in now])
            sent += now
            log = await settled(tansu.bootstrap, {"merges": url}, sent, within=240)
    finally:
        worker.stop()

    survivors = {s for _, s in pairs}
    retired = {r for r, _ in pairs}
    overdue = [orjson.loads(r.value) for r in log if header(r, "ce_type") == co.TASK_OVERDUE.type]
    overdue_visits = [t["for"]["reference"] for t in overdue if t["code"]["coding"][0]["code"] == "first-visit"]
    assert overdue_visits == []  # no false breach: every first visit was made, or the person died
    on_record = tasks_on_the_record(url)
    visits = {key: (status, reason) for key, rule, status, reason in on_record.values() if rule == "first-visit"}
    assert set(visits) == survivors  # filed under the survivors, none under a retired identity
    expected = {s: ("completed", None) if i % 2 else ("cancelled", "person-died") for i, (_, s) in enumerate(pairs, 1)}
    assert visits == expected
    live_states, live_clocks = states(url)
    assert {k: live_states[k] for k in retired} == {r: {"merged_into": s} for r, s in pairs}
    assert all(live_states[s].get("died") for i, (_, s) in enumerate(pairs, 1) if not i % 2)

    rebuilt = open_engine(f"sqlite:///{tmp_path / 'replayed.db'}")
    await replay(tansu.bootstrap, rebuilt, workers=2)
    await rebuild(tansu.bootstrap, rebuilt, Engine(load_rules(Settings().coordination.rules)))
    replayed_url = str(rebuilt.url)
    live = open_engine(url)
    assert record_hash(rebuilt) == record_hash(live)  # (the same events hash the same on either database)
    live.dispose()
    rebuilt.dispose()
    assert states(replayed_url) == (live_states, live_clocks)
    apart = [(r, s) for r, s in pairs if _partition_of(log, r) != _partition_of(log, s)]
    assert apart  # (some retired keys' events were on other partitions than their survivors')


def _tick_partition(event: RecordEvent) -> int | None:
    """A tick goes onto the partition it is for (as the hub's Ticker puts it); any other event by its key."""
    return int(event.payload["parameter"][0]["valueInteger"]) if event.type == co.CLOCK_TICK.type else None


def _partition_of(log: list[Any], key: str) -> int:
    return int(next(r.partition for r in log if r.key == key.encode()))
