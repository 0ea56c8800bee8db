"""The shipped coordination rule versions (hub/rules/*.yaml) and what the schema holds a rule set to:
version 4 is the default, versions 1 to 3 are as they were (a change of meaning is a new version), and
a `duplicate-stay` rule is the merge's, one a rule set."""

from __future__ import annotations

from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from hub.rules import DEFAULT, load_rules
from schemas.coordination_rules import CoordinationRules


def shipped(version: int) -> dict[str, Any]:
    loaded = yaml.safe_load(DEFAULT.with_name(f"croydon-pic.v{version}.yaml").read_text())
    assert isinstance(loaded, dict)
    return loaded


def test_the_default_rules_are_version_4_with_the_duplicate_stay_task() -> None:
    rules = load_rules()
    assert rules.version == 4
    assert [(r.id, r.trigger) for r in rules.tasks if r.when == "duplicate-stay"] == [
        ("close-duplicate-stay", "patient.merged")
    ]


@pytest.mark.parametrize("version", [1, 2])
def test_versions_1_and_2_have_no_duplicate_stay_task(version: int) -> None:
    rules = load_rules(DEFAULT.with_name(f"croydon-pic.v{version}.yaml"))
    assert rules.version == version
    assert [r.id for r in rules.tasks if r.when == "duplicate-stay" or r.trigger == "patient.merged"] == []


@pytest.mark.parametrize("version", [1, 2, 3, 4])
def test_every_version_cancels_a_referrals_tasks_when_it_is_withdrawn(version: int) -> None:
    rules = load_rules(DEFAULT.with_name(f"croydon-pic.v{version}.yaml"))
    for rule in (r for r in rules.tasks if r.id in ("referral-triage", "first-visit")):
        assert any("withdrawn" in f.outcome for f in rule.cancelled_by), rule.id


def test_version_3_is_version_2_with_the_duplicate_stay_task() -> None:
    v2, v3 = shipped(2), shipped(3)
    added = [t for t in v3["tasks"] if t["id"] == "close-duplicate-stay"]
    assert len(added) == 1
    assert {**v3, "version": 2, "tasks": [t for t in v3["tasks"] if t not in added]} == v2


def test_version_4_is_version_3_in_its_rules_the_engine_reading_its_number() -> None:
    """Version 4's changes (the discharge follow-up from the discharge itself, no one who died
    case-listed) are the engine's, by version number (tests/unit/test_discharge_follow_up_clock.py)."""
    assert {**shipped(4), "version": 3} == shipped(3)


def test_a_duplicate_stay_rule_must_be_triggered_by_a_merge() -> None:
    rules = shipped(3)
    for task in rules["tasks"]:
        if task["id"] == "close-duplicate-stay":
            task["trigger"] = "episode.closed"
    with pytest.raises(ValidationError, match=r"duplicate-stay.*patient\.merged"):
        CoordinationRules.model_validate(rules)


def test_a_rule_set_has_at_most_one_duplicate_stay_rule() -> None:
    rules = shipped(3)
    [task] = [t for t in rules["tasks"] if t["id"] == "close-duplicate-stay"]
    rules["tasks"].append({**task, "id": "close-duplicate-stay-again"})
    with pytest.raises(ValidationError, match="at most one"):
        CoordinationRules.model_validate(rules)
