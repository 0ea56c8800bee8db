"""The record's rules (hub.core.record) over the in-memory store, with events mapped from real ADT."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from adapters.hl7v2.to_fhir import map_message
from hub.core.errors import InvalidMessageError
from hub.core.ports import RecordEvent, StoredResource
from hub.core.record import ApplyResult, apply_events, reconcile_reference_data
from hub.store.memory import MemoryRecordStore
from tests.builders import an_adt

SECRET = b"test-secret"


def events_of(raw: bytes) -> list[RecordEvent]:
    return [
        RecordEvent(
            id=m.event_id,
            type=m.event_type,
            source=m.source,
            time=m.event_time,
            subject=m.person_key,
            payload=m.payload,
        )
        for m in map_message(raw, key_secret=SECRET)
    ]


def apply(store: MemoryRecordStore, *raws: bytes) -> ApplyResult:
    events = [e for raw in raws for e in events_of(raw)]
    with store.unit_of_work() as uow:
        result = apply_events(uow, events)
        uow.commit()
    return result


def encounters(store: MemoryRecordStore) -> list[dict]:
    return store.reader().search("Encounter", None)


ADMIT = an_adt(trigger="A01", control_id="C1", visit="V9", event_time="202611010930")
DISCHARGE = an_adt(trigger="A03", control_id="C2", visit="V9", event_time="202611031105")


def test_admission_then_discharge_leaves_one_finished_encounter_at_version_2() -> None:
    store = MemoryRecordStore()
    assert apply(store, ADMIT, DISCHARGE) == ApplyResult(applied=2, duplicates=0, stale=0)
    [encounter] = encounters(store)
    assert encounter["status"] == "finished"
    assert encounter["meta"]["versionId"] == "2"
    assert encounter["period"]["end"].startswith("2026-11-03T11:00")
    assert encounter["hospitalization"]["dischargeDisposition"]["coding"][0]["code"] == "19"


def test_the_same_event_twice_in_a_batch_or_across_batches_is_applied_once() -> None:
    store = MemoryRecordStore()
    assert apply(store, ADMIT, ADMIT) == ApplyResult(applied=1, duplicates=1, stale=0)
    assert apply(store, ADMIT) == ApplyResult(applied=0, duplicates=1, stale=0)
    assert encounters(store)[0]["meta"]["versionId"] == "1"


def test_another_message_under_a_reused_control_id_is_applied_not_taken_for_a_resend() -> None:
    store = MemoryRecordStore()
    other = an_adt(trigger="A01", control_id="C1", visit="V10", nhs_number="9990000018", event_time="202611020800")
    assert apply(store, ADMIT, other, ADMIT) == ApplyResult(applied=2, duplicates=1, stale=0)
    assert sorted(e["identifier"][0]["value"] for e in encounters(store)) == ["V10", "V9"]
    assert len(store.reader().search("Patient", None)) == 2


def test_an_older_event_arriving_late_never_overwrites_a_newer_one() -> None:
    store = MemoryRecordStore()
    result = apply(store, DISCHARGE, ADMIT)
    assert result.applied == 2 and result.stale >= 1
    [encounter] = encounters(store)
    assert encounter["status"] == "finished"
    assert encounter["meta"]["versionId"] == "1"


def test_cancelled_discharge_reopens_the_stay_without_end_or_disposition() -> None:
    store = MemoryRecordStore()
    cancel = an_adt(trigger="A13", control_id="C3", visit="V9", event_time="202611031200")
    apply(store, ADMIT, DISCHARGE, cancel)
    [encounter] = encounters(store)
    assert encounter["status"] == "in-progress"
    assert "end" not in encounter.get("period", {})
    assert "dischargeDisposition" not in encounter.get("hospitalization", {})
    assert encounter["period"]["start"].startswith("2026-11-01")


def test_cancelled_admission_marks_the_encounter_cancelled() -> None:
    store = MemoryRecordStore()
    cancel = an_adt(trigger="A11", control_id="C3", visit="V9", event_time="202611011000")
    apply(store, ADMIT, cancel)
    assert encounters(store)[0]["status"] == "cancelled"


def test_a_demographic_update_does_not_wipe_the_encounter_status() -> None:
    store = MemoryRecordStore()
    update = an_adt(trigger="A08", control_id="C3", visit="V9", event_time="202611011000", family="JONES")
    apply(store, ADMIT, update)
    assert encounters(store)[0]["status"] == "in-progress"
    [patient] = store.reader().search("Patient", None)
    assert patient["name"][0]["family"] == "JONES"


def test_every_write_leaves_a_provenance_naming_the_sender_and_the_versions_written() -> None:
    store = MemoryRecordStore()
    apply(store, ADMIT, DISCHARGE)
    provenances = store.reader().search("Provenance", None)
    assert len(provenances) == 2
    last = provenances[-1]
    assert last["agent"][0]["who"]["identifier"]["value"] == "RXX"
    targets = {t["reference"].rsplit("/_history/", 1)[0] for t in last["target"]}
    assert any(t.startswith("Encounter/") for t in targets)
    assert any(t.endswith("/_history/2") for t in (x["reference"] for x in last["target"]))


def test_merge_moves_the_retired_persons_records_to_the_survivor_and_redirects_late_events() -> None:
    store = MemoryRecordStore()
    old = an_adt(
        trigger="A01",
        nhs_number=None,
        mrn="OLD1",
        control_id="O1",
        visit="V1",
        event_time="202611010900",
    )
    survivor = an_adt(trigger="A01", mrn="NEW1", control_id="N1", visit="V2", event_time="202611011000")
    merge = an_adt(trigger="A40", mrn="NEW1", merged_mrn="OLD1", control_id="M1", event_time="202611021000")
    late = an_adt(
        trigger="A03",
        nhs_number=None,
        mrn="OLD1",
        control_id="O2",
        visit="V1",
        event_time="202611030900",
    )
    apply(store, old, survivor, merge, late)
    reader = store.reader()
    [new_id] = {e.subject for e in events_of(survivor)}
    [old_id] = {e.subject for e in events_of(old)}
    retired = reader.read("Patient", old_id)
    assert retired is not None and retired["active"] is False
    assert retired["link"][0] == {
        "other": {"reference": f"Patient/{new_id}"},
        "type": "replaced-by",
    }
    theirs = reader.search("Encounter", new_id)
    assert {e["subject"]["reference"] for e in theirs} == {f"Patient/{new_id}"}
    assert len(theirs) == 2
    assert reader.search("Encounter", old_id) == []
    late_stay = next(e for e in theirs if e["status"] == "finished")
    assert late_stay["identifier"][0]["value"] == "V1"
    kinds = [r["resourceType"] for r in reader.everything(new_id)]
    assert kinds[0] == "Patient" and kinds.count("Encounter") == 2


def test_meta_is_taken_from_the_event_not_the_wall_clock() -> None:
    store = MemoryRecordStore()
    apply(store, ADMIT)
    [encounter] = encounters(store)
    assert datetime.fromisoformat(encounter["meta"]["lastUpdated"]) == datetime(2026, 11, 1, 9, 30, tzinfo=UTC)


def test_an_entry_without_id_is_refused_and_nothing_of_the_batch_is_kept() -> None:
    store = MemoryRecordStore()
    good = events_of(ADMIT)[0]
    bad = RecordEvent(
        id="bad",
        type=good.type,
        source=good.source,
        time=good.time + timedelta(seconds=1),
        subject=good.subject,
        payload={
            "resourceType": "Bundle",
            "type": "collection",
            "entry": [{"resource": {"resourceType": "Patient"}}],
        },
    )
    with pytest.raises(InvalidMessageError), store.unit_of_work() as uow:
        apply_events(uow, [good, bad])
        uow.commit()
    assert store.resources == {} and store.processed == set()


def test_shared_practice_data_ends_the_same_whichever_person_is_read_first() -> None:
    one = an_adt(trigger="A01", control_id="P1", visit="VA", event_time="202611010900")
    other = an_adt(
        trigger="A01", nhs_number="9990000018", mrn="M2", control_id="P2", visit="VB", event_time="202611011000"
    )
    forward, backward = MemoryRecordStore(), MemoryRecordStore()
    apply(forward, one, other)
    apply(backward, other, one)
    assert forward.reader().search("Organization", None) == backward.reader().search("Organization", None)
    [practice] = forward.reader().search("Organization", None)
    assert practice["meta"]["versionId"] == "1"
    assert practice["meta"]["lastUpdated"].startswith("2026-11-01T09:00")
    assert forward.reader().search("Provenance", None) == backward.reader().search("Provenance", None)


def a_task_event(event_id: str, status: str, at: datetime) -> RecordEvent:
    task = {
        "resourceType": "Task",
        "id": "task-1",
        "status": status,
        "intent": "order",
        "for": {"reference": "Patient/p1"},
    }
    return RecordEvent(event_id, "uk.nhs.carehub.task.updated.v1", "urn:ods:Y12345", at, "p1", task)


@pytest.mark.parametrize(
    ("moves", "stays"),
    [
        (["requested", "completed", "in-progress"], "completed"),  # a finished task is never reopened
        (["requested", "in-progress", "requested"], "in-progress"),  # nor moved backwards
        (["requested", "on-hold", "completed"], "completed"),  # the rules may complete it from any open status
        (["requested", "in-progress", "on-hold", "in-progress"], "in-progress"),
    ],
)
def test_a_task_moves_only_as_fhir_task_statuses_allow_whatever_the_api_let_through(
    moves: list[str], stays: str
) -> None:
    store = MemoryRecordStore()
    at = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)
    with store.unit_of_work() as uow:
        apply_events(uow, [a_task_event(f"e{n}", s, at + timedelta(minutes=n)) for n, s in enumerate(moves)])
        uow.commit()
    task = store.reader().read("Task", "task-1")
    assert task is not None
    assert task["status"] == stays


def test_a_finished_task_is_not_changed_by_a_task_update_that_says_its_status_again() -> None:
    # two requests to finish one task (a coordinator naming a practice while the rules engine had
    # sent the letter): the first to finish it stands, in the record as in the rules engine
    store = MemoryRecordStore()
    at = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)
    first = a_task_event("e1", "completed", at)
    first.payload["output"] = [{"type": {"text": "GP practice"}, "valueString": "Y00001"}]
    again = a_task_event("e2", "completed", at + timedelta(minutes=1))
    again.payload["output"] = [{"type": {"text": "GP practice"}, "valueString": "Y00002"}]
    with store.unit_of_work() as uow:
        apply_events(uow, [a_task_event("e0", "requested", at - timedelta(minutes=1)), first, again])
        uow.commit()
    task = store.reader().read("Task", "task-1")
    assert task is not None
    assert (task["output"][0]["valueString"], task["meta"]["versionId"]) == ("Y00001", "2")


def test_security_labels_are_kept_and_an_update_that_omits_them_does_not_drop_them() -> None:
    psy = {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "PSY"}
    at = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)

    def encounter(event_id: str, minutes: int, status: str, labels: list[dict]) -> RecordEvent:
        content = {"resourceType": "Encounter", "id": "enc-1", "status": status, "subject": {"reference": "Patient/p1"}}
        if labels:
            content["meta"] = {"security": labels}
        return RecordEvent(
            event_id,
            "uk.nhs.carehub.encounter.updated.v1",
            "urn:ods:RXX",
            at + timedelta(minutes=minutes),
            "p1",
            content,
        )

    store = MemoryRecordStore()
    with store.unit_of_work() as uow:
        apply_events(uow, [encounter("e1", 0, "in-progress", [psy]), encounter("e2", 5, "finished", [])])
        uow.commit()
    stored = store.reader().read("Encounter", "enc-1")
    assert stored is not None
    assert (stored["status"], stored["meta"]["versionId"], stored["meta"]["security"]) == ("finished", "2", [psy])
    with store.unit_of_work() as uow:  # the same content with a label added is a new version
        provenance = store.reader().read("Provenance", "e2")
        apply_events(uow, [encounter("e3", 9, "finished", [psy, {**psy, "code": "SDV"}])])
        uow.commit()
    assert store.reader().read("Encounter", "enc-1")["meta"]["versionId"] == "3"
    assert provenance is not None
    assert provenance["extension"][0]["valueReference"] == {"reference": "Patient/p1"}  # whose Provenance it is


def test_reference_data_labelled_in_any_order_is_the_same_data_whichever_is_read_first() -> None:
    # the record keeps labels in a fixed order; a sender may list them in another
    psy = {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "PSY"}
    restricted = {"system": "http://terminology.hl7.org/CodeSystem/v3-Confidentiality", "code": "R"}

    def practice(event_id: str, hour: int, labels: list[dict]) -> RecordEvent:
        content = {
            "resourceType": "Organization",
            "id": "org-1",
            "name": "HELMSLEY SURGERY",
            "meta": {"security": labels},
        }
        return RecordEvent(event_id, "uk.nhs.carehub.encounter.admitted.v1", "urn:ods:RXX",
                           datetime(2026, 11, 2, hour, tzinfo=UTC), "p1", content)  # fmt: skip

    later, earlier = practice("e20", 20, [restricted, psy]), practice("e10", 10, [restricted, psy])
    tied = practice("e09", 10, [psy, restricted])  # the same time and sender as e10: the event id decides
    ends, stored = [], []
    for order in ([later, earlier, tied], [tied, earlier, later], [earlier, later, tied], [later, tied, earlier]):
        store = MemoryRecordStore()
        with store.unit_of_work() as uow:
            apply_events(uow, order)
            stored.append(uow.get("Organization", "org-1"))
            uow.commit()
        ends.append(store.reader().read("Organization", "org-1"))
    assert all(end == ends[0] for end in ends)
    assert all(s == stored[0] for s in stored)  # the source event and event time too, not only the content
    assert ends[0] is not None
    assert stored[0] is not None
    assert ends[0]["meta"]["versionId"] == "1"
    assert ends[0]["meta"]["lastUpdated"].startswith("2026-11-02T10:00")  # the earliest event that said it
    assert stored[0].source_event_id == "e09"  # and so does the row's source event
    assert stored[0].event_time == later.time  # while the latest time is remembered (older content stays stale)


def test_a_patient_said_again_as_stored_keeps_its_version_and_takes_the_newer_event_time() -> None:
    psy = {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "PSY"}
    sdv = {**psy, "code": "SDV"}
    at = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)

    def patient(event_id: str, minutes: int, family: str, labels: list[dict]) -> RecordEvent:
        content: dict = {"resourceType": "Patient", "id": "p1", "name": [{"family": family}]}
        if labels:
            content["meta"] = {"security": labels, "lastUpdated": "2026-01-01T00:00:00+00:00"}
        when = at + timedelta(minutes=minutes)
        return RecordEvent(event_id, "uk.nhs.carehub.patient.updated.v1", "urn:ods:RXX", when, "p1", content)

    def stored() -> tuple[str, list[dict], datetime]:
        with store.unit_of_work() as uow:
            held = uow.get("Patient", "p1")
        assert held is not None
        return held.content["meta"]["versionId"], held.content["meta"].get("security", []), held.event_time

    store = MemoryRecordStore()
    with store.unit_of_work() as uow:
        # said again with its labels in another order (and other meta): the same person, no new version
        result = apply_events(uow, [patient("e1", 0, "Smith", [psy, sdv]), patient("e2", 5, "Smith", [sdv, psy])])
        uow.commit()
    assert result == ApplyResult(applied=2, duplicates=0, stale=0)
    assert stored() == ("1", [psy, sdv], at + timedelta(minutes=5))
    with store.unit_of_work() as uow:  # older news arriving late is stale against the newer event time
        result = apply_events(uow, [patient("e0", 3, "Jones", [psy, sdv])])
        uow.commit()
    assert (result.stale, stored()[0]) == (1, "1")
    with store.unit_of_work() as uow:  # a label dropped and another added: a new version
        apply_events(uow, [patient("e3", 9, "Smith", [psy, {**psy, "code": "ETH"}])])
        uow.commit()
    assert stored()[:2] == ("2", [{**psy, "code": "ETH"}, psy])


def test_reference_data_two_workers_wrote_at_once_is_reconciled_as_one_worker_would_in_either_order() -> None:
    # what a PostgreSQL flush does when another worker committed the row since this one read it
    def said(event_id: str, hour: int, name: str = "HELMSLEY SURGERY", version: int = 1) -> StoredResource:
        when = datetime(2026, 11, 2, hour, tzinfo=UTC)
        meta = {"versionId": str(version), "lastUpdated": when.isoformat(), "source": "urn:ods:RXX"}
        content = {"resourceType": "Organization", "id": "org-1", "name": name, "meta": meta}
        return StoredResource("Organization", "org-1", None, version, when, event_id, content)

    early, late = said("e10", 10), said("e20", 20)
    for stored, ours in ((early, late), (late, early)):
        both = reconcile_reference_data(stored, ours)
        assert (both.source_event_id, both.event_time, both.content) == ("e10", late.event_time, early.content)
    renamed = said("e23", 23, "HELMSLEY MEDICAL CENTRE", version=2)  # new data: the newer event's row
    assert reconcile_reference_data(renamed, early) == renamed
    assert reconcile_reference_data(early, renamed) == renamed
    again = said("e05", 5, version=2)  # the same data at another version is not the same row: newer wins
    assert reconcile_reference_data(again, late) == late
    assert reconcile_reference_data(None, late) == late


@pytest.mark.parametrize("merge_first", [True, False])
def test_a_merge_dated_before_the_retired_persons_last_event_still_retires_them(merge_first: bool) -> None:
    # (found replaying a real pair of messages: an A03 of 2013 for the identity an A40 of 2012 merged
    # away; applied A03 first, the merge moved the stay but left the retired Patient active, unlinked)
    store = MemoryRecordStore()
    old = an_adt(trigger="A03", nhs_number=None, mrn="OLD1", control_id="O1", visit="V1", event_time="202611030900")
    merge = an_adt(trigger="A40", mrn="NEW1", merged_mrn="OLD1", control_id="M1", event_time="202611021000")
    apply(store, *((merge, old) if merge_first else (old, merge)))
    reader = store.reader()
    [new_id] = {e.subject for e in events_of(merge)}
    [old_id] = {e.subject for e in events_of(old)}
    retired = reader.read("Patient", old_id)
    assert retired is not None and retired["active"] is False
    assert retired["link"] == [{"other": {"reference": f"Patient/{new_id}"}, "type": "replaced-by"}]
    assert retired["meta"]["lastUpdated"].startswith("2026-11-03T09:00")  # the newer event's time, not back
    assert [e["subject"]["reference"] for e in reader.search("Encounter", None)] == [f"Patient/{new_id}"]
    assert reader.search("Encounter", old_id) == []


@pytest.mark.parametrize("later_first", [True, False])
def test_a_merge_reversed_by_a_newer_one_leaves_the_newer_ones_survivor_active_in_either_order(
    later_first: bool,
) -> None:
    # (review of the fix above: a late, older A40 retired the newer A40's survivor too, leaving two
    # identities each replaced by the other, nobody active, and later events sent round the cycle)
    store = MemoryRecordStore()
    first = an_adt(
        trigger="A40", nhs_number=None, mrn="NEW1", merged_mrn="OLD1", control_id="M1", event_time="202611021000"
    )
    undone = an_adt(
        trigger="A40", nhs_number=None, mrn="OLD1", merged_mrn="NEW1", control_id="M2", event_time="202611041000"
    )
    apply(store, *((undone, first) if later_first else (first, undone)))
    reader = store.reader()
    [old_id] = {e.subject for e in events_of(undone)}
    [new_id] = {e.subject for e in events_of(first)}
    survivor, retired = reader.read("Patient", old_id), reader.read("Patient", new_id)
    assert survivor is not None and retired is not None
    assert survivor.get("active", True) is not False
    assert [link["type"] for link in survivor["link"]] == ["replaces"]
    assert retired["active"] is False
    assert retired["link"] == [{"other": {"reference": f"Patient/{old_id}"}, "type": "replaced-by"}]
