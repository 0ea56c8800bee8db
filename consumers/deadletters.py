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

from consumers.decoding import origin, readable_headers, records_of, undecoded
from consumers.middlewares import retrying
from hub.core.ports import DeadLetters
from schemas.envelope import header_value as envelope_header
from schemas.events.rejected import ORIGIN_HEADER, OUTCOME_HEADER
from schemas.topics import DEAD_LETTER, EVENTS_DEAD_LETTER


def keep_all(store: DeadLetters, records: Sequence[Any]) -> None:
    """Write each dead-lettered record to the store, whatever its headers say (a header that cannot
    be read is kept as text in the reason: a dead letter is never refused, or it would be retried
    for ever)."""
    for record in records:
        headers = record.headers
        store.keep(
            received_at=_received_at(record),
            source=header_value(headers, "ce_source") or "unknown",
            origin=header_value(headers, ORIGIN_HEADER) or origin(record),
            reason=_reason(header_value(headers, OUTCOME_HEADER)),
            payload=record.value or b"",
        )


def header_value(headers: Sequence[tuple[str, bytes]], name: str) -> str | None:
    """One header, as text (schemas.envelope.header_value), with NULs replaced: PostgreSQL's text
    and jsonb refuse them, and a dead letter's headers are not trusted."""
    value = envelope_header(headers, name)
    return value.replace("\x00", "\ufffd") if value is not None else None


def _received_at(record: Any) -> datetime:
    said = header_value(record.headers, "ce_time")
    try:
        at = datetime.fromisoformat(said) if said else None
    except ValueError:
        at = None
    if at is None or at.tzinfo is None:  # (none, unreadable or with no offset: when the broker took it)
        return datetime.fromtimestamp(record.timestamp / 1000, tz=UTC)
    return at


def _reason(said: str | None) -> dict[str, Any]:
    try:
        reason = orjson.loads((said or "{}").replace("\\u0000", "\\ufffd"))  # (jsonb refuses NULs)
    except orjson.JSONDecodeError:
        reason = None
    if isinstance(reason, dict):
        return reason
    diagnostics = f"the dead letter's {OUTCOME_HEADER} header is not a JSON object: {(said or '')[:500]}"
    return {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": "invalid", "diagnostics": diagnostics}],
    }


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
        parser=readable_headers,
        decoder=undecoded,
    )
    async def on_dead_letters(message: KafkaMessage) -> None:
        records = records_of(message)
        await retrying(lambda: asyncio.to_thread(keep_all, store, records))
        if on_kept:
            on_kept(len(records))

    return router
