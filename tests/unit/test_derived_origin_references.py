"""A derived resource's reference to the referral or episode it reveals is read however FHIR lets it be
written (versioned, absolute), and one the record does not hold withholds the resource from all but
its supplier (hub.core.policy origins_of, origins_held, decide): the bound no longer fails open."""

from __future__ import annotations

import pytest

from hub.core import policy
from hub.core.policy import Asker, decide
from hub.core.ports import Json
from tests.unit.test_derived_data_sharing import AGREEMENTS, COUNCIL, GP, NOW, PIC, VCSE, episode, long_stay, referral


def task_on(reference: str) -> Json:
    return {
        "resourceType": "Task",
        "id": "t1",
        "for": {"reference": "Patient/p1"},
        "focus": {"reference": reference},
        "meta": {"source": f"urn:ods:{PIC}", "versionId": "1"},
    }


def held(*resources: Json) -> dict[tuple[str, str], Json]:
    return {(str(r["resourceType"]), str(r["id"])): r for r in resources}


def outcome(org: str, resource: Json, record: dict[tuple[str, str], Json]) -> str:
    origins = policy.origins_held(resource, lambda kind, id_: record.get((kind, id_)))
    return decide(Asker(org, "coordinator", NOW), resource, AGREEMENTS, [], origins=origins).outcome


@pytest.mark.parametrize(
    "reference",
    [
        "ServiceRequest/r1/_history/1",
        "https://hub.example/fhir/ServiceRequest/r1",
        "https://hub.example/fhir/ServiceRequest/r1/_history/2",
        " ServiceRequest/r1",
    ],
)
def test_a_versioned_or_absolute_reference_to_a_referral_is_bounded_by_it(reference: str) -> None:
    record = held(referral("r1", VCSE))

    assert policy.origins_of(task_on(reference)) == [("ServiceRequest", "r1")]
    assert outcome(COUNCIL, task_on(reference), record) == "deny"
    assert outcome(PIC, task_on(reference), record) == "permit"


def test_a_task_on_a_referral_the_record_does_not_hold_is_withheld_but_from_its_supplier() -> None:
    derived = task_on("ServiceRequest/not-yet-applied")
    decision = decide(
        Asker(COUNCIL, "coordinator", NOW),
        derived,
        AGREEMENTS,
        [],
        origins=policy.origins_held(derived, lambda kind, id_: None),
    )

    assert decision.outcome == "deny"
    assert "does not hold" in decision.reasons[0]
    assert outcome(PIC, derived, {}) == "permit"  # (the coordination service's own, its referral applied or not)
    assert outcome(COUNCIL, derived, held(referral("not-yet-applied", GP))) == "permit"  # once applied


def test_a_flag_on_an_episode_whose_referral_is_not_held_is_withheld() -> None:
    assert outcome(COUNCIL, long_stay("ep-r9"), held(episode("r9"))) == "deny"
    assert outcome(COUNCIL, long_stay("ep-r9"), held(episode("r9"), referral("r9", GP))) == "permit"
