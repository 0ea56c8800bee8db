"""The events log as every reader of it takes it (a replay, the export, the KPI report, the coordination
replay): records as fetched, up to the high watermark, and which of them were on the log by a moment.

The log is read without a consumer group (partitions assigned, from the beginning, up to the high
watermark each fetch reports), so a replay never disturbs the live consumers' offsets.
"""

from __future__ import annotations

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
) -> AsyncIterator[list[Any]]:
    """Every record on the events topic (or on the partitions `only` picks), partition by partition
    as fetched, up to the high watermark; `partitions_read` is told which partitions those are
    (none: the topic does not exist yet) before the first record."""
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
            if await _at_end(consumer, partitions):
                return
    finally:
        await consumer.stop()


async def _at_end(consumer: AIOKafkaConsumer, partitions: list[TopicPartition]) -> bool:
    """True once every partition's position has reached the high watermark its fetches reported."""
    for tp in partitions:
        end = consumer.highwater(tp)
        if end is None or await consumer.position(tp) < end:
            return False
    return True
