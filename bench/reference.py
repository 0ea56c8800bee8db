"""Reference (a) for the ingest benchmark: raw aiokafka moving the same bytes, nothing else.

Produces every message with acks=all (keys spread over the partitions, like person keys), waits for
every acknowledgement, then consumes them all back with a fresh consumer group from the earliest
offset. The embedded broker answers ListOffsets 'latest' wrongly, so the consumer counts messages
instead of asking where the log ends.
"""

from __future__ import annotations

import asyncio
import time
import uuid

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from hub.kafka import create_topics, embedded_broker
from schemas.topics import Topic

PARTITIONS = 6


async def raw_kafka_throughput(bootstrap: str, messages: list[bytes], topic: str = "bench.raw") -> float:
    """Messages per second for producing and then consuming `messages` with raw aiokafka."""
    topic = f"{topic}.{uuid.uuid4().hex[:8]}"
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
        started = time.perf_counter()
        sends = [await producer.send(topic, m, key=str(i % 997).encode()) for i, m in enumerate(messages)]
        await asyncio.gather(*sends)
        seen = 0
        while seen < len(messages):
            batches = await consumer.getmany(timeout_ms=500, max_records=1000)
            seen += sum(len(records) for records in batches.values())
        return len(messages) / (time.perf_counter() - started)
    finally:
        await consumer.stop()
        await producer.stop()


async def _main(n: int) -> None:
    payload = b"MSH|" + b"x" * 1000
    async with embedded_broker() as bootstrap:
        rate = await raw_kafka_throughput(bootstrap, [payload] * n)
    print(f"raw aiokafka produce+consume, {n} messages: {rate:,.0f} msg/s")


if __name__ == "__main__":
    asyncio.run(_main(5000))
