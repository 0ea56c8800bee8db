"""FHIR Task statuses and the moves between them that CareHub allows, in one place: the API checks a
coordinator's request against them, and the record and the rules engine apply a task.updated only
when it is one of them, in log order, so the two always agree on a task's status."""

from __future__ import annotations

# http://hl7.org/fhir/R4/valueset-task-status.html
STATUSES = frozenset(
    {
        "draft",
        "requested",
        "received",
        "accepted",
        "rejected",
        "ready",
        "cancelled",
        "in-progress",
        "on-hold",
        "failed",
        "completed",
        "entered-in-error",
    }
)
FINAL = frozenset({"completed", "cancelled", "failed", "rejected", "entered-in-error"})
# every open status can be completed or cancelled (the rules close tasks from whatever state they are in)
MOVES = {
    "draft": frozenset({"requested", "cancelled", "completed"}),
    "requested": frozenset({"accepted", "rejected", "in-progress", "on-hold", "cancelled", "completed"}),
    "received": frozenset({"accepted", "rejected", "in-progress", "cancelled", "completed"}),
    "accepted": frozenset({"in-progress", "on-hold", "cancelled", "completed"}),
    "ready": frozenset({"in-progress", "cancelled", "completed"}),
    "in-progress": frozenset({"on-hold", "completed", "failed", "cancelled"}),
    "on-hold": frozenset({"in-progress", "cancelled", "completed"}),
}


def may_move(current: str, new: str) -> bool:
    """True when a task in `current` may become `new` (a finished task never moves again)."""
    return new in MOVES.get(current, frozenset())
