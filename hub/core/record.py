"""The shared care record's rules: how events change the current version of each resource.

Pure decisions over a RecordUnitOfWork; no I/O of its own, no clock reads (time comes from events,
so a replay of the log gives the same record).

Rules, in the order they are applied to each event:
    idempotent      an event id already applied (or repeated in the batch) is skipped, counted as a duplicate
    reordering      a resource is only replaced by content from an event at least as new as the one that
                    wrote it; older content is skipped and counted as stale
    corrections     but a referral is the referrer's word on it, in log order: a referral.received for a
                    referral the record holds (a corrected row, the same referral id) replaces what the
                    referral said whatever date it gives, as the KPIs take it (hub.core.kpis); the
                    version keeps the latest time said, so its lastUpdated never goes back
    tasks           and a Task is the rules engine's (hub.core.tasks), which decides in log order: task
                    events (the engine's and a coordinator's) are applied in log order whatever time
                    they give, the version keeping the latest time said (an outcome row sent late
                    completes a task a coordinator has since taken on; a corrected referral date
                    re-times it), so the record and the engine agree on every Task
    identity        resources are filed under a person key; a key retired by a merge (A40) is followed to
                    the surviving person, so events that arrive late for the old identity land on the survivor
    merge           the retired person's resources move to the survivor (subject rewritten, new version);
                    the retirement itself (inactive, replaced-by) is never stale: a merge dated before
                    the retired Patient's last write retires that newer content, as in the other order.
                    A merge reversed (its survivor was merged into the person it retires) moves them to
                    the survivor it names, whom its Patient makes a person again
    deaths merged   a death is the person's under any key: what a Patient under a retired key says of a
                    death (said, PID-30 N, or deleted) is said for its survivor too when it is the newest
                    word on their Patient by event time, and a death the retired Patient holds when the
                    merge is read becomes the survivor's unless theirs says one, or the merge's own
                    Patient for them says they are alive as the newest word (as hub.core.merges folds
                    it); nothing else of the retired identity's Patient is the survivor's
    encounter       an update overlays the stored Encounter (an A08 says nothing about status);
                    a cancelled discharge (A13) removes the end of the stay and the discharge disposition
    one stay        an episode.opened whose EpisodeOfCare is new (another id) is not written when the
                    person has another one open, or one of its referrals opened another (open or
                    closed: a second accept, on a log from before accepts were claimed): the first
                    in log order stands. Nor is an episode.opened for an EpisodeOfCare the record holds
                    as ended (finished, cancelled, entered-in-error: a re-sent opening after the close,
                    at any time): closing is final. The rule is hub.core.stays, as the rules engine and
                    the KPIs take it; the record asks it of the person's EpisodeOfCare it holds
    task moves      a task.updated that asks for a move hub.core.task_status does not allow (a finished
                    task reopened, say: two coordinators at once), or that changes a finished task at
                    all, writes nothing, as the rules engine ignores it, so the record and the engine
                    agree on every task's status
    outcomes        a referral outcome overlays the stored ServiceRequest with what became of it (status,
                    the outcome extension, its notes) and leaves what the referral said; a referral that
                    arrives after its outcome (or corrects it later) keeps them, so a ServiceRequest ends
                    the same whichever came first. An outcome alone stands for the referral until it comes.
                    An outcome dated by day alone on the UK day the referral was made, which that day's
                    start is earlier than, answers it all the same (hub.core.days), until an outcome is on it
    stubs           a Patient carried by a referral or register row only introduces a person the record does
                    not know yet; it never replaces what a hospital or practice said, and anything they say
                    later replaces it, whatever its event time
    practice        but a register row is the practice's word that the person is registered there: the
                    newest word on the practice by event time (a register row's, or a hospital's Patient
                    naming one, dated by its version) is the Patient's generalPractitioner, where the
                    PIC summary is to go; a register row changes nothing else, nor the Patient's source
                    or time, and for someone merged away it is about their survivor
                    (hub.core.record_content.registered)
    not recorded    clock ticks write nothing and leave no processed-event row
    provenance      each event that writes anything leaves a Provenance naming the sending organisation,
                    the event, every resource version it wrote and (extension PERSON_EXTENSION) the
                    person it is about, so that their consents apply to it as to the rest of their record
    labels          security labels (meta.security) are kept; an overlay keeps the earlier ones too
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from hub.core.days import answers_that_day
from hub.core.deaths import death_said
from hub.core.errors import InvalidMessageError
from hub.core.fhir_read import referrals_of
from hub.core.identity import MAX_HOPS
from hub.core.policy import PERSON_EXTENSION
from hub.core.ports import Json, RecordEvent, RecordUnitOfWork, StoredResource
from hub.core.record_content import (
    MERGED,
    death_carried,
    has_outcome,
    labelled,
    labels_of,
    next_content,
    register_said,
    registered,
    removed_elements,
    replaced_by,
    same_content,
)
from hub.core.stays import is_open, opens_another_stay
from hub.core.task_status import FINAL, may_move
from schemas.events.coordination import (
    EPISODE_OPENED,
    NOT_RECORDED,
    PATIENT_STUB_EVENTS,
    REFERRAL_OUTCOME,
    REFERRAL_RECEIVED,
    REGISTER_ROW,
    TASK_CREATED,
    TASK_OVERDUE,
    TASK_UPDATED,
)

ODS_SYSTEM = "https://fhir.nhs.uk/Id/ods-organization-code"
EVENT_SYSTEM = "https://carehub.invalid/Id/event"
SHARED_KINDS = frozenset({"Organization", "Practitioner", "Location"})  # not about one person
_SUBJECT_FIELDS = ("subject", "patient", "for")
UNCHANGED = StoredResource("", "", None, 0, datetime.min.replace(tzinfo=UTC), "", {})
_STUB_TIME = datetime(1900, 1, 1, tzinfo=UTC)  # a stub loses to anything said about the person
# applied in log order whatever time they give (see "corrections" and "tasks" above)
_IN_LOG_ORDER = frozenset({REFERRAL_RECEIVED.type, TASK_CREATED.type, TASK_UPDATED.type, TASK_OVERDUE.type})


@dataclass(frozen=True)
class ApplyResult:
    """What one batch did: events applied, duplicates skipped, resources skipped as stale."""

    applied: int = 0
    duplicates: int = 0
    stale: int = 0


def apply_events(uow: RecordUnitOfWork, events: Sequence[RecordEvent]) -> ApplyResult:
    """Apply events in order inside the caller's unit of work (the caller commits)."""
    done = uow.processed([e.id for e in events])
    applied = duplicates = stale = 0
    for event in events:
        if event.type in NOT_RECORDED:
            continue  # a clock tick is not news for the record: nothing to write, nothing to remember
        if event.id in done:
            duplicates += 1
            continue
        stale += _apply(uow, event)
        uow.mark_processed(event.id)
        done.add(event.id)
        applied += 1
    return ApplyResult(applied=applied, duplicates=duplicates, stale=stale)


def resources_of(event: RecordEvent) -> list[Json]:
    """The resources an event carries: a Bundle's entries, or the one resource it is."""
    payload = event.payload
    resources: list[Any]  # checked below: every one a dict with resourceType and id
    if payload.get("resourceType") == "Bundle":
        resources = [e.get("resource") for e in payload.get("entry") or [] if isinstance(e, dict)]
    else:
        resources = [payload]
    for index, resource in enumerate(resources):
        if not isinstance(resource, dict) or not resource.get("resourceType") or not resource.get("id"):
            raise InvalidMessageError(f"entry {index} has no resourceType and id", (f"Bundle.entry[{index}].resource",))
    return resources


def _apply(uow: RecordUnitOfWork, event: RecordEvent) -> int:
    if event.type in NOT_RECORDED:
        return 0
    resources = resources_of(event)
    when = event.time.isoformat()  # once per event: it is stamped on everything the event writes
    written: list[StoredResource] = []
    stale = 0
    merges = _retirements(uow, resources) if event.type == MERGED else ()
    for resource in resources:
        stored = _write(uow, event, resource, when, written)
        if stored is None:
            stale += 1
        elif stored is not UNCHANGED:
            written.append(stored)
    if merges:  # (after the Patients: a merge reversed moves to the survivor its own Patient makes active)
        written[:0] = _merge(uow, event, merges, when)
        written += _deaths_merged(uow, event, resources, merges)
    if written:
        _provenance(uow, event, written, when)
    return stale


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


def _subject_key(resource: Json) -> str | None:
    for field in _SUBJECT_FIELDS:
        ref = (resource.get(field) or {}).get("reference", "")
        if ref.startswith("Patient/"):
            return str(ref.removeprefix("Patient/"))
    return None


def _write(
    uow: RecordUnitOfWork, event: RecordEvent, incoming: Json, when: str, written: list[StoredResource]
) -> StoredResource | None:
    """Write one resource unless what is stored came from a newer event (None: stale) or says the
    same already (UNCHANGED). A death said under a retired key is written to its survivor too, and
    appended to `written`."""
    kind, rid = incoming["resourceType"], incoming["id"]
    current = uow.get(kind, rid)
    stub = kind == "Patient" and event.type in PATIENT_STUB_EVENTS
    if stub and current is not None:
        return _registered(uow, event, incoming, current) if event.type == REGISTER_ROW.type else UNCHANGED
    if stub and event.type == REGISTER_ROW.type:
        incoming = register_said(incoming, event.time)
    if kind == "Task" and current is not None and event.type == TASK_UPDATED.type and _refused_move(current, incoming):
        return UNCHANGED
    if event.type == EPISODE_OPENED.type and _opens_nothing(uow, event, incoming, current):
        return UNCHANGED  # the first stay (the first accept of a referral) stands; a closed one stays closed
    if current is not None and kind in SHARED_KINDS:
        same = _same_reference_data(uow, event, incoming, current, when)
        if same is not None:
            return same
    latest = event.time
    if current is not None and event.time < current.event_time:
        if _retires(event, incoming, current):
            incoming = _retired(current, incoming)  # the merge's word on who they are, over newer content
        elif event.type not in _IN_LOG_ORDER and not _outcome_that_day(event, incoming, current):
            return None
        latest = current.event_time  # a correction (or a task event, or a merge) dated earlier: not dated back
    if kind == "Patient" and current is not None and "link" in current.content and event.type != MERGED:
        _death_to_survivor(uow, event, incoming, current, written)  # (rare: someone merged away, or a survivor)
    if (
        kind == "Patient"
        and current is not None
        and current.person_key == rid
        and "link" not in incoming
        and "link" not in current.content
        and same_content(incoming, current.content)
    ):
        # the person said again as they are (the commonest write of all): what the general path
        # below decides (next_content adds nothing to a Patient without links but its labels,
        # which same_content compares as a set), without copying the content first
        return _said_again(uow, current, event.time)
    content = next_content(event, incoming, current)
    key: str | None
    if kind in SHARED_KINDS:
        key = None
    elif kind == "Patient":
        key = replaced_by(content) or rid
    else:
        subject = _subject_key(content)
        key = survivor(uow, subject) if subject else survivor(uow, event.subject)
        if subject and key != subject:
            _point_at(content, key)
    if current is not None and key == current.person_key and same_content(content, current.content):
        return _said_again(uow, current, latest)
    if latest != event.time:
        when = latest.isoformat()
    stored = _stamp(event, content, kind, rid, key, current, _STUB_TIME if stub else latest, when)
    uow.put(stored)
    return stored


def _registered(uow: RecordUnitOfWork, event: RecordEvent, row: Json, current: StoredResource) -> StoredResource:
    """A register row's practice on the Patient the record holds (the survivor's, for someone merged
    away), when it is the newest word on it: a version of the row's (its Provenance names the
    practice) that keeps the Patient's source, time and lastUpdated where later (the hospital's
    demographics are not the practice's to supply)."""
    if replaced_by(current.content):
        found = uow.get("Patient", survivor(uow, current.id))
        if found is None:
            return UNCHANGED
        current = found
    content = registered(current, row, event.time)
    if content is None or same_content(content, current.content):
        return UNCHANGED
    meta = current.content.get("meta") or {}
    said = meta.get("lastUpdated")  # (never dated back)
    when = said if said and datetime.fromisoformat(said) >= event.time else event.time.isoformat()
    stored = _stamp(event, content, "Patient", current.id, current.person_key, current, current.event_time, when)
    stored.content["meta"]["source"] = meta.get("source", event.source)
    uow.put(stored)
    return stored


def _outcome_that_day(event: RecordEvent, incoming: Json, current: StoredResource) -> bool:
    """Whether an outcome dated before the referral the record holds still answers it: dated by day
    alone, on the UK day the referral was made (hub.core.days), as the rules engine and the KPIs take
    it. Not once an outcome is on it: one with a time of day that day, later, stands."""
    return (
        event.type == REFERRAL_OUTCOME.type
        and incoming["resourceType"] == "ServiceRequest"
        and not has_outcome(current.content)
        and answers_that_day(event.time, current.event_time)
    )


def _retires(event: RecordEvent, incoming: Json, current: StoredResource) -> bool:
    """Whether a merge retires a Patient the record holds with no links: neither merged away already
    nor the survivor of a merge (a newer A40 that reversed this one, or that merged someone into
    them, has the last word on who they are, as it would if this one had come first)."""
    return (
        event.type == MERGED
        and incoming["resourceType"] == "Patient"
        and replaced_by(incoming) is not None
        and "link" not in current.content
    )


def _retired(current: StoredResource, incoming: Json) -> Json:
    """What a merge dated before the Patient's last write makes of it: what the newer event said of
    the person, retired (inactive, replaced by the survivor) as the merge says, as the same events in
    the other order leave it (hub.core.record_content.next_content keeps the link on late news)."""
    content = {k: v for k, v in current.content.items() if k != "meta"}
    content["active"] = False
    content["link"] = incoming["link"]
    return labelled(content, labels_of(current.content.get("meta")))


def _opens_nothing(uow: RecordUnitOfWork, event: RecordEvent, episode: Json, current: StoredResource | None) -> bool:
    """Whether an EpisodeOfCare an episode.opened carries is not written (hub.core.stays): a new one
    that opens a second stay, or one the record holds as ended (closing is final)."""
    if episode["resourceType"] != "EpisodeOfCare":
        return False
    if current is not None:
        return not is_open(current.content.get("status"))
    return _another_stay(uow, event, episode)


def _another_stay(uow: RecordUnitOfWork, event: RecordEvent, episode: Json) -> bool:
    """Whether a new EpisodeOfCare opens a second stay (hub.core.stays), asked of the person's
    EpisodeOfCare the record holds: open as their status says, opened for their referralRequest."""
    person = survivor(uow, _subject_key(episode) or event.subject)
    held = uow.of_person(person, "EpisodeOfCare")
    theirs = ((e.id, is_open(e.content.get("status")), referrals_of(e.content)) for e in held)
    return opens_another_stay(episode["id"], referrals_of(episode), theirs)


def _said_again(uow: RecordUnitOfWork, current: StoredResource, latest: datetime) -> StoredResource:
    """Nothing new: no new version (so versions do not depend on the order partitions are read in),
    but the newer event time remembered, so that older content arriving later stays stale."""
    uow.put(_retimed(current, latest, current.content))
    return UNCHANGED


def _refused_move(current: StoredResource, incoming: Json) -> bool:
    # a finished task never changes again, not even to say its status again with other content (a
    # coordinator's request that raced the rules engine's own completion): the first to finish it stands
    before, after = current.content.get("status"), incoming.get("status")
    return before in FINAL or (before != after and not may_move(str(before), str(after)))


def _same_reference_data(
    uow: RecordUnitOfWork, event: RecordEvent, incoming: Json, current: StoredResource, when: str
) -> StoredResource | None:
    """Shared reference data (a GP practice) said again, in any order: no new version, and meta and
    the source event id name the earliest event that said it (by time, then sender, then event id),
    so the record does not depend on which partition a consumer happened to read first. None when
    the content differs (then newest wins)."""
    if not same_content(incoming, current.content):
        return None
    meta = current.content.get("meta") or {}
    said = (str(meta.get("lastUpdated", "")), str(meta.get("source", "")), current.source_event_id)
    earlier = (when, event.source, event.id) < said or not meta
    if not earlier and event.time <= current.event_time:
        return UNCHANGED  # nothing to remember: the fast path when many people share one practice
    content, first = current.content, current.source_event_id  # only retimed, as most events leave it:
    if earlier:  # the same object, so a replay keeps its text rather than serialising a copy
        content = {**content, "meta": {**meta, "lastUpdated": when, "source": event.source}}
        first = event.id
    uow.put(_retimed(current, max(current.event_time, event.time), content, first))
    return UNCHANGED


def reconcile_reference_data(stored: StoredResource | None, ours: StoredResource) -> StoredResource:
    """Reference data as one worker wrote it (`ours`), against what another worker committed to the
    same row meanwhile (`stored`): the row that one worker reading both events would have left, in
    either order. The same data (and version): the earliest event that said it, the latest time.
    Otherwise the newer event's row, as ever."""
    if stored is None or stored == ours:
        return ours
    if stored.version_id == ours.version_id and same_content(ours.content, stored.content):
        first = min(stored, ours, key=_said)
        return _retimed(first, max(stored.event_time, ours.event_time), first.content, first.source_event_id)
    return ours if ours.event_time >= stored.event_time else stored


def _said(row: StoredResource) -> tuple[str, str, str]:
    meta = row.content.get("meta") or {}
    return str(meta.get("lastUpdated", "")), str(meta.get("source", "")), row.source_event_id


def _retimed(
    current: StoredResource, event_time: datetime, content: Json, source_event_id: str | None = None
) -> StoredResource:
    # what dataclasses.replace does, without its per-call introspection (a hot path in replay)
    return StoredResource(
        current.resource_type,
        current.id,
        current.person_key,
        current.version_id,
        event_time,
        current.source_event_id if source_event_id is None else source_event_id,
        content,
    )


def _point_at(content: Json, key: str) -> None:
    for field in _SUBJECT_FIELDS:
        if field in content:
            content[field] = {**content[field], "reference": f"Patient/{key}"}
    if content.get("resourceType") == "Provenance":
        content["extension"] = [
            {**e, "valueReference": {"reference": f"Patient/{key}"}} if e.get("url") == PERSON_EXTENSION else e
            for e in content.get("extension") or []
        ]


def _stamp(
    event: RecordEvent,
    content: Json,
    kind: str,
    rid: str,
    key: str | None,
    current: StoredResource | None,
    content_time: datetime,
    when: str,
) -> StoredResource:
    version = (current.version_id if current else 0) + 1
    labels = (content.get("meta") or {}).get("security")
    content["meta"] = {"versionId": str(version), "lastUpdated": when, "source": event.source}
    if labels:
        content["meta"]["security"] = labels
    return StoredResource(kind, rid, key, version, content_time, event.id, content)


def _retirements(uow: RecordUnitOfWork, resources: list[Json]) -> list[tuple[str, str, str]]:
    """(retired key, survivor key named, the person that key resolves to) for each Patient a merge
    retires, resolved before the merge's Patients are written."""
    found = []
    for patient in resources:
        target = replaced_by(patient) if patient.get("resourceType") == "Patient" else None
        if target is not None:
            found.append((str(patient["id"]), target, survivor(uow, target)))
    return found


def _merge(
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
            _point_at(content, to)
            stored = _stamp(event, content, current.resource_type, current.id, to, current, current.event_time, when)
            uow.put(stored)
            moved.append(stored)
    return moved


def _death_to_survivor(
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
        _said_again(uow, held, event.time)
        return
    written.append(_carried(uow, event, content, held, event.time))


def _deaths_merged(
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
            carried.append(_carried(uow, event, content, held, max(held.event_time, theirs.event_time)))
    return carried


def _carried(
    uow: RecordUnitOfWork, event: RecordEvent, content: Json, held: StoredResource, at: datetime
) -> StoredResource:
    """The survivor's Patient with a death carried onto it, dated `at`, its source kept."""
    stored = _stamp(event, content, "Patient", held.id, held.person_key, held, at, at.isoformat())
    stored.content["meta"]["source"] = (held.content.get("meta") or {}).get("source", event.source)
    uow.put(stored)
    return stored


@functools.lru_cache(maxsize=1024)
def _activity(event_type: str) -> Json:
    # built once per event type and shared by every Provenance that names it (as _agent)
    return {"text": event_type}


@functools.lru_cache(maxsize=4096)
def _agent(sender: str) -> list[Json]:
    """The sending organisation as the author: built once per sender and shared, not once per event
    (a replay holds millions of Provenances; stored content is never changed in place)."""
    author = {"system": "http://terminology.hl7.org/CodeSystem/provenance-participant-type", "code": "author"}
    return [{"type": {"coding": [author]}, "who": {"identifier": {"system": ODS_SYSTEM, "value": sender}}}]


def _provenance(uow: RecordUnitOfWork, event: RecordEvent, written: list[StoredResource], when: str) -> None:
    sender = event.source.removeprefix("urn:ods:")
    written = [w for w in written if w.person_key]  # shared reference data (a practice) has no provenance
    if not written:
        return
    keys = sorted({w.person_key for w in written if w.person_key})
    provenance: Json = {
        "resourceType": "Provenance",
        "id": event.id,
        "target": [{"reference": f"{w.resource_type}/{w.id}/_history/{w.version_id}"} for w in written],
        "recorded": when,
        "activity": _activity(event.type),
        "agent": _agent(sender),
        "entity": [{"role": "source", "what": {"identifier": {"system": EVENT_SYSTEM, "value": event.id}}}],
    }
    key = survivor(uow, keys[0]) if keys else survivor(uow, event.subject)
    provenance["extension"] = [{"url": PERSON_EXTENSION, "valueReference": {"reference": f"Patient/{key}"}}]
    uow.put(_stamp(event, provenance, "Provenance", event.id, key, None, event.time, when))
