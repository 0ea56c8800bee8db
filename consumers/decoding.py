"""Kafka record -> RecordEvent, trusting the topic contract (no FHIR re-validation)."""

from __future__ import annotations

import dataclasses
import heapq
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import orjson
from pydantic import ValidationError

from hub.core.errors import InvalidMessageError
from hub.core.ports import RecordEvent
from schemas.envelope import Envelope, EnvelopeError


async def readable_headers(message: Any, parse: Callable[[Any], Awaitable[Any]]) -> Any:
    """The parser every CareHub subscriber gives FastStream: its own, given records whose header
    values are text. FastStream decodes every header value as UTF-8 before a handler sees the batch,
    so one record with a value that is not (or with none) failed its batch, and was redelivered for
    ever. FastStream parses a copy whose such values are replaced (U+FFFD); the handler gets the
    records as they are, so `decode` refuses such a record as replay does, and it is dead-lettered."""
    batch = isinstance(message, tuple | list)
    parsed = await parse(type(message)(_readable(r) for r in message) if batch else _readable(message))
    parsed.raw_message = message  # (the records as on the log, for the handler and for the commit)
    return parsed


def _readable(record: Any) -> Any:
    headers = record.headers
    if all(isinstance(value, bytes) and value.isascii() for _, value in headers):
        return record  # (every CareHub record)
    readable = []
    for name, value in headers:
        raw = bytes(value or b"")
        readable.append((name, raw.decode(errors="replace").encode()))
    return dataclasses.replace(record, headers=tuple(readable))


def undecoded(message: Any) -> Any:
    """The decoder every CareHub subscriber gives FastStream: none. Handlers read the raw records
    (records_of) and decode them themselves; FastStream's own decoder parses a body as its
    content-type header says, so a record that says JSON or text but is not (a rejected CSV file,
    dead-lettered whole with the content type it was sent as) failed the batch before the handler
    saw it, and was redelivered for ever."""
    return message.body


def records_of(message: Any) -> tuple[Any, ...]:
    """The raw aiokafka records of a FastStream message (a batch, or one record), in log order."""
    raw = message.raw_message
    return in_log_order(tuple(raw)) if isinstance(raw, tuple | list) else (raw,)


def in_log_order(records: tuple[Any, ...]) -> tuple[Any, ...]:
    """A batch's records in the order they were written to the log, as a replay reads the log
    (hub.replay_read.InTimeOrder): each partition's in its own order, across partitions by their
    timestamps, ties to the lower partition. (A batch comes partition by partition; where events
    about different people depend on each other, an A40 and news of the identity it retires on
    another partition, the order across partitions decides the record.)"""
    runs: dict[int, list[Any]] = {}
    for record in records:
        runs.setdefault(record.partition, []).append(record)
    if len(runs) < 2:
        return records
    return tuple(heapq.merge(*(runs[p] for p in sorted(runs)), key=lambda r: r.timestamp))


def decode(record: Any) -> RecordEvent:
    """One aiokafka ConsumerRecord as a RecordEvent; InvalidMessageError if it breaks the contract."""
    try:
        envelope = Envelope.from_kafka(record.value, record.headers)
        payload = orjson.loads(envelope.data)
    except (EnvelopeError, ValidationError, ValueError, TypeError) as exc:  # (a header not UTF-8 or none, a bad time)
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
