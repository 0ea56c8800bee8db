"""Data the coordination engine derives from a referral (a Task focused on it, an episode opened from
it, a flag naming that episode) reveals the referral, so it is shared no further than the referral
(hub.core.policy decide's `origins`, origins_of), in reads and in time travel alike; the
coordination service's own work stays its own, and the referrer's to see."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hub.core import policy, timetravel
from hub.core.ledger import Disclosure, Entry, resource_ref
from hub.core.policy import Asker, decide
from hub.core.ports import Json
from hub.core.timetravel import reconsider
from tests.builders import an_agreement

COUNCIL, PIC, GP, VCSE = "E10000023", "Y0PIC", "Y00001", "VCS001"
NOW = datetime(2026, 12, 8, 10, 0, tzinfo=UTC)
EVERYTHING = ("demographics", "referrals", "tasks", "care-plans", "provenance", "consents")
AGREEMENTS = [
    an_agreement(PIC, COUNCIL, id="pic-council", categories=EVERYTHING),
    an_agreement(GP, PIC, COUNCIL, id="gp-pic-council", categories=EVERYTHING),
    an_agreement(VCSE, PIC, id="vcse-pic", categories=EVERYTHING),
]


def referral(id: str, source: str) -> Json:
    return {
        "resourceType": "ServiceRequest",
        "id": id,
        "subject": {"reference": "Patient/p1"},
        "meta": {"source": f"urn:ods:{source}", "versionId": "1"},
    }


def task(focus: str) -> Json:
    return {
        "resourceType": "Task",
        "id": f"task-{focus}",
        "for": {"reference": "Patient/p1"},
        "focus": {"reference": f"ServiceRequest/{focus}"},
        "meta": {"source": f"urn:ods:{PIC}", "versionId": "1"},
    }


def episode(referral_id: str) -> Json:
    return {
        "resourceType": "EpisodeOfCare",
        "id": f"ep-{referral_id}",
        "patient": {"reference": "Patient/p1"},
        "referralRequest": [{"reference": f"ServiceRequest/{referral_id}"}],
        "meta": {"source": f"urn:ods:{PIC}", "versionId": "1"},
    }


def long_stay(episode_id: str) -> Json:
    ext = {"url": "https://carehub.invalid/x/episode", "valueReference": {"reference": f"EpisodeOfCare/{episode_id}"}}
    return {
        "resourceType": "Flag",
        "id": "flag-1",
        "subject": {"reference": "Patient/p1"},
        "extension": [ext],
        "meta": {"source": f"urn:ods:{PIC}", "versionId": "1"},
    }


def outcome(org: str, resource: Json, origins: list[Json]) -> str:
    return decide(Asker(org, "coordinator", NOW), resource, AGREEMENTS, [], origins=origins).outcome


def test_a_task_on_a_vcse_referral_is_withheld_from_a_council_no_agreement_shares_the_referral_with() -> None:
    decision = decide(Asker(COUNCIL, "coordinator", NOW), task("r1"), AGREEMENTS, [], origins=[referral("r1", VCSE)])

    assert decision.outcome == "deny"
    assert "reveals a referrals record that is not shared with E10000023" in decision.reasons[0]


def test_the_coordination_services_own_work_stays_its_own_and_the_referrers_to_see() -> None:
    origins = [referral("r1", VCSE)]

    assert outcome(PIC, task("r1"), origins) == "permit"
    assert outcome(VCSE, task("r1"), origins) == "permit"


def test_a_task_on_a_referral_the_council_may_see_is_shared_with_it_as_before() -> None:
    assert outcome(COUNCIL, task("r2"), [referral("r2", GP)]) == "permit"


def test_what_a_derived_resource_reveals_is_found_wherever_it_names_it() -> None:
    assert policy.origins_of(task("r1")) == [("ServiceRequest", "r1")]
    assert policy.origins_of(episode("r1")) == [("ServiceRequest", "r1")]
    assert policy.origins_of(long_stay("ep-r1")) == [("EpisodeOfCare", "ep-r1")]
    assert policy.origins_of(referral("r1", GP)) == []


def test_an_episode_and_its_long_stay_flag_are_bounded_by_the_referral_it_was_opened_from() -> None:
    origins = [episode("r1"), referral("r1", VCSE)]

    assert outcome(COUNCIL, episode("r1"), [referral("r1", VCSE)]) == "deny"
    assert outcome(COUNCIL, long_stay("ep-r1"), origins) == "deny"


def test_time_travel_bounds_a_derived_resource_by_its_referral_as_reads_do() -> None:
    held = task("r1")
    body = Disclosure(
        at=NOW - timedelta(days=1),
        recipient_org=COUNCIL,
        recipient_user="asc-lead",
        channel="read",
        person_key="p1",
        resources=(resource_ref(held),),
        decision="permit",
        reasons=("shared under pic-council@1",),
        basis={"role": "coordinator", "agreements": ["pic-council@1"], "consents": []},
    ).body()
    record = {"Task/task-r1": held, "ServiceRequest/r1": referral("r1", VCSE)}
    resources = timetravel.with_origins({"Task/task-r1": held}, record.get)

    [row] = reconsider([Entry(1, body, "0" * 64, "0" * 64)], resources, AGREEMENTS, [], NOW, history=[])

    assert (row.then, row.now, row.changed) == ("permit", "deny", True)
