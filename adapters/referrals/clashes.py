"""A referral_id its referrer already used for another person: a correction of the NHS number, or, when
the referrer itself gave two birth dates, the id used again for someone else, refused.

The hub moves a referral sent again under the same referral_id with another NHS number to that person
(README, "Corrections"). Only the referrer's own word is weighed: the birth date it gave with the
referral the hub holds (extension BIRTH_DATE_SAID on its ServiceRequest, as it last sent it) and the one
the row gives. Both given and different is evidence of another person, and the row is refused naming
the row and referral_id, the first person's referral staying as it is; anything else (no birth date on
either side, or on one) is a correction, as it always was. Nothing a hospital or practice said is read,
so the answer tells a referrer nothing it did not say itself. An outcome carries no birth date, so
this never refuses one (a withdrawal is checked as below). The record is read as it stands when the row
is checked, with this intake's own earlier rows remembered as the record keeps them (the last word on a
referral replaces the earlier), so rows in one command and in two are judged alike.

A withdrawal (outcome withdrawn) is the referrer's word on its own referral, so it is refused unless
that referrer sent the referral its referral_id names (held by the record, or sent by this intake: the
referral's id comes from its referrer and referral_id, so another referrer's referral is one this
referrer never sent), for the person the row names (or one merged with them), and the referral has not
ended already (declined, completed): each refusal names the row and the field, and nothing is withdrawn.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from typing import Any, Protocol

from adapters.referrals.to_fhir import BIRTH_DATE_SAID, REFERRAL_ID_SYSTEM, MappedEvent
from hub.core.errors import InvalidMessageError
from schemas.events import coordination as co

Json = dict[str, Any]
_ENDED = frozenset({"revoked", "completed", "entered-in-error"})  # FHIR request-status: over, one way or another


class RecordLookup(Protocol):
    """The part of the record's read side this check uses (hub.core.ports.RecordReader)."""

    def read(self, resource_type: str, id: str) -> Json | None: ...

    def filed_under(self, patient_ids: Collection[str]) -> dict[str, str]: ...


@dataclass(frozen=True)
class _Said:
    """What a referral row says of the referral it names: its id, the person and the birth date given."""

    rid: str
    ref: str
    referrer: str
    key: str
    born: str | None


class ReferralIds:
    """Refuses a referral whose referral_id is held for another person with another birth date, both
    given by its referrer; remembers the referrals this intake sent, which the record may not hold yet."""

    def __init__(self, record: RecordLookup | None) -> None:
        self._record = record
        self._held: dict[str, tuple[str, str | None]] = {}  # referral resource id -> (person, birth date said)

    def check(self, row: int, event: MappedEvent) -> InvalidMessageError | None:
        """Why this row may not be applied, or None."""
        withdrawn = _withdrawn(event)
        if withdrawn is not None:
            return self._withdrawal(row, withdrawn)
        said = _said(event)
        if said is None:
            return None
        held = self._held_for(said.rid)
        if held is None or said.born is None or held[1] is None or held[1] == said.born:
            return None
        if self._same_person(held[0], said.key):
            return None
        return _refused(row, said)

    def sent(self, event: MappedEvent) -> None:
        """Remember a referral Kafka acknowledged, as the record will hold it."""
        said = _said(event)
        if said is not None:
            self._held[said.rid] = (said.key, said.born)

    def _withdrawal(self, row: int, said: _Said) -> InvalidMessageError | None:
        held = self._held_for(said.rid)
        if held is None:
            return _never_sent(row, said)
        if not self._same_person(held[0], said.key):
            return InvalidMessageError(
                f"row {row}, field nhs_number: referral {said.ref!r} from {said.referrer} is for another person "
                "than this NHS number: a withdrawal names the person the referral is for (if the referral's NHS "
                "number was wrong, send the referral again with the right one, then withdraw it). Nothing was "
                "withdrawn",
                (f"row {row}", "nhs_number"),
            )
        request = (self._record.read("ServiceRequest", said.rid) if self._record else None) or {}
        outcome = _outcome_of(request)
        if request.get("status") in _ENDED and outcome != co.WITHDRAWN:
            ended = f"was {outcome}" if outcome else f"is {request['status']}"
            return InvalidMessageError(
                f"row {row}, field outcome: referral {said.ref!r} from {said.referrer} {ended} already (status "
                f"{request['status']}): it has ended, so there is nothing to withdraw. Nothing was withdrawn",
                (f"row {row}", "outcome"),
            )
        return None

    def _held_for(self, rid: str) -> tuple[str, str | None] | None:
        if rid in self._held:
            return self._held[rid]
        held = self._record.read("ServiceRequest", rid) if self._record else None
        reference = str(((held or {}).get("subject") or {}).get("reference") or "")
        if held is None or not reference.startswith("Patient/"):
            return None
        return reference.removeprefix("Patient/"), _birth_date_said(held)

    def _same_person(self, held: str, key: str) -> bool:
        if held == key:
            return True
        return self._record is not None and self._record.filed_under([key]).get(key, key) == held  # (merged: A40)


_OTHER_PERSON = (
    "it was sent for another NHS number with another birth_date, so this row is not a correction of the "
    "NHS number (the same person has the same birth date): give a new referral a referral_id of its own, "
    "or, if the birth date sent first was wrong, send the referral again with the first NHS number and "
    "the right birth_date, then correct the NHS number. Not applied: the referral stays as it was"
)


def _refused(row: int, said: _Said) -> InvalidMessageError:
    used = f"{said.ref!r} is already used by {said.referrer} for a different person"
    return InvalidMessageError(
        f"row {row}, field referral_id: {used}; {_OTHER_PERSON}", (f"row {row}", "referral_id", "birth_date")
    )


def _never_sent(row: int, said: _Said) -> InvalidMessageError:
    return InvalidMessageError(
        f"row {row}, field referral_id: {said.referrer} has sent no referral {said.ref!r} that the hub holds: a "
        "referrer withdraws only a referral it sent itself, named by the referral_id it sent it with (one sent "
        "without a referral_id cannot be withdrawn by file). Nothing was withdrawn",
        (f"row {row}", "referral_id"),
    )


def _outcome_of(request: Json) -> str | None:
    found = [e.get("valueCode") for e in request.get("extension") or [] if e.get("url") == co.OUTCOME_EXTENSION]
    return str(found[0]) if found and found[0] else None


def _withdrawn(event: MappedEvent) -> _Said | None:
    """What a withdrawal row says of the referral it names (no birth date: an outcome gives none), or None."""
    if event.event_type != co.REFERRAL_OUTCOME.type:
        return None
    request = _request_of(event)
    if request is None or _outcome_of(request) != co.WITHDRAWN:
        return None
    ref = str(((request.get("identifier") or [{}])[0]).get("value") or "")
    return _Said(request["id"], ref, event.sender, event.person_key, None)


def _request_of(event: MappedEvent) -> Json | None:
    resources = [e["resource"] for e in event.payload.get("entry") or []]
    return next((r for r in resources if r.get("resourceType") == "ServiceRequest"), None)


def _birth_date_said(request: Json) -> str | None:
    found = [e.get("valueDate") for e in request.get("extension") or [] if e.get("url") == BIRTH_DATE_SAID]
    return str(found[0]) if found and found[0] else None


def _said(event: MappedEvent) -> _Said | None:
    """What a referral row says of the referral its referral_id names, or None (no referral_id, or not
    a referral: an outcome says no birth date)."""
    if event.event_type != co.REFERRAL_RECEIVED.type:
        return None
    request = _request_of(event)
    ids = [
        i for i in (request or {}).get("identifier") or [] if str(i.get("system", "")).startswith(REFERRAL_ID_SYSTEM)
    ]
    if request is None or not ids:
        return None
    return _Said(request["id"], str(ids[0]["value"]), event.sender, event.person_key, _birth_date_said(request))
