"""Hospital intake: HL7 v2 frame -> FHIR events -> Kafka (acks=all) -> HL7 ACK.

AA is sent only after Kafka has acknowledged every event of the message. Content errors are
answered AE/AR and the message is kept whole on the dead-letter topic. While Kafka is
unreachable the answer is AE (never AA), so the sender retries; a retried message carries the
same control ID and content, hence the same event id, and the record applies it once. A frame the
transport refuses (too big, bad framing) is answered AR and what was read of it dead-lettered too.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Collection
from dataclasses import dataclass
from datetime import UTC, datetime

from faststream.kafka import KafkaBroker

from adapters.hl7v2.message import Header, read_header, split_as_sent
from adapters.hl7v2.replies import ack
from adapters.hl7v2.to_fhir import map_message
from adapters.hl7v2.transport import RefusedFrame
from adapters.publishing import Publisher
from hub.core.errors import (
    BrokerUnavailableError,
    HubError,
    InvalidMessageError,
    UnsupportedMessageError,
)
from schemas.events.rejected import (
    HL7_V2_CONTENT_TYPE,
)

log = logging.getLogger(__name__)


def _utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class Outcome:
    """What became of one message: its control ID, the ACK code, events published, the reason,
    and whether it was kept whole on the dead-letter topic."""

    control_id: str
    code: str
    events: int
    reason: str | None = None
    dead_lettered: bool = False
    event_ids: tuple[str, ...] = ()


PROCESSING_IDS = {"P": "production", "T": "training", "D": "debugging"}  # HL7 table 0103


class HospitalIntake:
    """Receives HL7 v2 ADT (MLLP frames or files), publishes FHIR events, answers with ACKs."""

    def __init__(
        self,
        broker: KafkaBroker,
        *,
        key_secret: bytes,
        publish_timeout: float = 5.0,
        clock: Callable[[], datetime] = _utcnow,
        processing_ids: Collection[str] = ("P",),
        enhanced_acks: bool = False,
    ) -> None:
        self._key_secret = key_secret
        self._clock = clock
        self._processing_ids = frozenset(p.upper() for p in processing_ids)
        self._enhanced_acks = enhanced_acks
        self._out = Publisher(broker, timeout=publish_timeout, clock=clock, unit="the message", retry="send it again")

    async def receive(self, frame: bytes, origin: str) -> bytes:
        """One MLLP frame in, one ACK out (empty: the sender asked for none, see _ack)."""
        _, reply = await self.accept(frame, origin)
        return reply

    async def refuse(self, frame: RefusedFrame) -> bytes:
        """The ACK (AR) for a frame the transport would not take; what was read of it is dead-lettered."""
        reason = frame.reason
        if len(frame.head) < frame.size:
            reason += f"; the hub kept its first {len(frame.head):,} bytes"
        error = UnsupportedMessageError(reason, ("MSH",), code="too-long" if frame.oversize else "structure")
        _, reply = await self._reject(frame.head, read_header(frame.head), error, frame.origin)
        return reply

    async def ingest(self, raw: bytes, origin: str) -> list[Outcome]:
        """A file: one message, several, or an FHS/BHS batch; each message stands alone."""
        outcomes = []
        for message in split_as_sent(raw):  # (each as sent: kept whole if refused, its offsets its own)
            outcome, _ = await self.accept(message, origin)
            outcomes.append(outcome)
        return outcomes

    async def accept(self, raw: bytes, origin: str) -> tuple[Outcome, bytes]:
        """Map, publish and answer one message."""
        header = read_header(raw)
        control_id = header.control_id if header else ""
        try:
            self._refuse_processing_id(header)
            events = map_message(raw, key_secret=self._key_secret, now=self._clock())
        except InvalidMessageError as error:
            return await self._reject(raw, header, error, origin)
        try:
            for event in events:
                await self._out.event(event)
        except BrokerUnavailableError as error:
            log.warning("message %s not accepted: %s", control_id, error)
            return Outcome(control_id, "AE", 0, str(error)), self._ack(header, error)
        log.debug("message %s accepted: %d event(s)", control_id, len(events))
        ids = tuple(e.event_id for e in events)
        return Outcome(control_id, "AA", len(events), event_ids=ids), self._ack(header, None)

    def _refuse_processing_id(self, header: Header | None) -> None:
        """AR (ERR 202) for a message whose MSH-11 this hub does not take: by default only `P`
        (production), so a training or debugging system pointed at the live hub by mistake puts no
        invented people in the shared care record (mllp.processing_ids widens it, for a test hub).
        An MSH-11 left empty is taken as `P`, as the ACK answers it."""
        said = (header.processing_id if header else "").upper()
        if said and said not in self._processing_ids:
            kind = PROCESSING_IDS.get(said, "an unknown processing id")
            taken = ", ".join(sorted(self._processing_ids))
            raise UnsupportedMessageError(
                f"MSH-11 processing id {said} ({kind}) is not taken by this hub, which takes {taken}: a "
                "training or test system sends to a hub of its own (or its operator sets mllp.processing_ids)",
                ("MSH-11",),
            )

    async def _reject(self, raw: bytes, header: Header | None, error: HubError, origin: str) -> tuple[Outcome, bytes]:
        control_id = header.control_id if header else ""
        try:
            sender = (header.sending_facility or header.sending_application) if header else ""
            await self._out.rejected(
                raw,
                event_id=str(uuid.uuid4()),
                sender=sender,
                origin=origin,
                content_type=HL7_V2_CONTENT_TYPE,
                error=error,
            )
        except BrokerUnavailableError as down:
            return Outcome(control_id, "AE", 0, str(down)), self._ack(header, down)
        reply = self._ack(header, error)
        code = "AR" if isinstance(error, UnsupportedMessageError) or header is None else "AE"
        log.info("message %s rejected %s: %s", control_id, code, error.code)
        return Outcome(control_id, code, 0, str(error), dead_lettered=True), reply

    def _ack(self, header: Header | None, error: HubError | None) -> bytes:
        """The ACK; with mllp.enhanced_acks, a message in enhanced mode (MSH-15 or MSH-16 valued) gets
        the accept acknowledgment (CA, CE, CR) under MSH-15's condition, or nothing (b"")."""
        enhanced = self._enhanced_acks and header is not None and bool(header.accept_ack or header.application_ack)
        if enhanced and header is not None and not _wanted(header.accept_ack, accepted=error is None):
            log.debug("message %s: MSH-15 %s asks for no accept acknowledgment", header.control_id, header.accept_ack)
            return b""
        return ack(header, error, control_id=uuid.uuid4().hex[:20], now=self._clock(), enhanced=enhanced)


def _wanted(condition: str, *, accepted: bool) -> bool:
    """Whether MSH-15 (HL7 table 0155) asks for this accept acknowledgment: AL always, NE never, ER on
    error or reject only, SU on success only; empty, or a value outside the table, is answered."""
    if condition == "NE":
        return False
    if condition == "ER":
        return not accepted
    if condition == "SU":
        return accepted
    return True
