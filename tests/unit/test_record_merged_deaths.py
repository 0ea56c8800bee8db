"""The record follows A40 merges for deaths and reversals (hub.core.record): a death said under a
retired identity is the survivor's, in either arrival order, by the record's rules for deaths; a
merge reversed moves the person's resources to the survivor it names."""

from __future__ import annotations

import pytest

from hub.core.deaths import death_said
from hub.store.memory import MemoryRecordStore
from tests.builders import an_adt
from tests.unit.test_record import apply, events_of

BEFORE = an_adt(trigger="A01", nhs_number=None, mrn="OLD1", control_id="O1", visit="V1", event_time="202611010900")
SURVIVOR = an_adt(trigger="A01", mrn="NEW1", control_id="N1", visit="V2", event_time="202611011000")
MERGE = an_adt(trigger="A40", mrn="NEW1", merged_mrn="OLD1", control_id="M1", event_time="202611021000")


def old_number(control_id: str, at: str, *, died: str = "", indicator: str = "", family: str = "SMITH") -> bytes:
    """An A03 from a hospital still naming the person by the retired number alone (OLD1)."""
    return an_adt(
        trigger="A03", nhs_number=None, mrn="OLD1", control_id=control_id, visit="V1", event_time=at,
        died=died, death_indicator=indicator, family=family,
    )  # fmt: skip


def keys() -> tuple[str, str]:
    [old_id] = {e.subject for e in events_of(BEFORE)}
    [new_id] = {e.subject for e in events_of(SURVIVOR)}
    return old_id, new_id


def patients(store: MemoryRecordStore) -> tuple[dict, dict]:
    old_id, new_id = keys()
    reader = store.reader()
    retired, survivor = reader.read("Patient", old_id), reader.read("Patient", new_id)
    assert retired is not None and survivor is not None
    assert retired["active"] is False  # (still retired, whatever came later under its key)
    assert retired["link"] == [{"other": {"reference": f"Patient/{new_id}"}, "type": "replaced-by"}]
    return retired, survivor


DEATH = old_number("D1", "202611031200", died="202611031130", family="JONES")


@pytest.mark.parametrize("merge_first", [True, False])
def test_a_death_said_under_a_retired_number_is_the_survivors_in_either_order(merge_first: bool) -> None:
    store = MemoryRecordStore()
    apply(store, BEFORE, SURVIVOR, *((MERGE, DEATH) if merge_first else (DEATH, MERGE)))
    _, survivor = patients(store)
    assert death_said(survivor) == "deceasedDateTime"
    assert survivor["deceasedDateTime"].startswith("2026-11-03T11:30")
    assert survivor["name"][0]["family"] == "SMITH"  # only the death: not the old identity's demographics
    assert survivor.get("active", True) is not False
    assert survivor["meta"]["lastUpdated"].startswith("2026-11-03T12:00")  # the newest word, by event time


def test_a_death_said_before_the_merge_is_carried_over_by_the_merge() -> None:
    # (a death dated before the A40, read before it: the merge carries what the retired identity knew)
    store = MemoryRecordStore()
    early = old_number("D0", "202611020800", died="202611020700")
    apply(store, BEFORE, SURVIVOR, early, MERGE)
    _, survivor = patients(store)
    assert survivor["deceasedDateTime"].startswith("2026-11-02T07:00")


def test_a_merge_whose_survivor_says_they_are_alive_withdraws_an_older_death_of_the_retired() -> None:
    store = MemoryRecordStore()
    early = old_number("D0", "202611020800", died="202611020700")
    alive = an_adt(
        trigger="A40", mrn="NEW1", merged_mrn="OLD1", control_id="M1", event_time="202611021000", death_indicator="N"
    )
    apply(store, BEFORE, SURVIVOR, early, alive)
    _, survivor = patients(store)
    assert death_said(survivor) is None and survivor["deceasedBoolean"] is False


def test_a_withdrawal_under_the_retired_number_withdraws_the_death_on_the_survivor_when_newest() -> None:
    store = MemoryRecordStore()
    withdrawn = old_number("W1", "202611041200", indicator="N")
    apply(store, BEFORE, SURVIVOR, MERGE, DEATH, withdrawn)
    _, survivor = patients(store)
    assert death_said(survivor) is None and survivor["deceasedBoolean"] is False


def test_a_withdrawal_older_than_the_death_on_the_survivor_is_stale_there() -> None:
    store = MemoryRecordStore()
    died = an_adt(trigger="A08", mrn="NEW1", control_id="N2", event_time="202611041200", died="202611041100")
    late = old_number("W1", "202611031200", indicator="N")
    apply(store, BEFORE, SURVIVOR, MERGE, died, late)
    _, survivor = patients(store)
    assert survivor["deceasedDateTime"].startswith("2026-11-04T11:00")


def test_a_deletion_under_the_retired_number_withdraws_the_death_on_the_survivor() -> None:
    store = MemoryRecordStore()
    deleted = old_number("W1", "202611041200", died='""')
    apply(store, BEFORE, SURVIVOR, MERGE, DEATH, deleted)
    _, survivor = patients(store)
    assert not any(k.startswith("deceased") for k in survivor)


def test_a_retired_numbers_message_that_says_nothing_of_a_death_changes_nothing_on_the_survivor() -> None:
    store = MemoryRecordStore()
    apply(store, BEFORE, SURVIVOR, MERGE)
    _, before = patients(store)
    apply(store, old_number("S1", "202611031200", family="JONES"))
    _, after = patients(store)
    assert after == before


def test_a_merge_reversed_moves_the_persons_resources_to_the_survivor_it_names() -> None:
    store = MemoryRecordStore()
    first = an_adt(
        trigger="A40", nhs_number=None, mrn="NEW1", merged_mrn="OLD1", control_id="M1", event_time="202611021000"
    )
    undone = an_adt(
        trigger="A40", nhs_number=None, mrn="OLD1", merged_mrn="NEW1", control_id="M2", event_time="202611041000"
    )
    new = an_adt(trigger="A01", nhs_number=None, mrn="NEW1", control_id="N1", visit="V2", event_time="202611011000")
    apply(store, BEFORE, new, first)
    [old_id] = {e.subject for e in events_of(BEFORE)}
    [new_id] = {e.subject for e in events_of(new)}
    reader = store.reader()
    assert {e["subject"]["reference"] for e in reader.search("Encounter", new_id)} == {f"Patient/{new_id}"}

    apply(store, undone)
    theirs = reader.search("Encounter", old_id)
    assert len(theirs) == 2
    assert {e["subject"]["reference"] for e in theirs} == {f"Patient/{old_id}"}
    assert reader.search("Encounter", new_id) == []
    kinds = [r["resourceType"] for r in reader.everything(old_id)]
    assert kinds[0] == "Patient" and kinds.count("Encounter") == 2
    late = an_adt(trigger="A03", nhs_number=None, mrn="NEW1", control_id="N3", visit="V2", event_time="202611051000")
    apply(store, late)  # (sent later under the number the reversal retired: lands on its survivor)
    assert {e["status"] for e in reader.search("Encounter", old_id)} == {"in-progress", "finished"}
