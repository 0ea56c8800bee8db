"""The one lookup of what a derived resource reveals (hub.core.policy.origins_held), as FHIR reads, the
huddle, deliveries and time travel use it; the case-list Flag a referral raises naming that referral,
so the lookup finds it; and the Consent reading moved to hub.core.consents, importable as before."""

from __future__ import annotations

import yaml

from hub.core import consents, policy
from hub.core.derived_events import REFERRAL_EXTENSION, DerivedEvents
from hub.core.policy import origins_held
from hub.core.ports import Json
from hub.core.timetravel import with_origins
from hub.rules import DEFAULT
from schemas.agreements import Category
from schemas.coordination_rules import CoordinationRules
from tests import locality_month as month

RECORD: dict[tuple[str, str], Json] = {
    ("EpisodeOfCare", "ep1"): {
        "resourceType": "EpisodeOfCare",
        "id": "ep1",
        "referralRequest": [{"reference": "ServiceRequest/r1"}],
    },
    ("ServiceRequest", "r1"): {"resourceType": "ServiceRequest", "id": "r1"},
}
FLAG = {
    "resourceType": "Flag",
    "id": "f1",
    "extension": [{"url": "x", "valueReference": {"reference": "EpisodeOfCare/ep1"}}],
}


def test_a_long_stay_flag_is_followed_to_its_episode_and_on_to_the_referral_each_read_once() -> None:
    reads: list[tuple[str, str]] = []

    def read(kind: str, id_: str) -> Json | None:
        reads.append((kind, id_))
        return RECORD.get((kind, id_))

    found = origins_held(FLAG, read)

    assert [r["id"] for r in found] == ["ep1", "r1"]
    assert sorted(reads) == [("EpisodeOfCare", "ep1"), ("ServiceRequest", "r1")]


def test_time_travel_reads_only_what_the_disclosures_did_not_already_hold() -> None:
    asked: list[str] = []

    def read(ref: str) -> Json | None:
        asked.append(ref)
        kind, _, id_ = ref.partition("/")
        return RECORD.get((kind, id_))

    held = with_origins({"Flag/f1": FLAG, "EpisodeOfCare/ep1": RECORD[("EpisodeOfCare", "ep1")]}, read)

    assert asked == ["ServiceRequest/r1"]
    assert set(held) == {"Flag/f1", "EpisodeOfCare/ep1", "ServiceRequest/r1"}


def rules() -> CoordinationRules:
    return CoordinationRules.model_validate(yaml.safe_load(DEFAULT.read_text()))


def test_a_case_list_flag_raised_by_a_referral_names_it_and_one_raised_by_a_register_row_names_none() -> None:
    events = DerivedEvents(rules())
    referral = month.referral("P1", month.at(2, 9), "voluntary-sector", by="VCS01")
    row = month.register_row("P2", month.at(2, 9), admissions=3, conditions=3)

    by_referral = events.case_listed({}, referral, "croydon-b").payload
    by_row = events.case_listed({}, row, "croydon-a").payload

    [request] = [e["resource"] for e in referral.payload["entry"] if e["resource"]["resourceType"] == "ServiceRequest"]
    named = {"url": REFERRAL_EXTENSION, "valueReference": {"reference": f"ServiceRequest/{request['id']}"}}
    assert named in by_referral["extension"]
    assert policy.origins_of(by_referral) == [("ServiceRequest", request["id"])]
    assert policy.origins_of(by_row) == []


def test_the_consent_reading_is_importable_from_the_policy_as_before() -> None:
    for name in ("ConsentRule", "consent_rule", "consent_problems", "ODS_SYSTEM", "NATIONAL_OPT_OUT"):
        assert getattr(policy, name) is getattr(consents, name)
    assert set(policy.CATEGORY_OF_TYPE.values()) == consents.CATEGORIES == {c.value for c in Category}
