"""A Consent's provisions as the hub enforces them (hub.core.policy): nested provisions are exceptions
within the one enclosing them (FHIR R4), a council is named by ODS or local-authority code, and a
Consent the hub would not enforce as written is named by consent_problems (the API refuses it) and,
if it reached the record all the same, read on the side of withholding, saying so."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from hub.core import policy
from hub.core.ledger import Disclosure, Entry, resource_ref
from hub.core.policy import ODS_SYSTEM, Asker, ConsentRule, consent_rule, decide
from hub.core.ports import Json
from hub.core.timetravel import reconsider
from tests.builders import an_agreement

COUNCIL, PIC, GP = "E10000023", "Y0PIC", "Y00001"
NOW = datetime(2026, 12, 8, 10, 0, tzinfo=UTC)
AGREEMENTS = [an_agreement(GP, PIC, COUNCIL, categories=("demographics", "encounters", "referrals", "consents"))]
LOCAL_AUTHORITY_SYSTEM = "https://carehub.invalid/Id/local-authority"  # adapters.referrals.to_fhir's, for councils


def actor(code: str, system: str = ODS_SYSTEM) -> Json:
    role = {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType", "code": "IRCP"}]}
    return {"role": role, "reference": {"identifier": {"system": system, "value": code}}}


def a_consent(provision: Json, id: str = "k1") -> Json:
    return {
        "resourceType": "Consent",
        "id": id,
        "status": "active",
        "patient": {"reference": "Patient/p1"},
        "provision": provision,
    }


NESTED_DENY = a_consent({"type": "permit", "provision": [{"type": "deny", "actor": [actor(COUNCIL)]}]})
LA_DENY = a_consent({"type": "deny", "actor": [actor(COUNCIL, LOCAL_AUTHORITY_SYSTEM)]})


def patient(source: str = GP) -> Json:
    return {"resourceType": "Patient", "id": "p1", "meta": {"source": f"urn:ods:{source}"}}


def rules(*consents: Json) -> list[ConsentRule]:
    read = [consent_rule(c) for c in consents]
    assert all(r is not None for r in read)
    return [r for r in read if r is not None]


def outcome(org: str, consents: list[ConsentRule], resource: Json | None = None, at: datetime = NOW) -> str:
    return decide(Asker(org, "coordinator", at), resource or patient(), AGREEMENTS, consents).outcome


def test_a_deny_nested_in_a_permit_withholds_from_the_organisation_it_names_and_no_other() -> None:
    theirs = rules(NESTED_DENY)

    assert policy.consent_problems(NESTED_DENY) == []
    assert outcome(COUNCIL, theirs) == "deny"
    assert outcome(PIC, theirs) == "permit"


def test_a_council_named_on_the_local_authority_system_is_that_council_not_everyone() -> None:
    theirs = rules(LA_DENY)

    assert policy.consent_problems(LA_DENY) == []
    assert theirs[0].actors == frozenset({COUNCIL})
    assert outcome(COUNCIL, theirs) == "deny"
    assert outcome(PIC, theirs) == "permit"  # the person's own coordination service is not cut off


def test_a_permit_nested_in_a_deny_is_carved_out_of_it() -> None:
    consent = a_consent({"type": "deny", "provision": [{"type": "permit", "actor": [actor(PIC)]}]})

    assert policy.consent_problems(consent) == []
    assert (outcome(COUNCIL, rules(consent)), outcome(GP, rules(consent), patient(PIC))) == ("deny", "deny")
    assert outcome(PIC, rules(consent)) == "permit"


def test_a_nested_deny_holds_for_its_categories_and_period_only_within_the_permit() -> None:
    nested = {
        "type": "deny",
        "actor": [actor(COUNCIL)],
        "class": [{"system": "https://carehub.invalid/CodeSystem/data-category", "code": "encounters"}],
        "period": {"start": "2026-12-01", "end": "2026-12-31"},
    }
    consent = a_consent({"type": "permit", "period": {"start": "2026-11-01"}, "provision": [nested]})
    encounter = {
        "resourceType": "Encounter",
        "id": "e1",
        "subject": {"reference": "Patient/p1"},
        "meta": {"source": f"urn:ods:{GP}"},
    }
    theirs = rules(consent)

    assert policy.consent_problems(consent) == []
    assert outcome(COUNCIL, theirs, encounter) == "deny"
    assert outcome(COUNCIL, theirs) == "permit"  # demographics: not objected to
    assert outcome(COUNCIL, theirs, encounter, NOW + timedelta(days=30)) == "permit"  # after its period


@pytest.mark.parametrize(
    ("provision", "where"),
    [
        ({"type": "deny", "provision": [{"type": "deny", "actor": [actor(COUNCIL)]}]}, "provision.provision[0].type"),
        ({"type": "permit", "provision": [{"actor": [actor(COUNCIL)]}]}, "provision.provision[0].type"),
        ({"type": "deny", "actor": [actor(COUNCIL, "https://example.org/councils")]}, "provision.actor[0]"),
        (
            {
                "type": "deny",
                "actor": [{"role": {"coding": [{"code": "IRCP"}]}, "reference": {"reference": "Organization/x"}}],
            },
            "provision.actor[0]",
        ),
        ({"type": "deny", "actor": [actor(COUNCIL)], "purpose": [{"code": "TREAT"}]}, "provision.purpose"),
        ({"type": "deny", "class": [{"system": "http://loinc.org", "code": "11488-4"}]}, "provision.class[0]"),
        (
            {"type": "permit", "provision": [{"type": "deny", "provision": [{"type": "permit"}]}]},
            "provision.provision[0].provision",
        ),
        (
            {"type": "permit", "actor": [actor(GP)], "provision": [{"type": "deny", "actor": [actor(COUNCIL)]}]},
            "provision.provision[0].actor",
        ),
    ],
)
def test_what_the_hub_would_not_enforce_as_written_is_named_by_its_element(provision: Json, where: str) -> None:
    problems = policy.consent_problems(a_consent(provision))

    assert f"Consent.{where}" in [w for w, _ in problems], problems
    assert all(what for _, what in problems)


def test_a_deny_naming_a_recipient_the_hub_cannot_identify_withholds_from_everyone_and_says_why() -> None:
    stored = a_consent({"type": "deny", "actor": [actor(COUNCIL, "https://example.org/councils")]})

    decision = decide(Asker(PIC, "coordinator", NOW), patient(), AGREEMENTS, rules(stored))

    assert decision.outcome == "deny"
    assert "read on the side of withholding" in decision.reasons[0]
    assert "Consent.provision.actor[0]" in decision.reasons[0]


def test_a_nested_deny_naming_a_recipient_the_hub_cannot_identify_withholds_from_everyone() -> None:
    unknown = {"role": {"coding": [{"code": "IRCP"}]}, "reference": {"reference": "Organization/x"}}
    stored = a_consent({"type": "permit", "provision": [{"type": "deny", "actor": [unknown]}]})

    assert outcome(PIC, rules(stored)) == "deny"


def test_an_exception_to_a_deny_the_hub_cannot_read_as_written_is_not_made() -> None:
    exception = {"type": "permit", "actor": [actor(PIC)], "purpose": [{"code": "HMARKT"}]}
    stored = a_consent({"type": "deny", "provision": [exception]})

    assert outcome(PIC, rules(stored)) == "deny"


def test_time_travel_decides_a_nested_deny_as_reads_do() -> None:
    disclosed = patient() | {"meta": {"source": f"urn:ods:{GP}", "versionId": "1"}}
    body = Disclosure(
        at=NOW - timedelta(days=1),
        recipient_org=COUNCIL,
        recipient_user="asc-lead",
        channel="read",
        person_key="p1",
        resources=(resource_ref(disclosed),),
        decision="permit",
        reasons=("shared",),
        basis={"role": "coordinator", "agreements": [], "consents": []},
    ).body()

    [row] = reconsider(
        [Entry(1, body, "0" * 64, "0" * 64)], {"Patient/p1": disclosed}, AGREEMENTS, rules(NESTED_DENY), NOW, history=[]
    )

    assert (row.then, row.now, row.changed) == ("permit", "deny", True)
    assert "Consent/k1" in row.now_basis


# review of 726cc4e: recipients, base policies, periods, nested types (hub.core.consents)

CATEGORY = "https://carehub.invalid/CodeSystem/data-category"
OPTIN = {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "OPTIN"}]}
NATIONAL = {
    "coding": [{"system": "https://carehub.invalid/CodeSystem/consent-policy", "code": "national-data-opt-out"}]
}


def test_a_recipient_code_in_lower_case_is_read_as_the_organisation_it_names() -> None:
    consent = a_consent({"type": "deny", "actor": [actor(" e10000023 ", LOCAL_AUTHORITY_SYSTEM)]})

    assert policy.consent_problems(consent) == []
    assert (outcome(COUNCIL, rules(consent)), outcome(PIC, rules(consent))) == ("deny", "permit")


@pytest.mark.parametrize("code", ["E1", "E-10000023", "E100000230000", "Ｅ10000023"])
def test_a_recipient_value_that_is_no_organisation_code_is_refused_and_read_as_everyone(code: str) -> None:
    consent = a_consent({"type": "deny", "actor": [actor(code, LOCAL_AUTHORITY_SYSTEM)]})

    assert "Consent.provision.actor[0]" in [w for w, _ in policy.consent_problems(consent)]
    assert outcome(PIC, rules(consent)) == "deny"


def test_a_permit_under_optin_withholds_from_everyone_it_does_not_name() -> None:
    consent = a_consent({"type": "permit", "actor": [actor(PIC)]}) | {"policyRule": OPTIN}

    assert policy.consent_problems(consent) == []
    assert (outcome(COUNCIL, rules(consent)), outcome(PIC, rules(consent))) == ("deny", "permit")


@pytest.mark.parametrize(
    ("extra", "where"),
    [
        ({"policyRule": {"coding": [{"system": "http://example.org/policies", "code": "GP-ONLY"}]}}, "policyRule"),
        ({"policyRule": {"text": "only my GP"}}, "policyRule"),
        ({"policy": [{"uri": "https://example.org/only-my-gp"}]}, "policy"),
    ],
)
def test_a_base_policy_the_hub_does_not_enforce_is_refused_and_a_permit_under_it_read_as_optin(
    extra: Json, where: str
) -> None:
    consent = a_consent({"type": "permit", "actor": [actor(PIC)]}) | extra

    assert f"Consent.{where}" in [w for w, _ in policy.consent_problems(consent)]
    assert outcome(COUNCIL, rules(consent)) == "deny"
    assert rules(consent)[0].doubt


def test_a_nested_deny_outlasting_its_permit_holds_for_its_own_period() -> None:
    deny = {"type": "deny", "actor": [actor(COUNCIL)], "period": {"end": "2028-12-31"}}
    bounded = a_consent({"type": "permit", "period": {"end": "2026-12-31"}, "provision": [deny]})
    open_ended = a_consent(
        {"type": "permit", "period": {"end": "2026-12-31"}, "provision": [{"type": "deny", "actor": [actor(COUNCIL)]}]}
    )
    later = datetime(2027, 6, 1, tzinfo=UTC)

    assert policy.consent_problems(bounded) == policy.consent_problems(open_ended) == []
    assert outcome(COUNCIL, rules(bounded), at=later) == "deny"
    assert outcome(COUNCIL, rules(open_ended), at=later) == "deny"
    assert outcome(COUNCIL, rules(bounded), at=datetime(2029, 1, 1, tzinfo=UTC)) == "permit"
    assert outcome(PIC, rules(bounded), at=later) == "permit"


@pytest.mark.parametrize(
    ("period", "inside", "outside"),
    [
        ({"end": "2027-06"}, datetime(2027, 6, 30, 23, 59, tzinfo=UTC), datetime(2027, 7, 1, tzinfo=UTC)),
        ({"end": "2026"}, datetime(2026, 12, 31, 23, 59, tzinfo=UTC), datetime(2027, 1, 1, tzinfo=UTC)),
        ({"start": "2027-02"}, datetime(2027, 2, 1, tzinfo=UTC), datetime(2027, 1, 31, 23, 59, tzinfo=UTC)),
        ({"start": "2027"}, datetime(2027, 1, 1, tzinfo=UTC), datetime(2026, 12, 31, 23, 59, tzinfo=UTC)),
    ],
)
def test_a_partial_date_bounds_a_period_by_the_whole_of_its_month_or_year(
    period: Json, inside: datetime, outside: datetime
) -> None:
    consent = a_consent({"type": "deny", "actor": [actor(COUNCIL)], "period": period})

    assert policy.consent_problems(consent) == []
    assert (outcome(COUNCIL, rules(consent), at=inside), outcome(COUNCIL, rules(consent), at=outside)) == (
        "deny",
        "permit",
    )


@pytest.mark.parametrize("end", ["2027-13", "soon", "2027-6", 20270601])
def test_a_period_the_hub_cannot_read_is_refused_and_a_stored_deny_read_as_always(end: object) -> None:
    consent = a_consent({"type": "deny", "actor": [actor(COUNCIL)], "period": {"start": "2026-01-01", "end": end}})

    assert "Consent.provision.period.end" in [w for w, _ in policy.consent_problems(consent)]
    assert outcome(COUNCIL, rules(consent), at=datetime(2040, 1, 1, tzinfo=UTC)) == "deny"
    assert "period.end" in (rules(consent)[0].doubt or "")


def test_a_consent_of_no_readable_shape_never_raises_and_withholds() -> None:
    consent = a_consent({"type": "deny", "actor": ["E10000023"], "class": 7})

    assert outcome(PIC, rules(consent)) == "deny"


def test_a_recipient_named_only_as_an_organisation_the_record_holds_is_read_as_each_of_its_codes() -> None:
    named = {"role": actor(COUNCIL)["role"], "reference": {"reference": "Organization/council-org"}}
    stored = a_consent({"type": "deny", "actor": [named]})
    codes = {"council-org": ["e10000023", "R1A"]}

    rule = consent_rule(stored, lambda id_: codes.get(id_, []))
    unknown = consent_rule(stored, lambda id_: [])

    assert rule is not None and unknown is not None
    assert rule.actors == frozenset({COUNCIL, "R1A"}) and rule.doubt is None
    assert (outcome(COUNCIL, [rule]), outcome(PIC, [rule])) == ("deny", "permit")
    assert outcome(PIC, [unknown]) == "deny"
    assert "read as every organisation" in (unknown.doubt or "")


def test_a_permit_nested_in_a_permit_is_read_as_an_objection_saying_so() -> None:
    stored = a_consent({"type": "permit", "provision": [{"type": "permit", "actor": [actor(COUNCIL)]}]})

    decision = decide(Asker(COUNCIL, "coordinator", NOW), patient(), AGREEMENTS, rules(stored))

    assert decision.outcome == "deny"
    assert "read on the side of withholding" in decision.reasons[0]
    assert "provision.provision[0].type" in decision.reasons[0]


def test_a_national_opt_out_naming_a_recipient_or_a_category_is_refused() -> None:
    consent = a_consent(
        {"type": "deny", "actor": [actor(COUNCIL)], "class": [{"system": CATEGORY, "code": "encounters"}]}
    ) | {"policyRule": NATIONAL}

    assert {"Consent.provision.actor", "Consent.provision.class"} <= {w for w, _ in policy.consent_problems(consent)}
    assert rules(consent)[0].national_opt_out and rules(consent)[0].doubt


DENY = a_consent({"type": "deny", "actor": [actor(COUNCIL)]})


@pytest.mark.parametrize(
    ("status", "counts"),
    [
        ("active", True),
        ("inactive", False),
        ("entered-in-error", False),
        ("rejected", False),
        ("proposed", False),
        ("draft", False),
        ("withdrawn", False),  # (no FHIR R4 status: the API refuses it; one that got in withholds nothing)
    ],
)
def test_only_an_active_consent_is_a_rule(status: str, counts: bool) -> None:
    rule = consent_rule(DENY | {"status": status})

    assert (rule is not None) is counts
    assert outcome(COUNCIL, [rule] if rule else []) == ("deny" if counts else "permit")


def test_an_objection_ended_by_a_new_version_withholds_nothing_and_a_later_permit_never_lifts_one() -> None:
    first = DENY | {"meta": {"versionId": "1"}}
    ended = DENY | {"status": "inactive", "meta": {"versionId": "2"}}
    permit = a_consent({"type": "permit", "actor": [actor(COUNCIL)]}, id="k2")

    before = decide(Asker(COUNCIL, "coordinator", NOW), patient(), AGREEMENTS, rules(first))

    assert before.consents == ("Consent/k1/_history/1",)
    assert consent_rule(ended) is None
    assert outcome(COUNCIL, []) == "permit"
    assert outcome(COUNCIL, rules(first, permit)) == "deny"
