"""A referral's outcome before the referral, a correction dated earlier and a corrected NHS number, on
the embedded broker with the real consumers and a SQLite record: the engine's task.updated for the
first person goes through the log to their partition, where their worker and the record apply it."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from adapters.referrals.rows import Format, Row
from adapters.referrals.to_fhir import map_row
from hub.bootstrap import Services, build, running
from hub.core.identity import person_key
from hub.core.ports import Json, RecordEvent
from hub.settings import CoordinationSettings, HttpSettings, KafkaSettings, MllpSettings, Settings
from hub.store.tables import coordination_clock
from tests.kafka_log import produce

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(180)]
NHS, OTHER_NHS = "9434765919", "9990000018"
NOW = datetime(2026, 11, 25, tzinfo=UTC)
REFERRAL = {
    "referral_id": "VCS-1",
    "nhs_number": NHS,
    "gp_practice_ods": "Y90001",
    "referred_on": "2026-11-06",
    "referrer": "VCS001",
    "addressed_to": "Y0PIC",
    "needs": ["social-isolation"],
}


async def until(check: Callable[[], bool], within: float, what: str) -> None:
    deadline = time.perf_counter() + within
    while time.perf_counter() < deadline:
        if check():
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"{what}: not true within {within}s")


def hub_settings(tmp_path: Path) -> Settings:
    """The hub on its embedded broker, its own consumer groups, no listeners, the clock ticking only when told."""
    return Settings(
        data_dir=tmp_path,
        kafka=KafkaSettings(group_id=f"t{uuid.uuid4().hex[:8]}-record"),
        mllp=MllpSettings(port=0),
        http=HttpSettings(port=0),
        coordination=CoordinationSettings(tick_s=0),
    )


def row(secret: bytes, fmt: Format, values: dict[str, Any]) -> tuple[RecordEvent, None]:
    m = map_row(fmt, Row(2, values, b""), key_secret=secret, now=NOW)
    return RecordEvent(m.event_id, m.event_type, m.source, m.event_time, m.person_key, m.payload), None


def tasks(services: Services, person: str) -> dict[tuple[str, str], str]:
    """(rule, referral id) -> status of the person's tasks in the record."""
    found = services.reader.search("Task", person)
    return {(t["code"]["coding"][0]["code"], t["focus"]["reference"].split("/")[1]): t["status"] for t in found}


def referral(services: Services, rid: str) -> Json:
    return services.reader.read("ServiceRequest", rid) or {}


def request_id(event: tuple[RecordEvent, None]) -> str:
    return str(
        next(
            e["resource"]["id"] for e in event[0].payload["entry"] if e["resource"]["resourceType"] == "ServiceRequest"
        )
    )


async def test_outcome_first_an_earlier_correction_and_a_new_nhs_number_end_as_in_order(tmp_path: Path) -> None:
    settings = hub_settings(tmp_path)
    services = build(settings)
    secret = services.secrets.key
    a, b = person_key(secret, NHS, None), person_key(secret, OTHER_NHS, None)
    declined = {
        "referral_id": "VCS-1",
        "referrer": "VCS001",
        "nhs_number": NHS,
        "outcome": "declined",
        "on": "2026-11-12",
    }
    second = REFERRAL | {"referral_id": "VCS-2", "needs": ["carer-support"]}
    first_sent, second_sent = row(secret, Format.VCSE_JSON, REFERRAL), row(secret, Format.VCSE_JSON, second)
    one, two = request_id(first_sent), request_id(second_sent)
    both = {"referral-triage", "first-visit"}
    async with running(settings, services=services, mllp=False, http=False) as run:
        await produce(run.bootstrap, [row(secret, Format.VCSE_OUTCOME, declined)])  # before its referral
        await produce(run.bootstrap, [first_sent, second_sent])
        in_order = {(r, one): "cancelled" for r in both} | {(r, two): "requested" for r in both}
        await until(lambda: tasks(services, a) == in_order, 60, "the first referral's tasks closed as its outcome says")

        corrected = REFERRAL | {"referred_on": "2026-11-04", "needs": ["emotional-needs"]}  # dated earlier
        moved = second | {"nhs_number": OTHER_NHS}
        await produce(run.bootstrap, [row(secret, Format.VCSE_JSON, d) for d in (corrected, moved)])
        await until(lambda: tasks(services, b) == {(r, two): "requested" for r in both}, 60, "the new person's tasks")
        gone = {(r, n): "cancelled" for r in both for n in (one, two)}
        await until(lambda: tasks(services, a) == gone, 30, "the first person's tasks for the moved referral closed")
        await asyncio.sleep(1.5)  # nothing more arrives

    assert tasks(services, b) == {(r, two): "requested" for r in both}
    reasons = {
        t["focus"]["reference"]: t["statusReason"]["coding"][0]["code"]
        for t in services.reader.search("Task", a)
        if "statusReason" in t
    }
    assert reasons == {f"ServiceRequest/{two}": "referral-moved"}
    first = referral(services, one)
    assert (first["status"], first["authoredOn"][:10], first["reasonCode"]) == (
        "revoked",
        "2026-11-04",
        [{"text": "Emotional needs"}],
    )
    assert referral(services, two)["subject"]["reference"] == f"Patient/{b}"


async def test_a_corrected_referral_date_moves_its_open_tasks_deadlines_on_the_record_and_the_clocks(
    tmp_path: Path,
) -> None:
    settings = hub_settings(tmp_path)
    services = build(settings)
    secret = services.secrets.key
    a = person_key(secret, NHS, None)
    sent = row(secret, Format.VCSE_JSON, REFERRAL)
    focus = f"ServiceRequest/{request_id(sent)}"
    async with running(settings, services=services, mllp=False, http=False) as run:
        await produce(run.bootstrap, [sent])
        await until(lambda: len(dues(services, a)) == 2, 60, "the referral's two tasks on the record")
        assert dues(services, a) == {"referral-triage": "2026-11-09", "first-visit": "2026-12-04"}

        await produce(run.bootstrap, [row(secret, Format.VCSE_JSON, REFERRAL | {"referred_on": "2026-11-02"})])
        moved = {"referral-triage": "2026-11-05", "first-visit": "2026-11-30"}
        await until(lambda: dues(services, a) == moved, 60, "the tasks' deadlines moved to the corrected date")
        await asyncio.sleep(1.5)  # nothing more arrives

    assert dues(services, a) == moved
    assert {t["focus"]["reference"] for t in services.reader.search("Task", a)} == {focus}  # no second task
    with services.coordination.engine.connect() as conn:
        clocks = conn.execute(sa.select(coordination_clock.c.due).where(coordination_clock.c.person_key == a))
        assert sorted(str(due)[:10] for (due,) in clocks) == sorted(moved.values())


def dues(services: Services, person: str) -> dict[str, str]:
    """rule -> the day each of the person's tasks in the record is due."""
    found = services.reader.search("Task", person)
    return {t["code"]["coding"][0]["code"]: t["restriction"]["period"]["end"][:10] for t in found}
