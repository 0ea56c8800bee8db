"""What every intake adapter does with Kafka: publish a mapped event in its CloudEvents envelope,
keep a rejected input whole on the dead-letter topic with its OperationOutcome, and report a broker
that does not acknowledge in time as BrokerUnavailableError (so the input is not accepted).

A record over the size Kafka takes is not an outage: sending it again cannot succeed, so it is
MessageTooLargeError (hub.core.errors: an InvalidMessageError), saying its size and the limit. The
events of one input are built and measured before any is sent, so one too large refuses them all. A
rejected input too large to keep whole keeps its first HEAD_BYTES (as the MLLP listener keeps an
over-size frame's), its reason saying so with the input's size and SHA-256, and carrying them in
extension KEPT_IN_PART, so the store knows the input it came from and never hands the head out as it.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, Protocol

import orjson
from aiokafka.errors import KafkaError, MessageSizeTooLargeError, RecordListTooLargeError
from aiokafka.record.default_records import DefaultRecordBatchBuilder
from faststream.kafka import KafkaBroker

from hub.core.errors import BrokerUnavailableError, HubError, MessageTooLargeError, operation_outcome
from schemas.envelope import Envelope
from schemas.events.rejected import INPUT_REJECTED, ORIGIN_HEADER, OUTCOME_HEADER
from schemas.topics import DEAD_LETTER, EVENTS

HEAD_BYTES = 64 * 1024  # what is kept of a rejected input too large to keep whole (as adapters/hl7v2/transport.py)
MAX_RECORD_BYTES = 1_048_576  # aiokafka's max_request_size, which consumers.app.build_broker leaves as it is
_TOO_LARGE = (MessageSizeTooLargeError, RecordListTooLargeError)
_THEIR_HEADERS = 512  # allowance for the headers FastStream adds to ours (correlation id, content type)


class Mapped(Protocol):
    """An adapter's FHIR event, ready for its envelope."""

    @property
    def event_id(self) -> str: ...
    @property
    def source(self) -> str: ...
    @property
    def event_type(self) -> str: ...
    @property
    def event_time(self) -> datetime: ...
    @property
    def person_key(self) -> str: ...
    @property
    def payload(self) -> dict[str, Any]: ...


_Record = tuple[bytes, bytes, dict[str, str]]  # value, key, headers


@dataclass(frozen=True)
class Kept:
    """What the dead-letter topic holds of a rejected input: all of it, or its head (`note` says so)."""

    size: int
    kept: int
    note: str = ""

    @property
    def whole(self) -> bool:
        return self.kept == self.size


class Publisher:
    """Publishes for one adapter; `unit` and `retry` word the error ("the row", "ingest the file again")."""

    def __init__(
        self, broker: KafkaBroker, *, timeout: float, clock: Callable[[], datetime], unit: str, retry: str
    ) -> None:
        self._broker = broker
        self._timeout = timeout
        self._clock = clock
        self._unit = unit
        self._unavailable = f"Kafka did not acknowledge {unit} in time; it was not accepted, {retry}"

    async def event(self, event: Mapped) -> None:
        await self.events([event])

    async def events(self, events: Sequence[Mapped]) -> None:
        """Publish every event, in order, or none: each is built and measured first, so one too large
        for Kafka (MessageTooLargeError) refuses them all before any is on the log."""
        records = [_record(event) for event in events]
        for value, key, headers in records:
            self._fits(value, EVENTS.name, key, headers)
        for value, key, headers in records:
            await self._send(value, EVENTS.name, key, headers)

    async def rejected(
        self,
        raw: bytes,
        *,
        event_id: str,
        sender: str,
        origin: str,
        content_type: str,
        error: HubError,
        unit: str = "",
    ) -> Kept:
        """Keep `raw` whole on the dead-letter topic, keyed by its sender, with why it was refused; if
        Kafka will not take it whole, keep its first HEAD_BYTES, the reason saying so (`unit` names it:
        "the file"; by default this publisher's unit)."""
        try:
            await self._send(raw, DEAD_LETTER.name, *self._dead_letter(event_id, sender, origin, content_type, error))
            return Kept(len(raw), len(raw))
        except MessageTooLargeError:
            note = _kept_head(unit or self._unit, raw)
        head = replace(error, diagnostics=f"{error.diagnostics}; {note}")
        whole = (len(raw), hashlib.sha256(raw).hexdigest())
        record = self._dead_letter(event_id, sender, origin, content_type, head, whole)
        await self._send(raw[:HEAD_BYTES], DEAD_LETTER.name, *record)  # (too large still: MessageTooLargeError)
        return Kept(len(raw), min(len(raw), HEAD_BYTES), note)

    def _dead_letter(
        self,
        event_id: str,
        sender: str,
        origin: str,
        content_type: str,
        error: HubError,
        whole: tuple[int, str] | None = None,
    ) -> tuple[bytes, dict[str, str]]:
        headers = {
            "ce_specversion": "1.0",
            "ce_id": event_id,
            "ce_source": f"urn:ods:{sender}" if sender else origin,
            "ce_type": INPUT_REJECTED.type,
            "ce_time": self._clock().isoformat(),
            "ce_subject": sender or "unknown",
            "content-type": content_type,
            OUTCOME_HEADER: orjson.dumps(operation_outcome(error, whole=whole)).decode(),
            ORIGIN_HEADER: origin,
        }
        return (sender or "unknown").encode(), headers

    def _fits(self, value: bytes, topic: str, key: bytes, headers: dict[str, str]) -> None:
        """MessageTooLargeError if the record is over what the producer takes (as aiokafka measures it)."""
        listed = [(name, said.encode()) for name, said in headers.items()]
        if DefaultRecordBatchBuilder.estimate_size_in_bytes(key, value, listed) + _THEIR_HEADERS > MAX_RECORD_BYTES:
            raise MessageTooLargeError(_too_large(self._unit, value, key, headers, topic))

    async def _send(self, value: bytes, topic: str, key: bytes, headers: dict[str, str]) -> None:
        try:
            await asyncio.wait_for(self._broker.publish(value, topic, key=key, headers=headers), self._timeout)
        except _TOO_LARGE as exc:
            raise MessageTooLargeError(_too_large(self._unit, value, key, headers, topic)) from exc
        except (TimeoutError, KafkaError, OSError) as exc:
            raise BrokerUnavailableError(self._unavailable, code="transient") from exc


def _record(event: Mapped) -> _Record:
    envelope = Envelope(
        id=event.event_id,
        source=event.source,
        type=event.event_type,
        time=event.event_time,
        subject=event.person_key,
        data=orjson.dumps(event.payload),
    )
    return envelope.data, envelope.subject.encode(), envelope.kafka_headers()


def _too_large(unit: str, value: bytes, key: bytes, headers: dict[str, str], topic: str) -> str:
    size = len(value) + len(key) + sum(len(k) + len(v.encode()) for k, v in headers.items())
    return (
        f"{unit} is too large for Kafka: {size:,} bytes as a record on {topic}, against a limit of "
        f"{MAX_RECORD_BYTES:,} bytes (the producer's max_request_size; the topic's max.message.bytes may be "
        "lower); it was not accepted, and sending it again as it is cannot succeed"
    )


def _kept_head(unit: str, raw: bytes) -> str:
    return (
        f"{unit} is too large to keep whole in the dead-letter store ({len(raw):,} bytes, over the "
        f"{MAX_RECORD_BYTES:,} Kafka takes in one record; SHA-256 {hashlib.sha256(raw).hexdigest()}): "
        f"the hub kept its first {min(len(raw), HEAD_BYTES):,} bytes"
    )
