"""The CloudEvents 1.0 envelope every CareHub event travels in, in Kafka binary mode.

Headers carry the context attributes (`ce_*`), the value is the FHIR JSON, and the Kafka key is
the envelope's `subject`: the stable, non-identifying person key. No NHS number ever appears in
a key or a header.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

FHIR_JSON = "application/fhir+json"
SPEC_VERSION = "1.0"

_ATTRIBUTES = ("specversion", "id", "source", "type", "time", "subject")


class EnvelopeError(ValueError):
    """A Kafka record that is not a CareHub CloudEvent in binary mode."""


class Envelope(BaseModel):
    """One event: who said what happened to whom, and when; `data` is FHIR JSON bytes."""

    model_config = ConfigDict(frozen=True)

    specversion: str = SPEC_VERSION
    id: str = Field(min_length=1, description="Unique per event; the idempotency key")
    source: str = Field(min_length=1, description="The sending organisation, e.g. urn:ods:RCB")
    type: str = Field(pattern=r"^uk\.nhs\.carehub\.[a-z-]+\.[a-z-]+\.v\d+$")
    time: AwareDatetime = Field(description="When it happened (event time, not arrival time)")
    subject: str = Field(min_length=1, description="Person key; also the Kafka key")
    datacontenttype: str = FHIR_JSON
    data: bytes = Field(repr=False, exclude=True)

    def kafka_headers(self) -> dict[str, str]:
        """Binary-mode headers (CloudEvents Kafka protocol binding, section 3.2)."""
        return {
            "ce_specversion": self.specversion,
            "ce_id": self.id,
            "ce_source": self.source,
            "ce_type": self.type,
            "ce_time": self.time.isoformat(),
            "ce_subject": self.subject,
            "content-type": self.datacontenttype,
        }

    @classmethod
    def from_kafka(cls, value: bytes, headers: Iterable[tuple[str, bytes]] | dict[str, str]) -> Envelope:
        """Read a binary-mode record back; raises EnvelopeError naming what is missing."""
        pairs = headers.items() if isinstance(headers, dict) else headers
        found = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in pairs}
        missing = [a for a in _ATTRIBUTES if f"ce_{a}" not in found]
        if missing:
            raise EnvelopeError(f"record lacks CloudEvents headers: {', '.join(missing)}")
        return cls(
            specversion=found["ce_specversion"],
            id=found["ce_id"],
            source=found["ce_source"],
            type=found["ce_type"],
            time=datetime.fromisoformat(found["ce_time"]),
            subject=found["ce_subject"],
            datacontenttype=found.get("content-type", FHIR_JSON),
            data=value,
        )


def header_value(headers: Sequence[tuple[str, bytes]], name: str) -> str | None:
    """One header of a raw Kafka record, as text (bytes that are not UTF-8 replaced), or None."""
    for key, value in headers:
        if key == name:
            return value.decode(errors="replace") if value is not None else None
    return None
