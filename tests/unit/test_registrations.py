"""Whom a person is registered with, as events say it in log order (hub.core.delivery): newer news
wins, a referral registers no one (a register row does), a person merged away is their survivor's."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hub.core.delivery import Registration, merges_in, note_registrations, registered_as, registrations_in
from hub.core.ports import Json
from hub.core.record_content import MERGED, REMOVED_URL
from schemas.events.coordination import REFERRAL_RECEIVED, REGISTER_ROW

ODS = "https://fhir.nhs.uk/Id/ods-organization-code"
T = datetime(2026, 11, 3, 9, tzinfo=UTC)
ADT = "uk.nhs.carehub.encounter.admitted.v1"


def said(practice: str, at: datetime = T, event: str = "e") -> Registration:
    return Registration(frozenset({practice}), at, event)


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

    assert registrations_in(ADT, T, "ev", resources) == {
        "a": Registration(frozenset({"Y1"}), T, "ev"),
        "b": Registration(frozenset({"Y2"}), T, "ev"),
        "c": Registration(frozenset(), T, "ev"),
    }
    # a practice a referrer typed registers no one; a practice's register row is its word that they are registered
    assert registrations_in(REFERRAL_RECEIVED.type, T, "ev", [by_code]) == {}
    assert registrations_in(REGISTER_ROW.type, T, "ev", [by_code]) == {"b": Registration(frozenset({"Y2"}), T, "ev")}
    assert merges_in(MERGED, resources) == {"e": "a"} and merges_in(ADT, resources) == {}


def test_newer_news_wins() -> None:
    held: dict[str, Registration] = {}
    assert note_registrations(held, {"p": said("Y1")}) == {"p"}
    assert note_registrations(held, {"p": said("Y3", T - timedelta(days=1))}) == set()  # older news
    assert note_registrations(held, {"p": said("Y4", T, "e2")}) == {"p"}  # as new: later in the log
    assert held["p"] == said("Y4", T, "e2")


def test_a_person_merged_away_is_their_survivors_whatever_is_said_of_them_later() -> None:
    held = {"old": said("Y1"), "new": said("Y2")}
    merge = (T + timedelta(hours=1), "merge")
    assert note_registrations(held, {}, {"old": "new"}, merge) == {"old"}
    assert registered_as(held, "old") == said("Y2")
    note_registrations(held, {"old": said("Y9", T + timedelta(hours=2), "late")})  # late news, old identity
    assert registered_as(held, "old") == said("Y2") and held["old"].merged_into == "new"
    del held["new"]
    assert registered_as(held, "old") is None  # a survivor with none: no one, never the old practice


def test_a_merge_reversed_makes_its_survivor_active_again_and_loops_reach_no_one() -> None:
    held = {"a": said("Y1"), "b": said("Y2")}
    note_registrations(held, {}, {"a": "b"}, (T, "m1"))
    note_registrations(held, {}, {"b": "a"}, (T, "m2"))  # reversed
    assert held["a"].merged_into is None and registered_as(held, "b") == Registration(frozenset({"Y1"}), T, "m2")
    looped = {"a": Registration(frozenset(), T, "x", "b"), "b": Registration(frozenset(), T, "y", "a")}
    assert registered_as(looped, "a") is None


def test_odd_shapes_say_nothing_rather_than_fail() -> None:
    # (review: a link that was a string, or an `other` that was, failed every Patient of the event)
    for link in (
        "Patient/x",
        {"type": "replaced-by", "other": "Patient/x"},
        {"type": "replaced-by", "other": {"reference": 7}},
    ):
        odd: Json = {
            "resourceType": "Patient",
            "id": "p",
            "link": [link],
            "generalPractitioner": [{"identifier": {"system": ODS, "value": "Y1"}}],
        }
        assert registrations_in(ADT, T, "ev", [odd]) == {"p": Registration(frozenset({"Y1"}), T, "ev")}
