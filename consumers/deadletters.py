"""Dead-letter consumer: keeps every rejected input and unapplied event in the database store,
whole, with its reason, so operators can see and resend it."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import orjson
from faststream import AckPolicy
from faststream.kafka import KafkaRouter
from faststream.kafka.annotations import KafkaMessage

from consumers.decoding import origin, records_of
from consumers.middlewares import retrying
from hub.core.ports import DeadLetters
from schemas.envelope import header_value
from schemas.events.rejected import ORIGIN_HEADER, OUTCOME_HEADER
from schemas.topics import DEAD_LETTER, EVENTS_DEAD_LETTER


def keep_all(store: DeadLetters, records: Sequence[Any]) -> None:
    """Write each dead-lettered record to the store."""
    for record in records:
        headers = record.headers
        time = header_value(headers, "ce_time")
        store.keep(
            received_at=(
                datetime.fromisoformat(time) if time else datetime.fromtimestamp(record.timestamp / 1000, tz=UTC)
            ),
            source=header_value(headers, "ce_source") or "unknown",
            origin=header_value(headers, ORIGIN_HEADER) or origin(record),
            reason=orjson.loads(header_value(headers, OUTCOME_HEADER) or "{}"),
            payload=record.value or b"",
        )


def dead_letter_router(
    store: DeadLetters, *, group_id: str, on_kept: Callable[[int], None] | None = None
) -> KafkaRouter:
    """Both dead-letter topics into the store."""
    router = KafkaRouter()

    @router.subscriber(
        DEAD_LETTER.name,
        EVENTS_DEAD_LETTER.name,
        group_id=group_id,
        batch=True,
        max_records=200,
        auto_offset_reset="earliest",
        ack_policy=AckPolicy.NACK_ON_ERROR,
    )
    async def on_dead_letters(message: KafkaMessage) -> None:
        records = records_of(message)
        await retrying(lambda: asyncio.to_thread(keep_all, store, records))
        if on_kept:
            on_kept(len(records))

    return router
