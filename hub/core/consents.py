"""A person's Consents as the policy decision point (hub.core.policy) enforces them: reading one
(`consent_rule`) and naming what in one the hub would not enforce as written (`consent_problems`).

Both follow one rule. Nested provisions are exceptions within the one enclosing them (FHIR R4): a
permit's nested denies are objections, a deny's nested permits are carved out of it. A nested deny
holds for its own period, never lapsing with its permit's (a permit never widens an agreement:
its period bounds nothing but, under OPTIN, what it spares). Recipients are organisations by ODS or local-authority code
(upper case, 3 to 10 letters and digits; sent in lower case, they are read in upper). Periods are
FHIR dates or dateTimes, partial ones included: a start from the start of its year or month, an end
to the end of its day, month or year. A base policy (policyRule) is v3-ActCode OPTOUT (the hub's own:
a deny objects), OPTIN (a permit then objects to all it does not name) or the national data opt-out
(which names no recipient or category). A Consent that reached the record without being taken through the
API (which refuses, 400, what `consent_problems` names) is read on the side of withholding: a deny
wider than written (an element it does not enforce ignored, a recipient it cannot identify read as
every organisation, a period it cannot read as always, saying so), an exception to a deny dropped, a
permit under a base policy it does not know read as under OPTIN. `consent_rule`
never raises: a Consent it cannot read at all withholds everything about the person, saying so.
"""

from __future__ import annotations

import calendar
import re
from collections.abc import Callable, Sequence
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
ACT_CODE_SYSTEM = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
BASE_POLICIES = frozenset({"OPTIN", "OPTOUT"})  # a Consent's policyRule: what is shared but for its provisions
CODE = re.compile(r"[A-Z0-9]{3,10}")  # an organisation code, as tokens name the asker's organisation
_PARTIAL = re.compile(r"(\d{4})(?:-(\d{2}))?")  # a FHIR date of a year, or of a month
CodesOf = Callable[[str], Sequence[str]]  # Organization id -> its codes as the record holds it (none: unknown)


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

    def names(self, org: str, category: str) -> bool:
        return (not self.actors or org in self.actors) and (not self.categories or category in self.categories)

    def applies(self, org: str, category: str, at: datetime) -> bool:
        return self.in_force(at) and self.names(org, category)


@dataclass(frozen=True, kw_only=True)
class ConsentRule(Provision):
    """A person's choice, from a FHIR Consent: its top-level provision and the exceptions nested in it."""

    id: str
    person_key: str
    version: str = "1"
    national_opt_out: bool = False  # the national data opt-out, not an objection to one organisation
    exceptions: tuple[Provision, ...] = ()  # nested provisions, each the opposite of this one
    only: bool = False  # a permit under the base policy OPTIN: objects to everything it does not permit
    doubt: str | None = None  # why the hub reads it wider than written (it was not taken through the API)

    def objects(self, org: str, category: str, at: datetime) -> bool:
        """Whether the person objects to `org` seeing `category` at `at`: within this provision, a
        deny but where a nested permit applies; a permit where a nested deny does, for as long as
        the deny says (its period, not the permit's: an objection never lapses early), and, under
        OPTIN (`only`), everywhere outside the permit."""
        if self.national_opt_out:
            return False
        excepted = any(e.applies(org, category, at) for e in self.exceptions)
        if self.deny:
            return self.applies(org, category, at) and not excepted
        if self.only and not self.applies(org, category, at):
            return True
        return self.names(org, category) and excepted


Problem = tuple[str, str]  # (FHIRPath of the element, what is wrong and what to send instead)


def consent_rule(consent: Json, codes_of: CodesOf | None = None) -> ConsentRule | None:
    """A FHIR Consent as a rule; None when it is not an active privacy choice about a known person.
    Where it says what the hub does not enforce (`consent_problems`), it is read on the side of
    withholding, and the rule's `doubt` says so. `codes_of` gives the codes of an organisation a
    recipient names only by Organization/<id> (as Consents were once stored). Never raises."""
    if not isinstance(consent, dict) or consent.get("resourceType") != "Consent" or consent.get("status") != "active":
        return None
    person = _patient(consent)
    provision = consent.get("provision") or {}
    if person is None or not isinstance(provision, dict) or provision.get("type") not in ("deny", "permit"):
        return None
    try:
        return _rule(consent, person, provision, codes_of)
    except (AttributeError, TypeError, ValueError) as exc:  # (a shape no FHIR validator would pass)
        return ConsentRule(
            id=str(consent.get("id")),
            person_key=person,
            deny=True,
            version=_version(consent),
            doubt=f"Consent/{consent.get('id')} cannot be read ({type(exc).__name__}), so it withholds everything",
        )


def _rule(consent: Json, person: str, provision: Json, codes_of: CodesOf | None) -> ConsentRule:
    national = _national(consent)
    deny = provision["type"] == "deny"
    root, problems = _provision(provision, "Consent.provision", deny=deny, codes_of=codes_of)
    if national:
        problems += _national_problems(provision)
    policy = _policy_problems(consent)
    problems += policy
    exceptions: list[Provision] = []
    for n, nested in enumerate([] if national else provision.get("provision") or []):
        where = f"Consent.provision.provision[{n}]"
        if deny and nested.get("type") == "permit":
            inner, unread = _provision(nested, where, deny=False, codes_of=codes_of)
            if nested.get("provision"):
                unread.append((f"{where}.provision", "nests deeper than the hub reads"))
            if not unread:  # (an exception the hub cannot read as written is not made)
                exceptions.append(inner)
            problems += unread
        elif deny:  # (a deny within the deny withholds nothing it does not)
            problems.append((f"{where}.type", "is not permit: an exception to a deny is a permit"))
        else:  # an objection within the permit (a nested provision of another type read as one)
            inner, unread = _provision(nested, where, deny=True, codes_of=codes_of)
            if nested.get("type") != "deny":
                unread.append((f"{where}.type", "is not deny: it is read as an objection"))
            exceptions.append(inner)
            problems += unread
    only = not deny and not national and (policy != [] or _base(consent) == "OPTIN")  # (a policy unread: OPTIN)
    if deny and _base(consent) == "OPTIN":  # (sharing nothing but what its nested permits name)
        root = Provision(deny=True)
        problems.append(("Consent.provision.type", "is deny under OPTIN: read as a deny to every organisation"))
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
        version=_version(consent),
        exceptions=tuple(exceptions),
        only=only,
        doubt=doubt,
    )


def _version(consent: Json) -> str:
    return str((consent.get("meta") or {}).get("versionId", "1"))


def consent_problems(consent: Json) -> list[Problem]:
    """What in a Consent the hub would not enforce as written, each with where it is and what to send
    instead; none for one it enforces exactly (the API refuses the others, 400)."""
    provision = consent.get("provision") or {}
    deny = provision.get("type") == "deny"
    root, problems = _provision(provision, "Consent.provision", deny=deny)
    problems += _policy_problems(consent)
    if deny and _base(consent) == "OPTIN":
        problems.append(
            ("Consent.provision.type", "must be permit under OPTIN (nothing is shared but what it permits)")
        )
    nested = provision.get("provision") or []
    if _national(consent):
        problems += _national_problems(provision)
        if nested:
            problems.append(("Consent.provision.provision", "a national data opt-out has no exceptions here"))
        return problems
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
        problems += unread + _within(read, root, where, deny=deny)
        if inner.get("provision"):
            problems.append((f"{where}.provision", "exceptions nest one level here: send a Consent of its own"))
    return problems


def _provision(
    provision: Json, where: str, *, deny: bool, codes_of: CodesOf | None = None
) -> tuple[Provision, list[Problem]]:
    """One provision as the hub enforces it, and what it says that the hub does not: read wider (an
    organisation or category it cannot identify read as every one, a period bound it cannot read as
    none) when it withholds, `deny`."""
    problems = [
        (f"{where}.{name}", f"sets {name}, which the hub does not enforce: send only {', '.join(ENFORCED)}")
        for name in provision
        if name not in ENFORCED
    ]
    actors: set[str | None] = set()
    for n, actor in enumerate(provision.get("actor") or []):
        named, problem = _recipient(actor, codes_of)
        actors |= named or {None}
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
    bounds: list[datetime | None] = []
    for name in ("start", "end"):
        try:
            bounds.append(_instant(period.get(name), end=name == "end"))
        except ValueError:
            bounds.append(None)
            problems.append(
                (
                    f"{where}.period.{name}",
                    "must be a FHIR date (YYYY, YYYY-MM or YYYY-MM-DD) or dateTime with its time zone",
                )
            )
    return Provision(
        deny=deny,
        actors=frozenset() if None in actors else frozenset(c for c in actors if c),
        categories=frozenset() if None in categories else frozenset(c for c in categories if c),
        start=bounds[0],
        end=bounds[1],
    ), problems


def _recipient(actor: Json, codes_of: CodesOf | None = None) -> tuple[frozenset[str] | None, str | None]:
    """The organisation codes an actor names as a recipient (one, by identifier; each code of an
    organisation named only by Organization/<id>, as `codes_of` finds it), or None and why it is
    not one the hub knows."""
    roles = {str(c.get("code")) for c in (actor.get("role") or {}).get("coding") or []}
    reference = actor.get("reference") or {}
    ident = reference.get("identifier") or {}
    if not roles & RECIPIENT_ROLES:
        return None, f"must have the role IRCP (the organisation that would receive the data), not {sorted(roles)}"
    if ident.get("system") in ORGANISATION_SYSTEMS and ident.get("value"):
        code = organisation_code(ident["value"])
        if code is None:
            return None, f"{ident['value']!r} is not an organisation code (3 to 10 letters and digits)"
        return frozenset({code}), None
    literal = str(reference.get("reference", ""))
    if codes_of is not None and literal.startswith("Organization/"):
        codes = {c for c in map(organisation_code, codes_of(literal.removeprefix("Organization/"))) if c}
        if codes:
            return frozenset(codes), None
        return None, (
            f"names {literal[:80]}, which the record does not hold with an ODS or local-authority code, "
            "so it is read as every organisation"
        )
    return None, (
        "must name the organisation by reference.identifier, system "
        f"{ODS_SYSTEM} (an ODS code) or {LOCAL_AUTHORITY_SYSTEM} (a council), "
        "or by a reference Organization/<id> to an organisation this hub knows"
    )


def organisation_code(value: object) -> str | None:
    """An ODS or local-authority code as tokens name organisations (upper case), or None if it is none."""
    code = str(value).strip().upper()
    return code if CODE.fullmatch(code) else None


def _base(consent: Json) -> str | None:
    """The base policy a Consent's policyRule names (v3-ActCode OPTIN or OPTOUT), if any."""
    codes = {
        str(c.get("code"))
        for c in (consent.get("policyRule") or {}).get("coding") or []
        if c.get("system") == ACT_CODE_SYSTEM and c.get("code") in BASE_POLICIES
    }
    return codes.pop() if len(codes) == 1 else None


def _policy_problems(consent: Json) -> list[Problem]:
    """A base policy the hub does not enforce: any but OPTIN (share only what the permit names),
    OPTOUT (share what agreements do but what the deny names: the hub's own) and the national
    data opt-out, one of them."""
    problems: list[Problem] = []
    if consent.get("policy"):
        problems.append(("Consent.policy", "sets a policy by reference, which the hub does not enforce: send none"))
    rule = consent.get("policyRule")
    if not rule:
        return problems
    codings = rule.get("coding") or []
    known = [
        c for c in codings if _is_national(c) or (c.get("system") == ACT_CODE_SYSTEM and c.get("code") in BASE_POLICIES)
    ]
    if not codings or len(known) != len(codings) or len({(c.get("system"), c.get("code")) for c in known}) > 1:
        problems.append(
            (
                "Consent.policyRule",
                f"must be one of {ACT_CODE_SYSTEM}#OPTIN (share only what the permit names), #OPTOUT (share "
                f"as agreements do, but what the deny names) or {CONSENT_POLICY_SYSTEM}#{NATIONAL_OPT_OUT} "
                "(the national data opt-out): the hub enforces no other base policy",
            )
        )
    return problems


def _national_problems(provision: Json) -> list[Problem]:
    """A national data opt-out naming recipients or categories: it covers every one of both here."""
    return [
        (
            f"Consent.provision.{name}",
            f"narrows a national data opt-out, which the hub enforces for every organisation and data "
            f"category: send no {name} (an objection to some is a Consent of its own, without the policyRule)",
        )
        for name in ("actor", "class")
        if provision.get(name)
    ]


def _within(inner: Provision, outer: Provision, where: str, *, deny: bool) -> list[Problem]:
    """An exception that could never apply, as it names what its enclosing provision does not (a
    nested deny's period excepted: it holds for as long as it says, `ConsentRule.objects`)."""
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
    if deny and (
        (inner.start and outer.end and inner.start > outer.end)
        or (inner.end and outer.start and inner.end < outer.start)
    ):
        problems.append((f"{where}.period", "lies outside the enclosing provision's period: it could never apply"))
    return problems


def _patient(consent: Json) -> str | None:
    """The person key a Consent is about: its patient (R4 names the person nowhere else; as
    hub.core.policy.person_of reads it)."""
    ref = str((consent.get("patient") or {}).get("reference", ""))
    return ref.removeprefix("Patient/") if ref.startswith("Patient/") else None


def _national(consent: Json) -> bool:
    return any(_is_national(coding) for coding in (consent.get("policyRule") or {}).get("coding") or [])


def _is_national(coding: Json) -> bool:
    return coding.get("system") == CONSENT_POLICY_SYSTEM and coding.get("code") == NATIONAL_OPT_OUT


def _instant(text: object, *, end: bool = False) -> datetime | None:
    """A FHIR date or dateTime as an instant (ValueError if it is neither): a partial or bare date
    starting a period from the start of its year, month or day, ending one at the end of it."""
    if text is None or text == "":
        return None
    if not isinstance(text, str):
        raise ValueError(f"not a date: {text!r}")
    partial = _PARTIAL.fullmatch(text)
    if partial:
        year, month = int(partial[1]), int(partial[2] or 0)
        if month > 12 or (partial[2] and month < 1):
            raise ValueError(f"no month {month}")
        first = datetime(year, month or 1, 1, tzinfo=UTC)
        if not end:
            return first
        last_month = month or 12
        last = datetime(year, last_month, calendar.monthrange(year, last_month)[1], tzinfo=UTC)
        return last + timedelta(days=1, microseconds=-1)
    value = datetime.fromisoformat(text)
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    if end and len(text) == 10:
        value += timedelta(days=1, microseconds=-1)
    return value
