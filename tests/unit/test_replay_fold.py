"""A replay fold holds only the resources lately put or read parsed; the record it folds does not
depend on how many (anything older is parsed again from its text when the rules read it)."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from hub import replay_fold as replay
from hub.core.ports import RecordEvent
from hub.core.record import MERGED, apply_events
from hub.replay_fold import FoldUnitOfWork
from tests.integration.test_crash_safety import the_events


def folded(events: Sequence[RecordEvent]) -> FoldUnitOfWork:
    fold = FoldUnitOfWork()
    for start in range(0, len(events), 16):
        apply_events(fold, events[start : start + 16])
    return fold


def test_a_fold_holding_few_resources_parsed_gives_the_same_record(monkeypatch: pytest.MonkeyPatch) -> None:
    events = the_events(3000)
    assert any(e.type == MERGED for e in events)  # merges read a person's resources back, Provenances too
    everything = folded(events)  # (3,000 events put fewer resources than one generation holds)
    monkeypatch.setattr(replay, "_RECENT", 8)
    few = folded(events)
    assert len(few._parsed) + len(few._older) <= 16 < len(everything._parsed)
    assert few.rows == everything.rows
    assert few.identifiers == everything.identifiers
    assert few.done == everything.done
    assert few.by_person == everything.by_person
    assert (few.merged_away, few.retired) == (everything.merged_away, everything.retired)


def test_the_folds_memo_of_event_times_is_bounded() -> None:
    memo = replay._Memo(lambda n: n * 2, most=3)
    assert [memo[n] for n in range(10)] == [n * 2 for n in range(10)]
    assert len(memo) <= 3
