"""A person's Consents as the policy decision point (hub.core.policy) enforces them: reading one
(`consent_rule`) and naming what in one the hub would not enforce as written (`consent_problems`).

Both follow one rule. Nested provisions are exceptions within the one enclosing them (FHIR R4): a
permit's nested denies are objections, a deny's nested permits are carved out of it. Recipients are
organisations by ODS or local-authority code. A Consent that reached the record without being taken
through the API (which refuses, 400, what `consent_problems` names) is read on the side of
withholding: a deny wider than written (an element it does not enforce ignored, a recipient it cannot
identify read as every organisation, saying so), an exception to a deny dropped.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from hub.core.ports import Json
from schemas.agreements import Category

CATEGORY_SYSTEM = "https://carehub.invalid/CodeSystem/data-category"
CATEGORIES = frozenset(c.value for c in Category)  # what a provision's class names: what agreements cover
CONSENT_POLICY_SYSTEM = "https://carehub.invalid/CodeSystem/consent-policy"
NATIONAL_OPT_OUT = "national-data-opt-out"  # a Consent whose policyRule carries this is the national opt-out
ODS_SYSTEM = "https://fhir.nhs.uk/Id/ods-organization-code"
LOCAL_AUTHORITY_SYSTEM = "https://carehub.invalid/Id/local-authority"  # councils, as the referral adapter names them
ORGANISATION_SYSTEMS = (ODS_SYSTEM, LOCAL_AUTHORITY_SYSTEM)  # a Consent's recipient, by code (agreements' parties)
RECIPIENT_ROLES = frozenset({"IRCP", "PRCP"})  # v3-ParticipationType: (primary) information recipient
ENFORCED = ("type", "actor", "class", "period", "provision")  # the provision elements the hub enforces


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


Problem = tuple[str, str]  # (FHIRPath of the element, what is wrong and what to send instead)


def consent_rule(consent: Json) -> ConsentRule | None:
    """A FHIR Consent as a rule; None when it is not an active privacy choice about a known person.
    Where it says what the hub does not enforce (`consent_problems`), it is read on the side of
    withholding, and the rule's `doubt` says so."""
    if consent.get("resourceType") != "Consent" or consent.get("status") != "active":
        return None
    person = _patient(consent)
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
        known = class_.get("system") == CATEGORY_SYSTEM and class_.get("code") in CATEGORIES
        categories.add(str(class_.get("code")) if known else None)
        if not known:
            codes = ", ".join(sorted(CATEGORIES))
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


def _patient(consent: Json) -> str | None:
    """The person key a Consent is about: its patient (R4 names the person nowhere else; as
    hub.core.policy.person_of reads it)."""
    ref = str((consent.get("patient") or {}).get("reference", ""))
    return ref.removeprefix("Patient/") if ref.startswith("Patient/") else None


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
