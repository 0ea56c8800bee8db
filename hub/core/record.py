"""The shared care record's rules: how events change the current version of each resource.

Pure decisions over a RecordUnitOfWork; no I/O of its own, no clock reads (time comes from events,
so a replay of the log gives the same record). The merge rules are hub.core.record_merges, a register
row's hub.core.record_practice, and what a write makes of content hub.core.record_content.

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
                    An outcome dated before the referral was last said, but not before the date it gives
                    (authoredOn: a referral corrected after it was answered), or by day alone on its UK day
                    (hub.core.days), answers it all the same, until an outcome is on it
    stubs           a Patient carried by a referral or register row only introduces a person the record does
                    not know yet; it never replaces what a hospital or practice said, and anything they say
                    later replaces it, whatever its event time
    practice        but a register row is the practice's word that the person is registered there: the
                    newest word on the practice by event time (a register row's, or a hospital's Patient
                    naming one, dated by its version) is the Patient's generalPractitioner, where the
                    PIC summary is to go; a register row changes nothing else, nor the Patient's source
                    or time, and for someone merged away it is about their survivor, to whom a merge
                    carries a row said before it when newer than their word (hub.core.record_practice:
                    when each word was said, a hospital's deletion too, and a tie between two rows)
    not recorded    clock ticks write nothing and leave no processed-event row
    provenance      each event that writes anything leaves a Provenance naming the sending organisation,
                    the event, every resource version it wrote and (extension PERSON_EXTENSION) the
                    person it is about, so that their consents apply to it as to the rest of their record;
                    a register row's practice laid on a Patient held is named without a version (what
                    the row carried, and was delivered, is its own Patient, not that version)
    labels          security labels (meta.security) are kept; an overlay keeps the earlier ones too
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from hub.core.days import answers_that_day
from hub.core.errors import InvalidMessageError
from hub.core.fhir_read import referrals_of
from hub.core.kpi_reading import fhir_time
from hub.core.policy import PERSON_EXTENSION
from hub.core.ports import Json, RecordEvent, RecordUnitOfWork, StoredResource
from hub.core.record_content import (
    MERGED,
    UNCHANGED,
    has_outcome,
    next_content,
    replaced_by,
    retimed,
    same_content,
    stamp,
)
from hub.core.record_merges import (
    SUBJECT_FIELDS,
    death_to_survivor,
    deaths_merged,
    merge,
    point_at,
    retired,
    retirements,
    retires,
    survivor,
)
from hub.core.record_practice import practice_kept, practices_merged, register_said, registered_row
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
    merges = retirements(uow, resources) if event.type == MERGED else ()
    for resource in resources:
        stored = _write(uow, event, resource, when, written)
        if stored is None:
            stale += 1
        elif stored is not UNCHANGED:
            written.append(stored)
    if merges:  # (after the Patients: a merge reversed moves to the survivor its own Patient makes active)
        written[:0] = merge(uow, event, merges, when)
        written += deaths_merged(uow, event, resources, merges)
        written += practices_merged(uow, event, merges)
    if written:
        _provenance(uow, event, written, when)
    return stale


def _subject_key(resource: Json) -> str | None:
    for field in SUBJECT_FIELDS:
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
        return registered_row(uow, event, incoming, current) if event.type == REGISTER_ROW.type else UNCHANGED
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
        if retires(event, incoming, current):
            incoming = retired(current, incoming)  # the merge's word on who they are, over newer content
        elif event.type not in _IN_LOG_ORDER and not _first_outcome(event, incoming, current):
            return None
        latest = current.event_time  # a correction (or a task event, or a merge) dated earlier: not dated back
    if kind == "Patient" and current is not None and "link" in current.content and event.type != MERGED:
        death_to_survivor(uow, event, incoming, current, written)  # (rare: someone merged away, or a survivor)
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
    if kind == "Patient" and not stub:
        practice_kept(event, incoming, content, current)  # (when the practice was said: hub.core.record_practice)
    key: str | None
    if kind in SHARED_KINDS:
        key = None
    elif kind == "Patient":
        key = replaced_by(content) or rid
    else:
        subject = _subject_key(content)
        key = survivor(uow, subject) if subject else survivor(uow, event.subject)
        if subject and key != subject:
            point_at(content, key)
    if current is not None and key == current.person_key and same_content(content, current.content):
        return _said_again(uow, current, latest)
    if latest != event.time:
        when = latest.isoformat()
    stored = stamp(event, content, kind, rid, key, current, _STUB_TIME if stub else latest, when)
    uow.put(stored)
    return stored


def _first_outcome(event: RecordEvent, incoming: Json, current: StoredResource) -> bool:
    """Whether an outcome dated before the referral the record holds was last said still answers it:
    the first one, dated no earlier than the referral says it was made (authoredOn, as the KPIs take
    it: a referral corrected after it was answered still was answered), or by day alone on that UK day
    (hub.core.days). Not once an outcome is on it: a later one stands over an older one sent late."""
    if event.type != REFERRAL_OUTCOME.type or incoming["resourceType"] != "ServiceRequest":
        return False
    made = fhir_time(current.content.get("authoredOn"), current.event_time)
    return not has_outcome(current.content) and (event.time >= made or answers_that_day(event.time, made))


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
    uow.put(retimed(current, latest, current.content))
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
    uow.put(retimed(current, max(current.event_time, event.time), content, first))
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
        return retimed(first, max(stored.event_time, ours.event_time), first.content, first.source_event_id)
    return ours if ours.event_time >= stored.event_time else stored


def _said(row: StoredResource) -> tuple[str, str, str]:
    meta = row.content.get("meta") or {}
    return str(meta.get("lastUpdated", "")), str(meta.get("source", "")), row.source_event_id


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


def _target(event: RecordEvent, written: StoredResource) -> Json:
    """The version an event wrote, as its Provenance names it; but a register row's practice laid on a
    Patient held (hub.core.record_practice) is named without one: what the row carried, and what is
    delivered of it, is the row's Patient, not that version, which is the hospital's but its practice."""
    if event.type == REGISTER_ROW.type and written.resource_type == "Patient" and written.version_id > 1:
        return {"reference": f"Patient/{written.id}"}
    return {"reference": f"{written.resource_type}/{written.id}/_history/{written.version_id}"}


def _provenance(uow: RecordUnitOfWork, event: RecordEvent, written: list[StoredResource], when: str) -> None:
    sender = event.source.removeprefix("urn:ods:")
    written = [w for w in written if w.person_key]  # shared reference data (a practice) has no provenance
    if not written:
        return
    keys = sorted({w.person_key for w in written if w.person_key})
    provenance: Json = {
        "resourceType": "Provenance",
        "id": event.id,
        "target": [_target(event, w) for w in written],
        "recorded": when,
        "activity": _activity(event.type),
        "agent": _agent(sender),
        "entity": [{"role": "source", "what": {"identifier": {"system": EVENT_SYSTEM, "value": event.id}}}],
    }
    key = survivor(uow, keys[0]) if keys else survivor(uow, event.subject)
    provenance["extension"] = [{"url": PERSON_EXTENSION, "valueReference": {"reference": f"Patient/{key}"}}]
    uow.put(stamp(event, provenance, "Provenance", event.id, key, None, event.time, when))
