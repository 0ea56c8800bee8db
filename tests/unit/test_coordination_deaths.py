"""A death stops the coordination work (hub.core.deaths through hub.core.tasks): the hospital's ADT
says the person died (PID-29/30, as adapters/hl7v2 maps them), and no one is sent to contact or visit
them; the paperwork for others goes on; only a Patient that takes the death back lets tasks open again.

P1 is referred by their GP on 4 Nov 2026 and on c-ann's caseload from 6 Nov; admitted 5 Dec, they die
on 6 Dec at 23:00 (UTC = UK time in December)."""

from __future__ import annotations

from datetime import datetime, timedelta

import orjson

from adapters.hl7v2.to_fhir import map_message
from hub.core.coordination import tick
from hub.core.derived_events import STATUS_REASON_SYSTEM
from hub.core.ports import RecordEvent
from hub.core.tasks import Engine
from hub.store.memory import MemoryCoordinationStore
from schemas.events import coordination as co
from schemas.events import patient as pat
from tests import locality_month as month
from tests.builders import an_adt
from tests.unit.test_coordination_rules import engine as rules_engine
from tests.unit.test_coordination_rules import run

P1 = month.PEOPLE["P1"]
CONTACTS = {"referral-triage", "first-visit", "review-6-weeks", "review-12-weeks"}
NO_DEATH = b"|||||||||||||||||||||NSTS01"  # PID-29 and PID-30 left empty, as most messages leave them


engine = rules_engine  # (the shipped rules' engine, a module fixture)


def adt(
    trigger: str, control_id: str, at: str, *, pid_29_30: bytes = NO_DEATH, disposition: str = "19", admit: str = ""
) -> RecordEvent:
    """A real ADT through the hospital adapter's mapping, about P1 (its person key made P1's)."""
    admit = admit or "202612050900"
    raw = an_adt(trigger=trigger, control_id=control_id, event_time=at, admit=admit, discharge=at)
    raw = raw.replace(NO_DEATH, pid_29_30).replace(b"|||19|", f"|||{disposition}|".encode())
    [mapped] = map_message(raw, key_secret=b"k")
    payload = orjson.loads(orjson.dumps(mapped.payload).replace(mapped.person_key.encode(), P1.encode()))
    return RecordEvent(mapped.event_id, mapped.event_type, mapped.source, mapped.event_time, P1, payload)


def died(at: str = "202612062305", admit: str = "") -> RecordEvent:
    """The A03 of the walkthrough: PV1-36 41 (died), PID-29 the time of death, PID-30 Y."""
    said = f"||||||||||||||||||{min(at, '202612062300')}00|Y||NSTS01".encode()
    return adt("A03", "D1", at, pid_29_30=said, disposition="41", admit=admit)


def on_the_caseload() -> list[RecordEvent]:
    return [
        month.referral("P1", month.at(4, 10), "gp"),
        month.episode("P1", month.at(6, 9), "c-ann"),
        adt("A01", "A1", "202612050900"),
    ]


def latest_tasks(derived: list[RecordEvent]) -> dict[str, dict[str, object]]:
    """Each task's latest Task, by rule."""
    found: dict[str, dict[str, object]] = {}
    for event in derived:
        if event.payload.get("resourceType") == "Task":
            found[event.payload["code"]["coding"][0]["code"]] = event.payload
    return found


def test_a_death_cancels_every_task_to_contact_or_visit_the_person_naming_it(engine: Engine) -> None:
    store = MemoryCoordinationStore()
    before = latest_tasks(run(engine, on_the_caseload(), store))
    assert {rule: t["status"] for rule, t in before.items()} == dict.fromkeys(CONTACTS, "requested")

    after = latest_tasks(run(engine, [died()], store))

    assert "discharge-follow-up" not in after  # no one phones a bereaved family to follow up
    assert {rule: t["status"] for rule, t in after.items()} == dict.fromkeys(CONTACTS, "cancelled")
    for task in after.values():
        reason = task["statusReason"]
        assert reason["coding"][0] == {  # type: ignore[index]
            "system": STATUS_REASON_SYSTEM,
            "code": "person-died",
            "display": "The person died",
        }
        assert "2026-12-06T23:00:00+00:00" in reason["text"]  # type: ignore[index]
    assert store.states[P1]["died"]["at"] == "2026-12-06T23:00:00+00:00"
    assert not [c for c in store.clocks if not c.startswith("long-stay:")]  # their clocks cleared
    overdue = run(engine, [tick(0, month.at(1, month=3, year=2027))], store)
    assert [e for e in overdue if e.type == co.TASK_OVERDUE.type] == []


def test_an_overdue_task_with_the_team_lead_is_cancelled_too_never_dated_before_it_went_overdue(engine: Engine) -> None:
    store = MemoryCoordinationStore()
    # (no admission on 5 Dec here: a Patient dated after the death would make it stale news)
    caseload = [e for e in on_the_caseload() if e.type != "uk.nhs.carehub.encounter.admitted.v1"]
    run(engine, [*caseload, tick(0, month.at(3, month=12))], store)  # triage and first visit overdue
    late = died("202612010900", admit="202611300900")  # dated before the first visit went overdue

    after = latest_tasks(run(engine, [late], store))

    first_visit = after["first-visit"]
    assert first_visit["status"] == "cancelled"
    assert first_visit["lastModified"] == (month.at(4, 10) + timedelta(days=28)).isoformat()


def test_no_task_to_contact_or_visit_opens_after_the_death_but_the_gps_letter_still_goes(engine: Engine) -> None:
    store = MemoryCoordinationStore()
    run(engine, [*on_the_caseload(), died()], store)
    summary = {"resourceType": "Composition", "id": "pic-p1", "status": "final", "title": "PIC summary"}
    closing = month.episode("P1", month.at(8, 9, month=12), "c-ann", closed=True)
    closing.payload["entry"].append({"resource": summary})
    again = month.referral("P1", month.at(7, 10, month=12), "gp")
    again.payload["entry"][0]["resource"]["id"] = "a-referral-after-the-death"
    again = RecordEvent(f"{again.id}-2", again.type, again.source, again.time, again.subject, again.payload)

    derived = run(engine, [adt("A03", "D2", "202612070900"), again, closing], store)

    opened = [e.payload["code"]["coding"][0]["code"] for e in derived if e.type == co.TASK_CREATED.type]
    assert opened == ["pic-summary"]  # paperwork for the GP, not a visit
    assert [e.type for e in derived].count(co.PIC_SUMMARY_SENT.type) == 1


def test_messages_that_leave_the_death_out_do_not_undo_it(engine: Engine) -> None:
    store = MemoryCoordinationStore()
    run(engine, [*on_the_caseload(), died(), adt("A08", "U1", "202612070800")], store)

    derived = run(engine, [adt("A03", "D2", "202612071000")], store)

    assert [e for e in derived if e.type == co.TASK_CREATED.type] == []
    assert store.states[P1]["died"]


def test_a_death_taken_back_lets_new_tasks_open_and_leaves_the_cancelled_ones_cancelled(engine: Engine) -> None:
    store = MemoryCoordinationStore()
    run(engine, [*on_the_caseload(), died()], store)
    withdrawn = adt("A08", "W1", "202612071000", pid_29_30=b'||||||||||||||||||""|N||NSTS01')  # recorded in error

    derived = run(engine, [withdrawn, adt("A03", "D2", "202612071100")], store)

    assert store.states[P1]["died"] is None
    assert [e.payload["code"]["coding"][0]["code"] for e in derived if e.type == co.TASK_CREATED.type] == [
        "discharge-follow-up"
    ]
    statuses = {t["rule"]: t["status"] for t in store.states[P1]["tasks"].values()}
    assert {rule: statuses[rule] for rule in CONTACTS} == dict.fromkeys(CONTACTS, "cancelled")


def test_a_patient_saying_deceasedboolean_false_takes_the_death_back(engine: Engine) -> None:
    store = MemoryCoordinationStore()
    run(engine, [*on_the_caseload(), died()], store)
    patient = month.patient("P1") | {"deceasedBoolean": False}
    alive = RecordEvent("alive-1", pat.PATIENT_UPDATED.type, "urn:ods:RXX", month.at(7, 10, month=12), P1, patient)

    run(engine, [alive], store)

    assert store.states[P1]["died"] is None


def test_a_replay_of_the_log_gives_the_same_tasks_whenever_it_runs(engine: Engine) -> None:
    log = [*on_the_caseload(), died(), adt("A03", "D2", "202612070900"), tick(0, month.at(1, month=3, year=2027))]
    first, second = MemoryCoordinationStore(), MemoryCoordinationStore()

    derived = run(engine, log, first)

    assert [(e.id, e.time, e.payload) for e in run(engine, log, second)] == [(e.id, e.time, e.payload) for e in derived]
    assert first.states == second.states
    cancelled = [e for e in derived if e.type == co.TASK_UPDATED.type and e.payload["status"] == "cancelled"]
    assert {e.time for e in cancelled} == {datetime.fromisoformat("2026-12-06T23:05:00+00:00")}  # the event's time


def test_a_message_dated_before_the_death_sent_late_does_not_take_it_back(engine: Engine) -> None:
    store = MemoryCoordinationStore()
    run(engine, [*on_the_caseload(), died()], store)
    backlog = adt("A08", "B1", "202612061000", pid_29_30=b"|||||||||||||||||||N||NSTS01")  # PID-30 N, as sent then

    derived = run(engine, [backlog, adt("A03", "D2", "202612071100")], store)

    assert store.states[P1]["died"]
    assert [e for e in derived if e.type == co.TASK_CREATED.type] == []


def _patient_event(event_id: str, time: datetime, said: dict[str, object], kind: str = pat.PATIENT_UPDATED.type):
    patient = month.patient("P1") | said
    return RecordEvent(event_id, kind, "urn:ods:RXX", time, P1, patient)


def test_the_newest_word_on_the_death_wins_in_whichever_order_the_two_arrive(engine: Engine) -> None:
    # the record keeps the newer Patient (alive) in either order; so must the engine
    dead, alive = died(), _patient_event("alive-2", month.at(7, 10, month=12), {"deceasedBoolean": False})
    for order in ([dead, alive], [alive, dead]):
        store = MemoryCoordinationStore()
        run(engine, [*on_the_caseload(), *order], store)
        assert store.states[P1].get("died") is None, [e.id for e in order]


def test_a_referrals_patient_never_speaks_of_a_death_nor_a_date_that_is_not_text(engine: Engine) -> None:
    store = MemoryCoordinationStore()
    run(engine, [*on_the_caseload(), died()], store)
    said_alive = _patient_event("ref-alive", month.at(7, 11, month=12), {"deceasedBoolean": False})
    as_referral = RecordEvent(
        said_alive.id, co.REFERRAL_RECEIVED.type, said_alive.source, said_alive.time, P1, said_alive.payload
    )
    run(engine, [as_referral], store)
    assert store.states[P1]["died"]  # (a partner's form, like the record's stub rule, says nothing of it)

    other = MemoryCoordinationStore()
    odd = _patient_event("odd", month.at(7, 9, month=12), {"deceasedDateTime": {"x": 1}, "extension": {"url": "u"}})
    run(engine, [*on_the_caseload(), odd], other)
    assert other.states[P1].get("died") is None
    after = _patient_event("odd-2", month.at(7, 12, month=12), {"extension": ["oops"]})
    run(engine, [died("202612071000"), after], other)  # (an extension of odd shape after a death: no crash)
    assert other.states[P1]["died"]


def test_a_death_message_delayed_past_a_newer_update_is_stale_as_the_record_takes_it(engine: Engine) -> None:
    # an A08 of 7 Dec saying nothing of a death, then the A03 of 6 Dec 23:05 arriving late: the record
    # keeps the newer Patient (alive), so the engine must not cancel anyone's visits
    store = MemoryCoordinationStore()
    run(engine, [*on_the_caseload(), adt("A08", "U1", "202612070800"), died()], store)
    assert store.states[P1].get("died") is None


def test_deleting_the_date_of_a_death_said_by_pid_30_alone_leaves_the_death(engine: Engine) -> None:
    # PID-30 Y with no date, then PID-29 "" (a date deleted that was never held): the record keeps
    # deceasedBoolean true, and so must the engine
    store = MemoryCoordinationStore()
    said = adt("A08", "Y1", "202612061000", pid_29_30=b"|||||||||||||||||||Y||NSTS01")
    cleared = adt("A08", "Y2", "202612061100", pid_29_30=b'||||||||||||||||||""|||NSTS01')
    run(engine, [*on_the_caseload(), said, cleared], store)
    assert store.states[P1]["died"]
