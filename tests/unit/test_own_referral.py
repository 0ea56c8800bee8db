"""The organisation that made a referral sees it and what became of it (hub.core.policy "own referral"),
whoever last wrote it and with no agreement with the service that answered it, unless the person
objected; and a subscription of scope `requested` takes the events about referrals it made
(hub.core.delivery.in_scope). A council's walkthrough: its referral was refused to it (403) once the
coordination service accepted it, and only `all-permitted` told it the answer, with everyone else's."""

from __future__ import annotations

from datetime import UTC, datetime

from hub.core.delivery import in_scope
from hub.core.policy import Asker, consent_rule, decide
from tests.builders import an_agreement

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
COUNCIL, SERVICE, HOSPITAL = "E10000023", "Y0PIC", "RXX"
LA_SYSTEM = "https://carehub.invalid/Id/local-authority-code"


def referral(requester: str, supplier: str, *, performer: str = SERVICE) -> dict:
    return {
        "resourceType": "ServiceRequest",
        "id": "sr-1",
        "meta": {"versionId": "3", "source": f"urn:ods:{supplier}"},
        "status": "active",
        "subject": {"reference": "Patient/p1"},
        "requester": {"identifier": {"system": LA_SYSTEM, "value": requester}},
        "performer": [{"identifier": {"value": performer}}],
    }


def objection(category: str) -> object:
    return consent_rule(
        {
            "resourceType": "Consent",
            "id": "k1",
            "meta": {"versionId": "1"},
            "status": "active",
            "patient": {"reference": "Patient/p1"},
            "provision": {
                "type": "deny",
                "actor": [
                    {
                        "role": {"coding": [{"code": "IRCP"}]},
                        "reference": {"identifier": {"value": COUNCIL}},
                    }
                ],
                "class": [{"system": "https://carehub.invalid/CodeSystem/data-category", "code": category}],
            },
        }
    )


def test_the_referrer_sees_its_referral_once_the_service_has_answered_it_without_an_agreement() -> None:
    council = Asker(COUNCIL, "clinician", NOW)
    answered = referral(COUNCIL, SERVICE)  # (accepted: the service wrote the last version)
    decision = decide(council, answered, [], [])
    assert decision.permitted, decision.reasons
    assert decision.reasons == (f"{COUNCIL} made this referral: it and what became of it are theirs to see",)
    assert decide(Asker(COUNCIL.lower(), "coordinator", NOW), answered, [], []).permitted


def test_no_one_else_and_nothing_else_of_the_person_comes_with_it() -> None:
    answered = referral(COUNCIL, SERVICE)
    assert decide(Asker("E10000099", "clinician", NOW), answered, [], []).outcome == "deny"
    encounter = {
        "resourceType": "Encounter",
        "id": "e1",
        "meta": {"source": f"urn:ods:{HOSPITAL}"},
        "subject": {"reference": "Patient/p1"},
        "requester": {"identifier": {"value": COUNCIL}},  # (not a referral: the rule is for ServiceRequests)
    }
    assert decide(Asker(COUNCIL, "clinician", NOW), encounter, [], []).outcome == "deny"
    assert decide(Asker(COUNCIL, "admin", NOW), answered, [], []).outcome == "deny"  # (a role with no purpose)


def test_the_persons_objection_to_sharing_referrals_with_the_referrer_still_stands() -> None:
    rule = objection("referrals")
    assert rule is not None
    denied = decide(Asker(COUNCIL, "clinician", NOW), referral(COUNCIL, SERVICE), [], [rule])  # type: ignore[list-item]
    assert denied.outcome == "deny"
    assert denied.consents == ("Consent/k1/_history/1",)
    other = objection("encounters")
    assert decide(Asker(COUNCIL, "clinician", NOW), referral(COUNCIL, SERVICE), [], [other]).permitted  # type: ignore[list-item]
    shared = an_agreement(COUNCIL, SERVICE, categories=("referrals",))
    assert decide(Asker(COUNCIL, "clinician", NOW), referral(COUNCIL, SERVICE), [shared], [rule]).outcome == "deny"  # type: ignore[list-item]


def test_a_requested_subscription_takes_the_referrals_its_organisation_made_and_no_others() -> None:
    ours, theirs = [referral(COUNCIL, SERVICE)], [referral("Y90001", SERVICE)]
    assert in_scope("requested", COUNCIL, ours)
    assert in_scope("requested", COUNCIL.lower(), ours)
    assert not in_scope("requested", COUNCIL, theirs)
    assert not in_scope("requested", COUNCIL, [{"resourceType": "EpisodeOfCare", "id": "ep"}])
    assert not in_scope("addressed", COUNCIL, ours)  # (addressed is the other way round: sent to it)
    assert in_scope("addressed", SERVICE, ours)


def test_a_referral_labelled_sensitive_is_for_an_agreement_covering_it_to_share_even_with_its_referrer() -> None:
    labelled = referral(COUNCIL, SERVICE)
    labelled["meta"]["security"] = [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "SDV"}]
    council = Asker(COUNCIL, "clinician", NOW)
    assert decide(council, labelled, [], []).outcome == "deny"
    covering = an_agreement(COUNCIL, SERVICE, categories=("referrals",), sensitive=("safeguarding",))
    assert decide(council, labelled, [covering], []).permitted
