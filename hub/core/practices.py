"""A person's registered practice as the coordination engine (hub.core.tasks) keeps it, where their PIC
summary goes: by the record's rule (hub.core.record, "practice"), the newest word on it by event time.

State keys:
    practice        the practice's ODS code
    practice_from   whose word: "register" (a practice's register row), "hospital" (a hospital's Patient
                    naming it, PD1-3), "referral" (a referral's Patient: the referrer's word, which holds
                    only until a registration says one), "coordinator" (the find-the-practice task
                    completed naming it: as good as a registration until one speaks), or "registration"
                    (a register row or hospital, in a state saved before practice_at was kept)
    practice_at     when it was said, as the record dates it: a register row, at its event time; a
                    hospital, at the person's Patient version that holds it (the record writes one only
                    when the Patient says something new: patient_said). None for a referral's or the
                    coordinator's word, and in states saved before it was kept: any registration then takes it
    patient_said    a fingerprint of the hospital's latest Patient but its practice and meta, so that a
                    Patient said again as held (no new version on the record) leaves practice_at as it was
"""

from __future__ import annotations

import hashlib
from datetime import datetime

import orjson

from hub.core.fhir_read import ods, of_kind
from hub.core.ports import Json, RecordEvent
from hub.core.record_content import replaced_by
from schemas.events.coordination import PATIENT_STUB_EVENTS, REFERRAL_RECEIVED, REGISTER_ROW

NHS_SYSTEM = "https://fhir.nhs.uk/Id/nhs-number"
_UNDATED = frozenset({"referral", "coordinator"})  # words any registration replaces, whenever it was said
_RANK = {"referral": 1, "coordinator": 2}  # a registration (register, hospital) ranks 3


def remember(state: Json, event: RecordEvent, resources: list[Json]) -> None:
    """Take the practice and NHS number the event's Patients say of the person (before hub.core.deaths
    has learned the event: `patient_at` is still the latest Patient before it)."""
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
            if code and newer(state, event.time):
                _take(state, code, "register", event.time)
        elif event.type not in PATIENT_STUB_EVENTS and patient.get("id") not in merged:
            # (a hospital's late Patient under a number merged away is the retired record's, as the record keeps it)
            _hospital(state, patient, code, event.time)
        for ident in patient.get("identifier") or []:
            if ident.get("system") == NHS_SYSTEM and ident.get("value"):
                state["nhs"] = ident["value"]


def newer(state: Json, at: datetime) -> bool:
    """Whether a registration said at `at` is the newest word on the practice: none held, or a
    referral's or the coordinator's, or one said no later than `at` (or undated: saved before it was)."""
    held = state.get("practice_at")
    if not state.get("practice") or state.get("practice_from") in _UNDATED or held is None:
        return True
    return at >= datetime.fromisoformat(held)


def newer_word(theirs: Json, ours: Json) -> bool:
    """Whether `theirs` holds a newer word on the practice than `ours` (two identities of one person,
    merged: hub.core.merges): a registration over the coordinator's word over a referral's, then the
    later by practice_at (a dated one over an undated one); `ours` where they tie."""
    if not theirs.get("practice"):
        return False
    if not ours.get("practice"):
        return True
    rank = [_RANK.get(s.get("practice_from") or "", 3) for s in (theirs, ours)]
    if rank[0] != rank[1]:
        return rank[0] > rank[1]
    said, held = theirs.get("practice_at"), ours.get("practice_at")
    return said is not None and (held is None or datetime.fromisoformat(said) > datetime.fromisoformat(held))


def take_word(state: Json, theirs: Json) -> None:
    """The practice `theirs` holds, with whose word it is and when it was said."""
    _take(state, theirs["practice"], theirs.get("practice_from"), theirs.get("practice_at"))


def _hospital(state: Json, patient: Json, code: str | None, at: datetime) -> None:
    """A hospital's Patient: none older than the person's latest Patient counts (the record skips it
    whole); one naming a practice takes it when it is the newest word; one that says something new
    of the person re-dates a hospital's word held, as the record's new Patient version does."""
    last = state.get("patient_at")
    if last is not None and at < datetime.fromisoformat(last):
        return
    seen = _fingerprint(patient)
    said_new, state["patient_said"] = seen != state.get("patient_said"), seen
    if code and newer(state, at):
        again = code == state.get("practice") and state.get("practice_from") == "hospital" and not said_new
        _take(state, code, "hospital", state["practice_at"] if again else at)
    elif said_new and state.get("practice_from") == "hospital":
        state["practice_at"] = at.isoformat()  # (a new version holds the practice, though this one left PD1 out)


def _take(state: Json, code: str, said_by: str | None, at: datetime | str | None) -> None:
    state["practice"], state["practice_from"] = code, said_by
    if at is None:
        state.pop("practice_at", None)
    else:
        state["practice_at"] = at if isinstance(at, str) else at.isoformat()


def _entries(patient: Json) -> list[Json]:
    gps = patient.get("generalPractitioner")
    return [gp for gp in gps if isinstance(gp, dict)] if isinstance(gps, list) else []


def _code(gp: Json, organisations: dict[str, str | None]) -> str | None:
    return ods([gp.get("identifier") or {}]) or organisations.get(str(gp.get("reference")))


def _fingerprint(patient: Json) -> str:
    """What a Patient says of the person but its practice (and meta, which the record compares without)."""
    said = {k: v for k, v in patient.items() if k not in ("meta", "generalPractitioner")}
    return hashlib.sha256(orjson.dumps(said, option=orjson.OPT_SORT_KEYS)).hexdigest()[:16]
