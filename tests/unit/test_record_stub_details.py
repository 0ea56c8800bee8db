"""The record's "stubs" rule (hub.core.record) for the person details a referral carries: a referral's
stub Patient fills in, and replaces, what another stub said (a register row's, an earlier referral's),
element by element (name, address, telecom, contact; birthDate and gender only where the held stub has
none), never what a hospital or practice said; a register row's practice stays as it was laid on; and a
replay of such a log (the fold hub.replay writes) hashes the same as the live record."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from adapters.hl7v2.to_fhir import map_message
from adapters.referrals.rows import Format
from adapters.referrals.to_fhir import MappedEvent
from hub.core.ports import RecordEvent
from hub.core.record import _STUB_TIME, apply_events
from hub.core.record_practice import PRACTICE_SAID_URL
from hub.replay_fold import FoldUnitOfWork
from hub.replay_write import write
from hub.store.database import open_engine
from hub.store.hashing import record_hash
from hub.store.memory import MemoryRecordStore
from hub.store.sql import SqlRecordReader, SqlRecordUnitOfWork
from tests.builders import an_adt
from tests.unit.test_referral_adapters import SECRET, asc_referral, one, record_events, register_row, vcse_referral

NAMED = {"given_name": "Bob", "family_name": "Smith", "postcode": "M1 1AE", "phone": "0161 496 0000"}


def referral(**changes: Any) -> MappedEvent:
    return one(Format.ASC_CSV, asc_referral(**changes))


def registered(**changes: str) -> MappedEvent:
    return one(Format.REGISTER, register_row(**changes))


def vcse_referral_event(**changes: Any) -> MappedEvent:
    return one(Format.VCSE_JSON, vcse_referral(**changes))


def hospital(control_id: str = "H1", event_time: str = "202611040900") -> list[RecordEvent]:
    raw = an_adt(trigger="A08", control_id=control_id, event_time=event_time, family="HOSPITAL", given="HANNA")
    return [
        RecordEvent(m.event_id, m.event_type, m.source, m.event_time, m.person_key, m.payload)
        for m in map_message(raw, key_secret=SECRET)
    ]


def applied(*said: MappedEvent | list[RecordEvent], store: MemoryRecordStore | None = None) -> MemoryRecordStore:
    """Each event in its own batch, in the order given (as a live consumer may commit them)."""
    store = store or MemoryRecordStore()
    for event in said:
        with store.unit_of_work() as uow:
            apply_events(uow, event if isinstance(event, list) else record_events([event]))
            uow.commit()
    return store


def patient(store: MemoryRecordStore) -> dict[str, Any]:
    (held,) = store.reader().search("Patient", None)
    return held


def stored_time(store: MemoryRecordStore) -> Any:
    (row,) = [r for (kind, _), r in store.resources.items() if kind == "Patient"]
    return row.event_time


def test_a_person_on_the_register_then_referred_with_a_name_is_named_and_keeps_the_practice_the_row_said() -> None:
    row = registered()
    store = applied(row, referral(**NAMED))
    held = patient(store)
    assert held["name"] == [{"family": "Smith", "given": ["Bob"]}]
    assert held["address"] == [{"use": "home", "postalCode": "M1 1AE"}]
    assert held["telecom"] == [{"system": "phone", "value": "0161 496 0000", "use": "home"}]
    before = patient(applied(row))["generalPractitioner"]
    assert held["generalPractitioner"] == before  # the row's word on the practice, as it was laid on
    assert before[0]["extension"][0]["url"] == PRACTICE_SAID_URL
    assert stored_time(store) == _STUB_TIME  # still a stub: anything a hospital says replaces it


def test_a_referral_sent_again_with_details_added_then_a_spelling_fixed_is_applied() -> None:
    store = applied(referral(), referral(**NAMED))
    assert patient(store)["name"] == [{"family": "Smith", "given": ["Bob"]}]
    applied(referral(**NAMED | {"family_name": "Smyth"}), store=store)
    held = patient(store)
    assert held["name"] == [{"family": "Smyth", "given": ["Bob"]}]
    assert held["meta"]["versionId"] == "3"
    assert stored_time(store) == _STUB_TIME
    applied(referral(**NAMED | {"family_name": "Smyth", "reason": "Carer unwell"}), store=store)
    assert patient(store)["meta"]["versionId"] == "3"  # the same details again: no version


def test_details_a_later_referral_leaves_out_are_kept_and_a_carer_added_is_taken() -> None:
    store = applied(referral(**NAMED), vcse_referral_event(carer_name="Daniel Okafor", carer_phone="07700 900456"))
    held = patient(store)
    assert held["name"] == [{"family": "Smith", "given": ["Bob"]}]
    assert held["telecom"] == [{"system": "phone", "value": "0161 496 0000", "use": "home"}]
    assert held["contact"] == [
        {"name": {"text": "Daniel Okafor"}, "telecom": [{"system": "phone", "value": "07700 900456", "use": "mobile"}]}
    ]


def test_a_birth_date_fills_in_one_the_stub_lacks_and_never_replaces_one_it_has() -> None:
    store = applied(vcse_referral_event(), referral(birth_date="1938-02-01"))  # (the VCSE referral gives none)
    assert patient(store)["birthDate"] == "1938-02-01"
    applied(referral(referral_id="ASC-2", birth_date="1938-02-02"), store=store)
    assert patient(store)["birthDate"] == "1938-02-01"


def test_a_referral_never_replaces_what_a_hospital_said_before_or_after_it_filled_a_stub() -> None:
    said_by_hospital = applied(hospital(), referral(**NAMED))
    assert patient(said_by_hospital)["name"][0]["family"] == "HOSPITAL"
    assert "telecom" not in patient(said_by_hospital)
    store = applied(registered(), referral(**NAMED))
    assert patient(store)["name"][0]["family"] == "Smith"
    applied(hospital(), referral(**NAMED | {"family_name": "Smyth"}), store=store)
    assert patient(store)["name"][0]["family"] == "HOSPITAL"
    assert stored_time(store) != _STUB_TIME


def test_a_replay_of_such_a_log_hashes_the_same_as_the_live_record(tmp_path: Path) -> None:
    spelt = NAMED | {"family_name": "Smyth"}
    said = [registered(), referral(), referral(**NAMED), referral(**spelt), registered(extracted_on="2026-11-20")]
    log = record_events([*said, referral(referral_id="ASC-2", **NAMED | {"phone": "07700 900123"})])
    live = open_engine(f"sqlite:///{tmp_path / 'live.db'}")
    for event in log:  # the live consumer: a batch at a time
        with SqlRecordUnitOfWork(live) as uow:
            apply_events(uow, [event])
            uow.commit()
    fold = FoldUnitOfWork()  # the replay: the log folded in memory, then written in bulk
    apply_events(fold, log)
    replayed = open_engine(f"sqlite:///{tmp_path / 'replayed.db'}")
    write(replayed, fold)
    assert record_hash(replayed) == record_hash(live)
    (held,) = SqlRecordReader(replayed).search("Patient", None)
    assert (held["name"], held["telecom"][0]["value"]) == ([{"family": "Smith", "given": ["Bob"]}], "07700 900123")
    live.dispose()
    replayed.dispose()
