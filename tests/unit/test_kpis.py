"""The commissioner's KPIs for the scripted locality month equal the figures worked out by hand
(tests/locality_month.py, EXPECTED_KPIS), for every KPI the issue lists, in any partition order."""

from __future__ import annotations

import random

from hub.core.kpis import KpiFold
from hub.core.ports import RecordEvent
from tests import locality_month as month


def figures(events: list[RecordEvent]) -> dict[tuple[str, str], float]:
    fold = KpiFold(service=month.SERVICE)
    for event in events:
        fold.add(event)
    return {(r.kpi, r.breakdown): r.value for r in fold.report("2026-11")}


def test_every_kpi_equals_the_hand_computed_figure() -> None:
    assert figures(month.script()) == month.EXPECTED_KPIS


def test_the_figures_do_not_depend_on_the_order_partitions_are_read_in() -> None:
    events = month.script()
    by_person: dict[str, list[RecordEvent]] = {}
    for event in events:
        by_person.setdefault(event.subject, []).append(event)
    rng = random.Random(7)
    for _ in range(20):
        queues = [list(q) for q in by_person.values()]
        shuffled: list[RecordEvent] = []
        while any(queues):
            queue = rng.choice([q for q in queues if q])
            shuffled.append(queue.pop(0))
        assert figures(shuffled) == month.EXPECTED_KPIS


def test_events_seen_twice_count_once_and_other_months_are_empty() -> None:
    events = month.script()
    assert figures(events + events) == month.EXPECTED_KPIS
    fold = KpiFold(service=month.SERVICE)
    for event in events:
        fold.add(event)
    october = {(r.kpi, r.breakdown): r.value for r in fold.report("2026-10")}
    assert october[("referrals", "")] == 0
    assert october[("huddles held", "")] == 0
