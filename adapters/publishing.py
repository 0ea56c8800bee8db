"""What every intake adapter does with Kafka: publish a mapped event in its CloudEvents envelope,
keep a rejected input whole on the dead-letter topic with its OperationOutcome, and report a broker
that does not acknowledge in time as BrokerUnavailableError (so the input is not accepted)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import datetime
from typing import Any, Protocol

import orjson
from aiokafka.errors import KafkaError
from faststream.kafka import KafkaBroker

from hub.core.errors import BrokerUnavailableError, HubError, operation_outcome
from schemas.envelope import Envelope
from schemas.events.rejected import INPUT_REJECTED, ORIGIN_HEADER, OUTCOME_HEADER
from schemas.topics import DEAD_LETTER, EVENTS


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


class Publisher:
    """Publishes for one adapter; `unit` and `retry` word the error ("the row", "ingest the file again")."""

    def __init__(
        self, broker: KafkaBroker, *, timeout: float, clock: Callable[[], datetime], unit: str, retry: str
    ) -> None:
        self._broker = broker
        self._timeout = timeout
        self._clock = clock
        self._unavailable = f"Kafka did not acknowledge {unit} in time; it was not accepted, {retry}"

    async def event(self, event: Mapped) -> None:
        envelope = Envelope(
            id=event.event_id,
            source=event.source,
            type=event.event_type,
            time=event.event_time,
            subject=event.person_key,
            data=orjson.dumps(event.payload),
        )
        await self._send(envelope.data, EVENTS.name, envelope.subject.encode(), envelope.kafka_headers())

    async def rejected(
        self, raw: bytes, *, event_id: str, sender: str, origin: str, content_type: str, error: HubError
    ) -> None:
        """Keep `raw` whole on the dead-letter topic, keyed by its sender, with why it was refused."""
        headers = {
            "ce_specversion": "1.0",
            "ce_id": event_id,
            "ce_source": f"urn:ods:{sender}" if sender else origin,
            "ce_type": INPUT_REJECTED.type,
            "ce_time": self._clock().isoformat(),
            "ce_subject": sender or "unknown",
            "content-type": content_type,
            OUTCOME_HEADER: orjson.dumps(operation_outcome(error)).decode(),
            ORIGIN_HEADER: origin,
        }
        await self._send(raw, DEAD_LETTER.name, (sender or "unknown").encode(), headers)

    async def _send(self, value: bytes, topic: str, key: bytes, headers: dict[str, str]) -> None:
        try:
            await asyncio.wait_for(self._broker.publish(value, topic, key=key, headers=headers), self._timeout)
        except (TimeoutError, KafkaError, OSError) as exc:
            raise BrokerUnavailableError(self._unavailable, code="transient") from exc
