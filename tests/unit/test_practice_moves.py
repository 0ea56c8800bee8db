"""A person who moves practice: the GP practice on the record (Patient.generalPractitioner) is the
newest word on it by event time, a practice's own register row or a hospital's Patient naming one
(hub.core.record, "practice"), so the huddle, which reads it, groups the person where the PIC summary
goes. A register row changes nothing else the hospital said. Events from the real adapters (HL7 v2
ADT, the at-risk register CSV row) into the in-memory record."""

from __future__ import annotations

import itertools
from datetime import UTC, date, datetime
from typing import Any

import pytest
import yaml

from adapters.hl7v2.to_fhir import map_message
from adapters.referrals.rows import Format, Row
from adapters.referrals.to_fhir import map_row
from hub.core.coordination import Positioned, process
from hub.core.huddle import agenda, practice_codes
from hub.core.ports import RecordEvent
from hub.core.record import apply_events
from hub.core.tasks import Engine
from hub.rules import DEFAULT
from hub.store.memory import MemoryCoordinationStore, MemoryRecordStore
from hub.web.views import gather
from schemas.coordination_rules import CoordinationRules
from schemas.events import coordination as co
from tests.builders import an_adt

Json = dict[str, Any]
SECRET = b"practice-moves-secret"
NHS = "9434765919"
OLD, NEW, THIRD = "Y00001", "Y00002", "Y00003"
NOW = datetime(2026, 12, 1, tzinfo=UTC)  # when the register files are read


def hospital(trigger: str, control_id: str, event_time: str, nhs_number: str = NHS, **fields: Any) -> list[RecordEvent]:
    """An ADT through the HL7 adapter (PD1-3 names `practice`, Y00001 unless said; None leaves PD1 out)."""
    raw = an_adt(trigger=trigger, control_id=control_id, event_time=event_time, nhs_number=nhs_number, **fields)
    return [
        RecordEvent(m.event_id, m.event_type, m.source, m.event_time, m.person_key, m.payload)
        for m in map_message(raw, key_secret=SECRET)
    ]


def register_row(
    practice: str, extracted_on: str, birth_date: str = "1938-02-01", nhs_number: str = NHS
) -> list[RecordEvent]:
    """A practice's at-risk register row for the person, through the GP register adapter."""
    values = {
        "nhs_number": nhs_number,
        "practice_ods": practice,
        "non_elective_admissions_12m": "0",
        "long_term_conditions": "1",
        "frailty": "mild",
        "birth_date": birth_date,
        "extracted_on": extracted_on,
    }
    m = map_row(Format.REGISTER, Row(2, values, b""), key_secret=SECRET, now=NOW)
    return [RecordEvent(m.event_id, m.event_type, m.source, m.event_time, m.person_key, m.payload)]


ADMITTED = hospital("A01", "A1", "202611010930")  # PD1-3 names Y00001
MOVED = register_row(NEW, "2026-11-15")  # the new practice's register, extracted after the move


def record(*batches: list[RecordEvent], store: MemoryRecordStore | None = None) -> MemoryRecordStore:
    store = store or MemoryRecordStore()
    for batch in batches:
        with store.unit_of_work() as uow:
            apply_events(uow, batch)
            uow.commit()
    return store


def the_patient(store: MemoryRecordStore) -> Json:
    [patient] = store.reader().search("Patient", None)
    return patient


def practice_of(store: MemoryRecordStore) -> set[str]:
    """The practice codes the record's Patient names, as the huddle reads them."""
    reader = store.reader()
    organizations = {f"Organization/{o['id']}": o for o in reader.search("Organization", None)}
    return practice_codes(the_patient(store), organizations)


def test_a_newer_register_row_from_the_new_practice_moves_the_record_and_nothing_else() -> None:
    before = the_patient(record(ADMITTED))

    after = the_patient(store := record(ADMITTED, MOVED))

    assert practice_of(store) == {NEW}
    assert after["meta"]["versionId"] == "2"
    assert after["meta"]["source"] == "urn:ods:RXX"  # the demographics are still the hospital's
    unchanged = ("name", "address", "birthDate", "identifier", "gender")
    assert {k: after[k] for k in unchanged} == {k: before[k] for k in unchanged}
    [provenance] = [p for p in store.reader().search("Provenance", None) if p["id"] == MOVED[0].id]
    assert provenance["agent"][0]["who"]["identifier"]["value"] == NEW  # the practice said it


def test_the_huddle_lists_the_person_at_the_new_practice_and_no_longer_at_the_old_one() -> None:
    discharged = hospital("A03", "A2", "202611201105", discharge="202611201100", practice=None)  # PD1 left out
    store = record(ADMITTED, MOVED, discharged)
    reader = store.reader()

    new = agenda(NEW, date(2026, 11, 26), gather(reader, NEW))
    old = agenda(OLD, date(2026, 11, 26), gather(reader, OLD))

    assert [i.section for i in new.items] == ["recent-discharge"]
    assert old.items == ()
    assert [p["id"] for p in reader.registered_with(NEW)] == [ADMITTED[0].subject]
    assert reader.registered_with(OLD) == []


def test_a_row_ingested_after_hospital_messages_that_say_nothing_of_the_practice_still_moves_them() -> None:
    """A register is extracted on one day and ingested days later; meanwhile the hospital's transfers
    and discharges (PD1 left out, as many PAS send them) said nothing of the practice."""
    transferred = hospital("A02", "A6", "202611160900", practice=None)
    discharged = hospital("A03", "A7", "202611171000", discharge="202611171000", practice=None)

    store = record(ADMITTED, transferred, discharged, MOVED)

    assert practice_of(store) == {NEW}


def test_a_stale_row_from_the_old_practice_does_not_move_them_back() -> None:
    stale = register_row(OLD, "2026-11-10")  # extracted before the move, ingested after it

    store = record(ADMITTED, MOVED, stale)

    assert practice_of(store) == {NEW}
    assert the_patient(store)["meta"]["versionId"] == "2"


def test_an_older_hospital_patient_does_not_undo_a_newer_register_row_but_its_demographics_apply() -> None:
    late = hospital("A08", "A3", "202611121000", family="JONES")  # PD1-3 still Y00001, sent late
    deleted = hospital("A08", "A4", "202611130900", family="JONES", practice=None, extra_segments=('PD1|||""',))

    store = record(ADMITTED, MOVED, late)
    assert practice_of(store) == {NEW}
    assert the_patient(store)["name"][0]["family"] == "JONES"  # the hospital's news on the rest
    assert practice_of(record(deleted, store=store)) == {NEW}  # nor its deletion, older than the row


def test_a_newer_hospital_patient_naming_a_practice_is_news_too() -> None:
    updated = hospital("A08", "A5", "202611201000", practice=THIRD)

    store = record(ADMITTED, MOVED, updated)

    assert practice_of(store) == {THIRD}
    assert "extension" not in the_patient(store)["generalPractitioner"][0]  # the hospital's word, as it sent it
    assert practice_of(record(register_row(NEW, "2026-11-18"), store=store)) == {THIRD}  # older than it


def test_a_register_row_never_overwrites_the_hospitals_demographics_nor_a_death() -> None:
    died = hospital("A08", "D1", "202611011000", died="202611010945", death_indicator="Y")
    other_birth = register_row(NEW, "2026-11-15", birth_date="1950-05-05")

    patient = the_patient(record(ADMITTED, died, other_birth))

    assert patient["birthDate"] == "1940-03-12"
    assert patient["deceasedDateTime"].startswith("2026-11-01T09:45")
    assert [i["system"].rsplit("/", 1)[-1] for i in patient["identifier"]] == ["nhs-number", "RXX"]
    assert patient["generalPractitioner"][0]["identifier"]["value"] == NEW


def test_someone_new_to_the_record_keeps_the_register_rows_practice_over_an_older_hospital_patient() -> None:
    """The register row introduces them (a stub); the hospital's Patient then replaces it, dated
    before the row: its demographics are taken, its practice is not. A newer one saying nothing of the
    practice (another sender's, PD1 left out) keeps it too."""
    store = record(MOVED, ADMITTED)

    patient = the_patient(store)
    assert practice_of(store) == {NEW}
    assert (patient["meta"]["source"], patient["birthDate"]) == ("urn:ods:RXX", "1940-03-12")
    silent = hospital("A08", "B1", "202611201000", sender="RYY", mrn="RYY9", practice=None)
    assert practice_of(record(silent, store=store)) == {NEW}


def test_the_same_practice_said_again_is_the_newest_word_on_it() -> None:
    """The hospital and the register agree; a hospital Patient older than the register row but newer
    than the hospital's own naming it, sent late, does not undo the register's newer word."""
    agreed = register_row(OLD, "2026-11-15")
    late = hospital("A08", "C1", "202611100900", practice=THIRD)

    store = record(ADMITTED, agreed, late)

    assert practice_of(store) == {OLD}
    assert the_patient(store)["generalPractitioner"][0]["reference"].startswith(
        "Organization/"
    )  # as the hospital sent it


def test_a_register_row_for_someone_merged_away_moves_the_person_they_now_are() -> None:
    retired = "9990000018"  # an A40 merged this NHS number's person into the one NHS names
    merged = an_adt(trigger="A40", control_id="M1", event_time="202611020900", nhs_number=NHS)
    merged = merged.replace(b"MRG|OLD1^^^RXX^MR", f"MRG|{retired}^^^NHS^NH".encode())
    merge = [RecordEvent(m.event_id, m.event_type, m.source, m.event_time, m.person_key, m.payload)
             for m in map_message(merged, key_secret=SECRET)]  # fmt: skip
    store = record(hospital("A01", "R1", "202611010900", nhs_number=retired, visit="V2"), ADMITTED, merge)

    record(register_row(NEW, "2026-11-15", nhs_number=retired), store=store)

    survivor = store.reader().read("Patient", ADMITTED[0].subject)
    assert survivor is not None
    assert survivor["generalPractitioner"][0]["identifier"]["value"] == NEW
    assert [p["id"] for p in store.reader().registered_with(NEW)] == [ADMITTED[0].subject]


@pytest.mark.parametrize("order", list(itertools.permutations(range(4))))
def test_the_newest_word_wins_whatever_order_the_log_holds_them_in(order: tuple[int, ...]) -> None:
    said = [
        ADMITTED,  # 1 Nov: Y00001
        register_row(OLD, "2026-11-10"),  # 10 Nov: Y00001 (the old practice, before the move)
        hospital("A08", "E1", "202611121000", practice=THIRD),  # 12 Nov: Y00003
        MOVED,  # 15 Nov: Y00002, the newest
    ]

    assert practice_of(record(*(said[i] for i in order))) == {NEW}


# --- the rules engine: where the PIC summary goes ---------------------------------------------------


@pytest.fixture(scope="module")
def engine() -> Engine:
    return Engine(CoordinationRules.model_validate(yaml.safe_load(DEFAULT.read_text())))


def letter_to(engine: Engine, events: list[RecordEvent]) -> str | None:
    """Where the person's PIC summary goes after these events, an episode of care and its close."""
    person = events[0].subject
    episode: Json = {
        "resourceType": "EpisodeOfCare",
        "id": "episode-practice-moves",
        "status": "active",
        "patient": {"reference": f"Patient/{person}"},
        "careManager": {"identifier": {"system": co.COORDINATOR_SYSTEM, "value": "c-ann"}},
        "managingOrganization": {
            "identifier": {"system": "https://fhir.nhs.uk/Id/ods-organization-code", "value": "Y0PIC"}
        },
        "period": {"start": "2026-11-21T09:00:00+00:00"},
    }
    closed = episode | {"status": "finished", "period": episode["period"] | {"end": "2026-11-25T09:00:00+00:00"}}
    summary = {"resourceType": "Composition", "id": "pic-practice-moves", "status": "final", "title": "PIC summary"}

    def service(kind: str, resources: list[Json], at: str) -> RecordEvent:
        bundle = {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": r} for r in resources]}
        return RecordEvent(f"{kind}-practice-moves", kind, "urn:ods:Y0PIC", datetime.fromisoformat(at), person, bundle)

    opened = service(co.EPISODE_OPENED.type, [episode], "2026-11-21T09:00:00+00:00")
    closing = service(co.EPISODE_CLOSED.type, [closed, summary], "2026-11-25T09:00:00+00:00")
    store, derived = MemoryCoordinationStore(), []
    for event in [*events, opened, closing]:
        with store.unit_of_work() as uow:
            derived += process(engine, uow, [Positioned(event, 0)])
            uow.commit()
    [letter] = [e for e in derived if e.type == co.PIC_SUMMARY_SENT.type]
    [patient] = [r["resource"] for r in letter.payload["entry"] if r["resource"]["resourceType"] == "Patient"]
    return str((patient.get("generalPractitioner") or [{}])[0].get("identifier", {}).get("value"))


@pytest.mark.parametrize(
    "events",
    [
        pytest.param([*ADMITTED, *MOVED], id="moved"),
        pytest.param([*MOVED, *hospital("A08", "F1", "202611201000", practice=THIRD)], id="a-newer-hospital-patient"),
    ],
)
def test_the_record_and_the_letter_name_the_same_practice(engine: Engine, events: list[RecordEvent]) -> None:
    assert practice_of(record(events)) == {letter_to(engine, events)}


@pytest.mark.parametrize(
    "events",
    [
        pytest.param([*ADMITTED, *MOVED, *register_row(OLD, "2026-11-10")], id="a-stale-register-row"),
        pytest.param([*ADMITTED, *MOVED, *hospital("A08", "G1", "202611121000")], id="an-older-hospital-patient"),
    ],
)
def test_the_record_and_the_letter_agree_on_words_sent_late(engine: Engine, events: list[RecordEvent]) -> None:
    assert practice_of(record(events)) == {letter_to(engine, events)}
