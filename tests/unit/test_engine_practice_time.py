"""The rules engine takes a person's practice, where their PIC summary goes, by the record's rule
(hub.core.practices): the newest word on it by event time, a practice's register row or a hospital's
Patient naming one, the hospital's dated by the record's Patient version that holds it; merged
identities keep the newer word; states saved before the engine dated the practice still work. The
record itself (hub.core.record) is the oracle where both are run, on events from the real adapters."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson
import pytest

from hub.core.coordination import Positioned, process
from hub.core.ports import RecordEvent
from hub.core.record_content import MERGED
from hub.core.tasks import Engine, new_state
from hub.store.memory import MemoryCoordinationStore
from schemas.events import coordination as co
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

__all__ = ["engine"]  # (the module's fixture, used here)
Json = dict[str, Any]
LATE_ROW = register_row(NEW, "2026-11-10")  # extracted between the hospital's two messages, sent last


@pytest.mark.parametrize(
    ("second", "expected"),
    [
        # said again as held: the record writes no version, so the practice is still dated 1 Nov
        pytest.param(hospital("A08", "S1", "202611121000"), NEW, id="said-again"),
        pytest.param(hospital("A08", "S2", "202611121000", practice=None), NEW, id="said-again-without-pd1"),
        # something new of the person: a version dated 12 Nov holds the hospital's practice
        pytest.param(hospital("A08", "S3", "202611121000", family="JONES"), OLD, id="news-naming-the-practice"),
        # news of another kind, PD1 left out: the version keeps when the practice was said (1 Nov)
        pytest.param(hospital("A08", "S4", "202611121000", family="JONES", practice=None), NEW, id="news-without-pd1"),
    ],
)
def test_a_hospitals_word_is_dated_as_the_record_dates_it(
    engine: Engine, second: list[RecordEvent], expected: str
) -> None:
    events = [*ADMITTED, *second, *LATE_ROW]

    assert practice_of(record(events)) == {expected} == {letter_to(engine, events)}


def test_a_newer_row_after_news_of_the_person_still_moves_them(engine: Engine) -> None:
    events = [*ADMITTED, *hospital("A08", "S5", "202611121000", family="JONES"), *register_row(NEW, "2026-11-13")]

    assert practice_of(record(events)) == {NEW} == {letter_to(engine, events)}


def handle(engine: Engine, state: Json, *events: list[RecordEvent]) -> Json:
    for batch in events:
        for event in batch:
            engine.handle(state, event)
    return state


def test_a_hospital_patient_older_than_the_latest_is_stale_for_the_practice_too(engine: Engine) -> None:
    state = handle(engine, new_state(), hospital("A08", "T1", "202611200900", practice=None))  # no PD1

    handle(engine, state, hospital("A01", "T2", "202611010930"))  # Y00001, sent late

    assert state["practice"] is None  # as the record, which skips the late Patient whole
    assert practice_of(record(hospital("A08", "T1", "202611200900", practice=None), ADMITTED)) == set()


def test_a_late_hospital_patient_under_a_number_merged_away_does_not_move_the_survivor(engine: Engine) -> None:
    """The record files it under the retired Patient, which keeps pointing at the survivor; the
    survivor's practice is not its word."""
    state = handle(engine, new_state(), register_row(NEW, "2026-11-15"))
    state["merged"] = ["retired-key"]  # (as hub.core.merges keeps the keys merged into the person)
    [late] = hospital("A08", "U1", "202611200900", practice=THIRD)
    payload = orjson.loads(orjson.dumps(late.payload).replace(late.subject.encode(), b"retired-key"))

    engine.handle(state, RecordEvent(late.id, late.type, late.source, late.time, "retired-key", payload))

    assert state["practice"] == NEW


# --- states saved before the engine dated the practice -------------------------------------------


def legacy(practice: str) -> Json:
    """A person's state as the engine kept it before practice_at: a registration, undated."""
    return new_state() | {
        "practice": practice,
        "practice_from": "registration",
        "patient_at": "2026-11-01T09:30:00+00:00",
    }


def test_a_state_saved_before_practice_at_takes_the_next_registration_as_it_did(engine: Engine) -> None:
    state = legacy(NEW)

    handle(engine, state, register_row(OLD, "2026-11-10"))  # undated: no telling it is stale, as before
    assert (state["practice"], state["practice_from"], state["practice_at"]) == (
        OLD,
        "register",
        "2026-11-10T00:00:00+00:00",
    )
    handle(engine, state, hospital("A08", "L1", "202611121000", practice=THIRD))
    handle(engine, state, register_row(NEW, "2026-11-11"))  # dated now: older than the hospital's word
    assert (state["practice"], state["practice_from"]) == (THIRD, "hospital")


def test_the_coordinators_word_saved_undated_any_registration_takes_it(engine: Engine) -> None:
    """(A state saved before the coordinator's word was dated: hub.core.tasks dates it now.)"""
    state = new_state() | {"practice": THIRD, "practice_from": "coordinator", "patient_at": "2026-11-20T00:00:00+00:00"}

    handle(engine, state, register_row(NEW, "2026-11-10"))

    assert (state["practice"], state["practice_from"]) == (NEW, "register")


# --- a PIC summary held for want of a practice ------------------------------------------------------


def test_a_held_summary_waits_out_a_stale_hospital_patient_and_goes_where_the_register_row_says(
    engine: Engine,
) -> None:
    silent = hospital("A08", "W1", "202611200900", practice=None)  # the hospital knows no practice
    person = silent[0].subject
    store, derived = MemoryCoordinationStore(), []
    for event in [*silent, *closed_episode(person), *ADMITTED, *register_row(NEW, "2026-11-15")]:
        with store.unit_of_work() as uow:
            derived += [(event.id, e) for e in process(engine, uow, [Positioned(event, 0)])]
            uow.commit()

    sent = [(cause, gp_of(e)) for cause, e in derived if e.type == co.PIC_SUMMARY_SENT.type]
    assert sent == [(register_row(NEW, "2026-11-15")[0].id, NEW)]  # not at the late A01, which the record skips
    assert practice_of(record(silent, ADMITTED, register_row(NEW, "2026-11-15"))) == {NEW}


def closed_episode(person: str) -> list[RecordEvent]:
    episode: Json = {
        "resourceType": "EpisodeOfCare",
        "id": "episode-held",
        "status": "active",
        "patient": {"reference": f"Patient/{person}"},
        "careManager": {"identifier": {"system": co.COORDINATOR_SYSTEM, "value": "c-ann"}},
        "managingOrganization": {
            "identifier": {"system": "https://fhir.nhs.uk/Id/ods-organization-code", "value": "Y0PIC"}
        },
        "period": {"start": "2026-11-21T09:00:00+00:00"},
    }
    closed = episode | {"status": "finished", "period": episode["period"] | {"end": "2026-11-25T09:00:00+00:00"}}
    summary = {"resourceType": "Composition", "id": "pic-held", "status": "final", "title": "PIC summary"}

    def service(kind: str, resources: list[Json], at: datetime) -> RecordEvent:
        bundle = {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": r} for r in resources]}
        return RecordEvent(f"{kind}-held", kind, "urn:ods:Y0PIC", at, person, bundle)

    return [
        service(co.EPISODE_OPENED.type, [episode], datetime(2026, 11, 21, 9, tzinfo=UTC)),
        service(co.EPISODE_CLOSED.type, [closed, summary], datetime(2026, 11, 25, 9, tzinfo=UTC)),
    ]


def gp_of(letter: RecordEvent) -> str | None:
    [patient] = [r["resource"] for r in letter.payload["entry"] if r["resource"]["resourceType"] == "Patient"]
    return (patient.get("generalPractitioner") or [{}])[0].get("identifier", {}).get("value")


# --- two identities merged (hub.core.merges) ------------------------------------------------------


def said(practice: str, by: str, at: str | None) -> Json:
    state = new_state() | {"practice": practice, "practice_from": by}
    return state | ({"practice_at": at} if at else {})


EARLY, LATE = "2026-11-01T09:30:00+00:00", "2026-11-15T00:00:00+00:00"


@pytest.mark.parametrize(
    ("survivor", "retired", "kept"),
    [
        pytest.param(said(OLD, "hospital", EARLY), said(NEW, "register", LATE), "retired", id="the-retired-newer"),
        pytest.param(said(NEW, "register", LATE), said(OLD, "hospital", EARLY), "survivor", id="the-survivor-newer"),
        pytest.param(said(OLD, "register", LATE), said(NEW, "hospital", LATE), "survivor", id="a-tie-the-survivors"),
        pytest.param(
            said(OLD, "coordinator", None), said(NEW, "hospital", EARLY), "retired", id="over-the-coordinator"
        ),
        pytest.param(said(OLD, "referral", None), said(NEW, "coordinator", None), "retired", id="over-a-referral"),
        # a hospital's word under the retired number is not carried over the survivor's (the record keeps it)
        pytest.param(said(OLD, "hospital", EARLY), said(NEW, "hospital", LATE), "survivor", id="a-hospitals-newer"),
        pytest.param(said(OLD, "registration", None), said(NEW, "hospital", EARLY), "survivor", id="over-an-undated"),
        pytest.param(said(OLD, "registration", None), said(NEW, "register", EARLY), "retired", id="a-row-over-undated"),
        pytest.param(said(OLD, "hospital", EARLY), said(NEW, "registration", None), "survivor", id="undated-is-older"),
        pytest.param(new_state(), said(NEW, "referral", None), "retired", id="over-none"),
    ],
)
def test_of_two_identities_merged_the_newer_word_on_the_practice_is_kept(
    engine: Engine, survivor: Json, retired: Json, kept: str
) -> None:
    merge = RecordEvent("merge-practice", MERGED, "urn:ods:RXX", datetime(2026, 11, 20, tzinfo=UTC), "s", {})
    keys = ("practice", "practice_from", "practice_at")
    expected = [(retired if kept == "retired" else survivor).get(k) for k in keys]

    engine.merge(survivor, retired, "r", merge)

    assert [survivor.get(k) for k in keys] == expected


def test_a_patient_of_odd_shape_names_no_practice_and_never_raises(engine: Engine) -> None:
    [admitted] = hospital("A08", "X1", "202611121000")
    for odd in ("Organization/x", ["Organization/x"], [{"identifier": "Y00009"}]):
        payload = orjson.loads(orjson.dumps(admitted.payload))
        payload["entry"][0]["resource"]["generalPractitioner"] = odd
        event = RecordEvent(admitted.id, admitted.type, admitted.source, admitted.time, admitted.subject, payload)

        state = handle(engine, new_state(), [event])

        assert state["practice"] is None
