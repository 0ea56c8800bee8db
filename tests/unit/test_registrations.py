"""Whom a person is registered with, as events say it in log order (hub.core.delivery): newer news wins,
a referral or register row only introduces a registration, a merge passes one on to a survivor with none."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hub.core.delivery import Registration, merged_into, note_registrations, registrations_in
from hub.core.ports import Json
from hub.core.record_content import MERGED, REMOVED_URL
from schemas.events.coordination import REFERRAL_RECEIVED

ODS = "https://fhir.nhs.uk/Id/ods-organization-code"
T = datetime(2026, 11, 3, 9, tzinfo=UTC)
ADT = "uk.nhs.carehub.encounter.admitted.v1"


def said(practice: str, at: datetime = T, event: str = "e", stub: bool = False) -> Registration:
    return Registration(frozenset({practice}), at, event, stub)


def test_what_an_event_says_of_registrations() -> None:
    practice = {"resourceType": "Organization", "id": "o1", "identifier": [{"system": ODS, "value": "Y1"}]}
    by_reference = {"resourceType": "Patient", "id": "a", "generalPractitioner": [{"reference": "Organization/o1"}]}
    by_code = {
        "resourceType": "Patient",
        "id": "b",
        "generalPractitioner": [{"identifier": {"system": ODS, "value": "Y2"}}],
    }
    deleted = {
        "resourceType": "Patient",
        "id": "c",
        "extension": [{"url": REMOVED_URL, "valueCode": "generalPractitioner"}],
    }
    silent = {"resourceType": "Patient", "id": "d"}
    retired = {**by_code, "id": "e", "link": [{"type": "replaced-by", "other": {"reference": "Patient/a"}}]}
    resources: list[Json] = [practice, by_reference, by_code, deleted, silent, retired]

    found = registrations_in(ADT, T, "ev", resources)

    assert found == {
        "a": Registration(frozenset({"Y1"}), T, "ev"),
        "b": Registration(frozenset({"Y2"}), T, "ev"),
        "c": Registration(frozenset(), T, "ev"),
    }
    assert registrations_in(REFERRAL_RECEIVED.type, T, "ev", [by_code])["b"].stub
    assert merged_into(MERGED, resources) == {"e": "a"} and merged_into(ADT, resources) == {}


def test_newer_news_wins_and_a_stub_only_introduces() -> None:
    held: dict[str, Registration] = {}
    assert note_registrations(held, {"p": said("Y1", stub=True)}) == {"p"}
    assert (
        note_registrations(held, {"p": said("Y9", T + timedelta(days=1), stub=True)}) == set()
    )  # a stub: held already
    assert note_registrations(held, {"p": said("Y2", T - timedelta(days=9))}) == {"p"}  # a hospital's word over a stub
    assert note_registrations(held, {"p": said("Y3", T - timedelta(days=10))}) == set()  # older news
    assert note_registrations(held, {"p": said("Y4", T - timedelta(days=9), "e2")}) == {"p"}  # as new: later in the log
    assert held["p"] == said("Y4", T - timedelta(days=9), "e2")


def test_a_merge_passes_a_registration_on_only_to_a_survivor_with_none() -> None:
    held = {"old": said("Y1"), "other-old": said("Y2"), "kept": said("Y3")}
    assert note_registrations(held, {}, {"old": "new", "other-old": "kept"}) == {"new"}
    assert held["new"] == said("Y1") and held["kept"] == said("Y3")
