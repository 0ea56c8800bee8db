"""Rejected input: kept whole on the dead-letter topic, with the reason as an OperationOutcome."""

from __future__ import annotations

from schemas.events.base import EventType

INPUT_REJECTED = EventType(
    "uk.nhs.carehub.input.rejected.v1",
    "Input the hub could not accept, byte for byte; header carehub_outcome holds the reason",
    (),
)
EVENT_UNAPPLIED = EventType(
    "uk.nhs.carehub.event.unapplied.v1",
    "An event a consumer could not apply; headers name topic:partition:offset and the reason",
    (),
)

OUTCOME_HEADER = "carehub_outcome"
ORIGIN_HEADER = "carehub_origin"
HL7_V2_CONTENT_TYPE = "x-application/hl7-v2+er7"
