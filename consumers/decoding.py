"""Kafka record -> RecordEvent, trusting the topic contract (no FHIR re-validation)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson
from pydantic import ValidationError

from hub.core.errors import InvalidMessageError
from hub.core.ports import RecordEvent
from schemas.envelope import Envelope, EnvelopeError


def records_of(message: Any) -> tuple[Any, ...]:
    """The raw aiokafka records of a FastStream message (a batch, or one record)."""
    raw = message.raw_message
    return raw if isinstance(raw, tuple) else (raw,)


def decode(record: Any) -> RecordEvent:
    """One aiokafka ConsumerRecord as a RecordEvent; InvalidMessageError if it breaks the contract."""
    try:
        envelope = Envelope.from_kafka(record.value, record.headers)
        payload = orjson.loads(envelope.data)
    except (EnvelopeError, ValidationError, orjson.JSONDecodeError) as exc:
        raise InvalidMessageError(f"not a CareHub CloudEvent: {_first_line(exc)}") from exc
    if not isinstance(payload, dict) or "resourceType" not in payload:
        raise InvalidMessageError("event data is not a FHIR resource", ("data",))
    return RecordEvent(
        id=envelope.id,
        type=envelope.type,
        source=envelope.source,
        time=envelope.time,
        subject=envelope.subject,
        payload=payload,
    )


Decoded = list[tuple[Any, RecordEvent]]
Rejected = list[tuple[Any, InvalidMessageError]]


def decode_all(records: Sequence[Any]) -> tuple[Decoded, Rejected]:
    """Split a batch into (record, event) pairs and (record, reason) pairs to dead-letter."""
    decoded: Decoded = []
    rejected: Rejected = []
    for record in records:
        try:
            decoded.append((record, decode(record)))
        except InvalidMessageError as error:
            rejected.append((record, error))
    return decoded, rejected


def origin(record: Any) -> str:
    """Where a record came from, as topic:partition:offset."""
    return f"kafka:{record.topic}:{record.partition}:{record.offset}"


def _first_line(exc: Exception) -> str:
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__
