"""The rules engine's practice (where the PIC summary goes, hub.core.practices) and the record's
(hub.core.record, "practice") agree where the engine used to date a hospital's word by the message
rather than by the record's version: a Patient with part of PID (which the record overlays, writing
no version), a deletion of the practice, another sender's Patient, a state saved before the engine
dated the practice, a late Patient under a number merged away, a merge, and the coordinator's word.
The record is the oracle, on events from the real adapters."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson
import pytest

from hub.core.coordination import Positioned, process
from hub.core.huddle import practice_codes
from hub.core.pic_summary import practice_output
from hub.core.ports import RecordEvent
from hub.core.tasks import Engine, new_state
from hub.store.memory import MemoryCoordinationStore, MemoryRecordStore
from schemas.events import coordination as co
from tests.unit.test_engine_practice_time import closed_episode, gp_of, handle, legacy
from tests.unit.test_practice_moves import (
    ADMITTED,
    NEW,
    OLD,
    THIRD,
    engine,
    hospital,
    letter_to,
    practice_of,
    record,
    register_row,
)

__all__ = ["engine"]  # (the fixture, used here)
Json = dict[str, Any]
LATE_ROW = register_row(NEW, "2026-11-10")  # extracted before the hospital's second message, sent after it


@pytest.mark.parametrize(
    "second",
    [
        pytest.param(hospital("A03", "P1", "202611121000", practice=None, mrn=None), id="a03-without-mrn"),
        pytest.param(hospital("A03", "P2", "202611121000", practice=None, reliability=""), id="a03-pid32-empty"),
        pytest.param(hospital("A08", "P3", "202611121000", mrn=None), id="a08-without-mrn-pd1-held"),
    ],
)
def test_part_of_pid_said_again_writes_no_version_so_a_late_row_still_moves_the_person(
    engine: Engine, second: list[RecordEvent]
) -> None:
    events = [*ADMITTED, *second, *LATE_ROW]

    assert practice_of(record(events)) == {NEW} == {letter_to(engine, events)}


def test_news_of_the_person_with_pd1_held_dates_the_practice_by_its_version(engine: Engine) -> None:
    events = [*ADMITTED, *hospital("A08", "P4", "202611121000", family="JONES", mrn=None), *LATE_ROW]

    assert practice_of(record(events)) == {OLD} == {letter_to(engine, events)}


def test_a_state_saved_before_the_practice_was_dated_keeps_a_hospitals_word_said_again_undated(
    engine: Engine,
) -> None:
    restated, row = hospital("A08", "R1", "202611160900"), register_row(NEW, "2026-11-15")
    state = legacy(OLD)

    handle(engine, state, restated, row)

    assert practice_of(record(ADMITTED, restated, row)) == {NEW} == {state["practice"]}


@pytest.mark.parametrize(("extracted", "expected"), [("2026-11-12", None), ("2026-11-14", NEW)])
def test_a_deleted_practice_is_none_and_only_a_newer_row_names_one(
    engine: Engine, extracted: str, expected: str | None
) -> None:
    deleted = hospital("A08", "D1", "202611130900", practice=None, extra_segments=('PD1|||""',))
    events = [*ADMITTED, *deleted, *register_row(NEW, extracted)]

    state = handle(engine, new_state(), events)

    assert practice_of(record(events)) == ({expected} if expected else set())
    assert state["practice"] == expected


def test_another_senders_patient_without_pd1_leaves_the_practice_undated_so_a_row_takes_it(
    engine: Engine,
) -> None:
    other = hospital("A01", "O1", "202611120900", sender="RYY", practice=None, mrn="Q77")
    events = [*ADMITTED, *other, *LATE_ROW]

    assert practice_of(record(events)) == {NEW} == {letter_to(engine, events)}


def test_a_late_patient_under_a_retired_number_does_not_stop_the_survivors_newer_news(engine: Engine) -> None:
    events = [
        *hospital("A01", "M0", "202611010930"),
        *hospital("A01", "M1", "202611150900", nhs_number=None, mrn="OLD1", practice=None),
        *hospital("A40", "M2", "202611200900", merged_mrn="OLD1", practice=None),
        *hospital("A08", "M3", "202612050900", nhs_number=None, mrn="OLD1", practice=None, family="JONES"),
        *hospital("A08", "M4", "202612030900", practice=THIRD),  # the survivor's own, sent after
    ]

    assert survivor_practice(record(events), events[0].subject) == {THIRD} == {letter_to(engine, events)}


def test_a_merge_keeps_the_survivors_practice_over_a_hospitals_newer_word_under_the_retired_number(
    engine: Engine,
) -> None:
    events = [
        *hospital("A01", "N0", "202611010930"),  # OLD
        *hospital("A01", "N1", "202611150900", nhs_number=None, mrn="OLD1", practice=NEW),
        *hospital("A40", "N2", "202611200900", merged_mrn="OLD1", practice=None),
    ]

    assert survivor_practice(record(events), events[0].subject) == {OLD} == {letter_to(engine, events)}


def survivor_practice(store: MemoryRecordStore, survivor: str) -> set[str]:
    reader = store.reader()
    organizations = {f"Organization/{o['id']}": o for o in reader.search("Organization", None)}
    return practice_codes(reader.read("Patient", survivor), organizations)


def test_the_coordinators_word_stands_over_a_row_extracted_before_it(engine: Engine) -> None:
    silent = hospital("A08", "W1", "202611200900", practice=None)  # the hospital knows no practice
    person = silent[0].subject
    store, derived = MemoryCoordinationStore(), []

    def run(*events: RecordEvent) -> Json:
        for event in events:
            with store.unit_of_work() as uow:
                derived.extend(process(engine, uow, [Positioned(event, 0)]))
                uow.commit()
        with store.unit_of_work() as uow:
            return uow.state(person)

    run(*silent, *closed_episode(person))
    [task] = [
        t
        for e in derived
        if e.type == co.TASK_CREATED.type
        for t in tasks_of(e)
        if "Composition/" in str(t.get("focus"))
    ]
    found = task | {"status": "completed", "output": [practice_output(NEW)]}
    at = datetime(2026, 11, 26, 9, tzinfo=UTC)
    run(RecordEvent("coordinator-found", co.TASK_UPDATED.type, "urn:ods:Y0PIC", at, person, found))

    state = run(*register_row(OLD, "2026-11-10"))  # the old practice's register, read before the coordinator's word

    assert [gp_of(e) for e in derived if e.type == co.PIC_SUMMARY_SENT.type] == [NEW]
    assert (state["practice"], state["practice_from"]) == (NEW, "coordinator")
    state = run(*register_row(OLD, "2026-11-27"))  # one extracted after it has the last word
    assert (state["practice"], state["practice_from"]) == (OLD, "register")


def tasks_of(event: RecordEvent) -> list[Json]:
    payload = event.payload
    if payload.get("resourceType") == "Task":
        return [payload]
    return [e["resource"] for e in payload.get("entry", []) if e["resource"]["resourceType"] == "Task"]


def test_the_engine_keeps_the_patient_held_without_its_practice_or_meta(engine: Engine) -> None:
    state = handle(engine, new_state(), ADMITTED)

    held = state["patient_held"]
    assert "generalPractitioner" not in held
    assert held["meta"] == {"source": ADMITTED[0].source}
    assert len(orjson.dumps(state)) < 4096
