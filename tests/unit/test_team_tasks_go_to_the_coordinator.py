"""The team's open tasks for a referral (triage, first visit) go to the coordinator who accepts the
person, and the record hears it as the stay opens (a task.updated), not only when the task completes or
goes overdue: a coordinator's worklist (?owner=) found their first visits still with the team."""

from __future__ import annotations

from hub.core.tasks import Engine
from hub.store.memory import MemoryCoordinationStore
from schemas.events import coordination as co
from tests import locality_month as month
from tests.unit.test_coordination_rules import engine as rules_engine
from tests.unit.test_coordination_rules import run

engine = rules_engine  # (the shipped rules' engine, a module fixture)


def owners(derived: list[object]) -> dict[str, tuple[str, str]]:
    """(owner, status) of the latest version of each task derived, by its rule's code."""
    found: dict[str, tuple[str, str]] = {}
    for event in derived:
        payload = event.payload  # type: ignore[attr-defined]
        if payload.get("resourceType") == "Task":
            found[payload["code"]["coding"][0]["code"]] = (payload["owner"]["identifier"]["value"], payload["status"])
    return found


def test_the_teams_open_tasks_go_to_the_coordinator_in_a_task_updated_as_the_stay_opens(engine: Engine) -> None:
    store = MemoryCoordinationStore()
    referred = run(engine, [month.referral("P3", month.at(4, 10), "gp")], store)
    assert owners(referred) == {"referral-triage": ("Y0PIC", "requested"), "first-visit": ("Y0PIC", "requested")}

    opened = run(engine, [month.episode("P3", month.at(6, 9), "c-ann")], store)

    updated = [e for e in opened if e.type == co.TASK_UPDATED.type]
    assert {e.time for e in updated} == {month.at(6, 9)}
    assert owners(updated) == {"referral-triage": ("c-ann", "requested"), "first-visit": ("c-ann", "requested")}
    # said once: the same opening again changes nothing
    assert [
        e for e in run(engine, [month.episode("P3", month.at(6, 9), "c-ann")], store) if e.type == co.TASK_UPDATED.type
    ] == []


def test_under_rules_version_3_the_hand_over_is_the_engines_alone_as_it_was() -> None:
    from hub.rules import DEFAULT, load_rules

    v3 = Engine(load_rules(DEFAULT.with_name("croydon-pic.v3.yaml")))
    store = MemoryCoordinationStore()
    run(v3, [month.referral("P3", month.at(4, 10), "gp")], store)
    opened = run(v3, [month.episode("P3", month.at(6, 9), "c-ann")], store)
    assert [e for e in opened if e.type == co.TASK_UPDATED.type] == []
