"""The events log as every reader of it takes it (a replay, the export, the KPI report, the coordination
replay): records as fetched, up to the high watermark, and which of them were on the log by a moment.

The log is read without a consumer group (partitions assigned, from the beginning, up to the high
watermark each fetch reports), so a replay never disturbs the live consumers' offsets.
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import AsyncIterator, Callable
from datetime import datetime
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from hub.kafka import partitions_of

# records taken from the consumer at a time (getmany's max_records), by every reader of the log: a
# fold, the export, the KPI report and bench/replay's raw reference. Fewer records alive at once keep
# aiokafka's record parsing in the CPU's caches: reading a million events took 8-10 s at 100-250,
# 10-13 s at 500 and 16-18 s at 5,000 on the 2-core VMs this was measured on (fetch sizes made no
# difference); a fold also applies each batch while its payloads are still warm
READ_BATCH = 250


class OnTheLogBy:
    """Which records were on the log by a moment (None: all): each partition up to, not including, its
    first record stamped later (or not stamped at all). A record's timestamp is its producer's clock,
    and several producers write to one partition: one whose clock runs fast ends the partition there,
    early (by as much as that record was appended before its stamp says), rather than leaving a gap in
    it, so a person's events are always a prefix of their partition, as the hub held them. Producers'
    clocks are to be kept in step (NTP), as the hub's are for every time it records."""

    def __init__(self, moment: datetime | None) -> None:
        self.ms = None if moment is None else int(moment.timestamp() * 1000)
        self.ended: set[int] = set()  # partitions past the moment
        self.left_out = 0  # records refused: each ended partition's first record stamped later, and all after it

    def __call__(self, record: Any) -> bool:
        if self.ms is None:
            return True
        if record.partition in self.ended:
            self.left_out += 1
            return False
        if not 0 <= record.timestamp <= self.ms:
            self.ended.add(record.partition)
            self.left_out += 1
            return False
        return True


async def read_log(
    bootstrap: str,
    *,
    batch: int = READ_BATCH,
    idle_ms: int = 1000,
    only: Callable[[int], bool] | None = None,
    partitions_read: Callable[[list[int]], None] | None = None,
    ended: Callable[[set[int]], None] | None = None,
) -> AsyncIterator[list[Any]]:
    """Every record on the events topic (or on the partitions `only` picks), partition by partition
    as fetched, up to the high watermark; `partitions_read` is told which partitions those are
    (none: the topic does not exist yet) before the first record, and `ended`, after each fetch's
    records, which of them have been read to their end."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_partition_fetch_bytes=8 * 1024 * 1024,
        fetch_max_bytes=64 * 1024 * 1024,
    )
    try:  # (started inside: stopped even when it cannot start)
        await consumer.start()
        partitions = [tp for tp in await partitions_of(consumer) if only is None or only(tp.partition)]
        if partitions_read is not None:
            partitions_read([tp.partition for tp in partitions])
        if not partitions:
            return
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        while True:
            fetched = await consumer.getmany(timeout_ms=idle_ms, max_records=batch)
            for tp in sorted(fetched, key=lambda t: t.partition):
                yield fetched[tp]
            done = await _at_end(consumer, partitions)
            if ended is not None:
                ended(done)
            if len(done) == len(partitions):
                return
    finally:
        await consumer.stop()


async def _at_end(consumer: AIOKafkaConsumer, partitions: list[TopicPartition]) -> set[int]:
    """The partitions whose position has reached the high watermark their fetches reported."""
    done = set()
    for tp in partitions:
        end = consumer.highwater(tp)
        if end is not None and await consumer.position(tp) >= end:
            done.add(tp.partition)
    return done


async def read_in_time_order(bootstrap: str, *, only: Callable[[int], bool] | None = None) -> AsyncIterator[list[Any]]:
    """Every record on the events topic (or on the partitions `only` picks), as read_log reads them,
    in the order they were written to the log (InTimeOrder)."""
    order = InTimeOrder()
    async for records in read_log(bootstrap, only=only, partitions_read=order.reading, ended=order.end):
        ready = order.add(records)
        if ready:
            yield ready
    rest = order.rest()
    if rest:
        yield rest


class InTimeOrder:
    """Records of several partitions, merged into the order they were written to the log in, as a
    live consumer that keeps up applies them: each partition in its own order, and next always the
    earliest stamped (then the lowest partition) of the records at the head of each partition. A
    partition not yet read to its end and with nothing held holds the rest back until its next
    records come. (Where events about different people depend on each other, a merge, their order
    across partitions decides the record: read partition by partition as fetched, a replay could
    apply an A40 before an older identity's event that the live record applied first.)"""

    def __init__(self) -> None:
        self._held: dict[int, deque[Any]] = {}
        self._heads: list[tuple[int, int]] = []  # (timestamp, partition) of each partition's first record held
        self._open: set[int] = set()  # partitions not yet read to their end
        self._blocking = 0  # open partitions with nothing held

    def reading(self, partitions: list[int]) -> None:
        self._held = {p: deque() for p in partitions}
        self._open = set(partitions)
        self._blocking = len(partitions)

    def end(self, done: set[int]) -> None:
        for p in self._open & done:
            self._open.discard(p)
            if not self._held[p]:
                self._blocking -= 1

    def add(self, records: list[Any]) -> list[Any]:
        """Records of one partition, in its order; the records now ready, in time order."""
        if records:
            p = records[0].partition
            held = self._held[p]
            if not held:
                heapq.heappush(self._heads, (records[0].timestamp, p))
                if p in self._open:
                    self._blocking -= 1
            held.extend(records)
        return self._ready()

    def rest(self) -> list[Any]:
        self.end(set(self._open))
        return self._ready()

    def _ready(self) -> list[Any]:
        out: list[Any] = []
        heads, held = self._heads, self._held
        while heads and not self._blocking:
            p = heads[0][1]
            queue = held[p]
            out.append(queue.popleft())
            if queue:
                heapq.heapreplace(heads, (queue[0].timestamp, p))
            else:
                heapq.heappop(heads)
                if p in self._open:
                    self._blocking += 1
        return out
