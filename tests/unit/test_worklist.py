"""hub.core.worklist: which referrals wait for the service, which tasks are open and whose, when due,
whether overdue, and in what order (the API over a real record: tests/integration/test_coordination_worklist.py)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from hub.core.worklist import by_due, is_open, oldest_first, overdue, owned_by, tasks_of, waiting
from schemas.events import coordination as co

SERVICE = "Y0PIC"
ODS = "https://fhir.nhs.uk/Id/ods-organization-code"
NOW = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)


def a_referral(id: str = "r1", **changes: Any) -> dict[str, Any]:
    return {
        "resourceType": "ServiceRequest",
        "id": id,
        "status": "active",
        "authoredOn": "2026-12-01T09:00:00+00:00",
        "performer": [{"identifier": {"system": ODS, "value": SERVICE}}],
    } | changes


def a_task(id: str = "t1", **changes: Any) -> dict[str, Any]:
    return {
        "resourceType": "Task",
        "id": id,
        "status": "requested",
        "owner": {"identifier": {"system": ODS, "value": SERVICE}},
        "focus": {"reference": "ServiceRequest/r1"},
        "restriction": {"period": {"start": "2026-12-01T09:00:00+00:00", "end": "2026-12-04T09:00:00+00:00"}},
    } | changes


def outcome(code: str) -> list[dict[str, Any]]:
    return [{"url": co.OUTCOME_EXTENSION, "valueCode": code}]


def test_a_referral_waits_until_the_service_decides_or_its_referrer_withdraws_it() -> None:
    assert waiting(a_referral(), SERVICE)
    assert waiting(a_referral(performer=[]), SERVICE)  # (addressed to no one in particular)
    assert waiting(a_referral(extension=outcome("contacted")), SERVICE)  # (a partner's word is no decision)
    for decided in ("accepted", "declined", "withdrawn"):
        assert not waiting(a_referral(extension=outcome(decided)), SERVICE), decided
    for ended in ("revoked", "completed", "entered-in-error"):
        assert not waiting(a_referral(status=ended), SERVICE), ended
    to_social_care = [{"identifier": {"system": ODS, "value": "E10000023"}}]
    assert not waiting(a_referral(performer=to_social_care), SERVICE)
    assert not waiting(a_task(), SERVICE)


def test_referrals_are_worked_oldest_first_a_day_alone_at_its_uk_midnight_and_undated_last() -> None:
    found = [
        a_referral("late", authoredOn="2026-12-02T00:30:00+00:00"),
        a_referral("undated", authoredOn=None),
        a_referral("day", authoredOn="2026-12-02"),  # (00:00 UK time: GMT in December)
        a_referral("early", authoredOn="2026-11-30T23:00:00-01:00"),
        a_referral("unreadable", authoredOn="2026-12"),
    ]

    assert [r["id"] for r in oldest_first(found)] == ["early", "day", "late", "undated", "unreadable"]


def test_a_task_is_open_until_its_status_is_final() -> None:
    for status in ("draft", "requested", "accepted", "in-progress", "on-hold"):
        assert is_open(a_task(status=status)), status
    for status in ("completed", "cancelled", "failed", "rejected", "entered-in-error"):
        assert not is_open(a_task(status=status)), status
    assert not is_open(a_referral())


def test_a_task_is_owned_by_a_coordinator_the_team_lead_or_the_team_in_any_case() -> None:
    coordinator = a_task(owner={"identifier": {"system": co.COORDINATOR_SYSTEM, "value": "c-amara"}})
    lead = a_task(owner={"identifier": {"system": co.COORDINATOR_SYSTEM, "value": "team-lead"}})

    assert owned_by(coordinator, "c-amara") and owned_by(coordinator, "C-Amara ")
    assert not owned_by(coordinator, "c-amar") and not owned_by(coordinator, "team-lead")
    assert owned_by(lead, "team-lead") and not owned_by(lead, SERVICE)
    assert owned_by(a_task(), "y0pic") and not owned_by(a_task(), "c-amara")
    assert not owned_by(a_task(owner=None), "c-amara")


def test_a_task_is_overdue_once_escalated_or_past_due_and_never_once_finished() -> None:
    escalated = a_task(
        restriction={"period": {"end": "2026-12-30T09:00:00+00:00"}},
        businessStatus={"coding": [{"system": co.BUSINESS_STATUS_SYSTEM, "code": "overdue"}]},
    )

    assert overdue(a_task(), NOW)  # (due on the 4th: the engine's clock has not ticked onto it yet)
    assert overdue(escalated, NOW)
    assert not overdue(a_task(restriction={"period": {"end": "2026-12-30T09:00:00+00:00"}}), NOW)
    assert overdue(a_task(restriction={"period": {"end": NOW.isoformat()}}), NOW)  # (due now: out of time)
    assert not overdue(a_task(status="completed"), NOW)
    assert not overdue(a_task(restriction=None), NOW)


def test_tasks_are_worked_soonest_due_first_and_a_referrals_are_its_open_ones() -> None:
    tasks = [
        a_task("visit", restriction={"period": {"end": "2026-12-29T09:00:00+00:00"}}),
        a_task("none", restriction={}),
        a_task("triage"),
        a_task("done", status="completed"),
        a_task("other", focus={"reference": "ServiceRequest/r2"}),
        a_task("review", focus={"reference": "EpisodeOfCare/e1"}),
    ]

    assert [t["id"] for t in by_due(tasks)] == ["done", "other", "review", "triage", "visit", "none"]
    assert [t["id"] for t in tasks_of("r1", tasks)] == ["triage", "visit", "none"]
    assert tasks_of("r3", tasks) == []
