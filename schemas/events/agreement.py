"""Information sharing agreements on the log. Payload: one FHIR Contract (status executed, version,
applies = the validity dates) whose legallyBindingAttachment holds the agreement document as JSON,
so the log shows which agreement versions were loaded when, and a replay can rebuild them."""

from __future__ import annotations

from schemas.events.base import EventType

AGREEMENT_LOADED = EventType(
    "uk.nhs.carehub.agreement.loaded.v1",
    "a version of an information sharing agreement was loaded (old versions stay)",
    ("Contract",),
)
