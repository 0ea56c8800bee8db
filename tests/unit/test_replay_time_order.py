"""hub.replay_read.InTimeOrder: records of several partitions merged into the order they were written
to the log in, each partition's own order kept, never released while a partition still being read
might hold an earlier one."""

from __future__ import annotations

import random
from types import SimpleNamespace
from typing import Any

from hub.replay_read import InTimeOrder


def records(partition: int, *stamps: int) -> list[Any]:
    return [SimpleNamespace(partition=partition, offset=n, timestamp=t) for n, t in enumerate(stamps)]


def names(found: list[Any]) -> list[tuple[int, int]]:
    return [(r.partition, r.offset) for r in found]


def test_records_wait_for_a_partition_still_being_read_then_come_in_time_order() -> None:
    order = InTimeOrder()
    order.reading([0, 1, 2])
    assert order.add(records(1, 10, 30)) == []  # partitions 0 and 2 may hold earlier ones
    assert order.add(records(0, 20)) == []
    order.end({2})  # read to its end, nothing on it
    assert names(order.add([])) == [(1, 0), (0, 0)]  # then partition 0 has nothing left: wait for it
    order.end({0, 1})
    assert names(order.rest()) == [(1, 1)]


def test_a_partition_keeps_its_own_order_whatever_its_stamps_say() -> None:
    order = InTimeOrder()
    order.reading([0, 1])
    found = order.add(records(0, 50, 10))  # two producers, one clock fast: the partition's order stands
    found += order.add(records(1, 20, 60))
    assert names(found) == [(1, 0), (0, 0), (0, 1)]  # then partition 0 has nothing left: wait for it
    assert names(order.rest()) == [(1, 1)]


def test_ties_go_to_the_lower_partition_and_every_record_comes_once() -> None:
    rng = random.Random(7)
    partitions = {p: records(p, *sorted(rng.randrange(40) for _ in range(30))) for p in range(4)}
    order = InTimeOrder()
    order.reading(list(partitions))
    out: list[Any] = []
    cursors = dict.fromkeys(partitions, 0)
    while any(cursors[p] < len(partitions[p]) for p in partitions):  # fetched a few at a time, in any order
        p = rng.choice([p for p in partitions if cursors[p] < len(partitions[p])])
        n = rng.randint(1, 5)
        out += order.add(partitions[p][cursors[p] : cursors[p] + n])
        cursors[p] += n
        order.end({q for q in partitions if cursors[q] >= len(partitions[q])})
    out += order.rest()
    expected = sorted((r for rs in partitions.values() for r in rs), key=lambda r: (r.timestamp, r.partition, r.offset))
    assert names(out) == names(expected)


def test_a_consumers_batch_is_taken_in_the_order_a_replay_reads_the_log() -> None:
    from consumers.decoding import in_log_order

    rng = random.Random(11)
    partitions = {p: records(p, *sorted(rng.randrange(20) for _ in range(10))) for p in (3, 0, 5)}
    partitions[5][2].timestamp = 99  # a fast producer's clock: the partition's order still stands
    batch = tuple(r for p in sorted(partitions) for r in partitions[p])  # as a batch comes: by partition
    order = InTimeOrder()
    order.reading(sorted(partitions))
    read = [r for p in sorted(partitions) for r in order.add(partitions[p])]
    assert names(list(in_log_order(batch))) == names(read + order.rest())
