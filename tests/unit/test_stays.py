"""The 'one stay' rule (hub.core.stays) that the record, the rules engine and the KPIs each ask."""

from __future__ import annotations

import pytest

from hub.core.stays import Held, is_open, opens_another_stay

NEW = "episode-new"
FOR_IT = frozenset({"ServiceRequest/r1"})


def test_a_person_with_no_other_episode_opens_a_stay() -> None:
    assert not opens_another_stay(NEW, FOR_IT, [])


def test_another_episode_open_makes_a_second_stay_whatever_it_was_opened_for() -> None:
    assert opens_another_stay(NEW, FOR_IT, [("episode-1", True, ["ServiceRequest/r9"])])
    assert opens_another_stay(NEW, frozenset(), [("episode-1", True, ())])


def test_another_episode_closed_but_opened_for_one_of_its_referrals_makes_a_second_stay() -> None:
    held: list[Held] = [("episode-1", False, ["ServiceRequest/r0", "ServiceRequest/r1"])]
    assert opens_another_stay(NEW, FOR_IT | {"ServiceRequest/r2"}, held)


def test_another_episode_closed_and_opened_for_other_referrals_leaves_the_new_one_a_stay() -> None:
    assert not opens_another_stay(NEW, FOR_IT, [("episode-1", False, ["ServiceRequest/r9"])])
    assert not opens_another_stay(NEW, frozenset(), [("episode-1", False, ())])


@pytest.mark.parametrize("open_", [True, False])
def test_the_same_episode_again_is_no_other_stay(open_: bool) -> None:
    assert not opens_another_stay(NEW, FOR_IT, [(NEW, open_, FOR_IT)])


def test_an_episode_named_in_parts_is_taken_as_one() -> None:
    # (as the engine and the KPIs pass it: open or not, and apart, the first stay each referral opened)
    held: list[Held] = [
        (NEW, True, ()),
        (NEW, False, ["ServiceRequest/r1"]),
        ("episode-1", False, ["ServiceRequest/r9"]),
    ]
    assert not opens_another_stay(NEW, FOR_IT, held)
    assert opens_another_stay(NEW, FOR_IT, [*held, ("episode-1", False, ["ServiceRequest/r1"])])


@pytest.mark.parametrize(
    ("status", "open_"),
    [
        ("active", True),
        ("planned", True),
        ("waitlist", True),
        ("onhold", True),
        (None, True),
        ("finished", False),
        ("cancelled", False),
        ("entered-in-error", False),
    ],
)
def test_an_episode_is_open_unless_finished_cancelled_or_entered_in_error(status: str | None, open_: bool) -> None:
    assert is_open(status) is open_
