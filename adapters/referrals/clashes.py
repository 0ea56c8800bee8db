"""A referral_id its referrer already used for another person: a correction of the NHS number (the
same person, so the same date of birth), or the id used again by mistake for a stranger, refused.

The hub moves a referral sent again under the same referral_id with another NHS number to that person
(README, "Corrections"). A correction is the same person: the row must give birth_date, and it must be
the date of birth the hub holds for the person the referral is held for (and, when the hub knows the
new NHS number, theirs too). Anything else is refused naming the row and the field, and the first
person's referral stays as it is. An outcome naming another person than its referral is refused too:
it carries no date of birth, and applying it would move the referral. The record is read as it stands
when the row is checked (with this intake's own earlier rows remembered), so an earlier referral the
record has not applied yet is not seen; the record consumer is where the check would be exact.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from typing import Any, Protocol

from adapters.referrals.to_fhir import REFERRAL_ID_SYSTEM, MappedEvent
from hub.core.errors import InvalidMessageError
from schemas.events import coordination as co

Json = dict[str, Any]


class RecordLookup(Protocol):
    """The part of the record's read side this check uses (hub.core.ports.RecordReader)."""

    def read(self, resource_type: str, id: str) -> Json | None: ...

    def filed_under(self, patient_ids: Collection[str]) -> dict[str, str]: ...


@dataclass(frozen=True)
class _Said:
    rid: str
    ref: str
    referrer: str
    key: str
    born: str | None


class ReferralIds:
    """Refuses a referral or outcome whose referral_id is held for another person unless it is a
    correction; remembers the rows this intake sent, which the record may not have applied yet."""

    def __init__(self, record: RecordLookup | None) -> None:
        self._record = record
        self._holder: dict[str, str] = {}  # referral resource id -> person key, as this intake sent it
        self._born: dict[str, str] = {}  # person key -> date of birth a row sent by this intake gave

    def check(self, row: int, event: MappedEvent) -> InvalidMessageError | None:
        """Why this row may not be applied, or None (it is not about a referral held for another person)."""
        said = _said(event)
        if said is None:
            return None
        held = self._held_by(said.rid)
        if held is None or self._same_person(held, said.key):
            return None
        if event.event_type == co.REFERRAL_OUTCOME.type:
            return _refused(row, said, "nhs_number", _OUTCOME)
        return self._correction(row, said, held)

    def sent(self, event: MappedEvent) -> None:
        """Remember a row Kafka acknowledged."""
        said = _said(event)
        if said is not None and event.event_type == co.REFERRAL_RECEIVED.type:
            self._holder[said.rid] = said.key
            if said.born:
                self._born.setdefault(said.key, said.born)

    def _correction(self, row: int, said: _Said, held: str) -> InvalidMessageError | None:
        if said.born is None:
            return _refused(row, said, "referral_id", _NO_BIRTH_DATE)
        first = self._birth_date(held)
        if first is None:
            return _refused(row, said, "referral_id", _UNKNOWN_BIRTH_DATE)
        if first != said.born:
            return _refused(row, said, "referral_id", _OTHER_BIRTH_DATE)
        theirs = self._birth_date(said.key)
        if theirs is not None and theirs != said.born:
            return _refused(row, said, "birth_date", _NEW_NUMBER_DIFFERS)
        return None

    def _held_by(self, rid: str) -> str | None:
        if rid in self._holder:
            return self._holder[rid]
        held = self._record.read("ServiceRequest", rid) if self._record else None
        reference = str(((held or {}).get("subject") or {}).get("reference") or "")
        return reference.removeprefix("Patient/") if reference.startswith("Patient/") else None

    def _same_person(self, held: str, key: str) -> bool:
        if held == key:
            return True
        return self._record is not None and self._record.filed_under([key]).get(key, key) == held  # (merged: A40)

    def _birth_date(self, key: str) -> str | None:
        patient = self._record.read("Patient", key) if self._record else None
        said = (patient or {}).get("birthDate")
        return str(said) if said else self._born.get(key)


_OUTCOME = (
    "an outcome must give the NHS number the referral has; to correct the referral's NHS number, send the "
    "referral again with it and the person's birth_date. Not applied: the referral stays as it was"
)
_NO_BIRTH_DATE = (
    "a correction of the NHS number must give the person's birth_date, the same as for the first NHS number, "
    "for the hub to move the referral to the new one; a new referral needs a referral_id of its own"
)
_UNKNOWN_BIRTH_DATE = (
    "the hub holds no date of birth for the person it was first sent for, so it cannot tell a correction of "
    "the NHS number from a referral_id used again: give a new referral a referral_id of its own (and an "
    "outcome `declined` closes the first, if it was sent in error)"
)
_OTHER_BIRTH_DATE = (
    "their date of birth differs from birth_date here, and a correction of the NHS number is the same person; "
    "give a new referral a referral_id of its own"
)
_NEW_NUMBER_DIFFERS = (
    "the hub holds another date of birth for the NHS number given, so the row is not a correction of the "
    "referral's NHS number to it: check nhs_number and birth_date"
)


def _refused(row: int, said: _Said, name: str, why: str) -> InvalidMessageError:
    if why is _OUTCOME:
        used = f"referral_id {said.ref!r} of {said.referrer} is held for a different person (another NHS number)"
    else:
        used = f"{said.ref!r} is already used by {said.referrer} for a different person (another NHS number)"
        why += ". Not applied: the first person's referral stays as it was"
    fields = (name,) if name == "referral_id" else (name, "referral_id")
    return InvalidMessageError(f"row {row}, field {name}: {used}; {why}", (f"row {row}", *fields))


def _said(event: MappedEvent) -> _Said | None:
    """The referral a referral or outcome row names by its referral_id, or None (no referral_id)."""
    if event.event_type not in (co.REFERRAL_RECEIVED.type, co.REFERRAL_OUTCOME.type):
        return None
    resources = [e["resource"] for e in event.payload.get("entry") or []]
    request = next((r for r in resources if r.get("resourceType") == "ServiceRequest"), None)
    ids = [
        i for i in (request or {}).get("identifier") or [] if str(i.get("system", "")).startswith(REFERRAL_ID_SYSTEM)
    ]
    if request is None or not ids:
        return None
    patient: Json = next((r for r in resources if r.get("resourceType") == "Patient"), {})
    born = patient.get("birthDate")
    return _Said(request["id"], str(ids[0]["value"]), event.sender, event.person_key, str(born) if born else None)
