"""Test helpers for the Kafka log: put events on it in order, and read it back to the high watermark."""

from __future__ import annotations

import time
from collections.abc import Sequence

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition

from hub.core.ports import RecordEvent
from hub.kafka import create_topics
from schemas.topics import EVENTS


async def produce(bootstrap: str, items: Sequence[tuple[RecordEvent, int | None]]) -> int:
    """Each event in order, keyed by its subject (or onto the partition given); acks=all."""
    await create_topics(bootstrap)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    await producer.start()
    try:
        for event, partition in items:
            envelope = event.envelope()
            headers = [(k, v.encode()) for k, v in envelope.kafka_headers().items()]
            await producer.send(
                EVENTS.name, envelope.data, key=event.subject.encode(), partition=partition, headers=headers
            )
        await producer.flush()
    finally:
        await producer.stop()
    return len(items)


async def read_all(bootstrap: str, within: float = 60) -> list[ConsumerRecord[bytes, bytes]]:
    """Every record on the events topic, partition by partition, up to the high watermark each fetch
    reports (Tansu answers ListOffsets 'latest' wrongly, so the watermark is the end)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    found: list[ConsumerRecord[bytes, bytes]] = []
    try:
        partitions = [TopicPartition(EVENTS.name, p) for p in range(EVENTS.partitions)]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        done: set[int] = set()
        deadline = time.monotonic() + within
        while len(done) < len(partitions) and time.monotonic() < deadline:
            batches = await consumer.getmany(timeout_ms=300)
            for tp in partitions:
                found += batches.get(tp, [])
                high = consumer.highwater(tp)
                if high is not None and await consumer.position(tp) >= high:
                    done.add(tp.partition)
    finally:
        await consumer.stop()
    return found


def header(record: ConsumerRecord[bytes, bytes], name: str) -> str:
    """One header of a record, decoded ('' if absent)."""
    return next((v.decode() for k, v in record.headers if k == name), "")
