"""What the coordination engine (hub.core.tasks) gives back for each event or clock: an Outcome (the
events to publish, the clocks to set and clear) and the events it derives: Tasks, flags, PIC summaries.

Derived events have deterministic ids, so emitting one again after a crash is recognised downstream
as the same event.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from hub.core.fhir_read import ODS_SYSTEM, bundle_resources, of_kind, referral_source
from hub.core.identity import stable_id
from hub.core.pic_summary import letter, practice_output
from hub.core.ports import Json, RecordEvent
from schemas.coordination_rules import CoordinationRules
from schemas.events import coordination as co

OVERDUE = "overdue"
STATUS_REASON_SYSTEM = "https://carehub.invalid/CodeSystem/task-status-reason"
MOVED_REASON = "referral-moved"  # a task cancelled because its referral was re-sent for another person
MOVED_TEXT = "The referral was re-sent for another person (its NHS number corrected): its tasks are theirs now"
MERGED_REASON = "person-merged"  # a duplicate of a duty the person's other identity has (hub.core.merges)
MERGED_TEXT = (
    "The person's records were merged (A40) and the other identity has a task for the same duty: that one stands"
)
# a case-list Flag's referral (Flag has no element for it): what the Flag reveals, so hub.core.policy
# shares it no further than the referral (origins_of); beside co.EPISODE_EXTENSION, a long-stay Flag's
REFERRAL_EXTENSION = "https://carehub.invalid/StructureDefinition/case-listing-referral"
DIED_REASON = "person-died"  # a task to contact or visit the person, cancelled because they died (hub.core.deaths)


@dataclass(frozen=True)
class Clock:
    """A deadline: when it runs out, `Engine.fire` (hub.core.tasks) is called with it."""

    id: str
    person_key: str
    due: datetime
    kind: str  # "task" or "long-stay"


@dataclass
class Outcome:
    """What one event or one clock did: events to publish, clocks to set and clear."""

    events: list[RecordEvent] = field(default_factory=list)
    set: list[Clock] = field(default_factory=list)
    cleared: list[str] = field(default_factory=list)

    def extend(self, other: Outcome) -> None:
        self.events += other.events
        self.set += other.set
        self.cleared += other.cleared


class DerivedEvents:
    """The events one version of a locality's rules derives, from the engine's state of a person."""

    def __init__(self, rules: CoordinationRules) -> None:
        self.rules = rules
        self._source = f"urn:ods:{rules.service.ods}"
        self._team = {
            "identifier": {"system": ODS_SYSTEM, "value": rules.service.ods},
            "display": rules.service.name,
        }

    def task_event(self, type_: str, task_id: str, person: str, time: datetime, task: Json) -> RecordEvent:
        """A task.created, task.updated or task.overdue carrying the task's Task, one per status."""
        return self.derived(
            type_, f"{type_}|{task_id}|{task['status']}", person, time, self.task_resource(task_id, person, task)
        )

    def task_resource(self, task_id: str, person: str, task: Json) -> Json:
        """The FHIR Task for one task of a person's state, naming the rules version that opened it."""
        version = task.get("version", self.rules.version)
        resource: Json = {
            "resourceType": "Task",
            "id": task_id,
            "status": task["status"],
            "intent": "order",
            "code": {"coding": [{"system": co.TASK_SYSTEM, "code": task["rule"], "display": task["title"]}]},
            "description": task["title"],
            "for": {"reference": f"Patient/{person}"},
            "authoredOn": task["opened"],
            "lastModified": task.get("closed") or task["opened"],
            "requester": self._team,
            "owner": self._owner(task["owner"]),
            "restriction": {"period": {"start": task["opened"], "end": task["due"]}},
            "instantiatesUri": f"https://carehub.invalid/rules/{self.rules.id}/v{version}#{task['rule']}",
        }
        if task.get("focus"):
            resource["focus"] = {"reference": task["focus"]}
        if task.get("practice"):
            resource["output"] = [practice_output(task["practice"])]
        if task.get("moved"):
            resource["statusReason"] = _reason(MOVED_REASON, "Referral moved to another person", MOVED_TEXT)
        elif task.get("merged_duplicate"):
            resource["statusReason"] = _reason(MERGED_REASON, "Records merged: a duplicate task", MERGED_TEXT)
        elif task.get("died"):
            when = "" if task["died"] is True else f" ({task['died']})"
            text = f"The person died{when}: no one is to contact or visit them for this task"
            resource["statusReason"] = _reason(DIED_REASON, "The person died", text)
        if task.get("overdue"):
            resource["businessStatus"] = {
                "coding": [{"system": co.BUSINESS_STATUS_SYSTEM, "code": OVERDUE, "display": "Overdue"}],
                "text": f"overdue; escalated from {task.get('escalated_from')}",
            }
        return resource

    def _owner(self, owner: str) -> Json:
        if owner == self.rules.service.ods:
            return self._team
        return {"identifier": {"system": co.COORDINATOR_SYSTEM, "value": owner}}

    def case_listed(self, state: Json, event: RecordEvent, criterion: str) -> RecordEvent:
        """The person on their practice's case list, as `criterion` (of these rules) found them at `event`."""
        flag_id = stable_id("case-list", event.subject, self.rules.id)
        flag: Json = {
            "resourceType": "Flag",
            "id": flag_id,
            "status": "active",
            "code": {"coding": [{"system": co.FLAG_SYSTEM, "code": co.ELIGIBLE, "display": "On the case list"}]},
            "subject": {"reference": f"Patient/{event.subject}"},
            "period": {"start": event.time.isoformat()},
            "extension": [{"url": co.CRITERION_EXTENSION, "valueCode": criterion}],
        }
        for referral in self._listed_by(event, criterion):
            flag["extension"].append({"url": REFERRAL_EXTENSION, "valueReference": {"reference": referral}})
        if state.get("practice"):
            flag["author"] = {"identifier": {"system": ODS_SYSTEM, "value": state["practice"]}}
        return self.derived(co.CASELIST_ADDED.type, f"case-list|{flag_id}", event.subject, event.time, flag)

    def _listed_by(self, event: RecordEvent, criterion: str) -> list[str]:
        """The referrals (`ServiceRequest/<id>`) of `event` from a source `criterion` lists people on."""
        sources = next((c.referral_sources for c in self.rules.case_finding if c.id == criterion), ())
        requests = of_kind(bundle_resources(event.payload), "ServiceRequest")
        return [f"ServiceRequest/{r['id']}" for r in requests if r.get("id") and referral_source(r) in sources]

    def pic_summary(self, state: Json, person: str, episode: Json, summary: Json, at: datetime) -> RecordEvent:
        """The PIC summary as a document for the person's practice (GP subscriptions deliver it)."""
        service = (self.rules.service.ods, self.rules.service.name)
        doc = letter(
            summary, person=person, nhs=state.get("nhs"), practice=state["practice"], episode=episode, at=at,
            service=service,
        )  # fmt: skip
        return self.derived(co.PIC_SUMMARY_SENT.type, f"pic-summary|{summary['id']}", person, at, doc)

    def long_stay_flag(self, clock: Clock, episode: Json) -> RecordEvent:
        """The flag raised when an episode's long-stay clock runs out."""
        flag_id = stable_id("long-stay", clock.id)
        flag: Json = {
            "resourceType": "Flag",
            "id": flag_id,
            "status": "active",
            "code": {
                "coding": [{"system": co.FLAG_SYSTEM, "code": co.LONG_STAY, "display": "On caseload over 12 weeks"}]
            },
            "subject": {"reference": f"Patient/{clock.person_key}"},
            "period": {"start": clock.due.isoformat()},
            "author": self._team,
            "extension": [
                {"url": co.EPISODE_EXTENSION, "valueReference": {"reference": f"EpisodeOfCare/{episode['id']}"}}
            ],
        }
        return self.derived(co.CASELOAD_LONG_STAY.type, f"long-stay|{clock.id}", clock.person_key, clock.due, flag)

    def long_stay_ended(self, state: Json, event: RecordEvent, episode: Json) -> RecordEvent:
        """The long-stay flag made inactive: its episode closed at `event`."""
        clock = Clock(f"long-stay:{episode['id']}", event.subject, event.time, "long-stay")
        flag = self.long_stay_flag(clock, episode).payload
        start = datetime.fromisoformat(episode["start"]) + self.rules.long_stay
        flag |= {"status": "inactive", "period": {"start": start.isoformat(), "end": event.time.isoformat()}}
        return self.derived(co.CASELOAD_LONG_STAY.type, f"long-stay-ended|{clock.id}", event.subject, event.time, flag)

    def derived(self, type_: str, natural_key: str, person: str, time: datetime, resource: Json) -> RecordEvent:
        """An event of the rules service, its id taken from `natural_key`."""
        return RecordEvent(
            id=stable_id("derived", natural_key),
            type=type_,
            source=self._source,
            time=time,
            subject=person,
            payload=resource,
        )


def _reason(code: str, display: str, text: str) -> Json:
    """A cancelled Task's statusReason: why the hub, not a coordinator, ended it."""
    return {"coding": [{"system": STATUS_REASON_SYSTEM, "code": code, "display": display}], "text": text}
