"""A person's death as the coordination engine (hub.core.tasks) learns and keeps it, and the tasks it ends.

A death is said by the Patient an event carries for its person (deceasedDateTime, or deceasedBoolean
true: an ADT's PID-29/30 as adapters/hl7v2 maps them), and unsaid only when a Patient says so:
deceasedBoolean false, or its sender deleting the element that said it (HL7 v2 `""`: REMOVED_URL, as
hub.core.record_content removes it from the record). A message that leaves PID-29/30 out says nothing.

Which tasks end is read from the rules, not listed here: a task that a contact with the person
completes (`done_by: contact.recorded`: discharge follow-up, triage, first visit, the reviews) asks
someone to contact or visit them, so it is cancelled, naming the death, and none opens while the
engine knows the person died. Paperwork for others stays: the PIC summary to the GP (done by its
receipt) and finding the GP practice it goes to (hub.core.caseload).
"""

from __future__ import annotations

from datetime import datetime

from hub.core.derived_events import DerivedEvents, Outcome
from hub.core.fhir_read import of_kind
from hub.core.ports import Json, RecordEvent
from hub.core.record_content import removed_elements, replaced_by
from hub.core.task_status import FINAL
from schemas.coordination_rules import CoordinationRules
from schemas.events import coordination as co
from schemas.events.coordination import PATIENT_STUB_EVENTS


def contact_rules(rules: CoordinationRules, contact: str) -> frozenset[str]:
    """The rules whose tasks a contact with the person (event `contact`) completes: they ask for one."""
    return frozenset(r.id for r in rules.tasks if any(f.event == contact for f in r.done_by))


def learn(state: Json, event: RecordEvent, resources: list[Json]) -> bool:
    """Keep in `state["died"]` what the event's Patient for its person says of their death; True when
    it is news that they died. A death withdrawn is forgotten (its cancelled tasks stay cancelled).
    The newest word wins by event time, as the record's Patient goes by its newest write: a Patient
    dated before the latest the engine has seen of the person, sent late (a PAS clearing a backlog
    resends old A08s, whose PID-30 N is no correction; a death message delayed past an update), is
    stale and changes nothing, whatever it says. A referral's, a register row's or the hub's own
    letter's Patient never speaks of it (the record's stubs rule). A Patient under a key merged into
    the person (a sender still using a retired hospital number) speaks for them."""
    if event.type in PATIENT_STUB_EVENTS:
        return False
    news = False
    known = {event.subject, *(state.get("merged") or ())}  # (and the keys merged into them: hub.core.merges)
    for patient in of_kind(resources, "Patient"):
        if patient.get("id") not in known or replaced_by(patient):
            continue  # (someone else, or a merge's retired record, which says nothing of a death)
        last = state.get("patient_at")
        if last is not None and event.time < datetime.fromisoformat(last):
            continue  # older than the person's latest Patient: the record skips it too
        state["patient_at"] = event.time.isoformat()
        said, before = death_said(patient), state.get("died")
        if said:
            news = news or not before
            at = patient.get("deceasedDateTime")
            state["died"] = {
                "said": said,
                "at": at if isinstance(at, str) else (before or {}).get("at"),
                "learned": (before or {}).get("learned") or event.time.isoformat(),
            }
        elif before and _withdrawn(patient, before["said"]):
            state["died"], news = None, False
    return news


def cancel_contacts(events: DerivedEvents, contacts: frozenset[str], state: Json, event: RecordEvent) -> Outcome:
    """The person died: each open task of theirs that asks for a contact or visit (a rule in
    `contacts`) is cancelled, its status reason naming the death, and its clock cleared."""
    out = Outcome()
    died = state["died"].get("at") or True
    for task_id, task in sorted(state["tasks"].items()):
        if task["rule"] not in contacts or task["status"] in FINAL:
            continue
        said = [event.time, datetime.fromisoformat(task["opened"])]
        if task.get("overdue"):
            said.append(datetime.fromisoformat(task["due"]))
        at = max(said)  # (never dated before what the record holds of the task, as a referral's move)
        task |= {"status": "cancelled", "closed": at.isoformat(), "died": died}
        out.cleared.append(task_id)
        out.events.append(events.task_event(co.TASK_UPDATED.type, task_id, event.subject, at, task))
    return out


def death_said(patient: Json) -> str | None:
    """The element by which a Patient says the person died, if it does (a deceasedDateTime that is not
    text is no date, so says nothing): the one test of a death, for the engine, the huddle and `$accept`."""
    when = patient.get("deceasedDateTime")
    if isinstance(when, str) and when:
        return "deceasedDateTime"
    return "deceasedBoolean" if patient.get("deceasedBoolean") is True else None


def _withdrawn(patient: Json, said: str) -> bool:
    """Whether a Patient takes back a death said by element `said`: in so many words, or by deleting
    that element (deleting the other, which the record does not hold, deletes nothing)."""
    return patient.get("deceasedBoolean") is False or said in removed_elements(patient)
