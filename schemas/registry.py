"""Event type string -> EventType, for every event CareHub publishes."""

from __future__ import annotations

from schemas.events import coordination
from schemas.events.agreement import AGREEMENT_LOADED
from schemas.events.base import EventType
from schemas.events.consent import CONSENT_RECORDED
from schemas.events.document import DISCHARGE_SUMMARY_RECEIVED
from schemas.events.encounter import (
    ADMISSION_CANCELLED,
    DISCHARGE_CANCELLED,
    ENCOUNTER_ADMITTED,
    ENCOUNTER_DISCHARGED,
    ENCOUNTER_TRANSFERRED,
    TRANSFER_CANCELLED,
)
from schemas.events.patient import PATIENT_MERGED, PATIENT_UPDATED

REGISTRY: dict[str, EventType] = {
    e.type: e
    for e in (
        ENCOUNTER_ADMITTED,
        ENCOUNTER_TRANSFERRED,
        ENCOUNTER_DISCHARGED,
        ADMISSION_CANCELLED,
        TRANSFER_CANCELLED,
        DISCHARGE_CANCELLED,
        PATIENT_UPDATED,
        PATIENT_MERGED,
        CONSENT_RECORDED,
        AGREEMENT_LOADED,
        DISCHARGE_SUMMARY_RECEIVED,
        *coordination.ALL,
    )
}


def lookup(type_: str) -> EventType | None:
    """The registered event type, or None for a type this hub does not know."""
    return REGISTRY.get(type_)
