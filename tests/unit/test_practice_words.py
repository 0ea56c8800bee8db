"""When each word on the registered practice was said (hub.core.record_practice), whatever order the log
holds the words in: a hospital message leaving PD1 out that changes something else keeps when the
practice was said; a deletion of the practice is a word with a date; a register row for someone merged
away is the survivor's in either order of row and merge; two registers extracted the same day are
ordered by the practice's code. Events from the real adapters into the in-memory record."""

from __future__ import annotations

import itertools

import pytest

from adapters.hl7v2.to_fhir import map_message
from hub.core.delivery import versions_written
from hub.core.huddle import practice_codes
from hub.core.ports import RecordEvent
from hub.core.tasks import Engine
from hub.store.memory import MemoryRecordStore
from tests.builders import an_adt
from tests.unit.test_practice_moves import (
    ADMITTED,
    MOVED,
    NEW,
    OLD,
    SECRET,
    THIRD,
    engine,
    hospital,
    letter_to,
    practice_of,
    record,
    register_row,
    the_patient,
)

__all__ = ["engine"]  # (test_practice_moves' fixture, used here)
RENAMED = hospital("A08", "W1", "202611160900", family="JONES", practice=None)  # 16 Nov: news, PD1 left out
DELETED = hospital("A08", "W2", "202611201000", practice=None, extra_segments=('PD1|||""',))  # 20 Nov


def in_every_order(*said: list[RecordEvent]) -> list[MemoryRecordStore]:
    return [record(*order) for order in itertools.permutations(said)]


def test_news_of_the_person_without_pd1_is_no_word_on_the_practice_in_any_order() -> None:
    """(review F1: the row was judged stale against the hospital's version of 16 Nov, when the hospital
    last named the practice on 1 Nov)"""
    for store in in_every_order(ADMITTED, RENAMED, MOVED):
        assert practice_of(store) == {NEW}
        assert the_patient(store)["name"][0]["family"] == "JONES"


def test_a_row_older_than_the_news_but_newer_than_the_word_moves_them() -> None:
    store = record(ADMITTED, RENAMED, MOVED)

    assert practice_of(store) == {NEW}
    assert the_patient(store)["meta"]["source"] == "urn:ods:RXX"


def test_the_hospital_naming_the_practice_again_with_nothing_new_writes_no_version() -> None:
    again = hospital("A08", "W3", "202611170900", family="JONES")  # as RENAMED left it, PD1 said again

    store = record(ADMITTED, RENAMED, again)

    assert the_patient(store)["meta"]["versionId"] == "2"
    assert practice_of(record(MOVED, store=store)) == {NEW}  # the practice still said on 1 Nov


def test_another_hospitals_patient_still_takes_the_first_ones_practice_with_it() -> None:
    other = hospital("A08", "W4", "202611180900", sender="RYY", mrn="RYY9", practice=None)

    patient = the_patient(record(ADMITTED, RENAMED, other))

    assert "generalPractitioner" not in patient
    assert "extension" not in patient


def test_a_deletion_of_the_practice_is_the_newest_word_in_any_order() -> None:
    """(review F3: a row older than the deletion, read after it, registered the person again)"""
    for store in in_every_order(ADMITTED, MOVED, DELETED):
        assert practice_of(store) == set()
    newer = register_row(THIRD, "2026-11-25")
    assert practice_of(record(ADMITTED, DELETED, newer)) == {THIRD}


def test_a_deletion_is_remembered_through_the_senders_later_news() -> None:
    later = hospital("A08", "W5", "202611210900", family="JONES", practice=None)

    assert practice_of(record(ADMITTED, DELETED, later, MOVED)) == set()


def test_two_registers_extracted_the_same_day_end_the_same_in_any_order() -> None:
    """(review F7: the one read last won) The greater ODS code stands."""
    for store in in_every_order(ADMITTED, register_row(OLD, "2026-11-15"), register_row(NEW, "2026-11-15")):
        assert practice_of(store) == {NEW}


RETIRED = "9990000042"


def merged_into_nhs() -> list[RecordEvent]:
    raw = an_adt(trigger="A40", control_id="M9", event_time="202611020900", nhs_number="9434765919")
    raw = raw.replace(b"MRG|OLD1^^^RXX^MR", f"MRG|{RETIRED}^^^NHS^NH".encode())
    return [
        RecordEvent(m.event_id, m.event_type, m.source, m.event_time, m.person_key, m.payload)
        for m in map_message(raw, key_secret=SECRET)
    ]


@pytest.mark.parametrize("late", [False, True], ids=["row-newest", "merge-newest"])
def test_a_row_for_someone_merged_away_is_the_survivors_in_either_order_of_row_and_merge(late: bool) -> None:
    """(review F2: the row reached the survivor only when the merge was read first)"""
    retired_admit = hospital("A01", "R9", "202611010900", nhs_number=RETIRED, visit="V9")
    row = register_row(NEW, "2026-11-15" if not late else "2026-11-01", nhs_number=RETIRED)
    expected = {NEW} if not late else {OLD}  # (a row older than the survivor's own word is not theirs)
    for order in itertools.permutations([retired_admit, ADMITTED, merged_into_nhs(), row]):
        store = record(*order)
        survivor = store.reader().read("Patient", ADMITTED[0].subject) or {}
        organizations = {f"Organization/{o['id']}": o for o in store.reader().search("Organization", None)}
        assert practice_codes(survivor, organizations) == expected, [e[0].id for e in order]


def test_a_register_rows_provenance_names_no_version_of_the_hospitals_patient() -> None:
    """(review F6: the ledger named the version the row laid its practice on, the hospital's
    demographics, as what the row disclosed; the row's own Patient is what went out)"""
    store = record(ADMITTED, MOVED)

    [provenance] = [p for p in store.reader().search("Provenance", None) if p["id"] == MOVED[0].id]
    assert f"Patient/{ADMITTED[0].subject}" in [t["reference"] for t in provenance["target"]]
    assert not [k for k in versions_written(provenance) if k.startswith("Patient/")]


def test_a_register_row_for_someone_new_still_names_the_version_it_wrote() -> None:
    store = record(MOVED)

    [provenance] = [p for p in store.reader().search("Provenance", None) if p["id"] == MOVED[0].id]
    assert versions_written(provenance)[f"Patient/{MOVED[0].subject}"] == "1"


@pytest.mark.parametrize(
    "events",
    [
        pytest.param([*ADMITTED, *RENAMED, *MOVED], id="news-then-row"),
        pytest.param([*ADMITTED, *MOVED, *RENAMED], id="row-then-news"),
        pytest.param([*ADMITTED, *register_row(NEW, "2026-11-15"), *register_row(OLD, "2026-11-15")], id="same-day"),
        pytest.param([*ADMITTED, *register_row(OLD, "2026-11-15"), *register_row(NEW, "2026-11-15")], id="same-day-2"),
    ],
)
def test_the_record_and_the_letter_name_the_same_practice(engine: Engine, events: list[RecordEvent]) -> None:
    assert practice_of(record(events)) == {letter_to(engine, events)} == {NEW}
