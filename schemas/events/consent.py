"""A person's choice about sharing. Payload: one FHIR Consent (provision.type permit or deny)."""

from __future__ import annotations

from schemas.events.base import EventType

CONSENT_RECORDED = EventType(
    "uk.nhs.carehub.consent.recorded.v1",
    "a person's permit or objection to sharing, by recipient organisation, data category and period",
    ("Consent",),
)
