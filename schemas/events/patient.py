"""Person events (from HL7 v2 ADT). Payload: a FHIR `collection` Bundle."""

from __future__ import annotations

from schemas.events.base import EventType

PATIENT_UPDATED = EventType(
    "uk.nhs.carehub.patient.updated.v1",
    "A08: demographics or registered GP changed",
    ("Patient", "Organization", "Encounter"),
)
PATIENT_MERGED = EventType(
    "uk.nhs.carehub.patient.merged.v1",
    "A40: a duplicate record is merged into the surviving person; the old Patient is "
    "inactive with link.type=replaced-by",
    ("Patient", "Organization"),
)
