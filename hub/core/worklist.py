"""The coordinator's worklist (hub.api.routes.coordination_worklist): which referrals wait for the
service's decision and which tasks are open, whose they are, when they are due and whether they are
overdue, in the order a coordinator works them. Pure: the caller reads the record, and `now` is an
argument."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from hub.core.fhir_read import REQUEST_ENDED, addressed_to, outcome_of
from hub.core.huddle_reading import instant_of, overdue_due
from hub.core.ports import Json
from hub.core.task_status import FINAL

DECIDED = frozenset({"accepted", "declined", "withdrawn"})  # outcomes that end a referral's wait
# on a worklist Bundle's entry: the Task is overdue (escalated by the rules engine, or past its due
# time at the request, before the engine's clock has ticked onto it)
OVERDUE_EXTENSION = "https://carehub.invalid/StructureDefinition/worklist-overdue"


def waiting(referral: Json, service: str) -> bool:
    """Whether a referral waits for `service`'s decision: a ServiceRequest addressed to it (or to no one
    in particular), not ended (revoked, completed, entered-in-error) and not accepted, declined or
    withdrawn as the record holds it; and a referral itself, not the stand-in the record keeps for an
    outcome that came before its referral (it says no authoredOn, nor to whom it is addressed). (A decision
    claimed but not yet on the record is the caller's; so is what its tasks say: still_asked.)"""
    return (
        referral.get("resourceType") == "ServiceRequest"
        and bool(referral.get("authoredOn"))  # a referral said: not an outcome that came alone, standing for it
        and referral.get("status") not in REQUEST_ENDED
        and outcome_of(referral) not in DECIDED
        and addressed_to(referral, service)
    )


def still_asked(referral_id: str, tasks: Iterable[Json]) -> bool:
    """Whether the rules engine still asks anything of a referral: one of its Tasks (its triage, its first
    visit) is open, or it has none yet (the engine lags the record by a moment). All of them ended, it has
    been answered another way: the person died, a stay on the caseload closed without them (the KPIs no
    longer count it waiting), or the visit was made; an accept of it would open a stay for nothing."""
    focus = f"ServiceRequest/{referral_id}"
    theirs = [t for t in tasks if str((t.get("focus") or {}).get("reference")) == focus]
    return not theirs or any(is_open(t) for t in theirs)


def oldest_first(referrals: Iterable[Json]) -> list[Json]:
    """Referrals by when they were made (authoredOn; a date alone is its UK midnight), then by id; one
    that says no readable time goes last."""
    return sorted(referrals, key=lambda r: _instant_key(r.get("authoredOn"), str(r.get("id"))))


def is_open(task: Json) -> bool:
    """Whether a Task still asks for work (no final status)."""
    return task.get("resourceType") == "Task" and task.get("status") not in FINAL


def owned_by(task: Json, owner: str) -> bool:
    """Whether the Task's owner is `owner`: a coordinator's id (the team lead's among them) or the
    service's ODS code (a team task), in any case (`$accept` refuses a second spelling of one with a caseload)."""
    value = ((task.get("owner") or {}).get("identifier") or {}).get("value")
    return value is not None and str(value).strip().lower() == owner.strip().lower()


def due(task: Json) -> str | None:
    """When the Task is due (restriction.period.end), as the record says it."""
    found = ((task.get("restriction") or {}).get("period") or {}).get("end")
    return str(found) if found else None


def overdue(task: Json, now: datetime) -> bool:
    """Whether an open Task is overdue at `now`: the rules engine marked it so (businessStatus
    `overdue`, and gave it to the team lead), or its due time has passed and the engine's clock has
    not ticked onto it yet."""
    if not is_open(task):
        return False
    if overdue_due(task) is not None:
        return True
    deadline = instant_of(due(task))
    return deadline is not None and deadline <= now


def by_due(tasks: Iterable[Json]) -> list[Json]:
    """Tasks soonest due first (the most overdue at the top), then by id; one with no due time last."""
    return sorted(tasks, key=lambda t: _instant_key(due(t), str(t.get("id"))))


def tasks_of(referral_id: str, tasks: Iterable[Json]) -> list[Json]:
    """The referral's open Tasks (its triage and first visit: those whose focus is it), soonest due first."""
    focus = f"ServiceRequest/{referral_id}"
    return by_due(t for t in tasks if is_open(t) and str((t.get("focus") or {}).get("reference")) == focus)


def _instant_key(text: object, tie: str) -> tuple[bool, float, str]:
    instant = instant_of(text) if isinstance(text, str) else None
    return (instant is None, instant.timestamp() if instant else 0.0, tie)
