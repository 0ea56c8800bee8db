"""A date alone is the start of that day in the UK, throughout the hub: a referral file's date, the
API's, the KPIs'. So an outcome dated by day alone, on the day a referral was made at 15:00, answers
it: in the record (the ServiceRequest ends as the outcome says, not skipped as older than the
referral), in the rules engine (its tasks complete, none goes overdue to the team lead) and in the
KPIs (a first visit), all alike. One dated the day before answers nothing anywhere. And an outcome
sent again with its NHS number corrected is news, not a duplicate of the wrong one.

The rows go through the real referral adapter; the record is the real SQLite store."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from adapters.referrals.rows import Format, Row
from adapters.referrals.to_fhir import map_row
from hub.core.kpis import KpiFold
from hub.core.ports import RecordEvent
from hub.core.record import apply_events
from hub.core.tasks import Engine
from hub.rules import load_rules
from hub.store.coordination import SqlCoordinationStore
from hub.store.database import open_engine
from hub.store.sql import SqlRecordReader, SqlRecordUnitOfWork
from tests import locality_month as month
from tests.unit.test_coordination_rules import RULES, run
from tests.unit.test_referral_adapters import outcome, vcse_referral

SECRET = b"same-day-secret"
NOW = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)
NHS, OTHER = "9434765919", "9990500002"


def event_of(fmt: Format, values: dict[str, Any]) -> RecordEvent:
    m = map_row(fmt, Row(2, values, b""), key_secret=SECRET, now=NOW)
    return RecordEvent(m.event_id, m.event_type, m.source, m.event_time, m.person_key, m.payload)


def lived(events: list[RecordEvent], tmp_path: Path) -> tuple[dict[str, Any], dict[str, str], KpiFold]:
    """The referral as the record holds it, each task's status by rule, and the KPIs, after `events`."""
    engine = open_engine(f"sqlite:///{tmp_path / 'hub.db'}")
    for event in events:  # one at a time, as batches would
        with SqlRecordUnitOfWork(engine) as uow:
            apply_events(uow, [event])
            uow.commit()
    [referral] = SqlRecordReader(engine).search("ServiceRequest", None)
    derived = run(Engine(load_rules(RULES)), events, SqlCoordinationStore(engine))
    tasks: dict[str, str] = {}
    for e in derived:
        if e.payload.get("resourceType") == "Task":
            tasks[e.payload["code"]["coding"][0]["code"]] = e.payload["status"]
    kpis = KpiFold(service=month.SERVICE)
    for event in [*events, *derived]:
        kpis.add(event)
    engine.dispose()
    return referral, tasks, kpis


def visits(kpis: KpiFold) -> float | None:
    return next(r.value for r in kpis.report("2026-11") if r.kpi == "first visits" and not r.breakdown)


def test_an_outcome_dated_the_referrals_day_answers_a_referral_made_that_afternoon(tmp_path: Path) -> None:
    referred = event_of(Format.VCSE_JSON, vcse_referral(referral_id="VCS-10", referred_on="2026-11-20T15:00"))
    attended = event_of(Format.VCSE_OUTCOME, outcome(referral_id="VCS-10", outcome="attended", on="2026-11-20"))
    assert attended.time < referred.time  # the start of the UK day, before 15:00

    referral, tasks, kpis = lived([referred, attended], tmp_path)

    assert referral["status"] == "completed"
    assert tasks and set(tasks.values()) == {"completed"}, tasks
    assert visits(kpis) == 1


def test_an_outcome_dated_the_day_before_the_referral_answers_nothing_anywhere(tmp_path: Path) -> None:
    referred = event_of(Format.VCSE_JSON, vcse_referral(referral_id="VCS-11", referred_on="2026-11-20T15:00"))
    early = event_of(Format.VCSE_OUTCOME, outcome(referral_id="VCS-11", outcome="attended", on="2026-11-19"))

    referral, tasks, _ = lived([referred, early], tmp_path)

    assert referral["status"] == "active"
    assert "completed" not in tasks.values(), tasks


def test_a_date_in_a_file_is_the_start_of_that_day_in_the_uk() -> None:
    summer = event_of(Format.VCSE_OUTCOME, outcome(on="2026-10-14"))
    winter = event_of(Format.VCSE_OUTCOME, outcome(on="2026-11-14"))

    assert summer.time == datetime(2026, 10, 13, 23, 0, tzinfo=UTC)  # BST
    assert winter.time == datetime(2026, 11, 14, 0, 0, tzinfo=UTC)  # GMT


def test_an_outcome_sent_again_with_its_nhs_number_corrected_is_a_new_event() -> None:
    wrong = event_of(Format.VCSE_OUTCOME, outcome(nhs_number=OTHER, outcome="declined", on="2026-11-16"))
    right = event_of(Format.VCSE_OUTCOME, outcome(nhs_number=NHS, outcome="declined", on="2026-11-16"))
    again = event_of(Format.VCSE_OUTCOME, outcome(nhs_number=NHS, outcome="declined", on="2026-11-16"))

    assert wrong.id != right.id
    assert right.id == again.id  # the same row twice is still applied once
    assert wrong.subject != right.subject


def test_an_answer_with_a_time_of_day_before_the_referral_answers_nothing_anywhere(tmp_path: Path) -> None:
    # (review: the leeway is for a date alone, which cannot say which came first; 09:00 says it did)
    referred = event_of(Format.VCSE_JSON, vcse_referral(referral_id="VCS-12", referred_on="2026-11-20T15:00"))
    morning = event_of(Format.VCSE_OUTCOME, outcome(referral_id="VCS-12", outcome="attended", on="2026-11-20T09:00"))

    referral, tasks, kpis = lived([referred, morning], tmp_path)

    assert referral["status"] == "active"
    assert "completed" not in tasks.values(), tasks
    assert visits(kpis) == 0


def test_a_later_outcome_that_day_stands_over_one_dated_by_day_alone_sent_after_it(tmp_path: Path) -> None:
    referred = event_of(Format.VCSE_JSON, vcse_referral(referral_id="VCS-13", referred_on="2026-11-20T08:00"))
    declined = event_of(Format.VCSE_OUTCOME, outcome(referral_id="VCS-13", outcome="declined", on="2026-11-20T17:00"))
    contacted = event_of(Format.VCSE_OUTCOME, outcome(referral_id="VCS-13", outcome="contacted", on="2026-11-20"))

    referral, _, kpis = lived([referred, declined, contacted], tmp_path)

    assert referral["status"] == "revoked"
    waits = [r.value for r in kpis.report("2026-11") if r.kpi.startswith("days from referral")]
    assert all(w is None or w >= 0 for w in waits), waits


def test_a_file_time_in_the_hour_the_clocks_go_forward_over_is_refused_naming_the_field() -> None:
    import pytest

    from hub.core.errors import InvalidMessageError

    with pytest.raises(InvalidMessageError) as refused:
        event_of(Format.VCSE_OUTCOME, outcome(on="2026-03-29T01:30"))

    assert "field on" in refused.value.diagnostics and "clocks go forward" in refused.value.diagnostics


def test_an_outcome_dated_before_the_one_a_referral_has_changes_nothing_in_the_kpis_either(tmp_path: Path) -> None:
    # (review: the record and the engine kept the 17:00 decline, the KPIs counted the later-sent visit)
    referred = event_of(Format.VCSE_JSON, vcse_referral(referral_id="VCS-14", referred_on="2026-11-20T08:00"))
    declined = event_of(Format.VCSE_OUTCOME, outcome(referral_id="VCS-14", outcome="declined", on="2026-11-20T17:00"))
    attended = event_of(Format.VCSE_OUTCOME, outcome(referral_id="VCS-14", outcome="attended", on="2026-11-20"))

    referral, tasks, kpis = lived([referred, declined, attended], tmp_path)

    assert referral["status"] == "revoked"
    assert "completed" not in tasks.values(), tasks
    assert visits(kpis) == 0
