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
that referrer sent the referral its referral_id names (held by the record with what the referral said,
authoredOn among it, not only an outcome, or sent by this intake: the referral's id comes from its
referrer and referral_id, so another referrer's referral is one this referrer never sent), for the
person the row names (or one merged with them), the service has not answered it (accepted, declined:
then the referrer contacts the service) and it has not ended already (completed); and unless it is
dated no earlier than the referral was made (a date alone on that UK day answers it, hub.core.days)
nor than the outcome the record holds, which the record would keep over it while the rules engine took
it. Any other outcome of a referral withdrawn is refused: it would bring it back. Each refusal names
the row and the field, and nothing is applied.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from adapters.referrals.to_fhir import BIRTH_DATE_SAID, REFERRAL_ID_SYSTEM, MappedEvent
from hub.core.days import UK, a_day_alone, answers_that_day
from hub.core.errors import InvalidMessageError
from hub.core.fhir_read import REQUEST_ENDED, outcome_of
from hub.core.kpi_reading import fhir_time
from schemas.events import coordination as co

Json = dict[str, Any]
_ANSWERED = frozenset({"accepted", "declined"})  # the service's answer, after which its referrer withdraws nothing


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
        self._made: dict[str, str] = {}  # referral resource id -> authoredOn, of the referrals this intake sent
        self._outcomes: dict[str, str] = {}  # referral resource id -> the last outcome this intake sent

    def check(self, row: int, event: MappedEvent) -> InvalidMessageError | None:
        """Why this row may not be applied, or None."""
        outcome = _outcome(event)
        if outcome is not None and outcome[1] == co.WITHDRAWN:
            return self._withdrawal(row, outcome[0], event.event_time)
        if outcome is not None:
            return self._after_withdrawal(row, *outcome)
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
        said, outcome, request = _said(event), _outcome(event), _request_of(event) or {}
        if said is not None:
            self._held[said.rid] = (said.key, said.born)
            if request.get("authoredOn"):
                self._made[said.rid] = str(request["authoredOn"])
        if outcome is not None:
            self._outcomes[outcome[0].rid] = outcome[1]

    def _withdrawal(self, row: int, said: _Said, on: datetime) -> InvalidMessageError | None:
        held, request = self._held_for(said.rid), self._request(said.rid)
        made = self._made.get(said.rid) or request.get("authoredOn")
        if held is None or not made:  # (an outcome alone, the referral never sent: no authoredOn)
            return _never_sent(row, said)
        if not self._same_person(held[0], said.key):
            return InvalidMessageError(
                f"row {row}, field nhs_number: referral {said.ref!r} from {said.referrer} is for another person "
                "than this NHS number: a withdrawal names the person the referral is for (if the referral's NHS "
                "number was wrong, send the referral again with the right one, then withdraw it). Nothing was "
                "withdrawn",
                (f"row {row}", "nhs_number"),
            )
        ended = _ended(row, said, request, self._outcomes.get(said.rid))
        if ended is not None:
            return ended
        return _dated_before(row, said, on, fhir_time(made, on), request)

    def _after_withdrawal(self, row: int, said: _Said, outcome: str) -> InvalidMessageError | None:
        """Refuse any other outcome of a referral its referrer withdrew (by the record, or by this intake)."""
        if co.WITHDRAWN not in (outcome_of(self._request(said.rid)), self._outcomes.get(said.rid)):
            return None
        return InvalidMessageError(
            f"row {row}, field outcome: referral {said.ref!r} from {said.referrer} was withdrawn by its referrer: it "
            f"is not {outcome} now (a withdrawn referral has ended; if the person is to be seen after all, they are "
            "referred again). Not applied",
            (f"row {row}", "outcome"),
        )

    def _request(self, rid: str) -> Json:
        return (self._record.read("ServiceRequest", rid) if self._record else None) or {}

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


def _ended(row: int, said: _Said, request: Json, sent: str | None) -> InvalidMessageError | None:
    """Refuse a withdrawal of a referral the service answered (accepted, declined: by the record, or by
    an outcome this intake `sent`), or that has ended already (completed)."""
    outcome = outcome_of(request)
    answered = {outcome, sent} & _ANSWERED
    if answered == {"accepted"}:
        return InvalidMessageError(
            f"row {row}, field outcome: referral {said.ref!r} from {said.referrer} was accepted by the service it "
            "was sent to: once the service has accepted or declined a referral, its referrer no longer withdraws "
            "it; contact the service (it closes the person's stay with it). Nothing was withdrawn",
            (f"row {row}", "outcome"),
        )
    status = request.get("status")
    if answered or (status in REQUEST_ENDED and outcome != co.WITHDRAWN):
        ended = "was declined" if answered else f"was {outcome}" if outcome else f"is {status}"
        shown = status if status in REQUEST_ENDED else "revoked"  # (a decline this intake sent: revoked)
        return InvalidMessageError(
            f"row {row}, field outcome: referral {said.ref!r} from {said.referrer} {ended} already (status "
            f"{shown}): it has ended, so there is nothing to withdraw. Nothing was withdrawn",
            (f"row {row}", "outcome"),
        )
    return None


def _dated_before(row: int, said: _Said, on: datetime, made: datetime, request: Json) -> InvalidMessageError | None:
    """Refuse a withdrawal dated before the referral was made (a date alone on its UK day answers it), or
    before the outcome the record holds (not a withdrawal: one dated earlier than it changes nothing),
    as the API's `at` is refused: the record would skip it as older, while the rules engine took it."""
    held = outcome_of(request)
    last = fhir_time((request.get("meta") or {}).get("lastUpdated"), on) if held else on
    if on < made and not answers_that_day(on, made):
        what = f"the referral was made ({_shown(made)})"
    elif on < last and held != co.WITHDRAWN:
        what = f"the outcome the record holds for it ({held}, {_shown(last)}), which it would keep"
    else:
        return None
    return InvalidMessageError(
        f"row {row}, field on: {_shown(on)} is before {what}: a referral is withdrawn on or after the day it was "
        f"made and its latest outcome; give the day it was withdrawn. Nothing was withdrawn",
        (f"row {row}", "on"),
    )


def _shown(t: datetime) -> str:
    """An instant as a UK date (a date alone) or a UK time."""
    return t.astimezone(UK).date().isoformat() if a_day_alone(t) else t.astimezone(UK).isoformat()


def _outcome(event: MappedEvent) -> tuple[_Said, str] | None:
    """What an outcome row says of the referral it names (no birth date: an outcome gives none), and the
    outcome it says; None: not an outcome."""
    if event.event_type != co.REFERRAL_OUTCOME.type:
        return None
    request = _request_of(event)
    said = outcome_of(request or {})
    if request is None or said is None:
        return None
    ref = str(((request.get("identifier") or [{}])[0]).get("value") or "")
    return _Said(request["id"], ref, event.sender, event.person_key, None), said


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
