"""The policy decision point: may this organisation's user see this resource, now, and why.

One pure function, `decide`, used for every FHIR read, search and $everything (and, as they come,
deliveries and replay exports). Default deny. The rules, in order:

    shared data        a resource about no person (a GP practice's Organization) is not personal data
    purpose            the user's role names the purpose; a role with no purpose reads nothing personal
    own data           the organisation that supplied a resource may always see it
    own referral       and the organisation that made a referral (ServiceRequest.requester) may see it
                       and what became of it (accepted, declined, its outcome), whoever last wrote it,
                       with no agreement with the service that answered it: it is their request, and
                       they need the answer to act on it. Not where the person objected to sharing
                       referrals with them (the objection rule below), nor anything else of the person,
                       nor a referral labelled sensitive (safeguarding, mental health...: an agreement
                       covering that category decides, as for anyone else). The API refuses a referral
                       naming a requester other than its sender (hub.api.routes.coordination)
    break-glass        a clinician asserting an emergency, with a reason, is permitted; marked, always audited
    agreement          some agreement in force names both organisations, the purpose, the data category
                       and every sensitive category the resource carries (and, where it applies the
                       national data opt-out, the person has not opted out: a Consent with provision deny
                       and policyRule CONSENT_POLICY_SYSTEM#national-data-opt-out, which applies only
                       through agreements that say so, never to direct care by itself)
    objection          an active Consent (the current version; any other status counts for nothing) with
                       provision.type=deny in force for that recipient (or everyone) and category (or
                       all) overrides any agreement; a permit never widens an agreement, so a later
                       permit does not lift a deny: ending the deny (status inactive) does.
                       Nested provisions are exceptions within the one enclosing them (FHIR R4): a
                       permit's nested denies are objections, a deny's nested permits are carved out
                       of it. Recipients are organisations by ODS or local-authority code
    derived data       a resource that refers to a referral or an episode of care (a Task's focus, say)
                       reveals it, so it is shared no further than they are (`origins`); one the
                       record does not hold (not yet applied, or never) withholds it from all but
                       its supplier

Reading a Consent (`consent_rule`) and refusing one the hub would not enforce as written
(`consent_problems`, the API's 400) live in hub.core.consents, and are importable from here as before.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

# the Consent reading (hub.core.consents), importable from here as before
from hub.core.consents import CONSENT_POLICY_SYSTEM as CONSENT_POLICY_SYSTEM
from hub.core.consents import NATIONAL_OPT_OUT as NATIONAL_OPT_OUT
from hub.core.consents import ODS_SYSTEM as ODS_SYSTEM
from hub.core.consents import ConsentRule as ConsentRule
from hub.core.consents import consent_problems as consent_problems
from hub.core.consents import consent_rule as consent_rule
from hub.core.fhir_read import requester_of
from hub.core.record_content import replaced_by
from schemas.agreements import Agreement

Json = dict[str, Any]
ORIGIN_KINDS = ("ServiceRequest", "EpisodeOfCare")  # what a derived resource reveals by referring to it
ORIGIN_STEPS = 3  # a Flag -> its episode -> its referral, with a step to spare
_ORIGIN_REF = re.compile(  # a reference to one, relative or absolute, versioned or not (FHIR R4 3.1.1.4)
    r"(?:^|/)(?P<kind>ServiceRequest|EpisodeOfCare)/(?P<id>[A-Za-z0-9\-.]{1,64})(?:/_history/[A-Za-z0-9\-.]{1,64})?$"
)
NOT_HELD = "https://carehub.invalid/not-held"  # marks an origin the record does not hold (origins_held)
PERSON_EXTENSION = "https://carehub.invalid/StructureDefinition/about-person"  # on the record's Provenances
PURPOSE_OF_ROLE = {"clinician": "direct-care", "coordinator": "care-coordination", "auditor": "audit"}
CATEGORY_OF_TYPE = {
    "Patient": "demographics",
    "Encounter": "encounters",
    "ServiceRequest": "referrals",
    "Flag": "referrals",  # a case-list Flag is a referral by risk stratification (Croydon PIC spec 3.4)
    "Observation": "referrals",  # at-risk register measures, the evidence for case finding
    "Task": "tasks",
    "Communication": "tasks",  # a practice's receipt for the PIC summary closes a task
    "CarePlan": "care-plans",
    "EpisodeOfCare": "care-plans",
    "Composition": "care-plans",  # the PIC summary
    "List": "care-plans",  # a huddle agenda
    "Provenance": "provenance",
    "Consent": "consents",
}
SHARED_TYPES = frozenset({"Organization", "Practitioner", "Location"})
SENSITIVE_OF_LABEL = {
    "PSY": "mental-health",
    "MH": "mental-health",
    "SEX": "sexual-health",
    "STD": "sexual-health",
    "HIV": "sexual-health",
    "SDV": "safeguarding",
    "CHILD": "safeguarding",
    "ETH": "substance-misuse",
    "SUD": "substance-misuse",
}


@dataclass(frozen=True)
class Asker:
    """Who asks, when, and whether they assert an emergency."""

    org: str
    role: str
    at: datetime
    break_glass: str | None = None
    purpose: str | None = None  # an organisation's own request (a subscription) names its purpose


@dataclass(frozen=True)
class Decision:
    """permit / deny / break-glass, with reasons a person can read and what the decision rested on."""

    outcome: str
    reasons: tuple[str, ...]
    agreements: tuple[str, ...] = ()
    consents: tuple[str, ...] = ()
    obligations: tuple[str, ...] = field(default=())

    @property
    def permitted(self) -> bool:
        return self.outcome in ("permit", "break-glass")


UNENFORCED = Decision("permit", ("information-sharing enforcement is switched off (policy.enforce=false)",))


def person_of(resource: Json) -> str | None:
    """The person key a resource is about: a Patient's id (a Patient merged away: the person its
    replaced-by link names, whose consents hold for it), its subject/patient/for, or (a Provenance,
    which has none of those) the person the record names in PERSON_EXTENSION; else None."""
    kind = resource.get("resourceType")
    if kind == "Patient":
        return replaced_by(resource) or str(resource.get("id"))
    if kind == "Provenance":
        for extension in resource.get("extension") or []:
            ref = str((extension.get("valueReference") or {}).get("reference", ""))
            if extension.get("url") == PERSON_EXTENSION and ref.startswith("Patient/"):
                return ref.removeprefix("Patient/")
        return None
    for name in ("subject", "patient", "for"):
        ref = str((resource.get(name) or {}).get("reference", ""))
        if ref.startswith("Patient/"):
            return ref.removeprefix("Patient/")
    return None


def provider_of(resource: Json) -> str | None:
    """The supplying organisation, from meta.source (`urn:ods:CODE`)."""
    source = str((resource.get("meta") or {}).get("source", ""))
    return source.removeprefix("urn:ods:") if source.startswith("urn:ods:") else None


def classify(resource: Json) -> tuple[str | None, frozenset[str]]:
    """(data category, sensitive categories) of a resource."""
    labels = (resource.get("meta") or {}).get("security") or []
    sensitive = frozenset(SENSITIVE_OF_LABEL[c["code"]] for c in labels if c.get("code") in SENSITIVE_OF_LABEL)
    return CATEGORY_OF_TYPE.get(str(resource.get("resourceType"))), sensitive


def decide(
    asker: Asker,
    resource: Json,
    agreements: Iterable[Agreement],
    consents: Sequence[ConsentRule],
    *,
    opted_out: bool = False,
    origins: Sequence[Json] = (),
) -> Decision:
    """Decide one disclosure of one resource. `origins`, the referrals and episodes it refers to
    (`origins_of`, as the record holds them), bound it: one that another organisation supplied it
    reveals, so it is shared no further than each of them would be."""
    decision = _decide(asker, resource, agreements, consents, opted_out)
    if not bounded(asker, resource, decision):
        return decision
    for origin in origins:
        what = CATEGORY_OF_TYPE.get(str(origin.get("resourceType")), "other")
        if origin.get(NOT_HELD):
            return Decision(
                "deny",
                (
                    f"it reveals a {what} record the hub does not hold (yet), so it cannot tell whether that "
                    f"is shared with {asker.org}",
                ),
            )
        bound = _decide(asker, origin, agreements, consents, opted_out)
        if not bound.permitted:
            return Decision(
                "deny",
                (f"it reveals a {what} record that is not shared with {asker.org}: {'; '.join(bound.reasons)}",),
                bound.agreements,
                bound.consents,
            )
    return decision


def bounded(asker: Asker, resource: Json, decision: Decision) -> bool:
    """Whether `decision` (taken without origins) still rests on what `resource` reveals: a permit, for
    anyone but its supplier (the coordination service's own work is its own to see, its referral
    applied to the record yet or not). Only then need its origins be read."""
    return decision.outcome == "permit" and provider_of(resource) != asker.org and bool(origins_of(resource))


def origins_of(resource: Json) -> list[tuple[str, str]]:
    """The referrals and episodes of care a resource refers to, as (type, id), wherever it names them
    (a Task's focus, an EpisodeOfCare's referralRequest, a Flag's extension), relatively, absolutely
    or by version: what it reveals."""
    if resource.get("resourceType") == "Provenance":
        return []  # (what an event wrote, as agreements share provenance: not derived from it)
    found: dict[tuple[str, str], None] = {}
    pending: list[Any] = [v for k, v in resource.items() if k not in ("id", "meta", "text")]
    while pending:
        item = pending.pop()
        if isinstance(item, list):
            pending += item
        elif isinstance(item, dict):
            named = _ORIGIN_REF.search(str(item.get("reference", "")).strip())
            if named:
                found[(named["kind"], named["id"])] = None
            pending += item.values()
    own = (str(resource.get("resourceType")), str(resource.get("id")))
    return [ref for ref in found if ref != own]


def origins_held(resource: Json, read: Callable[[str, str], Json | None]) -> list[Json]:
    """What `resource` refers to that it reveals (`origins_of`), as `read` (type, id) finds them,
    followed through a few steps (a long-stay Flag names an episode, the episode its referral): the
    `origins` that `decide` bounds it by, one the record does not hold as a stub marked NOT_HELD (which
    `decide` withholds by: what it would reveal cannot be judged). The one lookup every reader of the
    record uses."""
    found: dict[tuple[str, str], Json] = {}
    pending = origins_of(resource)
    for _ in range(ORIGIN_STEPS):
        for ref in pending:
            if ref not in found:
                found[ref] = read(*ref) or {"resourceType": ref[0], "id": ref[1], NOT_HELD: True}
        pending = [ref for held in found.values() for ref in origins_of(held) if ref not in found]
    return list(found.values())


def _decide(
    asker: Asker, resource: Json, agreements: Iterable[Agreement], consents: Sequence[ConsentRule], opted_out: bool
) -> Decision:
    kind = str(resource.get("resourceType"))
    if kind in SHARED_TYPES:
        return Decision("permit", (f"{kind} is about no person (not personal data)",))
    purpose = asker.purpose or PURPOSE_OF_ROLE.get(asker.role)
    if purpose is None:
        return Decision("deny", (f"the role {asker.role} has no purpose for reading personal data",))
    category, sensitive = classify(resource)
    if category is None:
        return Decision("deny", (f"{kind} is not a data category any agreement can cover",))
    provider = provider_of(resource)
    if provider == asker.org:
        return Decision("permit", (f"{asker.org} supplied this {category} record",))
    if kind == "ServiceRequest" and not sensitive and requester_of(resource) == asker.org.upper():
        return _own_referral(asker, resource, consents)
    if asker.break_glass and asker.role == "clinician" and asker.break_glass.strip():
        return Decision(
            "break-glass",
            (f"emergency asserted by the user: {asker.break_glass.strip()[:200]}",),
            obligations=("audit-break-glass",),
        )
    day = asker.at.date()
    person = person_of(resource)
    opted_out = opted_out or any(
        c.national_opt_out and c.person_key == person and c.in_force(asker.at) for c in consents
    )
    covering = [
        a
        for a in agreements
        if a.in_force(day)
        and asker.org in a.party_codes
        and (provider is None or provider in a.party_codes)
        and purpose in a.purposes
        and category in a.categories
        and sensitive <= set(a.sensitive)
        and not (a.national_data_opt_out and opted_out)
    ]
    if not covering:
        extra = f" including {', '.join(sorted(sensitive))}" if sensitive else ""
        source = f" from {provider}" if provider else ""
        opt_out = " (the person has registered a national data opt-out)" if opted_out else ""
        return Decision(
            "deny",
            (f"no agreement in force shares {category}{extra}{source} with {asker.org} for {purpose}{opt_out}",),
        )
    basis = tuple(sorted(f"{a.id}@{a.version}" for a in covering))
    objections = [c for c in consents if c.person_key == person and c.objects(asker.org, category, asker.at)]
    if objections:
        ids = tuple(sorted(f"Consent/{c.id}/_history/{c.version}" for c in objections))
        doubts = "".join(f" ({c.doubt})" for c in objections if c.doubt)
        return Decision("deny", (f"the person objected to sharing {category} with {asker.org}{doubts}",), basis, ids)
    return Decision("permit", (f"shared under {', '.join(basis)} for {purpose}",), basis)


def _own_referral(asker: Asker, referral: Json, consents: Sequence[ConsentRule]) -> Decision:
    """The referrer reading its own referral: permitted unless the person objected to sharing
    referrals with it (as the objection rule decides for an agreement's permit)."""
    person = person_of(referral)
    objections = [c for c in consents if c.person_key == person and c.objects(asker.org, "referrals", asker.at)]
    if objections:
        ids = tuple(sorted(f"Consent/{c.id}/_history/{c.version}" for c in objections))
        doubts = "".join(f" ({c.doubt})" for c in objections if c.doubt)
        return Decision("deny", (f"the person objected to sharing referrals with {asker.org}{doubts}",), (), ids)
    return Decision("permit", (f"{asker.org} made this referral: it and what became of it are theirs to see",))


_SUPPLIER = re.compile(r" from [A-Z0-9]+(?= with )")  # as decide names it in a refusal


def told_to_asker(decision: Decision) -> str:
    """A refusal's reasons as the asker is told them: without the organisation that supplied the record
    (that a person is known to a mental health trust, say, is itself sensitive); the ledger, the export
    and time travel keep them whole."""
    return "; ".join(_SUPPLIER.sub("", reason) for reason in decision.reasons)


def covers_audit(agreements: Iterable[Agreement], asker: Asker) -> bool:
    """Whether any agreement in force on the asker's day names their organisation for audit."""
    day = asker.at.date()
    return any(asker.org in a.party_codes and "audit" in a.purposes and a.in_force(day) for a in agreements)
