"""Reference (a) for the ingest benchmark: raw aiokafka moving the same bytes, nothing else.

Produces every message with acks=all (keys spread over the six partitions, like person keys), waits
for every acknowledgement, then consumes them all back with a fresh consumer group from the earliest
offset. The consumer joins its group before the clock starts, so the figure is the broker's and the
client's, not the group coordinator's join delay. The embedded broker (Tansu) answers ListOffsets
'latest' wrongly, so the consumer counts messages instead of asking where the log ends.

`python -m bench.reference` prints the figure for 5,000 synthetic ADT messages on the embedded broker.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import UTC, datetime

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from hub.kafka import create_topics, embedded_broker
from schemas.topics import Topic

PARTITIONS = 6


async def raw_kafka_throughput(
    bootstrap: str, messages: list[bytes], topic: str = "bench.raw", *, timeout: float = 300.0
) -> float:
    """Messages per second for producing and then consuming `messages` with raw aiokafka."""
    topic = f"{topic}.{uuid.uuid4().hex[:8]}"  # a fresh topic: nothing left over from an earlier run
    await create_topics(bootstrap, [Topic(topic, "bench key", PARTITIONS, "benchmark reference")])
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=1)
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=f"bench-{uuid.uuid4().hex[:8]}",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await producer.start()
    await consumer.start()
    try:
        async with asyncio.timeout(timeout):
            await _joined(consumer)
            started = time.perf_counter()
            await _produce(producer, topic, messages)
            await _consume(consumer, len(messages))
            return len(messages) / (time.perf_counter() - started)
    finally:
        await consumer.stop()
        await producer.stop()


async def _joined(consumer: AIOKafkaConsumer) -> None:
    while not consumer.assignment():
        await consumer.getmany(timeout_ms=100)


async def _produce(producer: AIOKafkaProducer, topic: str, messages: list[bytes]) -> None:
    sends = [await producer.send(topic, m, key=b"person-%d" % (i % 600)) for i, m in enumerate(messages)]
    await asyncio.gather(*sends)


async def _consume(consumer: AIOKafkaConsumer, expected: int) -> None:
    seen = 0
    while seen < expected:
        batches = await consumer.getmany(timeout_ms=500, max_records=1000)
        seen += sum(len(records) for records in batches.values())


async def _main(n: int) -> None:
    from adapters.hl7v2.synthetic import adt_traffic, make_locality

    start = datetime(2026, 10, 1, tzinfo=UTC)
    messages = [m for _, m in adt_traffic(make_locality(people=n // 2, seed=1), start=start, seed=1)]
    messages = (messages * (n // len(messages) + 1))[:n]  # distinct control ids do not matter to raw Kafka
    async with embedded_broker() as bootstrap:
        rate = await raw_kafka_throughput(bootstrap, messages)
    print(f"raw aiokafka produce+consume, {n:,} ADT messages, {PARTITIONS} partitions: {rate:,.0f} msg/s")


if __name__ == "__main__":
    asyncio.run(_main(5000))
