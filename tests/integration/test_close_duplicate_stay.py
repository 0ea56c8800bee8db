"""`$close-duplicate`: the stay an A40 merge left open, closed without a discharge, through the API
(a real worker over a socket, as tests/integration/test_accept_race.py serves it) and the record and
coordination consumers applying the log.

Two people are referred and accepted, one onto c-ann's caseload and one onto c-bob's; a merge retires
c-ann's person into c-bob's. The survivor's stay stands, and c-ann gets a close-duplicate-stay task
for the other. `$close-duplicate` of the survivor's own stay is refused 409; of the duplicate it is
answered with the EpisodeOfCare entered-in-error (the same again, with it), and its event carries no
PIC summary. Once applied:
the record holds it entered-in-error, the rules engine sent no PIC summary and opened no task (the
practice is known: a discharge's letter would have gone), its close-duplicate-stay task is done, the
caseloads and the KPIs count c-bob's one stay and no discharge. A `$close` of it after is refused 409,
saying it was no discharge.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import httpx
import pytest

from hub.bootstrap import Services
from hub.core.coordination import Positioned, process
from hub.core.kpis import KpiFold
from hub.core.ports import RecordEvent
from hub.core.record import apply_events
from schemas.events import coordination as co
from tests.integration.test_accept_race import AT, MONTH, Kafka, Worker, ods, referred, serving
from tests.unit.test_engine_merges import merge_of

pytestmark = pytest.mark.timeout(120)
OURS, THEIRS = "9434765919", "9434765870"  # the survivor's NHS number (the merge's), the retired identity's


@pytest.fixture
def kafka() -> Kafka:
    return Kafka()


@pytest.fixture
def worker(sqlite_url: str, tmp_path: Path, kafka: Kafka) -> Iterator[Worker]:
    with serving(sqlite_url, tmp_path, kafka, 1) as [one]:
        yield one


def consume(services: Services, events: list[RecordEvent]) -> list[RecordEvent]:
    """Apply events as the record and coordination consumers do; the rules engine's derived events."""
    with services.uow_factory() as uow:
        apply_events(uow, events)
        uow.commit()
    with services.coordination.unit_of_work() as uow:
        derived = process(services.rules, uow, [Positioned(e, 0) for e in events])
        uow.commit()
    return derived


def command(worker: Worker, path: str, **given: str) -> httpx.Response:
    params = [
        {"name": name, "valueDateTime" if name == "at" else "valueString": value} for name, value in given.items()
    ]
    return worker.post(path, {"resourceType": "Parameters", "parameter": params}, ods(worker.services), "coordinator")


def accepted(worker: Worker, kafka: Kafka, nhs: str, coordinator: str) -> tuple[str, str]:
    referral, person = referred(worker, kafka, nhs)
    answer = worker.accept(referral, coordinator)
    assert answer.status_code == 201, answer.text
    consume(worker.services, kafka.events())
    return str(answer.json()["id"]), person


def test_a_duplicate_stay_a_merge_left_open_closes_entered_in_error_without_a_discharge(
    worker: Worker, kafka: Kafka
) -> None:
    duplicate, retired = accepted(worker, kafka, THEIRS, "c-ann")
    ours, survivor = accepted(worker, kafka, OURS, "c-bob")
    merge = merge_of(retired, survivor, "M-dup", AT + timedelta(hours=1))
    consume(worker.services, [merge])
    state = worker.services.coordination.person_state(survivor) or {}
    [task] = [t for t in state["tasks"].values() if t["rule"] == "close-duplicate-stay"]
    assert (task["focus"], task["owner"], task["status"]) == (f"EpisodeOfCare/{duplicate}", "c-ann", "requested")
    assert state["practice"]  # (a discharge's PIC summary would go to it)
    at = (AT + timedelta(hours=2)).isoformat()

    own = command(worker, f"/fhir/EpisodeOfCare/{ours}/$close-duplicate", at=at)
    closed = command(worker, f"/fhir/EpisodeOfCare/{duplicate}/$close-duplicate", at=at)
    again = command(worker, f"/fhir/EpisodeOfCare/{duplicate}/$close-duplicate", at=at)  # a double click

    assert own.status_code == 409, own.text
    assert "not a duplicate stay a merge left open" in own.json()["issue"][0]["diagnostics"]
    assert closed.status_code == 200, closed.text
    assert (closed.json()["status"], closed.json()["period"]["end"]) == ("entered-in-error", at)
    assert (again.status_code, again.json()) == (200, closed.json())
    [event] = list({e.id: e for e in kafka.events() if e.type == co.EPISODE_CLOSED.type}.values())  # (one close)
    assert [e["resource"]["resourceType"] for e in event.payload["entry"]] == ["EpisodeOfCare"]

    derived = consume(worker.services, [event])

    reader = worker.services.reader
    assert (reader.read("EpisodeOfCare", duplicate) or {}).get("status") == "entered-in-error"
    assert (reader.read("EpisodeOfCare", ours) or {}).get("status") == "active"
    assert [e for e in derived if e.type in (co.PIC_SUMMARY_SENT.type, co.TASK_CREATED.type)] == []
    state = worker.services.coordination.person_state(survivor) or {}
    assert {t["rule"]: t["status"] for t in state["tasks"].values()}["close-duplicate-stay"] == "completed"
    assert not any(t["rule"] in ("pic-summary", "find-gp-practice") for t in state["tasks"].values())
    assert state["episode"]["id"] == ours
    assert worker.services.coordination.caseloads() == {"c-bob": 1}
    fold = KpiFold(service=ods(worker.services))
    for e in [*kafka.events(), merge]:
        fold.add(e)
    rows = {(r.kpi, r.breakdown): r.value for r in fold.report(MONTH)}
    assert rows[("discharges", "")] == 0
    assert {b: v for (k, b), v in rows.items() if k == "caseload at month end" and v} == {"c-bob": 1}

    after = command(worker, f"/fhir/EpisodeOfCare/{duplicate}/$close", at=at, goals="Home")

    assert after.status_code == 409, after.text
    assert "as a duplicate stay a merge left open" in after.json()["issue"][0]["diagnostics"]
    assert {e.id for e in kafka.events() if e.type == co.EPISODE_CLOSED.type} == {event.id}
