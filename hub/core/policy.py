"""The policy decision point: may this organisation's user see this resource, now, and why.

One pure function, `decide`, used for every FHIR read, search and $everything (and, as they come,
deliveries and replay exports). Default deny. The rules, in order:

    shared data        a resource about no person (a GP practice's Organization) is not personal data
    purpose            the user's role names the purpose; a role with no purpose reads nothing personal
    own data           the organisation that supplied a resource may always see it
    break-glass        a clinician asserting an emergency, with a reason, is permitted; marked, always audited
    agreement          some agreement in force names both organisations, the purpose, the data category
                       and every sensitive category the resource carries (and, where it applies the
                       national data opt-out, the person has not opted out: a Consent with provision deny
                       and policyRule CONSENT_POLICY_SYSTEM#national-data-opt-out, which applies only
                       through agreements that say so, never to direct care by itself)
    objection          a Consent with provision.type=deny in force for that recipient (or everyone) and
                       category (or all) overrides any agreement; a permit never widens an agreement.
                       Nested provisions are exceptions within the one enclosing them (FHIR R4): a
                       permit's nested denies are objections, a deny's nested permits are carved out
                       of it. Recipients are organisations by ODS or local-authority code
    derived data       a resource that refers to a referral or an episode of care (a Task's focus, say)
                       reveals it, so it is shared no further than they are (`origins`)

Reading a Consent (`consent_rule`) and refusing one the hub would not enforce as written
(`consent_problems`, the API's 400) follow one rule. One that reached the record all the same is read
on the side of withholding: a deny wider than written (an element it does not enforce ignored, a
recipient it cannot identify read as every organisation, saying so), an exception to a deny dropped.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from hub.core.record_content import replaced_by
from schemas.agreements import Agreement

Json = dict[str, Any]
CATEGORY_SYSTEM = "https://carehub.invalid/CodeSystem/data-category"
CONSENT_POLICY_SYSTEM = "https://carehub.invalid/CodeSystem/consent-policy"
NATIONAL_OPT_OUT = "national-data-opt-out"  # a Consent whose policyRule carries this is the national opt-out
ODS_SYSTEM = "https://fhir.nhs.uk/Id/ods-organization-code"
LOCAL_AUTHORITY_SYSTEM = "https://carehub.invalid/Id/local-authority"  # councils, as the referral adapter names them
ORGANISATION_SYSTEMS = (ODS_SYSTEM, LOCAL_AUTHORITY_SYSTEM)  # a Consent's recipient, by code (agreements' parties)
RECIPIENT_ROLES = frozenset({"IRCP", "PRCP"})  # v3-ParticipationType: (primary) information recipient
ENFORCED = ("type", "actor", "class", "period", "provision")  # the provision elements the hub enforces
ORIGIN_KINDS = ("ServiceRequest", "EpisodeOfCare")  # what a derived resource reveals by referring to it
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
class Provision:
    """One provision of a Consent: permit or deny, for these recipients (empty: every organisation)
    and data categories (empty: every one), in this period."""

    deny: bool
    actors: frozenset[str] = frozenset()
    categories: frozenset[str] = frozenset()
    start: datetime | None = None
    end: datetime | None = None

    def in_force(self, at: datetime) -> bool:
        return (self.start is None or self.start <= at) and (self.end is None or at <= self.end)

    def applies(self, org: str, category: str, at: datetime) -> bool:
        return (
            self.in_force(at)
            and (not self.actors or org in self.actors)
            and (not self.categories or category in self.categories)
        )


@dataclass(frozen=True, kw_only=True)
class ConsentRule(Provision):
    """A person's choice, from a FHIR Consent: its top-level provision and the exceptions nested in it."""

    id: str
    person_key: str
    version: str = "1"
    national_opt_out: bool = False  # the national data opt-out, not an objection to one organisation
    exceptions: tuple[Provision, ...] = ()  # nested provisions, each the opposite of this one
    doubt: str | None = None  # why the hub reads it wider than written (it was not taken through the API)

    def objects(self, org: str, category: str, at: datetime) -> bool:
        """Whether the person objects to `org` seeing `category` at `at`: within this provision, a
        deny but where a nested permit applies, a permit where a nested deny does."""
        if self.national_opt_out or not self.applies(org, category, at):
            return False
        excepted = any(e.applies(org, category, at) for e in self.exceptions)
        return excepted != self.deny


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
    if decision.outcome != "permit" or provider_of(resource) == asker.org:
        return decision  # (the coordination service's own work is its own to see)
    for origin in origins:
        bound = _decide(asker, origin, agreements, consents, opted_out)
        if not bound.permitted:
            what = CATEGORY_OF_TYPE.get(str(origin.get("resourceType")), "other")
            return Decision(
                "deny",
                (f"it reveals a {what} record that is not shared with {asker.org}: {'; '.join(bound.reasons)}",),
                bound.agreements,
                bound.consents,
            )
    return decision


def origins_of(resource: Json) -> list[tuple[str, str]]:
    """The referrals and episodes of care a resource refers to, as (type, id), wherever it names them
    (a Task's focus, an EpisodeOfCare's referralRequest, a Flag's extension): what it reveals."""
    if resource.get("resourceType") == "Provenance":
        return []  # (what an event wrote, as agreements share provenance: not derived from it)
    found: dict[tuple[str, str], None] = {}
    pending: list[Any] = [v for k, v in resource.items() if k not in ("id", "meta", "text")]
    while pending:
        item = pending.pop()
        if isinstance(item, list):
            pending += item
        elif isinstance(item, dict):
            kind, _, id_ = str(item.get("reference", "")).partition("/")
            if kind in ORIGIN_KINDS and id_ and "/" not in id_:
                found[(kind, id_)] = None
            pending += item.values()
    own = (str(resource.get("resourceType")), str(resource.get("id")))
    return [ref for ref in found if ref != own]


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


Problem = tuple[str, str]  # (FHIRPath of the element, what is wrong and what to send instead)


def consent_rule(consent: Json) -> ConsentRule | None:
    """A FHIR Consent as a rule; None when it is not an active privacy choice about a known person.
    Where it says what the hub does not enforce (`consent_problems`), it is read on the side of
    withholding, and the rule's `doubt` says so."""
    if consent.get("resourceType") != "Consent" or consent.get("status") != "active":
        return None
    person = person_of(consent)
    provision = consent.get("provision") or {}
    if person is None or provision.get("type") not in ("deny", "permit"):
        return None
    national = _national(consent)
    deny = provision["type"] == "deny"
    root, problems = _provision(provision, "Consent.provision", deny=deny)
    exceptions: list[Provision] = []
    for n, nested in enumerate([] if national else provision.get("provision") or []):
        where = f"Consent.provision.provision[{n}]"
        if deny and nested.get("type") == "permit":
            inner, unread = _provision(nested, where, deny=False)
            if nested.get("provision"):
                unread.append((f"{where}.provision", "nests deeper than the hub reads"))
            if not unread:  # (an exception the hub cannot read as written is not made)
                exceptions.append(inner)
            problems += unread
        elif not deny:  # an objection within the permit (a nested provision of no type read as one)
            inner, unread = _provision(nested, where, deny=True)
            exceptions.append(inner)
            problems += unread
    doubt = None
    if problems:
        doubt = f"Consent/{consent.get('id')} is read on the side of withholding: {' '.join(problems[0])}"
    return ConsentRule(
        id=str(consent.get("id")),
        person_key=person,
        deny=deny and not national,
        national_opt_out=national and deny,
        actors=root.actors,
        categories=root.categories,
        start=root.start,
        end=root.end,
        version=str((consent.get("meta") or {}).get("versionId", "1")),
        exceptions=tuple(exceptions),
        doubt=doubt,
    )


def consent_problems(consent: Json) -> list[Problem]:
    """What in a Consent the hub would not enforce as written, each with where it is and what to send
    instead; none for one it enforces exactly (the API refuses the others, 400)."""
    provision = consent.get("provision") or {}
    deny = provision.get("type") == "deny"
    root, problems = _provision(provision, "Consent.provision", deny=deny)
    nested = provision.get("provision") or []
    if nested and _national(consent):
        return [*problems, ("Consent.provision.provision", "a national data opt-out has no exceptions here")]
    opposite = "permit" if deny else "deny"
    for n, inner in enumerate(nested):
        where = f"Consent.provision.provision[{n}]"
        if inner.get("type") != opposite:
            problems.append(
                (
                    f"{where}.type",
                    f"must be {opposite}: an exception to the {provision.get('type')} "
                    "enclosing it (send another choice as a Consent of its own)",
                )
            )
            continue
        read, unread = _provision(inner, where, deny=not deny)
        problems += unread + _within(read, root, where)
        if inner.get("provision"):
            problems.append((f"{where}.provision", "exceptions nest one level here: send a Consent of its own"))
    return problems


def _provision(provision: Json, where: str, *, deny: bool) -> tuple[Provision, list[Problem]]:
    """One provision as the hub enforces it, and what it says that the hub does not: read wider (an
    organisation or category it cannot identify read as every one) when it withholds, `deny`."""
    problems = [
        (f"{where}.{name}", f"sets {name}, which the hub does not enforce: send only {', '.join(ENFORCED)}")
        for name in provision
        if name not in ENFORCED
    ]
    actors: set[str | None] = set()
    for n, actor in enumerate(provision.get("actor") or []):
        code, problem = _recipient(actor)
        actors.add(code)
        if problem:
            problems.append((f"{where}.actor[{n}]", problem))
    categories: set[str | None] = set()
    for n, class_ in enumerate(provision.get("class") or []):
        known = class_.get("system") == CATEGORY_SYSTEM and class_.get("code") in CATEGORY_OF_TYPE.values()
        categories.add(str(class_.get("code")) if known else None)
        if not known:
            codes = ", ".join(sorted(set(CATEGORY_OF_TYPE.values())))
            problems.append((f"{where}.class[{n}]", f"must be a data category of {CATEGORY_SYSTEM} ({codes})"))
    period = provision.get("period") or {}
    return Provision(
        deny=deny,
        actors=frozenset() if None in actors else frozenset(c for c in actors if c),
        categories=frozenset() if None in categories else frozenset(c for c in categories if c),
        start=_instant(period.get("start")),
        end=_instant(period.get("end"), end_of_day=True),
    ), problems


def _recipient(actor: Json) -> tuple[str | None, str | None]:
    """The organisation code an actor names as a recipient, or None and why it is not one the hub knows."""
    roles = {str(c.get("code")) for c in (actor.get("role") or {}).get("coding") or []}
    ident = (actor.get("reference") or {}).get("identifier") or {}
    if not roles & RECIPIENT_ROLES:
        return None, f"must have the role IRCP (the organisation that would receive the data), not {sorted(roles)}"
    if ident.get("system") in ORGANISATION_SYSTEMS and ident.get("value"):
        return str(ident["value"]), None
    return None, (
        "must name the organisation by reference.identifier, system "
        f"{ODS_SYSTEM} (an ODS code) or {LOCAL_AUTHORITY_SYSTEM} (a council), "
        "or by a reference Organization/<id> to an organisation this hub knows"
    )


def _within(inner: Provision, outer: Provision, where: str) -> list[Problem]:
    """An exception that could never apply, as it names what its enclosing provision does not."""
    problems = []
    if inner.actors and outer.actors and not inner.actors <= outer.actors:
        problems.append(
            (
                f"{where}.actor",
                "names an organisation the enclosing provision does not: an exception "
                "applies within it (name it there too, or send a Consent of its own)",
            )
        )
    if inner.categories and outer.categories and not inner.categories <= outer.categories:
        problems.append(
            (
                f"{where}.class",
                "names a data category the enclosing provision does not: an exception "
                "applies within it (name it there too, or send a Consent of its own)",
            )
        )
    if (inner.start and outer.end and inner.start > outer.end) or (
        inner.end and outer.start and inner.end < outer.start
    ):
        problems.append((f"{where}.period", "lies outside the enclosing provision's period: it could never apply"))
    return problems


def _national(consent: Json) -> bool:
    return any(
        coding.get("system") == CONSENT_POLICY_SYSTEM and coding.get("code") == NATIONAL_OPT_OUT
        for coding in (consent.get("policyRule") or {}).get("coding") or []
    )


def _instant(text: str | None, *, end_of_day: bool = False) -> datetime | None:
    """A FHIR date or dateTime as an instant; a bare date ending a period means the whole day."""
    if not text:
        return None
    value = datetime.fromisoformat(text)
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    if end_of_day and len(text) == 10:
        value += timedelta(days=1, microseconds=-1)
    return value
