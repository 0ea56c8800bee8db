"""Cross-cutting consumer behaviour: how each consumer group reads the events topic, retry with
backoff on transient failures, dead-lettering."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

import orjson
from faststream import AckPolicy
from faststream.kafka import KafkaBroker, KafkaRouter
from faststream.kafka.annotations import KafkaMessage

from consumers.decoding import origin, readable_headers, undecoded
from hub.core.errors import HubError, InfrastructureError, operation_outcome
from schemas.events.rejected import EVENT_UNAPPLIED, ORIGIN_HEADER, OUTCOME_HEADER
from schemas.topics import EVENTS, EVENTS_DEAD_LETTER

log = logging.getLogger(__name__)
T = TypeVar("T")


def on_event_batches(
    router: KafkaRouter, *, group_id: str, max_records: int
) -> Callable[[Callable[[KafkaMessage], Awaitable[None]]], object]:
    """The subscriber decorator every consumer group uses on the events topic: batches, from the
    earliest uncommitted offset, committed only when the handler returns (at-least-once)."""
    return router.subscriber(
        EVENTS.name,
        group_id=group_id,
        batch=True,
        max_records=max_records,
        auto_offset_reset="earliest",
        ack_policy=AckPolicy.NACK_ON_ERROR,
        parser=readable_headers,
        decoder=undecoded,
    )


async def retrying(work: Callable[[], Awaitable[T]], *, first: float = 0.2, most: float = 5.0) -> T:
    """Run `work` until it succeeds, backing off while a dependency is down (never gives up:
    the consumer pauses in place, so nothing is skipped or committed past)."""
    delay = first
    while True:
        try:
            return await work()
        except InfrastructureError as exc:
            log.warning("dependency unavailable, retrying in %.1fs: %s", delay, exc)
            await asyncio.sleep(delay)
            delay = min(delay * 2, most)


async def dead_letter(broker: KafkaBroker, record: Any, error: HubError) -> None:
    """Keep an unappliable record whole on the events dead-letter topic, with why and where."""
    headers = {k: (v or b"").decode(errors="replace") for k, v in record.headers}
    headers.update(
        {
            "ce_specversion": "1.0",
            "ce_id": str(uuid.uuid4()),
            "ce_source": "urn:carehub:consumer",
            "ce_type": EVENT_UNAPPLIED.type,
            "ce_time": datetime.now(UTC).isoformat(),
            "ce_subject": headers.get("ce_subject", "unknown"),
            OUTCOME_HEADER: orjson.dumps(operation_outcome(error)).decode(),
            ORIGIN_HEADER: origin(record),
        }
    )
    await broker.publish(record.value or b"", EVENTS_DEAD_LETTER.name, key=record.key, headers=headers)
    log.warning("dead-lettered %s: %s", origin(record), error.code)
