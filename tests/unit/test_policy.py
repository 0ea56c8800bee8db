"""The policy decision point against an independent oracle, over generated agreements, consents and
requests (hypothesis, 10,000 cases), plus the rules a data protection officer would check by name."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hub.core.policy import PERSON_EXTENSION, Asker, ConsentRule, consent_rule, decide
from schemas.agreements import Agreement
from tests.builders import an_agreement

ORGS = ["RXX", "RYY", "Y00001", "Y00002", "E10000023"]
ROLES = ["clinician", "coordinator", "auditor", "admin", "system"]
PURPOSE = {"clinician": "direct-care", "coordinator": "care-coordination", "auditor": "audit"}
KINDS = {"Patient": "demographics", "Encounter": "encounters", "Provenance": "provenance", "Consent": "consents"}
LABELS = {"PSY": "mental-health", "SEX": "sexual-health", "SDV": "safeguarding", "ETH": "substance-misuse"}
PEOPLE = ["p1", "p2"]
DAY0 = date(2026, 1, 1)
NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)


def resource(kind: str, person: str, source: str | None, labels: list[str]) -> dict:
    meta: dict = {"versionId": "1"}
    if source:
        meta["source"] = f"urn:ods:{source}"
    if labels:
        meta["security"] = [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": c} for c in labels]
    out: dict = {"resourceType": kind, "id": f"{kind}-{person}", "meta": meta}
    if kind == "Patient":
        out["id"] = person
    elif kind == "Consent":
        out["patient"] = {"reference": f"Patient/{person}"}
    elif kind == "Provenance":  # no subject of its own: the record names the person in an extension
        out["extension"] = [{"url": PERSON_EXTENSION, "valueReference": {"reference": f"Patient/{person}"}}]
    else:
        out["subject"] = {"reference": f"Patient/{person}"}
    return out


agreements = st.lists(
    st.builds(
        lambda n, parties, purposes, categories, sensitive, start, length: an_agreement(
            *parties,
            id=f"a{n}",
            purposes=tuple(purposes),
            categories=tuple(categories),
            sensitive=tuple(sensitive),
            valid_from=str(DAY0 + timedelta(days=start)),
            valid_to=None if length is None else str(DAY0 + timedelta(days=start + length)),
        ),
        st.integers(0, 99),
        st.lists(st.sampled_from(ORGS), min_size=2, max_size=4, unique=True),
        st.lists(st.sampled_from(["direct-care", "care-coordination", "audit"]), min_size=1, max_size=3, unique=True),
        st.lists(st.sampled_from(sorted(set(KINDS.values()))), min_size=1, max_size=4, unique=True),
        st.lists(st.sampled_from(sorted(LABELS.values())), max_size=2, unique=True),
        st.integers(0, 300),
        st.one_of(st.none(), st.integers(0, 300)),
    ),
    max_size=3,
)
consents = st.lists(
    st.builds(
        lambda n, person, deny, actors, categories, start, end: ConsentRule(
            id=f"c{n}",
            person_key=person,
            deny=deny,
            actors=frozenset(actors),
            categories=frozenset(categories),
            start=None if start is None else NOW + timedelta(days=start),
            end=None if end is None else NOW + timedelta(days=end),
        ),
        st.integers(0, 99),
        st.sampled_from(PEOPLE),
        st.booleans(),
        st.lists(st.sampled_from(ORGS), max_size=2, unique=True),
        st.lists(st.sampled_from(sorted(set(KINDS.values()))), max_size=2, unique=True),
        st.one_of(st.none(), st.integers(-30, 30)),
        st.one_of(st.none(), st.integers(-30, 30)),
    ),
    max_size=3,
)
requests = st.tuples(
    st.sampled_from(ORGS),
    st.sampled_from(ROLES),
    st.sampled_from(sorted(KINDS)),
    st.sampled_from(PEOPLE),
    st.one_of(st.none(), st.sampled_from(ORGS)),
    st.lists(st.sampled_from(sorted(LABELS)), max_size=2, unique=True),
    st.one_of(st.none(), st.just(""), st.just("unconscious in ED, no history available")),
)


def oracle(
    org: str,
    role: str,
    kind: str,
    person: str,
    source: str | None,
    labels: list[str],
    break_glass: str | None,
    deals: list[Agreement],
    choices: list[ConsentRule],
) -> bool:
    """The rules, written out plainly: may `org`'s `role` see this resource now?"""
    if role not in PURPOSE:
        return False
    if source == org:
        return True
    if break_glass and role == "clinician":
        return True
    category = KINDS[kind]
    wanted_sensitive = {LABELS[label] for label in labels}
    today = NOW.date()
    covered = False
    for deal in deals:
        parties = {p.code for p in deal.parties}
        in_date = deal.valid_from <= today and (deal.valid_to is None or today <= deal.valid_to)
        if not in_date or org not in parties:
            continue
        if source is not None and source not in parties:
            continue
        if PURPOSE[role] not in deal.purposes or category not in deal.categories:
            continue
        if not wanted_sensitive.issubset(set(deal.sensitive)):
            continue
        covered = True
    if not covered:
        return False
    for choice in choices:
        if not choice.deny or choice.person_key != person:
            continue
        started = choice.start is None or choice.start <= NOW
        not_ended = choice.end is None or choice.end >= NOW
        if not (started and not_ended):
            continue
        if choice.actors and org not in choice.actors:
            continue
        if choice.categories and category not in choice.categories:
            continue
        return False
    return True


@settings(max_examples=10_000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(agreements, consents, requests)
def test_every_decision_matches_the_oracle(deals: list[Agreement], choices: list[ConsentRule], request: tuple) -> None:
    org, role, kind, person, source, labels, break_glass = request
    decision = decide(Asker(org, role, NOW, break_glass), resource(kind, person, source, labels), deals, choices)
    expected = oracle(org, role, kind, person, source, labels, break_glass, deals, choices)
    assert decision.permitted == expected, decision.reasons
    assert decision.reasons


def test_without_any_agreement_everything_personal_is_denied() -> None:
    decision = decide(Asker("Y00001", "clinician", NOW), resource("Encounter", "p1", "RXX", []), [], [])
    assert decision.outcome == "deny"
    assert "no agreement" in decision.reasons[0]


def test_an_objection_overrides_the_agreement_and_names_the_consent() -> None:
    deal = an_agreement("RXX", "Y00001")
    objection = ConsentRule(id="c9", person_key="p1", deny=True, actors=frozenset({"Y00001"}))
    decision = decide(Asker("Y00001", "clinician", NOW), resource("Encounter", "p1", "RXX", []), [deal], [objection])
    assert decision.outcome == "deny"
    assert decision.consents == ("Consent/c9/_history/1",)
    assert decision.agreements == ("test-locality-sharing@1",)


def test_a_permit_never_widens_an_agreement() -> None:
    permit = ConsentRule(id="c1", person_key="p1", deny=False, actors=frozenset({"Y00002"}))
    deal = an_agreement("RXX", "Y00001")
    decision = decide(Asker("Y00002", "clinician", NOW), resource("Encounter", "p1", "RXX", []), [deal], [permit])
    assert decision.outcome == "deny"


def test_sensitive_entries_need_an_agreement_that_names_them() -> None:
    plain = an_agreement("RXX", "Y00001")
    mental = an_agreement("RXX", "Y00001", id="mh", sensitive=("mental-health",))
    labelled = resource("Encounter", "p1", "RXX", ["PSY"])
    asker = Asker("Y00001", "clinician", NOW)
    assert decide(asker, labelled, [plain], []).outcome == "deny"
    assert decide(asker, labelled, [mental], []).outcome == "permit"


def test_break_glass_is_marked_and_needs_a_reason_and_a_clinician() -> None:
    target = resource("Encounter", "p1", "RXX", [])
    assert decide(Asker("Y00001", "clinician", NOW, "cardiac arrest"), target, [], []).outcome == "break-glass"
    assert decide(Asker("Y00001", "clinician", NOW, "  "), target, [], []).outcome == "deny"
    assert decide(Asker("Y00001", "coordinator", NOW, "urgent"), target, [], []).outcome == "deny"


def test_an_ended_agreement_no_longer_shares() -> None:
    ended = an_agreement("RXX", "Y00001", valid_to="2026-05-31")
    assert (
        decide(Asker("Y00001", "clinician", NOW), resource("Patient", "p1", "RXX", []), [ended], []).outcome == "deny"
    )


def test_a_fhir_consent_becomes_a_rule() -> None:
    rule = consent_rule(
        {
            "resourceType": "Consent",
            "id": "k1",
            "meta": {"versionId": "2"},
            "status": "active",
            "patient": {"reference": "Patient/p1"},
            "provision": {
                "type": "deny",
                "period": {"start": "2026-01-01", "end": "2026-12-31"},
                "actor": [
                    {
                        "role": {"coding": [{"code": "IRCP"}]},
                        "reference": {
                            "identifier": {"system": "https://fhir.nhs.uk/Id/ods-organization-code", "value": "Y00001"}
                        },
                    }
                ],
                "class": [{"system": "https://carehub.invalid/CodeSystem/data-category", "code": "encounters"}],
            },
        }
    )
    assert rule is not None
    assert rule.deny
    assert rule.actors == frozenset({"Y00001"})
    assert rule.categories == frozenset({"encounters"})
    assert rule.in_force(datetime(2026, 12, 31, 23, 0, tzinfo=UTC))
    assert not rule.in_force(datetime(2027, 1, 1, 0, 1, tzinfo=UTC))
    assert rule.version == "2"


def national_opt_out(person: str, start: str = "2026-01-01", end: str | None = None) -> dict:
    period = {"start": start} | ({"end": end} if end else {})
    return {
        "resourceType": "Consent",
        "id": f"ndoo-{person}",
        "status": "active",
        "patient": {"reference": f"Patient/{person}"},
        "policyRule": {
            "coding": [{"system": "https://carehub.invalid/CodeSystem/consent-policy", "code": "national-data-opt-out"}]
        },
        "provision": {"type": "deny", "period": period},
    }


def test_the_national_data_opt_out_is_read_from_its_consent_and_is_not_an_objection() -> None:
    rule = consent_rule(national_opt_out("p1"))
    assert rule is not None
    assert rule.national_opt_out
    assert not rule.deny


def test_the_national_data_opt_out_applies_only_through_agreements_that_say_so() -> None:
    planning = an_agreement("RXX", "Y00001", id="planning", purposes=("care-coordination",))
    planning = planning.model_copy(update={"national_data_opt_out": True})
    direct = an_agreement("RXX", "Y00001", id="direct", purposes=("direct-care",))
    encounter = resource("Encounter", "p1", "RXX", [])
    rules = [r for r in [consent_rule(national_opt_out("p1"))] if r]
    coordinator = Asker("Y00001", "coordinator", NOW)
    clinician = Asker("Y00001", "clinician", NOW)

    withheld = decide(coordinator, encounter, [planning], rules)
    assert withheld.outcome == "deny"
    assert "national data opt-out" in withheld.reasons[0]
    assert decide(coordinator, resource("Encounter", "p2", "RXX", []), [planning], rules).outcome == "permit"
    assert decide(clinician, encounter, [direct], rules).outcome == "permit"  # direct care is not affected
    ended = [r for r in [consent_rule(national_opt_out("p1", end="2026-03-01"))] if r]
    assert decide(coordinator, encounter, [planning], ended).outcome == "permit"
