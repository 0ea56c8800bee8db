"""`replay --as-of T` (hub.replay.OnTheLogBy): each partition up to its first record stamped after T.

Several producers write to one partition, each stamping records with its own clock: one running
fast must not leave a gap in a person's events (the records after it, stamped earlier, were appended
after it), and a record without a timestamp cannot be placed before T."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

from hub.replay_read import OnTheLogBy

T = datetime(2026, 11, 2, 12, tzinfo=UTC)


def record(partition: int, at: datetime | None) -> SimpleNamespace:
    return SimpleNamespace(partition=partition, timestamp=-1 if at is None else int(at.timestamp() * 1000))


def test_a_partition_ends_at_its_first_record_stamped_after_the_moment_leaving_no_gap() -> None:
    log = [
        record(0, T - timedelta(minutes=20)),
        record(1, T - timedelta(minutes=3)),
        record(0, T + timedelta(minutes=5)),  # a producer whose clock runs fast
        record(0, T - timedelta(minutes=1)),  # appended after it: not held by T either
        record(1, None),  # no timestamp: it cannot be placed before T
        record(1, T - timedelta(minutes=2)),
        record(2, T),
    ]
    kept = OnTheLogBy(T)
    assert [kept(r) for r in log] == [True, True, False, False, False, False, True]
    assert all(map(OnTheLogBy(None), log))


def test_it_counts_what_it_leaves_out_the_first_record_stamped_later_and_all_after_it_on_that_partition() -> None:
    log = [
        record(0, T - timedelta(minutes=20)),
        record(0, T + timedelta(minutes=5)),  # ends partition 0
        record(1, T - timedelta(minutes=3)),
        record(0, T - timedelta(minutes=1)),  # stamped before T, but after the end: left out too
        record(1, T + timedelta(seconds=1)),  # ends partition 1
        record(2, T),
        record(1, T - timedelta(minutes=2)),
        record(0, None),
    ]
    kept = OnTheLogBy(T)
    assert sum(map(kept, log)) == 3
    assert kept.left_out == 5 == len(log) - 3
    everything = OnTheLogBy(None)
    assert all(map(everything, log)) and everything.left_out == 0
