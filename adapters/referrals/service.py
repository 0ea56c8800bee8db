"""Referral and register intake: a file -> rows -> FHIR events -> Kafka (acks=all), row by row.

Each row stands alone: it becomes exactly one event, published, or it is rejected and kept whole
on the dead-letter topic (the CSV header and the row, or the JSON document) with the reason, row
and field, as an OperationOutcome header; the file's other rows go on. A file that cannot be read
at all (not UTF-8, separated by semicolons, not JSON, no header) is rejected whole. A rejection
already in the dead-letter store (the same source and content: the same file sent again) is
reported again but not kept again. A row Kafka does not acknowledge is reported "not sent" and
neither published nor dead-lettered: ingesting the file again sends it, and the rows already
applied are recognised by their event ids. A rejection too large for Kafka to keep whole keeps its
head (adapters/publishing.py). A referral whose referral_id its referrer used already for another
person with another birth date is refused (adapters/referrals/clashes.py). A referral accepted without a
malformed optional detail (a phone, postcode or email: adapters/referrals/person_details.py) is accepted
with a warning naming the row and the field as its reason.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Protocol, runtime_checkable

from faststream.kafka import KafkaBroker

from adapters.publishing import Publisher
from adapters.referrals.clashes import RecordLookup, ReferralIds
from adapters.referrals.fields import is_gss, is_ods
from adapters.referrals.rows import BOM, Format, Row, detect, read_rows, unread
from adapters.referrals.to_fhir import MappedEvent, map_row
from hub.core.errors import (
    BrokerUnavailableError,
    HubError,
    InvalidMessageError,
    MessageTooLargeError,
    StoreUnavailableError,
)
from hub.core.identity import stable_id

log = logging.getLogger(__name__)
ACCEPTED, REJECTED, NOT_SENT = "accepted", "rejected", "not sent"
ALREADY_KEPT = "already in the dead-letter store, not kept again"
_SENDER_FIELDS = ("practice_ods", "referrer")


@runtime_checkable
class KeptInputs(Protocol):
    """What the dead-letter store holds already (hub.store.sql.SqlDeadLetters.holds)."""

    def holds(self, *, source: str, payload: bytes) -> bool: ...


def _utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class Outcome:
    """What became of one row (row None: the file as a whole): accepted, rejected or not sent."""

    row: int | None
    status: str
    event_type: str = ""
    reason: str | None = None
    dead_lettered: bool = False
    event_id: str = ""
    already_kept: bool = False  # rejected, and dead-lettered already (an earlier sending, or this one)
    without_id: bool = False  # an accepted referral with no referral_id: a correction of it cannot move it
    # accepted without a malformed optional detail (a phone, postcode or email): each warning names the
    # row and field, never the value, and is the row's reason too, one "warning: ..." a line
    warnings: tuple[str, ...] = ()


@dataclass(frozen=True)
class FileOutcome:
    """What became of one file's rows, and the columns or fields it has that its layout does not read."""

    outcomes: list[Outcome]
    fmt: Format | None = None
    ignored: tuple[str, ...] = ()


class ReferralIntake:
    """Reads register and referral files, publishes one FHIR event per good row, dead-letters the rest."""

    def __init__(
        self,
        broker: KafkaBroker,
        *,
        key_secret: bytes,
        publish_timeout: float = 5.0,
        clock: Callable[[], datetime] = _utcnow,
        kept: KeptInputs | None = None,
        record: RecordLookup | None = None,
    ) -> None:
        self._key_secret = key_secret
        self._clock = clock
        self._kept = kept
        self._ids = ReferralIds(record)
        self._sent: set[tuple[str, str]] = set()  # (source, digest) dead-lettered by this intake
        self._out = Publisher(
            broker, timeout=publish_timeout, clock=clock, unit="the row", retry="ingest the file again"
        )

    async def ingest(
        self, raw: bytes, origin: str, fmt: Format | None = None, *, extracted_on: date | None = None
    ) -> list[Outcome]:
        """One file; `fmt` None means detect it from the content."""
        return (await self.ingest_file(raw, origin, fmt, extracted_on=extracted_on)).outcomes

    async def ingest_file(
        self, raw: bytes, origin: str, fmt: Format | None = None, *, extracted_on: date | None = None
    ) -> FileOutcome:
        """One file, with the names it has that its layout does not read."""
        try:
            fmt = fmt or detect(raw)
            rows = read_rows(raw, fmt)
        except InvalidMessageError as error:
            return FileOutcome([await self._reject(raw, None, error, origin, _content_type(raw, fmt))], fmt)
        outcomes = [await self.accept(row, fmt, origin, extracted_on=extracted_on) for row in rows]
        ignored = unread((name for row in rows for name in row.values), fmt)
        return FileOutcome(outcomes, fmt, tuple(ignored))

    async def accept(self, row: Row, fmt: Format, origin: str, *, extracted_on: date | None = None) -> Outcome:
        """Map and publish one row, or dead-letter it."""
        try:
            event = map_row(fmt, row, key_secret=self._key_secret, now=self._clock(), extracted_on=extracted_on)
            clash = await asyncio.to_thread(self._ids.check, row.number, event)
        except InvalidMessageError as error:
            return await self._reject(row.raw, row, error, origin, fmt.content_type)
        except StoreUnavailableError as error:
            log.warning("row %d not sent: %s", row.number, error)
            reason = f"the record did not answer ({error.diagnostics}); it was not accepted, ingest the file again"
            return Outcome(row.number, NOT_SENT, event.event_type, reason)
        if clash is not None:
            return await self._reject(row.raw, row, clash, origin, fmt.content_type)
        try:
            await self._out.event(event)
        except MessageTooLargeError as error:
            return await self._reject(row.raw, row, error, origin, fmt.content_type)
        except BrokerUnavailableError as error:
            log.warning("row %d not sent: %s", row.number, error)
            return Outcome(row.number, NOT_SENT, event.event_type, error.diagnostics)
        self._ids.sent(event)
        log.debug("row %d accepted: %s %s", row.number, event.event_type, event.event_id)
        warned = "\n".join(f"warning: {said}" for said in event.warnings) or None
        if event.warnings:  # (the fields alone: the values are the person's)
            log.info("row %d accepted without field(s) %s", row.number, ", ".join(_fields(event.warnings)))
        return Outcome(
            row.number,
            ACCEPTED,
            event.event_type,
            warned,
            event_id=event.event_id,
            without_id=_no_id(fmt, event),
            warnings=event.warnings,
        )

    async def _reject(self, raw: bytes, row: Row | None, error: HubError, origin: str, content_type: str) -> Outcome:
        number = row.number if row else None
        where = f"{origin}#row={number}" if number is not None else origin
        sender = _sender(row)
        once = (f"urn:ods:{sender}" if sender else where, hashlib.sha256(raw).hexdigest())  # (ce_source, as kept)
        if once in self._sent or await self._holds(once[0], raw):
            log.info("row %s rejected again: %s [%s]", number or "(file)", error.code, ", ".join(error.expression))
            return Outcome(number, REJECTED, reason=f"{error.diagnostics}; {ALREADY_KEPT}", already_kept=True)
        try:
            kept = await self._out.rejected(
                raw,
                event_id=stable_id("rejected", where, once[1]),
                sender=sender,
                origin=where,
                content_type=content_type,
                error=error,
                unit="the row" if row else "the file",
            )
        except BrokerUnavailableError as down:
            log.warning("row %s not sent: %s", number or "(file)", down)
            return Outcome(number, NOT_SENT, reason=f"{error.diagnostics}; not dead-lettered: {down.diagnostics}")
        except MessageTooLargeError as huge:  # (not even its head fits: refused all the same, and not kept)
            log.warning("row %s rejected and not kept: %s", number or "(file)", huge.code)
            return Outcome(number, REJECTED, reason=f"{error.diagnostics}; not kept in the dead-letter store: {huge}")
        self._sent.add(once)
        log.info("row %s rejected: %s [%s]", number or "(file)", error.code, ", ".join(error.expression))
        reason = f"{error.diagnostics}; {kept.note}" if kept.note else error.diagnostics
        return Outcome(number, REJECTED, reason=reason, dead_lettered=True)

    async def _holds(self, source: str, raw: bytes) -> bool:
        if self._kept is None:
            return False
        try:
            return await asyncio.to_thread(self._kept.holds, source=source, payload=raw)
        except StoreUnavailableError as error:  # (kept again then: a row of a file is stored once anyway)
            log.warning("the dead-letter store did not answer: %s", error)
            return False


def _sender(row: Row | None) -> str:
    """The sending organisation of a rejected row, where it reads as a code (else '')."""
    for name in _SENDER_FIELDS:
        value = row.values.get(name) if row else None
        code = value.strip().upper() if isinstance(value, str) else ""
        if is_ods(code) or is_gss(code):
            return code
    return ""


def _fields(warnings: tuple[str, ...]) -> list[str]:
    """The fields warnings name ("row 3, field phone: ..." -> phone)."""
    return [w.split(", field ", 1)[-1].split(":", 1)[0] for w in warnings]


def _no_id(fmt: Format, event: MappedEvent) -> bool:
    """An adult social care referral without referral_id: its id comes from the person, so sent again with
    the NHS number corrected it is another referral (README, "Corrections")."""
    if fmt not in (Format.ASC_CSV, Format.ASC_JSON):
        return False
    entries = event.payload.get("entry") or []
    return not any(
        e["resource"].get("identifier") for e in entries if e["resource"]["resourceType"] == "ServiceRequest"
    )


def _content_type(raw: bytes, fmt: Format | None) -> str:
    if fmt is not None:
        return fmt.content_type
    return "application/json" if raw.removeprefix(BOM).lstrip()[:1] in (b"{", b"[") else "text/csv"
