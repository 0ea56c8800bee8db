"""Hospital intake: HL7 v2 frame -> FHIR events -> Kafka (acks=all) -> HL7 ACK.

AA is sent only after Kafka has acknowledged every event of the message. Content errors are
answered AE/AR and the message is kept whole on the dead-letter topic; so is a message with an event
too large for Kafka, none of whose events is then published (sending it again cannot succeed; kept
in part, or, when Kafka will not take its head either, not at all: CR in enhanced mode). While Kafka is
unreachable or slow to acknowledge the answer is AE (never AA), saying the message may have been
accepted all the same, so the sender retries; a retried message carries the same control ID and
content, hence the same event id, and the record applies it once. A frame the transport refuses (too
big, bad framing) is answered AR and what was read of it dead-lettered too, marked as kept in part
(the whole frame's size and SHA-256) when it is only the frame's head.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, replace
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
    MessageTooLargeError,
    UnsupportedMessageError,
)
from schemas.events.rejected import (
    HL7_V2_CONTENT_TYPE,
)
from schemas.topics import DEAD_LETTER

log = logging.getLogger(__name__)


class _Publisher(Publisher):
    """adapters.publishing's Publisher, which also keeps the head of an input the MLLP listener read only
    in part, marked as the file path marks one (hub.core.errors.KEPT_IN_PART: the whole input's size and
    SHA-256), so the store knows the input it came from and never hands the head out as it."""

    async def head_of(
        self,
        head: bytes,
        whole: tuple[int, str],
        *,
        event_id: str,
        sender: str,
        origin: str,
        content_type: str,
        error: HubError,
    ) -> None:
        record = self._dead_letter(event_id, sender, origin, content_type, error, whole)
        await self._send(head, DEAD_LETTER.name, *record)


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
    error: HubError | None = None  # what the ACK says went wrong (None: accepted)


PROCESSING_IDS = {"P": "production", "T": "training", "D": "debugging"}  # HL7 table 0103
# What the AE (or CE) says when Kafka did not acknowledge: a timeout, or an error after the request went
# out, does not mean the record was not written (or, of an A40's several events, that none was). Sent again
# unchanged it is the same event (the same sender, control ID and content: to_fhir), applied once; the first
# 80 characters are MSA-3's.
UNACKNOWLEDGED = (
    "Kafka did not acknowledge it; it may have been accepted: send it again unchanged (the same message "
    "sent again is the same event, which the hub applies once, so it is never applied twice)"
)


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
        enhanced_ack_senders: Collection[str] = (),
        on_answered: Callable[[str, Sequence[str]], None] | None = None,
    ) -> None:
        self._key_secret = key_secret
        self._on_answered = on_answered  # (told each MLLP message's MSH-4 and ACK codes: the hub's /metrics)
        self._clock = clock
        self._processing_ids = frozenset(p.upper() for p in processing_ids)
        self._enhanced_senders = frozenset(s.upper() for s in enhanced_ack_senders)
        self._out = _Publisher(broker, timeout=publish_timeout, clock=clock, unit="the message", retry="send it again")

    async def receive(self, frame: bytes, origin: str) -> list[bytes]:
        """One MLLP frame in; its ACK out (in enhanced mode, none, one or two: see _answers)."""
        return self._answered(*await self._take(frame, origin))

    async def refuse(self, frame: RefusedFrame) -> list[bytes]:
        """The ACK (AR) for a frame the transport would not take; what was read of it is dead-lettered,
        its head marked as kept in part (the whole frame's size and SHA-256) when that is all it is."""
        reason, whole = frame.reason, None
        if len(frame.head) < frame.size:
            reason += f"; the hub kept its first {len(frame.head):,} bytes"
            whole = (frame.size, frame.digest)
        error = UnsupportedMessageError(reason, ("MSH",), code="too-long" if frame.oversize else "structure")
        header = read_header(frame.head)
        return self._answered(await self._reject(frame.head, header, error, frame.origin, whole), header)

    async def ingest(self, raw: bytes, origin: str) -> list[Outcome]:
        """A file: one message, several, or an FHS/BHS batch; each message stands alone."""
        outcomes = []
        for message in split_as_sent(raw):  # (each as sent: kept whole if refused, its offsets its own)
            outcome, _ = await self._take(message, origin)
            outcomes.append(outcome)
        return outcomes

    async def accept(self, raw: bytes, origin: str) -> tuple[Outcome, bytes]:
        """Map, publish and answer one message (the ACK in original mode)."""
        outcome, header = await self._take(raw, origin)
        return outcome, self._ack(header, outcome.error)

    async def _take(self, raw: bytes, origin: str) -> tuple[Outcome, Header | None]:
        header = read_header(raw)
        control_id = header.control_id if header else ""
        try:
            self._refuse_processing_id(header)
            events = map_message(raw, key_secret=self._key_secret, now=self._clock())
            await self._out.events(events)  # (all or, one too large, none: MessageTooLargeError, refused and kept)
        except InvalidMessageError as error:
            return await self._reject(raw, header, error, origin), header
        except BrokerUnavailableError as unsure:
            log.warning("message %s not acknowledged by Kafka: %s", control_id, unsure)
            honest = replace(unsure, diagnostics=UNACKNOWLEDGED)
            return Outcome(control_id, "AE", 0, str(honest), error=honest), header
        log.debug("message %s accepted: %d event(s)", control_id, len(events))
        ids = tuple(e.event_id for e in events)
        return Outcome(control_id, "AA", len(events), event_ids=ids), header

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

    async def _reject(
        self, raw: bytes, header: Header | None, error: HubError, origin: str, whole: tuple[int, str] | None = None
    ) -> Outcome:
        """Dead-letter `raw` (with `whole`, the size and SHA-256 of the input it is the head of) and say so."""
        control_id = header.control_id if header else ""
        try:
            sender = (header.sending_facility or header.sending_application) if header else ""
            event_id, content_type = str(uuid.uuid4()), HL7_V2_CONTENT_TYPE
            if whole is None:
                await self._out.rejected(
                    raw, event_id=event_id, sender=sender, origin=origin, content_type=content_type, error=error
                )
            else:
                await self._out.head_of(
                    raw, whole, event_id=event_id, sender=sender, origin=origin, content_type=content_type, error=error
                )
        except BrokerUnavailableError as down:
            return Outcome(control_id, "AE", 0, str(down), error=down)
        except MessageTooLargeError as huge:  # (not even its head fits: refused, for good, and not kept)
            log.warning("message %s rejected and not kept: %s", control_id, huge.code)
            unkept = replace(error, diagnostics=f"{error.diagnostics}; not kept in the dead-letter store: {huge}")
            code = "AR" if isinstance(error, UnsupportedMessageError) or header is None else "AE"
            return Outcome(control_id, code, 0, str(unkept), error=unkept)
        code = "AR" if isinstance(error, UnsupportedMessageError) or header is None else "AE"
        log.info("message %s rejected %s: %s", control_id, code, error.code)
        return Outcome(control_id, code, 0, str(error), dead_lettered=True, error=error)

    def _ack(self, header: Header | None, error: HubError | None, *, code: str | None = None) -> bytes:
        return ack(header, error, control_id=uuid.uuid4().hex[:20], now=self._clock(), code=code)

    def _answered(self, outcome: Outcome, header: Header | None) -> list[bytes]:
        """_answers, each MLLP message's MSH-4 ('' unread) and the MSA-1 of every ACK sent told to on_answered."""
        replies = self._answers(outcome, header)
        if self._on_answered is not None:
            self._on_answered(header.sending_facility if header else "", [_code_of(reply) for reply in replies])
        return replies

    def _answers(self, outcome: Outcome, header: Header | None) -> list[bytes]:
        """The ACK frames for a message: in original mode its AA, AE or AR. A sender listed in
        mllp.enhanced_ack_senders whose message is in enhanced mode (MSH-15 or MSH-16 valued) gets
        the accept acknowledgment where MSH-15 asks for it (CA: the message is committed, to the log
        or, refused, to the dead-letter store, its ERR segment then saying why; CR: refused as an
        unsupported message type, version or processing id), then the application acknowledgment
        where MSH-16 asks for it (AA, AE or AR, as in original mode; none after a CR). Nothing
        committed (Kafka unreachable) is always answered CE, whatever MSH-15 says, so the sender
        keeps the message and sends it again; never one that can never be kept (too large even to keep
        its head: CR, and no application acknowledgment)."""
        error = outcome.error
        if header is None or not self._enhanced(header):
            return [self._ack(header, error)]
        if isinstance(error, BrokerUnavailableError):
            return [self._ack(header, error, code="CE")]
        unkept = outcome.code != "AA" and not outcome.dead_lettered  # (too large even to keep: never kept)
        accept_code = "CR" if outcome.code == "AR" or unkept else "CA"
        replies = []
        if _wanted(header.accept_ack, accepted=accept_code == "CA"):
            replies.append(self._ack(header, error, code=accept_code))  # (a CA of a refused message says why)
        rejected = accept_code == "CR" and replies
        if not rejected and _wanted(header.application_ack, accepted=outcome.code == "AA"):
            replies.append(self._ack(header, error))
        if not replies:
            log.debug(
                "message %s: MSH-15/16 %s|%s ask for no acknowledgment",
                outcome.control_id,
                header.accept_ack,
                header.application_ack,
            )
        return replies

    def _enhanced(self, header: Header) -> bool:
        said = bool(header.accept_ack or header.application_ack)
        return said and header.sending_facility.upper() in self._enhanced_senders


def _code_of(reply: bytes) -> str:
    """MSA-1 of an ACK replies.ack built (MSH, then MSA; MSH's fourth byte the field separator, ASCII),
    read from what is sent: the code the sender is told, whichever branch chose it."""
    return reply.split(b"\r")[1].split(reply[3:4])[1].decode("ascii")


def _wanted(condition: str, *, accepted: bool) -> bool:
    """Whether an MSH-15 or MSH-16 condition (HL7 table 0155) asks for this acknowledgment: AL always,
    ER on error or reject only, SU on success only; NE, or empty (the other field valued), never. A
    value outside the table is answered always, rather than left silent."""
    if condition in ("NE", ""):
        return False
    if condition == "ER":
        return not accepted
    if condition == "SU":
        return accepted
    return True
