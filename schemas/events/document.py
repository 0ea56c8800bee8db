"""Clinical documents a hospital sends (FHIR R4 document Bundles). Payload: a FHIR `collection` Bundle."""

from __future__ import annotations

from schemas.events.base import EventType

DISCHARGE_SUMMARY_RECEIVED = EventType(
    "uk.nhs.carehub.discharge-summary.received.v1",
    "a hospital's discharge summary (a FHIR document, POST /fhir/Bundle): its Composition, the stay, a Patient stub",
    ("Composition", "Patient", "Encounter"),
)
DISCHARGE_SUMMARY_SNOMED = "373942005"  # Discharge summary (record artifact), as the UK Core example codes it
