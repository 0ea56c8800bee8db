"""Registered deliveries (hub.core.delivery) date a person's practice as the record does
(hub.core.record, "practice"): a hospital naming the practice held again is dated by the Patient
version it wrote, none when it said the person again as held; a register row for someone merged away
is about their survivor; of two rows of one event time the greater ODS code stands. The record is
the oracle, on events from the real adapters."""

from __future__ import annotations

from collections.abc import Mapping

import pytest

from adapters.hl7v2.to_fhir import map_message
from hub.core.delivery import Registration, in_scope, merges_in, note_registrations, registered_as, registrations_in
from hub.core.ports import RecordEvent
from hub.core.record import resources_of
from tests.builders import an_adt
from tests.unit.test_engine_practice_record import survivor_practice
from tests.unit.test_practice_moves import (
    ADMITTED,
    NEW,
    NHS,
    OLD,
    SECRET,
    THIRD,
    hospital,
    practice_of,
    record,
    register_row,
)

DISCHARGED = hospital("A03", "D9", "202611201105", discharge="202611201100", practice=None)


def held_after(
    events: list[RecordEvent], versions: Mapping[str, Mapping[str, str]] | None = None
) -> dict[str, Registration]:
    held: dict[str, Registration] = {}
    for e in events:
        found = resources_of(e)
        news, merged = registrations_in(e.type, e.time, e.id, found), merges_in(e.type, found)
        if versions is None:  # (not known: as the delivery consumer calls it today)
            note_registrations(held, news, merged, (e.time, e.id))
        else:
            note_registrations(held, news, merged, (e.time, e.id), versions=versions.get(e.id, {}))
    return held


def reached(held: dict[str, Registration], person: str) -> set[str]:
    """Which practices' `registered` subscriptions the discharge without PD1 reaches."""
    found = registered_as(held, person)
    registered = found.practices if found else frozenset()
    return {org for org in (OLD, NEW, THIRD) if in_scope("registered", org, resources_of(DISCHARGED[0]), registered)}


def test_pd1_said_again_with_the_person_as_held_leaves_the_date_so_a_late_row_moves_them() -> None:
    events = [*ADMITTED, *hospital("A08", "R1", "202611160900"), *register_row(NEW, "2026-11-15")]

    assert practice_of(record(events)) == {NEW} == reached(held_after(events), ADMITTED[0].subject)


def test_pd1_said_again_in_a_version_the_record_wrote_is_dated_by_it() -> None:
    news = hospital("A08", "R2", "202611160900", family="JONES")  # PD1 as held, a new surname
    events = [*ADMITTED, *news, *register_row(NEW, "2026-11-15")]
    versions = {
        ADMITTED[0].id: {f"Patient/{ADMITTED[0].subject}": "1"},
        news[0].id: {f"Patient/{news[0].subject}": "2"},
    }

    assert practice_of(record(events)) == {OLD} == reached(held_after(events, versions), ADMITTED[0].subject)


def test_a_register_row_for_someone_merged_away_is_their_survivors() -> None:
    retired = "9990000018"
    raw = an_adt(trigger="A40", control_id="M1", event_time="202611020900", nhs_number=NHS)
    raw = raw.replace(b"MRG|OLD1^^^RXX^MR", f"MRG|{retired}^^^NHS^NH".encode())
    merge = [
        RecordEvent(m.event_id, m.event_type, m.source, m.event_time, m.person_key, m.payload)
        for m in map_message(raw, key_secret=SECRET)
    ]
    events = [
        *ADMITTED,
        *hospital("A01", "R1", "202611010900", nhs_number=retired, visit="V2"),
        *merge,
        *register_row(NEW, "2026-11-15", nhs_number=retired),
    ]
    survivor = ADMITTED[0].subject

    assert survivor_practice(record(events), survivor) == {NEW} == reached(held_after(events), survivor)


@pytest.mark.parametrize("order", ["lesser-first", "greater-first"])
def test_of_two_rows_of_one_day_the_greater_code_stands_whichever_came_first(order: str) -> None:
    rows = [register_row(OLD, "2026-11-15"), register_row(NEW, "2026-11-15")]
    first, second = rows if order == "lesser-first" else rows[::-1]
    events = [*ADMITTED, *first, *second]

    assert practice_of(record(events)) == {max(OLD, NEW)} == reached(held_after(events), ADMITTED[0].subject)
