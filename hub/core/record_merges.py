"""The record's merge rules (hub.core.record, "identity", "merge" and "deaths merged"): who a person key
now is, a merge's retirement of a Patient, the retired person's resources moved to the survivor, and a
death said under a retired key carried to the survivor."""

from __future__ import annotations

from datetime import datetime

from hub.core.deaths import death_said
from hub.core.identity import MAX_HOPS
from hub.core.policy import PERSON_EXTENSION
from hub.core.ports import Json, RecordEvent, RecordUnitOfWork, StoredResource
from hub.core.record_content import (
    MERGED,
    death_carried,
    labelled,
    labels_of,
    removed_elements,
    replaced_by,
    retimed,
    same_content,
    stamp,
)

SUBJECT_FIELDS = ("subject", "patient", "for")


def survivor(uow: RecordUnitOfWork, key: str) -> str:
    """The person key that `key` now resolves to, following replaced-by links left by merges."""
    patient = uow.get("Patient", key)
    if patient is None or "link" not in patient.content:
        return key  # the common case: nobody merged this person away
    seen = {key}
    for _ in range(MAX_HOPS):
        patient = uow.get("Patient", key)
        nxt = replaced_by(patient.content) if patient else None
        if nxt is None or nxt in seen:
            return key
        seen.add(nxt)
        key = nxt
    return key


def point_at(content: Json, key: str) -> None:
    for field in SUBJECT_FIELDS:
        if field in content:
            content[field] = {**content[field], "reference": f"Patient/{key}"}
    if content.get("resourceType") == "Provenance":
        content["extension"] = [
            {**e, "valueReference": {"reference": f"Patient/{key}"}} if e.get("url") == PERSON_EXTENSION else e
            for e in content.get("extension") or []
        ]


def retires(event: RecordEvent, incoming: Json, current: StoredResource) -> bool:
    """Whether a merge retires a Patient the record holds with no links: neither merged away already
    nor the survivor of a merge (a newer A40 that reversed this one, or that merged someone into
    them, has the last word on who they are, as it would if this one had come first)."""
    return (
        event.type == MERGED
        and incoming["resourceType"] == "Patient"
        and replaced_by(incoming) is not None
        and "link" not in current.content
    )


def retired(current: StoredResource, incoming: Json) -> Json:
    """What a merge dated before the Patient's last write makes of it: what the newer event said of
    the person, retired (inactive, replaced by the survivor) as the merge says, as the same events in
    the other order leave it (hub.core.record_content.next_content keeps the link on late news)."""
    content = {k: v for k, v in current.content.items() if k != "meta"}
    content["active"] = False
    content["link"] = incoming["link"]
    return labelled(content, labels_of(current.content.get("meta")))


def retirements(uow: RecordUnitOfWork, resources: list[Json]) -> list[tuple[str, str, str]]:
    """(retired key, survivor key named, the person that key resolves to) for each Patient a merge
    retires, resolved before the merge's Patients are written."""
    found = []
    for patient in resources:
        target = replaced_by(patient) if patient.get("resourceType") == "Patient" else None
        if target is not None:
            found.append((str(patient["id"]), target, survivor(uow, target)))
    return found


def merge(
    uow: RecordUnitOfWork, event: RecordEvent, merges: list[tuple[str, str, str]], when: str
) -> list[StoredResource]:
    """Move every resource filed under each retired person to the survivor. A merge reversed (the
    survivor named was merged into the person it now retires) moves them to the survivor named,
    whom its Patient, written first, made a person again (unless that write was stale)."""
    moved: list[StoredResource] = []
    for retired, target, to in merges:
        if to == retired:
            to = survivor(uow, target)
        if retired == to:
            continue
        for current in uow.of_person(retired):
            if current.resource_type == "Patient" and current.id == retired:
                continue  # written from the event itself
            content = labelled(
                {k: v for k, v in current.content.items() if k != "meta"}, labels_of(current.content.get("meta"))
            )
            point_at(content, to)
            stored = stamp(event, content, current.resource_type, current.id, to, current, current.event_time, when)
            uow.put(stored)
            moved.append(stored)
    return moved


def death_to_survivor(
    uow: RecordUnitOfWork, event: RecordEvent, said: Json, retired: StoredResource, written: list[StoredResource]
) -> None:
    """A Patient under a retired key (a hospital still using the old number), as news of the person,
    says what it says of a death for their survivor too, when it is the newest word on their Patient
    by event time (hub.core.record_content.death_carried), as the rules engine takes it (hub.core.deaths).
    The survivor's Patient keeps its source: the rest of what the old number's sender says is not
    theirs to supply."""
    to = survivor(uow, retired.id)
    held = uow.get("Patient", to) if to != retired.id else None
    if held is None or event.time < held.event_time:
        return  # (older than the survivor's latest Patient: stale there, as on their own key)
    content = death_carried(held.content, said)
    if content is None:
        return
    if same_content(content, held.content):
        uow.put(retimed(held, event.time, held.content))  # (said again: the newer time remembered)
        return
    written.append(carry_death(uow, event, content, held, event.time))


def deaths_merged(
    uow: RecordUnitOfWork, event: RecordEvent, resources: list[Json], merges: list[tuple[str, str, str]]
) -> list[StoredResource]:
    """A death a retired identity's Patient holds (said under its key before the merge was read) is
    the survivor's, unless theirs says one already or the merge's own Patient for them says they are
    alive as the newest word (dated at or after both Patients), as the rules engine folds it
    (hub.core.merges). The survivor's Patient is then dated by the newer of the two."""
    carried: list[StoredResource] = []
    for retired, _, _ in merges:
        theirs = uow.get("Patient", retired)
        said = death_said(theirs.content) if theirs else None
        to = survivor(uow, retired)
        held = uow.get("Patient", to) if said and to != retired else None
        if theirs is None or said is None or held is None or death_said(held.content):
            continue
        own = next((p for p in resources if p.get("resourceType") == "Patient" and p.get("id") == to), None)
        newest = held.event_time <= event.time and theirs.event_time <= event.time
        if own is not None and newest and (own.get("deceasedBoolean") is False or said in removed_elements(own)):
            continue
        content = death_carried(held.content, {said: theirs.content[said]})
        if content is not None and not same_content(content, held.content):
            carried.append(carry_death(uow, event, content, held, max(held.event_time, theirs.event_time)))
    return carried


def carry_death(
    uow: RecordUnitOfWork, event: RecordEvent, content: Json, held: StoredResource, at: datetime
) -> StoredResource:
    """The survivor's Patient with a death carried onto it, dated `at`, its source kept."""
    stored = stamp(event, content, "Patient", held.id, held.person_key, held, at, at.isoformat())
    stored.content["meta"]["source"] = (held.content.get("meta") or {}).get("source", event.source)
    uow.put(stored)
    return stored
