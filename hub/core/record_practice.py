"""The registered practice on the record (hub.core.record, "practice"): the Patient's generalPractitioner
is the newest word on it by event time, a practice's register row or a hospital's Patient naming or
deleting one (PD1-3, `""`).

When each word was said:
    register row    on the generalPractitioner entry it wrote (PRACTICE_SAID_URL), with the practice's ODS
                    identifier; of two rows of one event time (two registers extracted the same day) the
                    greater ODS code stands, whichever was read first
    hospital        when the Patient version holding it was written (meta.lastUpdated), but a later
                    version of the same sender's that left PD1 out carries the time of the word before it
                    (PRACTICE_DATED_URL on the Patient), as a deletion of the practice carries its own:
                    news of the person's name is no word on the practice, and a deletion is one
    another sender  a hospital Patient replaces another sender's whole (hub.core.record_content): the
                    practice the first named goes with it, and when it was said; a register row's stays
    merge           a register row's practice on a Patient then merged away is the survivor's when it is
                    newer than theirs, as a row read after the merge would have made it
"""

from __future__ import annotations

from datetime import datetime

from hub.core.identity import stable_id
from hub.core.ports import Json, RecordEvent, RecordUnitOfWork, StoredResource
from hub.core.record_content import (
    UNCHANGED,
    labelled,
    labels_of,
    removed_elements,
    replaced_by,
    same_content,
    stamp,
)
from hub.core.record_merges import survivor

PRACTICE_SAID_URL = "https://carehub.invalid/StructureDefinition/practice-said"
# on a Patient: when its sender last said anything of the practice (named the one held or deleted it), kept
# by its later versions that left PD1 out; a version naming a practice is dated by its own lastUpdated
PRACTICE_DATED_URL = "https://carehub.invalid/StructureDefinition/practice-dated"
ODS_SYSTEM = "https://fhir.nhs.uk/Id/ods-organization-code"
_GP = "generalPractitioner"


def registered_row(uow: RecordUnitOfWork, event: RecordEvent, row: Json, current: StoredResource) -> StoredResource:
    """A register row's practice on the Patient the record holds (the survivor's, for someone merged
    away), when it is the newest word on it: a version of the row's (its Provenance names the
    practice) that keeps the Patient's source, time and lastUpdated where later (the hospital's
    demographics are not the practice's to supply)."""
    if replaced_by(current.content):
        found = uow.get("Patient", survivor(uow, current.id))
        if found is None:
            return UNCHANGED
        current = found
    return _register(uow, event, registered(current, row, event.time), current, event.time)


def practices_merged(
    uow: RecordUnitOfWork, event: RecordEvent, merges: list[tuple[str, str, str]]
) -> list[StoredResource]:
    """A register row's practice on a Patient a merge retires is the survivor's when it is the newest
    word on theirs (the merge's own Patient for them written first), as a row read after the merge
    makes it: the same survivor's practice in either order of row and merge."""
    carried: list[StoredResource] = []
    for retired, _, _ in merges:
        theirs = uow.get("Patient", retired)
        said_at = practice_said_at(theirs.content) if theirs else None
        to = survivor(uow, retired) if said_at else retired
        held = uow.get("Patient", to) if theirs and said_at and to != retired else None
        if theirs is None or said_at is None or held is None:
            continue
        stored = _register(uow, event, registered(held, theirs.content, said_at), held, said_at)
        if stored is not UNCHANGED:
            carried.append(stored)
    return carried


def _register(
    uow: RecordUnitOfWork, event: RecordEvent, content: Json | None, current: StoredResource, at: datetime
) -> StoredResource:
    if content is None or same_content(content, current.content):
        return UNCHANGED
    meta = current.content.get("meta") or {}
    said = meta.get("lastUpdated")  # (never dated back)
    when = said if said and datetime.fromisoformat(said) >= at else at.isoformat()
    stored = stamp(event, content, "Patient", current.id, current.person_key, current, current.event_time, when)
    stored.content["meta"]["source"] = meta.get("source", event.source)
    uow.put(stored)
    return stored


def practice_said_at(patient: Json) -> datetime | None:
    """When a register row said the practice this Patient holds (PRACTICE_SAID_URL), if one did."""
    gps = patient.get(_GP)
    first = gps[0] if isinstance(gps, list) and gps else None
    if not isinstance(first, dict) or "extension" not in first:
        return None  # the common case: a hospital's practice, said when the Patient was, or none
    return _said(first["extension"], PRACTICE_SAID_URL)


def _said(extensions: object, url: str) -> datetime | None:
    for e in extensions if isinstance(extensions, list) else ():
        if isinstance(e, dict) and e.get("url") == url and isinstance(e.get("valueDateTime"), str):
            try:
                return datetime.fromisoformat(e["valueDateTime"])
            except ValueError:
                return None
    return None


def registered(current: StoredResource, row: Json, at: datetime) -> Json | None:
    """The Patient the record holds, registered with the practice a register row names (`row`, its
    Patient, dated `at`), when that is the newest word on the practice by event time (at least as new
    as the word held: _practice_said, the greater ODS code where two rows tie) or none was said. Only
    generalPractitioner changes, noting `at` and the ODS code: the same practice held keeps its shape
    (a hospital's reference to its Organization). None when the row is older, names no practice, or
    the person was merged away."""
    held = current.content
    code = next(iter(_ods_codes(row)), None)
    gps = [gp for gp in held.get(_GP) or [] if isinstance(gp, dict)]
    if code is None or replaced_by(held):
        return None
    said = _practice_said(current) if gps else _said(held.get("extension"), PRACTICE_DATED_URL)  # (deleted)
    if said is not None and (at < said or (at == said and practice_said_at(held) == at and code < _code(held))):
        return None
    theirs = f"Organization/{stable_id('ods', code)}"  # (a hospital's reference: hub.core.huddle.practice_reference)
    kept = [gp for gp in gps if gp.get("reference") == theirs or code in _ods_codes({_GP: [gp]})]
    entry: Json = dict(kept[0]) if kept else {}
    entry["identifier"] = {"system": ODS_SYSTEM, "value": code}
    said_now = {"url": PRACTICE_SAID_URL, "valueDateTime": at.isoformat()}
    entry["extension"] = [*_others(_others(entry.get("extension"), PRACTICE_SAID_URL), PRACTICE_DATED_URL), said_now]
    content = {k: v for k, v in held.items() if k != "meta"} | {_GP: [entry]}
    _date(content, None, None)
    return labelled(content, labels_of(held.get("meta")))


def _practice_said(current: StoredResource) -> datetime:
    """When the practice a Patient holds (or its deletion) was said: by a register row, as it noted
    (PRACTICE_SAID_URL); by a hospital, as a later version of its own noted (PRACTICE_DATED_URL), or
    else when the Patient's version was written (meta.lastUpdated: a message that repeats the person
    as held writes none); by a referral's stub, never (its time is _STUB_TIME's: no one's word)."""
    said = practice_said_at(current.content) or _said(_first(current.content), PRACTICE_DATED_URL)
    if said is not None:
        return said
    written = (current.content.get("meta") or {}).get("lastUpdated")
    try:
        return (
            min(current.event_time, datetime.fromisoformat(written)) if isinstance(written, str) else current.event_time
        )
    except ValueError:
        return current.event_time


def _ods_codes(patient: Json) -> list[str]:
    """The ODS codes a Patient's generalPractitioner names by identifier (a register row's, say)."""
    return [
        str(i["value"])
        for gp in patient.get(_GP) or []
        if isinstance(gp, dict)
        and isinstance(i := gp.get("identifier"), dict)
        and i.get("system") == ODS_SYSTEM
        and i.get("value")
    ]


def _code(patient: Json) -> str:
    return min(_ods_codes(patient), default="")


def register_said(stub: Json, at: datetime) -> Json:
    """A register row's Patient stub, its practice noted as said at `at` (the person new to the record)."""
    gps = [gp for gp in stub.get(_GP) or [] if isinstance(gp, dict)]
    if not gps:
        return stub
    said = {"url": PRACTICE_SAID_URL, "valueDateTime": at.isoformat()}
    return stub | {_GP: [{**gps[0], "extension": [said]}, *gps[1:]]}


def practice_kept(event: RecordEvent, said: Json, content: Json, current: StoredResource | None) -> None:
    """What a hospital's Patient version (`content`, from `said`, over `current`) holds of the practice
    beyond what hub.core.record_content.next_content made of it. A register row's practice stays over a
    Patient older than its word, and over one that says nothing of the practice (as a death, never
    undone by another sender's silence); a newer one naming or deleting it has the last word. And
    when the hospital's word was said: a deletion, now (on the Patient); a version of its own that
    leaves PD1 out, when the word it keeps was (on the entry: only when the version is written for
    news of another kind); a practice named, by the version, unless nothing else is new."""
    deleted = _GP in removed_elements(said)
    if current is None:  # (a first Patient deleting the practice: nothing held, but a word said)
        if deleted:
            _date(content, None, event.time)
        return
    before = current.content
    said_at = practice_said_at(before)  # (None, at once, for all but the rare register-said practice)
    if said_at is not None and (event.time < said_at or not (_GP in said or deleted)):
        content[_GP] = before[_GP]
    if "extension" not in before and _first(before) is None and (_GP not in before or _GP in said) and not deleted:
        return  # the common case: a hospital's practice, dated by the version, said again or afresh
    if replaced_by(content):
        return  # (a merged-away Patient's practice is no one's word)
    if _GP not in content and deleted:
        _date(content, None, event.time)  # deleted (or deleted again: the newer word)
    elif _GP in said and said_at is None and content[_GP] == _undated(before.get(_GP)):
        content[_GP] = before[_GP]  # the practice said again as held, with nothing else new: no version
        _date(content, None, _said(before.get("extension"), PRACTICE_DATED_URL))
        if not same_content(content, before):
            content[_GP] = _undated(before[_GP])  # news: dated by its version
            _date(content, None, None)
    elif _GP in said or (before.get("meta") or {}).get("source") != event.source:
        _date(content, None, None)  # named afresh; or another sender's: neither the first's word nor its time
    elif _GP not in content:
        _date(content, None, _said(before.get("extension"), PRACTICE_DATED_URL))  # a deletion held
    elif _first(content) is None and not same_content(content, before):
        _date(content, _practice_said(current), None)  # news of another kind: the version keeps the word's time


def _undated(gps: object) -> object:
    """A generalPractitioner as its sender named it, without the date a later version noted on it."""
    if not isinstance(gps, list) or not gps or not isinstance(gps[0], dict) or "extension" not in gps[0]:
        return gps
    first = {k: v for k, v in gps[0].items() if k != "extension"}
    rest = _others(gps[0]["extension"], PRACTICE_DATED_URL)
    return [first | ({"extension": rest} if rest else {}), *gps[1:]]


def _first(patient: Json) -> object:
    gps = patient.get(_GP)
    first = gps[0] if isinstance(gps, list) and gps else None
    return first.get("extension") if isinstance(first, dict) else None


def _date(content: Json, named: datetime | None, deleted: datetime | None) -> None:
    """Note on a Patient when its sender last said the practice it holds (`named`, on the entry, when a
    later version left PD1 out) or deleted it (`deleted`, on the Patient); None: by its version."""
    if named is not None:
        first, *rest = content[_GP]
        dated = {"url": PRACTICE_DATED_URL, "valueDateTime": named.isoformat()}
        content[_GP] = [{**first, "extension": [*_others(first.get("extension"), PRACTICE_DATED_URL), dated]}, *rest]
    kept = _others(content.get("extension"), PRACTICE_DATED_URL)
    if deleted is not None:
        kept.append({"url": PRACTICE_DATED_URL, "valueDateTime": deleted.isoformat()})
    if kept:
        content["extension"] = kept
    else:
        content.pop("extension", None)


def _others(extensions: object, url: str) -> list[Json]:
    return [
        e
        for e in (extensions if isinstance(extensions, list) else [])
        if not (isinstance(e, dict) and e.get("url") == url)
    ]
