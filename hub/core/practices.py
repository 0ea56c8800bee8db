"""A person's registered practice as the coordination engine (hub.core.tasks) keeps it, where their PIC
summary goes: by the record's rule (hub.core.record, "practice"), the newest word on it by event time.

State keys:
    practice        the practice's ODS code
    practice_from   whose word: "register" (a practice's register row), "hospital" (a hospital's Patient
                    naming it, PD1-3), "referral" (a referral's Patient: the referrer's word, which holds
                    only until a registration says one), "coordinator" (the find-the-practice task
                    completed naming it: as good as a registration, until a newer one speaks), or
                    "registration" (a register row or hospital, in a state saved before practice_at was kept)
    practice_at     when it was said, as the record dates it: a register row, at its event time; a
                    hospital, at the person's Patient version that holds it (the record writes one only
                    when the Patient says something new: patient_held); the coordinator, at the
                    task.updated. None for a referral's word; for a hospital's the record no longer
                    holds (another sender's Patient, saying nothing of it, replaced the record's whole);
                    and in states saved before it was kept: any registration then takes it
    patient_held    the person's own Patient as the record holds it but its practice (generalPractitioner)
                    and meta (but for its source and security labels): whether a hospital's Patient says
                    something new, so writes a version that dates the practice, is the record's own test
                    (hub.core.record_content: same_content of next_content)
    patient_own_at  the event time of the person's latest own Patient (not one under a key merged into
                    them, which hub.core.deaths counts in patient_at): an older one is stale, as the
                    record skips it
"""

from __future__ import annotations

import hashlib
from datetime import datetime

import orjson

from hub.core.fhir_read import ods, of_kind
from hub.core.ports import Json, RecordEvent, StoredResource
from hub.core.record_content import REMOVED_URL, next_content, replaced_by, same_content
from schemas.events.coordination import PATIENT_STUB_EVENTS, REFERRAL_RECEIVED, REGISTER_ROW

NHS_SYSTEM = "https://fhir.nhs.uk/Id/nhs-number"
_RANK = {"referral": 1, "coordinator": 2}  # a registration (register, hospital) ranks 3
_GP = "generalPractitioner"
_WORD = ("practice", "practice_from", "practice_at")


def remember(state: Json, event: RecordEvent, resources: list[Json]) -> None:
    """Take the practice and NHS number the event's Patients say of the person (before hub.core.deaths
    has learned the event)."""
    organisations = {
        f"Organization/{o.get('id')}": ods(o.get("identifier")) for o in of_kind(resources, "Organization")
    }
    merged = set(state.get("merged") or ())  # (hub.core.merges: keys merged into the person)
    for patient in of_kind(resources, "Patient"):
        if replaced_by(patient):
            continue  # a merge's retired record: the survivor's Patient beside it speaks for the person
        code = next(filter(None, (_code(gp, organisations) for gp in _entries(patient))), None)
        if event.type == REFERRAL_RECEIVED.type:
            if code and state.get("practice_from") in (None, "referral"):
                _take(state, code, "referral", None)
        elif event.type == REGISTER_ROW.type:
            if code and newer(state, event.time) and not _same_day_lesser(state, code, event.time):
                _take(state, code, "register", event.time)
        elif event.type not in PATIENT_STUB_EVENTS and patient.get("id") not in merged:
            # (a hospital's late Patient under a number merged away is the retired record's, as the record keeps it)
            _hospital(state, event, patient, code)
        for ident in patient.get("identifier") or []:
            if ident.get("system") == NHS_SYSTEM and ident.get("value"):
                state["nhs"] = ident["value"]


def newer(state: Json, at: datetime) -> bool:
    """Whether a registration said at `at` is the newest word on the practice: none held (nor a
    deletion later than `at`), or a referral's, or one said no later than `at` (or undated)."""
    held = state.get("practice_at")
    if state.get("practice_from") == "referral" or held is None:
        return True
    return at >= datetime.fromisoformat(held)


def newer_word(theirs: Json, ours: Json) -> bool:
    """Whether `theirs` (a retired identity's state) holds a word on the practice the survivor's
    (`ours`) gives way to, merged (hub.core.merges), as the record keeps the survivor's Patient: any
    when ours holds none; a registration over the coordinator's word over a referral's; and of two
    registrations, a register row's newer by practice_at than ours (the record carries a row said
    for someone merged away to their survivor) but never a hospital's word under the retired number."""
    if not theirs.get("practice"):
        return False
    if not ours.get("practice"):
        return True
    rank = [_RANK.get(s.get("practice_from") or "", 3) for s in (theirs, ours)]
    if rank[0] != rank[1]:
        return rank[0] > rank[1]
    said, held = theirs.get("practice_at"), ours.get("practice_at")
    if theirs.get("practice_from") not in ("register", "coordinator") or said is None:
        return False
    return held is None or datetime.fromisoformat(said) > datetime.fromisoformat(held)


def take_word(state: Json, theirs: Json) -> None:
    """The practice `theirs` holds, with whose word it is and when it was said."""
    _take(state, theirs["practice"], theirs.get("practice_from"), theirs.get("practice_at"))


def _hospital(state: Json, event: RecordEvent, patient: Json, code: str | None) -> None:
    """A hospital's Patient, as the record writes it: none older than the person's latest own Patient
    counts (the record skips it whole). One naming a practice takes it when it is the newest word,
    dated by the version it writes (one that says nothing new, naming the practice held, leaves the
    date as it was); one deleting it (HL7 v2 `""`) clears it unless a register row said it later;
    one that says something new of the person re-dates a hospital's word held, as the record's new
    Patient version does, or, from another sender and saying nothing of the practice, leaves it
    undated: the record's Patient, replaced whole, holds none."""
    at = event.time
    last = state.get("patient_own_at", state.get("patient_at"))
    if last is not None and at < datetime.fromisoformat(last):
        return
    state["patient_own_at"] = at.isoformat()
    held, fingerprint = state.get("patient_held"), state.pop("patient_said", None)
    if not _well_shaped(patient):  # (what the record cannot overlay: no telling, so something new)
        _practice(state, patient, code, at, True, other=False)
        return
    content = _held(next_content(event, _without_practice(patient), _stored(patient, held, at)), event)
    if held is not None:
        said_new = not same_content(content, held)
    else:  # (a state saved before patient_held was kept: its fingerprint of the raw Patient, if any)
        said_new = fingerprint is None or fingerprint != _fingerprint(patient)
    before = [state.get(k) for k in _WORD]
    _practice(state, patient, code, at, said_new, other=held is not None and _source(held) != event.source)
    if said_new or held is None or before != [state.get(k) for k in _WORD]:
        state["patient_held"] = content  # (a version written: its sender's, from now on)


def _practice(state: Json, patient: Json, code: str | None, at: datetime, said_new: bool, *, other: bool) -> None:
    """What a hospital's Patient (not stale) does to the practice held, as the record's version does
    (hub.core.record_practice)."""
    word, dated = state.get("practice_from"), state.get("practice_at")
    if code and newer(state, at):
        again = word == "registration" or (word == "hospital" and dated and not said_new)
        if code != state.get("practice") or not again:
            _take(state, code, "hospital", at)  # (a legacy word said again stays undated: no telling when)
    elif code:
        return  # older than a register row's or the coordinator's word: the record keeps that
    elif _GP in _removed(patient):
        if word in (None, "hospital", "registration") or (word == "register" and newer(state, at)):
            # (HL7 v2 `""`: deleted, and dated, so that an older row does not undo it)
            state["practice"], state["practice_from"], state["practice_at"] = None, "hospital", at.isoformat()
    elif word == "hospital" and state.get("practice") and dated and other:
        state.pop("practice_at", None)  # (the record's Patient, replaced whole, holds none: any registration takes one)
    # (one of its own leaving PD1 out says nothing of the practice: the record's version keeps its date)


def _same_day_lesser(state: Json, code: str, at: datetime) -> bool:
    """Whether a register row ties with the register row held (two registers extracted the same day)
    and names the lesser practice code: the greater stands, whichever came first, as on the record
    (hub.core.record_practice)."""
    held = state.get("practice_at")
    return (
        state.get("practice_from") == "register"
        and held is not None
        and datetime.fromisoformat(held) == at
        and code < str(state.get("practice") or "")
    )


def _well_shaped(patient: Json) -> bool:
    """Whether the lists the record's overlay reads (extension, identifier) are lists of objects."""
    return all(
        isinstance(items, list) and all(isinstance(i, dict) for i in items)
        for items in (patient.get(k, []) for k in ("extension", "identifier"))
    )


def _source(held: Json) -> object:
    return (held.get("meta") or {}).get("source")


def _stored(patient: Json, held: Json | None, at: datetime) -> StoredResource | None:
    if held is None:
        return None
    pid = str(patient.get("id"))
    return StoredResource("Patient", pid, pid, 1, at, "", held)


def _held(content: Json, event: RecordEvent) -> Json:
    """What patient_held keeps of a Patient's content as the record would write it."""
    kept = {k: v for k, v in content.items() if k not in ("meta", _GP)}
    meta: Json = {"source": event.source}
    labels = (content.get("meta") or {}).get("security")
    if labels:
        meta["security"] = labels
    kept["meta"] = meta
    return kept


def _without_practice(patient: Json) -> Json:
    return {k: v for k, v in patient.items() if k != _GP}


def _removed(patient: Json) -> set[str]:
    extensions = patient.get("extension")
    return {
        str(e.get("valueCode"))
        for e in (extensions if isinstance(extensions, list) else ())
        if isinstance(e, dict) and e.get("url") == REMOVED_URL
    }


def _take(state: Json, code: str, said_by: str | None, at: datetime | str | None) -> None:
    state["practice"], state["practice_from"] = code, said_by
    if at is None:
        state.pop("practice_at", None)
    else:
        state["practice_at"] = at if isinstance(at, str) else at.isoformat()


def _entries(patient: Json) -> list[Json]:
    gps = patient.get(_GP)
    return [gp for gp in gps if isinstance(gp, dict)] if isinstance(gps, list) else []


def _fingerprint(patient: Json) -> str:
    """What a Patient says of the person but its practice and meta, as states saved by the engine before
    patient_held was kept fingerprinted it (patient_said)."""
    said = {k: v for k, v in patient.items() if k not in ("meta", _GP)}
    return hashlib.sha256(orjson.dumps(said, option=orjson.OPT_SORT_KEYS)).hexdigest()[:16]


def _code(gp: Json, organisations: dict[str, str | None]) -> str | None:
    return ods([gp.get("identifier") or {}]) or organisations.get(str(gp.get("reference")))
