"""Hospital encounter events (from HL7 v2 ADT). Payload: a FHIR `collection` Bundle."""

from __future__ import annotations

from schemas.events.base import EventType

_CARRIES = ("Patient", "Organization", "Encounter")

ENCOUNTER_ADMITTED = EventType("uk.nhs.carehub.encounter.admitted.v1", "A01: a person was admitted", _CARRIES)
ENCOUNTER_TRANSFERRED = EventType(
    "uk.nhs.carehub.encounter.transferred.v1", "A02: a person moved ward or bed", _CARRIES
)
ENCOUNTER_DISCHARGED = EventType("uk.nhs.carehub.encounter.discharged.v1", "A03: a person was discharged", _CARRIES)
ADMISSION_CANCELLED = EventType(
    "uk.nhs.carehub.encounter.admission-cancelled.v1", "A11: an admission is undone", _CARRIES
)
TRANSFER_CANCELLED = EventType(
    "uk.nhs.carehub.encounter.transfer-cancelled.v1",
    "A12: a transfer is undone (the person is back where they were: PV1-3)",
    _CARRIES,
)
DISCHARGE_CANCELLED = EventType(
    "uk.nhs.carehub.encounter.discharge-cancelled.v1", "A13: a discharge is undone", _CARRIES
)
