"""An A40 merge as the coordination engine (hub.core.tasks) follows it: the retired identity's state
is folded into the survivor's, and the retired key's own state becomes a pointer to the survivor
(`merged_into`), which hub.core.coordination follows for every later event and clock of that key.

What the fold keeps (the survivor's word first where both said something):
    tasks       each task moves whole (same id, opened, due, owner, overdue): its clock is set again
                for the survivor, with its due time, and a task.updated re-points the open Task's `for`.
                One task per duty: where both identities have a task of one rule for one focus (the
                same referral, stay or discharge), the survivor's stands, with its deadline, and the
                retired identity's, if open, is cancelled (status reason `person-merged`). (The same
                referral under both keys is one re-sent for the survivor, which Engine.move takes to
                them: their tasks are the referral's as it now stands; the move's cancelling of the
                retired identity's may still be on its way.) Two referrals stay two tasks
    death       a death either identity knows of is the survivor's; the open tasks that ask for a
                contact or visit are cancelled, naming it (hub.core.deaths)
    stay        the survivor's stay on a caseload, else the retired identity's (its long-stay clock
                moves with it); a second open stay is not the engine's stay, and its clock is cleared, but
                the record keeps it open: the rules' `duplicate-stay` task (close-duplicate-stay, rules
                version 3) asks its coordinator (else the service) to close it, once a stay, done when an
                episode.closed names it (whatever its status). A death does not cancel it (admin, not a
                contact). A merge reversed takes the stay the merged person held (the first survivor's)
                to the survivor it names, as the KPIs do (hub.core.kpi_facts), so the task it may open
                then names the named survivor's own first stay: which of two to keep is the
                coordinator's call
    the rest    practice (the survivor's, as the record keeps their Patient's, unless they have none: but a
                registration's over the coordinator's over a referral's word, and a register row's said for
                the retired identity newer than the survivor's word, which the record carries; never a
                hospital's under the retired number: hub.core.practices.newer_word), NHS number, case list, outcomes,
                referrals' dates, episodes closed, referrals' first stays, held PIC summaries, identities merged in
Pure: both states in, the survivor's changed in place, derived events and clock changes out.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from hub.core.deaths import cancel_contacts
from hub.core.derived_events import Clock, DerivedEvents, Outcome
from hub.core.identity import stable_id
from hub.core.ports import Json, RecordEvent
from hub.core.practices import newer_word, take_word
from hub.core.record_content import replaced_by
from hub.core.referral_moves import take_said
from hub.core.task_status import FINAL
from schemas.coordination_rules import CoordinationRules, TaskRule
from schemas.events import coordination as co

MERGED_INTO = "merged_into"  # a retired key's state: only this, naming the key it was merged into
MERGED = "merged"  # a survivor's state: the keys merged into it (their late Patients speak for the person)
PARTITION = "partition"  # a survivor's state: the partition its own events (and its merge) are read from


def retirements(resources: list[Json]) -> list[tuple[str, str]]:
    """(retired key, survivor key) for each Patient a merge retires (its replaced-by link)."""
    found = []
    for patient in resources:
        into = replaced_by(patient) if patient.get("resourceType") == "Patient" else None
        if into and patient.get("id") and patient["id"] != into:
            found.append((str(patient["id"]), into))
    return found


def pointer(into: str) -> Json:
    """The state a retired key keeps: where the person's state went."""
    return {MERGED_INTO: into}


@dataclass(frozen=True)
class Rules:
    """What of a locality's rules the fold needs."""

    events: DerivedEvents
    contacts: frozenset[str]  # the rules whose tasks ask for a contact or visit (hub.core.deaths)
    long_stay: timedelta
    close_stay: TaskRule | None = None  # the task to close a duplicate stay, if the rules have one


def close_stay_rule(rules: CoordinationRules, merged: str) -> TaskRule | None:
    """The rules' task to close the stay a merge (its event's short name `merged`) left open beside the
    survivor's: the one triggered by it `when: duplicate-stay` (none in rules version 1)."""
    return next((r for r in rules.tasks if r.trigger == merged and r.when == "duplicate-stay"), None)


def fold(rules: Rules, state: Json, theirs: Json, retired: str, event: RecordEvent) -> Outcome:
    """Fold `theirs`, the state of `retired`, into `state`, the survivor's (`event.subject`), at the
    merge `event`."""
    out, events = Outcome(), rules.events
    _fold_facts(state, theirs)
    if retired not in state.setdefault(MERGED, []):
        state[MERGED].append(retired)
    if event.subject in state[MERGED]:  # (a merge reversed: the survivor is no key merged into itself)
        state[MERGED].remove(event.subject)
    moved = _fold_tasks(events, state, theirs, event, out)
    if _fold_death(state, theirs) or state.get("died"):
        # (a death the survivor knew of already cancelled their own such tasks: these are the retired's)
        out.extend(cancel_contacts(events, rules.contacts, state, event))
    for task_id in sorted(moved):
        task = state["tasks"][task_id]
        if task["status"] in FINAL:
            continue
        if not task.get("overdue"):
            out.set.append(Clock(task_id, event.subject, datetime.fromisoformat(task["due"]), "task"))
        key = f"merged|{task_id}|{event.id}"
        resource = events.task_resource(task_id, event.subject, task)
        out.events.append(events.derived(co.TASK_UPDATED.type, key, event.subject, event.time, resource))
    duplicate = _fold_stay(state, theirs, event, rules.long_stay, out)
    if duplicate and rules.close_stay:
        _close_duplicate(rules.events, rules.close_stay, state, duplicate, event, out)
    return out


def _fold_facts(state: Json, theirs: Json) -> None:
    """What each identity knew of the person that is not a task, a death or a stay."""
    if newer_word(theirs, state):  # (hub.core.practices: the word the survivor's gives way to)
        take_word(state, theirs)
    for key in ("nhs", "eligible"):
        if not state.get(key) and theirs.get(key):
            state[key] = theirs[key]
    for focus, said in sorted((theirs.get("outcomes") or {}).items()):
        kept = state.setdefault("outcomes", {}).setdefault(focus, [])
        kept += [s for s in said if s not in kept]
    take_said(state, theirs)  # (the later time of each referral's ServiceRequest: hub.core.referral_moves)
    for focus, made in sorted((theirs.get("made") or {}).items()):
        state.setdefault("made", {}).setdefault(focus, made)  # (when each referral was made: hub.core.referral_moves)
    for referral, episode in sorted((theirs.get("episode_of") or {}).items()):
        state.setdefault("episode_of", {}).setdefault(referral, episode)
    for key in ("closed", MERGED):
        if theirs.get(key):
            kept = state.setdefault(key, [])
            kept += [k for k in theirs[key] if k not in kept]
    if theirs.get("held"):
        state["held"] = {**theirs["held"], **(state.get("held") or {})}
    if theirs.get("letters"):  # (the practice each letter was for: only its receipt answers it, hub.core.tasks)
        state["letters"] = {**theirs["letters"], **(state.get("letters") or {})}


def _fold_tasks(events: DerivedEvents, state: Json, theirs: Json, event: RecordEvent, out: Outcome) -> set[str]:
    """The retired identity's tasks into the survivor's, one task per duty; the ids moved."""
    moved: set[str] = set()
    for task_id, task in sorted(theirs["tasks"].items()):
        if task_id in state["tasks"]:
            continue  # (the same task already here: a merge sent again)
        if task["status"] not in FINAL and _same_duty(state, task):
            task = _duplicate(events, task_id, task, event, out)  # the survivor's stands, with its deadline
        state["tasks"][task_id] = task
        moved.add(task_id)
    return moved


def _same_duty(state: Json, task: Json) -> bool:
    """Whether the survivor has a task of the same rule for the same focus (a duty: the same referral,
    stay or discharge), in any status, but for one cancelled because its referral moved away."""
    focus, rule = task.get("focus"), task.get("rule")
    return bool(focus) and any(
        t.get("rule") == rule and t.get("focus") == focus and not t.get("moved") for t in state["tasks"].values()
    )


def _duplicate(events: DerivedEvents, task_id: str, task: Json, event: RecordEvent, out: Outcome) -> Json:
    """An open task cancelled because the person's other identity has one for the same duty."""
    said = [event.time, datetime.fromisoformat(task["opened"])]
    if task.get("overdue"):
        said.append(datetime.fromisoformat(task["due"]))
    at = max(said)  # (never dated before what the record holds of the task)
    ended = task | {"status": "cancelled", "closed": at.isoformat(), "merged_duplicate": True}
    out.cleared.append(task_id)
    out.events.append(events.task_event(co.TASK_UPDATED.type, task_id, event.subject, at, ended))
    return ended


def _fold_death(state: Json, theirs: Json) -> bool:
    """A death the retired identity knew of is the survivor's; True when that is news here."""
    said, ours = theirs.get("patient_at"), state.get("patient_at")
    if said and (not ours or datetime.fromisoformat(said) > datetime.fromisoformat(ours)):
        state["patient_at"] = said  # (the latest Patient of either: older news of the person is stale)
    if theirs.get("died") and not state.get("died"):
        state["died"] = theirs["died"]
        return True
    return False


def _fold_stay(state: Json, theirs: Json, event: RecordEvent, long_stay: timedelta, out: Outcome) -> Json | None:
    """The survivor's stay on a caseload stands; else the retired identity's comes, with its clock.
    The retired identity's stay, when it is a second one open (the duplicate), or None."""
    stay = theirs.get("episode")
    if not stay:
        return None
    clock = f"long-stay:{stay['id']}"
    if state.get("episode"):
        if state["episode"].get("id") == stay["id"]:
            return None
        if not stay.get("long_stay"):
            out.cleared.append(clock)  # (a second stay: not the engine's; the record keeps it open)
        return dict(stay)
    state["episode"] = stay
    if not stay.get("long_stay"):
        out.set.append(Clock(clock, event.subject, datetime.fromisoformat(stay["start"]) + long_stay, "long-stay"))
    return None


def _close_duplicate(
    events: DerivedEvents, rule: TaskRule, state: Json, stay: Json, event: RecordEvent, out: Outcome
) -> None:
    """A task for the duplicate stay's coordinator (else the service) to close it: one a stay, whatever
    merges name it (its id is the stay's), due as the rule says after the merge."""
    focus = f"EpisodeOfCare/{stay['id']}"
    task_id = stable_id("task", rule.id, focus)
    if task_id in state["tasks"] or stay["id"] in (state.get("closed") or ()):
        return  # (asked already, or a close of it came first)
    service = events.rules.service.ods
    task: Json = {
        "rule": rule.id,
        "title": rule.title,
        "status": "requested",
        "opened": event.time.isoformat(),
        "due": (event.time + rule.due).isoformat(),
        "owner": (stay.get("coordinator") if rule.owner == "coordinator" else None) or service,
        "focus": focus,
        "version": events.rules.version,
    }
    state["tasks"][task_id] = task
    out.set.append(Clock(task_id, event.subject, event.time + rule.due, "task"))
    out.events.append(events.task_event(co.TASK_CREATED.type, task_id, event.subject, event.time, task))
