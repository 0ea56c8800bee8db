"""A referral's answers count from its date as the record holds it, live (`carehub worker` on a real
broker, Tansu, and its SQLite database): after a correction, whatever order it and the outcome came
in, the record's ServiceRequest and the rules engine's triage task agree, on the record and in the
engine's own state (tests/unit/test_coordination_order.py holds the same in process).

Two voluntary-sector referrals made on 6 Nov; each one's triage runs out (a clock tick on 10 Nov); then
each is corrected, and its partner's "contacted" row comes, dated between the two dates: one referral
is corrected to 2 Nov and contacted on 4 Nov (the row answers it, on the record and for the engine),
the other corrected to 9 Nov and contacted on 7 Nov (it answers neither). A third, made on 6 Nov too, is
declined by a row dated 4 Nov that comes before its correction to 3 Nov: the record skips the row as it
comes (dated before the referral then) and never reads it again, and the engine does not apply it
after the correction either: the triage stays open, on the record and in the engine.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from hub.core.coordination import tick
from hub.core.ports import Json, RecordEvent
from hub.store.database import open_engine
from hub.store.sql import SqlRecordReader
from schemas.events import coordination as co
from schemas.topics import EVENTS
from tests.conftest import TansuProcess
from tests.crash_world import settled
from tests.integration.test_crash_safety import Worker
from tests.integration.test_engine_merges_live import states
from tests.kafka_log import produce
from tests.unit.test_coordination_order import OTHER_NHS, outcome, vcse_referral

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(300)]
EARLIER = {"referral_id": "VCS-1"}  # (the builders' first person)
LATER = {"referral_id": "VCS-2", "nhs_number": OTHER_NHS}
SKIPPED = {"referral_id": "VCS-3"}  # (the first person's second referral)


def the_log() -> list[tuple[RecordEvent, int | None]]:
    """In log order: the referrals, a tick on every partition, the corrections, the outcomes."""
    ticks = [(tick(p, datetime(2026, 11, 10, tzinfo=UTC)), p) for p in range(EVENTS.partitions)]
    return [
        (vcse_referral(**EARLIER), None),
        (vcse_referral(**LATER), None),
        (vcse_referral(**SKIPPED), None),
        *ticks,
        (outcome("declined", "2026-11-04", **SKIPPED), None),  # before the 6 Nov referral: skipped
        (vcse_referral(referred_on="2026-11-03", **SKIPPED), None),
        (vcse_referral(referred_on="2026-11-02", **EARLIER), None),
        (vcse_referral(referred_on="2026-11-09", **LATER), None),
        (outcome("contacted", "2026-11-04", **EARLIER), None),
        (outcome("contacted", "2026-11-07", **LATER), None),
    ]


def triage(tasks: list[Json]) -> list[tuple[str, str]]:
    """(status, referral) of each triage Task on the record."""
    return sorted(
        (t["status"], t["focus"]["reference"]) for t in tasks if t["code"]["coding"][0]["code"] == "referral-triage"
    )


async def test_a_corrected_referral_is_answered_from_the_date_the_record_holds_live(
    tmp_path: Path, tansu: TansuProcess
) -> None:
    url = f"sqlite:///{(tmp_path / 'live' / 'carehub.db').resolve()}"
    open_engine(url).dispose()
    worker = Worker(tmp_path / "live", tansu.bootstrap, tmp_path / "worker.log", group="corrected").start()
    log = the_log()
    try:
        await produce(tansu.bootstrap, log)
        await settled(tansu.bootstrap, {"corrected": url}, [e for e, _ in log], within=240)
    finally:
        worker.stop()
    assert "Traceback" not in (tmp_path / "worker.log").read_text(errors="replace")

    live = open_engine(url)
    reader = SqlRecordReader(live)
    requests = reader.search("ServiceRequest", None)
    tasks = reader.search("Task", None)
    live.dispose()
    said = {
        r["authoredOn"][:10]: [e["valueCode"] for e in r.get("extension", []) if e["url"] == co.OUTCOME_EXTENSION]
        for r in requests
    }
    assert said == {"2026-11-02": ["contacted"], "2026-11-09": [], "2026-11-03": []}
    earlier = next(f"ServiceRequest/{r['id']}" for r in requests if r["authoredOn"].startswith("2026-11-02"))
    later = next(f"ServiceRequest/{r['id']}" for r in requests if r["authoredOn"].startswith("2026-11-09"))
    skipped = next(f"ServiceRequest/{r['id']}" for r in requests if r["authoredOn"].startswith("2026-11-03"))
    assert triage(tasks) == sorted([("completed", earlier), ("requested", later), ("requested", skipped)])
    engine_states, _ = states(url)
    in_engine = sorted(
        (t["status"], t["focus"])
        for s in engine_states.values()
        for t in (s.get("tasks") or {}).values()
        if t["rule"] == "referral-triage"
    )
    assert in_engine == triage(tasks)
