"""What every event type declares: its type string and the FHIR shape of its payload."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class EventType:
    """A versioned event type and the FHIR resource types its Bundle payload may carry."""

    type: str
    summary: str
    carries: tuple[str, ...]
