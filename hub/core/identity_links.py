"""Identity links: a Patient known by a hospital number alone (an ED registration, keyed by it) and the
same person's Patient with a verified NHS number naming that number, found by the record and published
as a merge (PATIENT_MERGED), which the record, the rules engine and the KPIs follow as an A40.

Wrongly merging two people is the worst a hub can do, so in doubt nothing is linked. For each hospital
number (system https://fhir.nhs.uk/Id/MRN/<assigning authority>, as adapters/hl7v2 maps PID-3) a Patient
an event carries names, once the record has applied it, in either order, the hospital-number-only
Patient keyed by it is linked to the NHS-numbered Patient that claims it when all of these hold:
    alone       the hospital-number Patient has no NHS number of its own and is not merged away
    one claim   every Patient with an NHS number (verified or not, from any sender) that names the
                number is one person's: a second NHS number links neither (and see `linked` below)
    verified    that claimant's NHS number is verified (status 01, HL7 v2 PID-32 NSTS01)
    issuer      the number's assigning authority is the claimant's own sender (its meta.source ODS
                code, compared without case, as the adapter scopes a number without an authority by
                its sender): only the hospital that issued a number can claim it
    same person the two Patients' birth dates are both given and agree to the precision both give
                (1940 agrees with 1940-03-12), and their gender and family name (without case, spaces
                or hyphens) agree wherever both give one
    linked      a hospital number merged already (into person A) and claimed by someone else (B: a
                hospital correcting a traced number) is not linked again, nor unlinked (there is no
                unlink: an A40 the other way is a person's decision): it is reported as an
                IdentityConflict, as is a number two NHS numbers claim and a claim whose demographics
                disagree, for a person to resolve (the record consumer logs them, by person key alone)
The authority's case is ignored on both sides: a claim spelt `rxx` finds the Patient keyed by `RXX`.

The merge retires the hospital-number key into the NHS-numbered Patient's: its Bundle holds only the
retired Patient (inactive, replaced-by), as an A40's does beside the survivor's. Its id is the pair's
and its source the issuing hospital's (urn:ods:<authority>: the link is read from that hospital's own
two messages, and the agreements decide who may see it by that supplier, as for an A40; a hub source
would name no supplier, which the policy reads as any party's). Its time (the later of the two
Patients' as held) and the retired Patient's identifiers are as the record holds them when found, so
found again after later news the same id may carry a later time or other identifiers: harmless, as
every consumer applies an event id once (the record's processed rows, the engine, the KPIs) and a
replay reads the first copy on the log, as the live consumers did.

Pure: the record's unit of work and the hub's key secret in, events out; it writes nothing, so a replay
(which applies the published merge from the log, and never calls this) keeps the same record. It is on
the record consumer's hot path, so a batch's look-ups are made at once (BatchedLookups, where the unit
of work offers them: a query for the batch's Patients, one for every holder of their hospital numbers,
the hospital-number Patients among them), and a batch naming no hospital number asks nothing more.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from hub.core.fhir_read import bundle_resources, of_kind
from hub.core.identity import person_key, stable_id
from hub.core.ports import Json, RecordEvent, RecordUnitOfWork, StoredResource
from hub.core.record_content import MERGED, NHS_NUMBER_SYSTEM, VERIFICATION_URL, replaced_by
from hub.core.record_merges import survivor
from schemas.events.coordination import NOT_RECORDED

MRN_SYSTEM = "https://fhir.nhs.uk/Id/MRN/"  # + the assigning authority (adapters/hl7v2 PID-3)
ODS_SOURCE = "urn:ods:"
VERIFIED = "01"  # Number present and verified (HL7 v2 PID-32 NSTS01)
# (the UK Core England code system, and STU3 CareConnect's, accepted on input: ../shared/STANDARDS.md)
VERIFICATION_SYSTEMS = frozenset(
    {
        "https://fhir.hl7.org.uk/CodeSystem/UKCore-NHSNumberVerificationStatusEngland",
        "https://fhir.hl7.org.uk/STU3/CodeSystem/CareConnect-NHSNumberVerificationStatus-1",
    }
)
_UNSCOPED = re.compile(r"[^A-Za-z0-9._-]")  # what adapters/hl7v2 makes "_" in a scope (authority or sender)
_NAME_NOISE = re.compile(r"[\s\-\u2010-\u2015]")  # spaces and hyphens, dashes, in a family name
_KNOWN_GENDERS = frozenset({"male", "female", "other"})  # ("unknown" says nothing)

Number = tuple[str, str]  # (assigning authority as held, value)
Pair = tuple[str, str]  # (identifier system, value)

AMBIGUOUS = "claimed by more than one NHS number"
LINKED_ELSEWHERE = "linked already to another person"
NOT_THE_SAME = "demographics disagree"


@runtime_checkable
class BatchedLookups(Protocol):
    """What a unit of work may offer so a batch's look-ups take a query or two, not two a Patient
    (hub.store's do); another is asked one look-up at a time."""

    def get_many(self, resource_type: str, ids: Collection[str]) -> dict[str, StoredResource]:
        """The current resources of that type with these ids (those held)."""
        ...

    def find_by_identifiers(self, resource_type: str, pairs: Collection[Pair]) -> dict[Pair, list[StoredResource]]:
        """find_by_identifier for each (system, value) pair: those carrying it, by pair."""
        ...


@dataclass(frozen=True)
class IdentityConflict:
    """A hospital number that cannot be linked safely, for a person to resolve, named by person keys
    alone: its hospital-number-only person, the person it is merged into already (if it is) and the
    NHS-numbered people whose Patients claim it."""

    reason: str
    hospital_person: str
    linked_into: str | None
    claimants: tuple[str, ...]


@dataclass(frozen=True)
class Found:
    """What a batch shows: the merges to publish, and the conflicts to report."""

    links: list[RecordEvent]
    conflicts: list[IdentityConflict]


def identity_links(uow: RecordUnitOfWork, secret: bytes, events: Sequence[RecordEvent]) -> list[RecordEvent]:
    """The merges the Patients of `events` (applied in `uow`) show (find_links' links)."""
    return find_links(uow, secret, events).links


def find_links(uow: RecordUnitOfWork, secret: bytes, events: Sequence[RecordEvent]) -> Found:
    """The merges the Patients of `events` (applied in `uow`) show, each hospital-number key to be
    retired into the same person's verified NHS-numbered Patient, once each, in the order found; and
    the conflicts they show. Every event is asked, duplicates too: another consumer (delivery's) may
    have applied them to the record first."""
    lookups = _Lookups(uow)
    held = lookups.patients(_patient_ids(events))
    said = (n for patient in held for n in _hospital_numbers(patient.content))
    numbers = list({(a.casefold(), v): (a, v) for a, v in said}.values())  # (an authority in any case, once)
    if not numbers:
        return Found([], [])
    lookups.load_holders(_pairs(numbers))  # (the hospital-number Patients hold theirs too: one look-up)
    links: dict[str, RecordEvent] = {}
    conflicts: dict[tuple[str, str], IdentityConflict] = {}
    for number in numbers:
        for found in _decide(lookups, secret, number):
            if isinstance(found, IdentityConflict):
                conflicts.setdefault((found.reason, found.hospital_person), found)
            else:
                links.setdefault(found.id, found)
    return Found(list(links.values()), list(conflicts.values()))


def verified_nhs_number(patient: Json) -> str | None:
    """The Patient's NHS number when its verification status says it is verified (01), else None."""
    for identifier in _nhs_identifiers(patient):
        for ext in identifier.get("extension") or []:
            if not isinstance(ext, dict) or ext.get("url") != VERIFICATION_URL:
                continue
            if any(_verified(c) for c in (ext.get("valueCodeableConcept") or {}).get("coding") or []):
                return str(identifier["value"])
    return None


def same_person(one: Json, other: Json) -> bool:
    """Whether two Patients' demographics allow them to be one person: birth dates both given and
    equal to the precision both give, and gender and family name equal wherever both give one."""
    born = [p.get("birthDate") for p in (one, other)]
    if not all(isinstance(b, str) and b for b in born):
        return False
    shortest = min(len(str(b)) for b in born)
    if str(born[0])[:shortest] != str(born[1])[:shortest]:
        return False
    genders = [g for g in (one.get("gender"), other.get("gender")) if g in _KNOWN_GENDERS]
    families = [f for f in (_family(one), _family(other)) if f]
    return len(set(genders)) < 2 and len(set(families)) < 2


def _decide(lookups: _Lookups, secret: bytes, number: Number) -> Iterator[RecordEvent | IdentityConflict]:
    """The links and conflicts one hospital number shows, the same whichever Patient named it."""
    holders = sorted({p.id: p for pair in _pairs([number]) for p in lookups.holding(pair)}.values(), key=_id)
    claimants = [p for p in holders if _nhs_identifiers(p.content)]
    people = sorted({lookups.survivor(p) for p in claimants})
    for patient in holders:
        if _nhs_identifiers(patient.content) or not _keyed_by(secret, patient, number):
            continue  # a claimant is never retired; nor a Patient keyed by another of its numbers
        into = replaced_by(patient.content)
        if into is not None:  # merged away already: never again, never undone here
            if set(people) - {lookups.survivor_of(into)}:
                yield IdentityConflict(LINKED_ELSEWHERE, patient.id, into, tuple(people))
            continue
        if len(people) > 1:
            yield IdentityConflict(AMBIGUOUS, patient.id, None, tuple(people))
            continue
        valid = [c for c in claimants if _may_claim(c, number[0])]
        if not valid:
            continue  # no claim, or not a verified one from the number's own hospital
        if not all(same_person(patient.content, c.content) for c in valid):
            yield IdentityConflict(NOT_THE_SAME, patient.id, None, tuple(people))
            continue
        yield _merge(patient, valid[0], number[0])


def _keyed_by(secret: bytes, patient: StoredResource, number: Number) -> bool:
    """Whether the Patient's person key is the one this hospital number (its authority in any case) gives."""
    authority, value = number[0].casefold(), number[1]
    return any(
        person_key(secret, None, (a, v)) == patient.id
        for a, v in _hospital_numbers(patient.content)
        if v == value and a.casefold() == authority
    )


def _id(resource: StoredResource) -> str:
    return resource.id


def _may_claim(claimant: StoredResource, authority: str) -> bool:
    """A verified NHS number, not merged away, sent by the hospital that issued the number."""
    source = str((claimant.content.get("meta") or {}).get("source") or "")
    sender = _UNSCOPED.sub("_", source.removeprefix(ODS_SOURCE)) if source.startswith(ODS_SOURCE) else None
    return (
        sender is not None
        and sender.casefold() == authority.casefold()
        and replaced_by(claimant.content) is None
        and verified_nhs_number(claimant.content) is not None
    )


def _verified(coding: object) -> bool:
    return isinstance(coding, dict) and coding.get("system") in VERIFICATION_SYSTEMS and coding.get("code") == VERIFIED


def _merge(retired: StoredResource, into: StoredResource, authority: str) -> RecordEvent:
    """The merge retiring `retired` into `into`: an A40's retired Patient alone, sent as the issuer."""
    patient: Json = {
        "resourceType": "Patient",
        "id": retired.id,
        "active": False,
        "identifier": retired.content.get("identifier") or [],
        "link": [{"other": {"reference": f"Patient/{into.id}"}, "type": "replaced-by"}],
    }
    at = max(retired.event_time, into.event_time)
    bundle: Json = {"resourceType": "Bundle", "type": "collection", "timestamp": at.isoformat()}
    bundle["entry"] = [{"resource": patient}]
    source = ODS_SOURCE + authority.upper()
    return RecordEvent(stable_id("identity-link", retired.id, into.id), MERGED, source, at, into.id, bundle)


def _patient_ids(events: Sequence[RecordEvent]) -> list[str]:
    ids: dict[str, None] = {}
    for event in events:
        if event.type not in NOT_RECORDED:
            for patient in of_kind(bundle_resources(event.payload), "Patient"):
                if pid := str(patient.get("id") or ""):
                    ids[pid] = None
    return list(ids)


def _spellings(number: Number) -> list[Number]:
    """The number with its authority as held, in upper and in lower case (a key holds it as spelt)."""
    authority, value = number
    return [(a, value) for a in dict.fromkeys((authority, authority.upper(), authority.lower()))]


def _pairs(numbers: Sequence[Number]) -> list[Pair]:
    return list(dict.fromkeys((MRN_SYSTEM + a, v) for n in numbers for a, v in _spellings(n)))


def _nhs_identifiers(patient: Json) -> list[Json]:
    identifiers = patient.get("identifier")
    return [
        i
        for i in (identifiers if isinstance(identifiers, list) else [])
        if isinstance(i, dict) and i.get("system") == NHS_NUMBER_SYSTEM and isinstance(i.get("value"), str)
    ]


def _hospital_numbers(patient: Json) -> list[Number]:
    identifiers = patient.get("identifier")
    said = [
        (str(i.get("system") or "").removeprefix(MRN_SYSTEM), i.get("value"), str(i.get("system") or ""))
        for i in (identifiers if isinstance(identifiers, list) else [])
        if isinstance(i, dict)
    ]
    return [(a, v) for a, v, system in said if system != a and a and "/" not in a and isinstance(v, str) and v]


def _family(patient: Json) -> str:
    names = patient.get("name")
    families = (
        n["family"]
        for n in (names if isinstance(names, list) else [])
        if isinstance(n, dict) and isinstance(n.get("family"), str)
    )
    return next((f for f in (_NAME_NOISE.sub("", f).casefold() for f in families) if f), "")


class _Lookups:
    """The batch's Patients and the holders of their hospital numbers, asked of the unit of work at once."""

    def __init__(self, uow: RecordUnitOfWork) -> None:
        self.uow = uow
        self._holders: dict[Pair, list[StoredResource]] = {}

    def patients(self, ids: Sequence[str]) -> list[StoredResource]:
        uow = self.uow
        if isinstance(uow, BatchedLookups):
            got = uow.get_many("Patient", ids)
            return [p for i in ids if (p := got.get(i)) is not None]
        return [p for i in ids if (p := uow.get("Patient", i)) is not None]

    def load_holders(self, pairs: Sequence[Pair]) -> None:
        uow = self.uow
        if isinstance(uow, BatchedLookups):
            held = uow.find_by_identifiers("Patient", pairs)
            self._holders.update((p, held.get(p, [])) for p in pairs)
        else:
            self._holders.update((p, uow.find_by_identifier("Patient", *p)) for p in pairs)

    def holding(self, pair: Pair) -> list[StoredResource]:
        return self._holders.get(pair) or []

    def survivor(self, patient: StoredResource) -> str:
        """The person a Patient is now (merges followed); most were merged nowhere."""
        return patient.id if "link" not in patient.content else survivor(self.uow, patient.id)

    def survivor_of(self, key: str) -> str:
        return survivor(self.uow, key)
