"""A referral's tasks across time and people, for the coordination engine (hub.core.tasks).

What each outcome said of a referral is remembered in the person's state, so that tasks opened for
it later (the referral arrived after its outcome, or was moved here) are closed as it said, at its
time; and so is when the referral was made (its authoredOn as the record holds it: the latest said, in
log order), which its tasks' answers count from, whatever order a correction and an answer come in.
A referral re-sent for another person (its NHS number corrected; hub.core.coordination finds who
held it) takes those outcomes with it and cancels, with a reason, the open tasks the first person
has for it.
"""

from __future__ import annotations

from datetime import datetime

from hub.core.days import answers_that_day
from hub.core.derived_events import MOVED_REASON, STATUS_REASON_SYSTEM, DerivedEvents, Outcome
from hub.core.fhir_read import extension, of_kind
from hub.core.kpi_reading import fhir_time
from hub.core.ports import Json, RecordEvent
from hub.core.task_status import FINAL
from schemas.events import coordination as co


def move(events: DerivedEvents, state: Json, event: RecordEvent, focus: str, held_by: str, theirs: Json) -> Outcome:
    """The referral `focus`, held until now by another person (`held_by`, whose state `theirs` is
    read, never changed here), re-sent for this one (`event`, before it is handled): the open tasks
    they have for it are cancelled, with a reason, by task.updated events on their partition (so
    their own worker applies them, in log order, as a coordinator's move: Engine._manual), and the
    outcomes said of it come here, to close the tasks the referral opens here as they say."""
    out = Outcome()
    take_said(state, theirs, focus)  # (the record's ServiceRequest is one, whoever it is for)
    for said in (theirs.get("outcomes") or {}).get(focus, []):
        mine = state.setdefault("outcomes", {}).setdefault(focus, [])
        if said not in mine:
            mine.append(said)
    for task_id, task in sorted(theirs["tasks"].items()):
        if task.get("focus") == focus and task["status"] not in FINAL:
            out.events.append(_moved(events, task_id, task, held_by, event)[1])
    for task_id, task in sorted(state["tasks"].items()):
        if task.get("focus") == focus and task["status"] not in FINAL and not task.get("moved"):
            # it left this person and comes back before the cancelling of these reached here:
            # they end now (that event, when it comes, finds them finished), and the referral's open again
            state["tasks"][task_id], moved = _moved(events, task_id, task, event.subject, event)
            out.cleared.append(task_id)
            out.events.append(moved)
    return out


def _moved(
    events: DerivedEvents, task_id: str, task: Json, person: str, event: RecordEvent
) -> tuple[Json, RecordEvent]:
    """A task cancelled because `event` moved its referral, and the task.updated that says so."""
    said = [event.time, datetime.fromisoformat(task["opened"])]
    if task.get("overdue"):
        said.append(datetime.fromisoformat(task["due"]))
    at = max(said)  # (never dated before what the record holds of the task, or it would be stale there)
    moved = task | {"status": "cancelled", "closed": at.isoformat(), "moved": True}
    resource = events.task_resource(task_id, person, moved)
    return moved, events.derived(co.TASK_UPDATED.type, f"moved|{task_id}|{event.id}", person, at, resource)


def says_moved(task: Json) -> bool:
    """Whether a Task's status reason says its referral moved to another person (as _moved writes it)."""
    codings = (task.get("statusReason") or {}).get("coding") or []
    return any(c.get("system") == STATUS_REASON_SYSTEM and c.get("code") == MOVED_REASON for c in codings)


def remember_outcomes(state: Json, event: RecordEvent, resources: list[Json]) -> set[str]:
    """What an outcome said of each referral, in log order: tasks opened for it later are closed as it says.
    One the record skips as it comes (skipped_by_record) is remembered as skipped, so that no later
    correction of the referral's date, move or merge answers a task with it: the record never looks at it
    again. The referrals (`ServiceRequest/<id>`) whose outcome here was skipped."""
    skipped: set[str] = set()
    for request in of_kind(resources, "ServiceRequest"):
        said = extension(request, co.OUTCOME_EXTENSION, "valueCode")
        if isinstance(said, str) and request.get("id"):
            focus = f"ServiceRequest/{request['id']}"
            entry: Json = {"at": event.time.isoformat(), "outcome": said}
            if skipped_by_record(state, focus, event.time):
                entry["skipped"] = True
                skipped.add(focus)
            kept = state.setdefault("outcomes", {}).setdefault(focus, [])
            if entry not in kept:
                kept.append(entry)
    return skipped


def skipped_by_record(state: Json, focus: str, at: datetime) -> bool:
    """Whether the record skips an outcome dated `at` for the referral `focus` as it comes (hub.core.record,
    _write and _first_outcome): one older than the ServiceRequest it holds (remember_said) that finds an
    outcome on it already (a later one stands over an older one sent late), or that is dated before the
    referral was made as it holds it (its authoredOn, remember_made; else that ServiceRequest's time),
    but not by day alone on that UK day. An outcome the record holds nothing of the referral before, or
    as new as what it holds, is written."""
    held = said_at(state, focus)
    if held is None or at >= held:
        return False
    if taken((state.get("outcomes") or {}).get(focus, [])):
        return True
    made = made_on(state, focus) or held
    return at < made and not answers_that_day(at, made)


def remember_said(state: Json, event: RecordEvent, resources: list[Json]) -> None:
    """The time of the ServiceRequest the record holds of each referral an event carries, as it keeps it:
    the latest time said by any event that wrote it (a correction dated earlier does not date it back).
    Called with what the record writes: not an outcome it skips."""
    for request in of_kind(resources, "ServiceRequest"):
        if request.get("id"):
            _said(state, f"ServiceRequest/{request['id']}", event.time)


def said_at(state: Json, focus: str) -> datetime | None:
    """The time of the ServiceRequest the record holds of the referral (remember_said); None: none yet
    (or a state kept before this was)."""
    said = (state.get("said_at") or {}).get(focus)
    return datetime.fromisoformat(said) if said else None


def take_said(state: Json, theirs: Json, focus: str | None = None) -> None:
    """What another state (a person the referral moved from, or a retired identity) knew of when the
    record's ServiceRequests were said: the later of the two for each (of `focus` alone, if given)."""
    for key, said in sorted((theirs.get("said_at") or {}).items()):
        if focus is None or key == focus:
            _said(state, key, datetime.fromisoformat(said))


def _said(state: Json, focus: str, at: datetime) -> None:
    held = said_at(state, focus)
    if held is None or at > held:
        state.setdefault("said_at", {})[focus] = at.isoformat()


def taken(said: list[Json]) -> list[Json]:
    """The outcomes remembered of a referral that the record took (remember_outcomes), in log order."""
    return [s for s in said if not s.get("skipped")]


def remember_made(state: Json, event: RecordEvent, resources: list[Json]) -> None:
    """When each referral a referral.received carries was made: its authoredOn (else the event's time),
    the latest said in log order, as the record holds it (a correction replaces it, whatever date it gives)."""
    for request in of_kind(resources, "ServiceRequest"):
        if request.get("id"):
            made = fhir_time(request.get("authoredOn"), event.time)
            state.setdefault("made", {})[f"ServiceRequest/{request['id']}"] = made.isoformat()


def forget_made(state: Json, focus: object) -> None:
    """A referral moved to another person (its tasks here cancelled as moved) is no longer made here: a
    merge of the two (hub.core.merges) then takes the date the other person was told, as the record holds it."""
    if isinstance(focus, str) and focus in (state.get("made") or {}):
        del state["made"][focus]


def made_on(state: Json, focus: object) -> datetime | None:
    """When the referral `focus` was made as the record holds it (remember_made); None: not known (a
    task of another kind, or a state kept before this was)."""
    made = (state.get("made") or {}).get(focus) if isinstance(focus, str) else None
    return datetime.fromisoformat(made) if made else None


def outcome_said(focus: str, outcome: str) -> Json:
    """The ServiceRequest a remembered outcome said, as the engine's fulfilment matching reads it."""
    extensions = [{"url": co.OUTCOME_EXTENSION, "valueCode": outcome}]
    return {"resourceType": "ServiceRequest", "id": focus.removeprefix("ServiceRequest/"), "extension": extensions}
