"""The commissioner's KPIs follow A40 merges as the rules engine does (hub.core.kpi_facts.KpiFacts.resolve):
a person known by a hospital number (RETIRED) and merged into their NHS-numbered identity (SURVIVOR)
counts once, in every KPI, whatever order the merge and the old number's events come in.

The hand-computed month (keys from tests/unit/test_engine_merges: the hospital's real A40, 10 Nov 09:00):
    4 Nov 10:00   RETIRED   referral A from the GP; its Patient says born 1950-01-01, practice Y01
    5 Nov 10:00   SURVIVOR  referral B from a huddle; its Patient says no birth date and no practice
    6 Nov 09:00   RETIRED   stay (c-ann) opened for A
    7 Nov 09:00   SURVIVOR  stay (c-bob) opened for B
    10 Nov 09:00  SURVIVOR  the A40: RETIRED merged into SURVIVOR (its Patient: born 1940-03-12, Y00001)
    12 Nov 10:00  RETIRED   first contact (the hospital still uses the old number)
    20 Nov 10:00  SURVIVOR  face-to-face visit
    21 Nov 11:00  SURVIVOR  onward referral by the service to LA123
    22 Nov 11:00  RETIRED   onward referral by the service to LA123
    3 Dec 10:00   RETIRED   follow-up visit
    8 Dec 10:00   RETIRED   c-ann's stay closed
    10 Dec 10:00  SURVIVOR  c-bob's stay closed
    11 Dec 09:00  SURVIVOR  the PIC summary's receipt

One person: the first contact (12 Nov) answers A and B, measured from A (4 Nov 10:00): 8.0 days; the
visit (20 Nov) is one first visit, of A: 16.0 days, within 4 weeks. B's practice and age are the
person's as said nearest before it: A's Patient (Y01, born 1950: 76, 75-84). The engine keeps the
survivor's stay at the merge (c-bob) and drops c-ann's, so the KPIs count c-bob's alone: on c-bob's
caseload at November's end, and December's one discharge (7 Nov 09:00 to 10 Dec 10:00: 33 days 1
hour, 33.04; its letter 23 hours later), whose stay runs from A (4 Nov 10:00, the earliest referral it
answered): a first contact, a first visit and a follow-up. Two onward referrals, one person referred on.
"""

from __future__ import annotations

import random
from datetime import datetime

from hub.core.kpi_merges import survivors_of
from hub.core.kpis import KpiFold
from hub.core.ports import RecordEvent
from schemas.events.patient import PATIENT_MERGED
from tests import locality_month as month
from tests.unit.test_engine_merges import MERGE, RETIRED, SURVIVOR, as_

A, B = month.referral_id("P1"), month.referral_id("P2")


def _said(event: RecordEvent, **patient: str | None) -> RecordEvent:
    """The event with its Patient saying (or, given None, not saying) these elements."""
    for entry in event.payload["entry"]:
        if entry["resource"]["resourceType"] == "Patient":
            for name, value in patient.items():
                entry["resource"].pop(name, None)
                if value is not None:
                    entry["resource"][name] = value
    return event


def merged_month(merge: RecordEvent = MERGE) -> list[RecordEvent]:
    at = month.at
    return [
        _said(as_(RETIRED, month.referral("P1", at(4, 10), "gp")), birthDate="1950-01-01"),
        _said(as_(SURVIVOR, month.referral("P2", at(5, 10), "huddle"), "P2"), birthDate=None, generalPractitioner=None),
        as_(RETIRED, month.episode("P1", at(6, 9), "c-ann")),
        as_(SURVIVOR, month.episode("P2", at(7, 9), "c-bob"), "P2"),
        merge,
        as_(RETIRED, month.contact("P1", at(12, 10), "first-contact")),
        as_(SURVIVOR, month.contact("P2", at(20, 10), "face-to-face"), "P2"),
        as_(SURVIVOR, month.referral("P2", at(21, 11), "care-coordination", to="LA123", by=month.SERVICE), "P2"),
        as_(RETIRED, month.referral("P1", at(22, 11), "care-coordination", to="LA123", by=month.SERVICE)),
        as_(RETIRED, month.contact("P1", at(3, 10, month=12), "follow-up")),
        as_(RETIRED, month.episode("P1", at(8, 10, month=12), "c-ann", closed=True)),
        as_(SURVIVOR, month.episode("P2", at(10, 10, month=12), "c-bob", closed=True), "P2"),
        as_(SURVIVOR, month.receipt("P2", at(11, 9, month=12)), "P2"),
    ]


NOVEMBER = {
    ("referrals", ""): 2,
    ("referrals by practice", "Y01"): 2,
    ("referrals by source", "gp"): 1,
    ("referrals by source", "huddle"): 1,
    ("age at referral", "<65"): 0,
    ("age at referral", "65-74"): 0,
    ("age at referral", "75-84"): 2,
    ("age at referral", "85+"): 0,
    ("age at referral", "unknown"): 0,
    ("first visits", ""): 1,
    ("days from referral to first contact", "mean"): 8.0,
    ("days from referral to first visit", "mean"): 16.0,
    ("first visits within 4 weeks", "%"): 100.0,
    ("referrals waiting over 4 weeks for a first visit", "at month end"): 0,
    ("discharges", ""): 0,
    ("onward referrals", ""): 2,
    ("onward referrals by destination", "LA123"): 2,
    ("people referred on", ""): 1,
    ("caseload at month end", "c-bob"): 1,
}
DECEMBER = {
    ("referrals", ""): 0,
    ("first visits", ""): 0,
    ("discharges", ""): 1,
    ("hours from discharge to GP letter", "mean"): 23.0,
    ("GP letters within 48 hours", "%"): 100.0,
    ("GP letters within 48 hours", "pending"): 0,
    ("caseload at month end", "c-bob"): 0,
    ("discharged after over 12 weeks on caseload", "%"): 0.0,
    ("face-to-face visits at discharge", "mean"): 2.0,
    ("face-to-face follow-ups at discharge", "mean"): 1.0,
    ("non-face-to-face contacts at discharge", "mean"): 1.0,
    ("first to follow-up visit ratio", "follow-ups per first visit"): 1.0,
    ("initial visits with no follow-up", "%"): 0.0,
    ("days on caseload at discharge", "mean"): 33.04,
}
# what each is of (a percentage's or a mean's denominator): one person, one first contact, one visit, one discharge
OF = {
    ("2026-11", "days from referral to first contact", "mean"): 1,
    ("2026-11", "days from referral to first visit", "mean"): 1,
    ("2026-11", "first visits within 4 weeks", "%"): 1,
    ("2026-12", "GP letters within 48 hours", "%"): 1,
    ("2026-12", "discharged after over 12 weeks on caseload", "%"): 1,
    ("2026-12", "days on caseload at discharge", "mean"): 1,
}


def folded(events: list[RecordEvent]) -> KpiFold:
    fold = KpiFold(service=month.SERVICE)
    for event in events:
        fold.add(event)
    return fold


def figures(fold: KpiFold, when: str) -> dict[tuple[str, str], float | None]:
    return {(r.kpi, r.breakdown): r.value for r in fold.report(when)}


def assert_hand_computed(fold: KpiFold) -> None:
    november, december = figures(fold, "2026-11"), figures(fold, "2026-12")
    assert {k: november.get(k) for k in NOVEMBER} == NOVEMBER
    assert {k: december.get(k) for k in DECEMBER} == DECEMBER
    for (when, kpi, breakdown), of in OF.items():
        assert [r.of for r in fold.report(when) if (r.kpi, r.breakdown) == (kpi, breakdown)] == [of]
    # the stay the engine dropped is on no caseload and never a discharge
    assert not [k for k in (*november, *december) if k == ("caseload at month end", "c-ann")]


def test_every_kpi_counts_a_merged_person_once_by_the_hand_computed_figures() -> None:
    assert_hand_computed(folded(merged_month()))


def test_the_figures_do_not_depend_on_where_the_merge_comes_among_the_old_numbers_events() -> None:
    # each key's events keep their order (one partition each); the two partitions interleave any way
    events = merged_month()
    queues = [[e for e in events if e.subject == key] for key in (RETIRED, SURVIVOR)]
    rng = random.Random(84)
    for _ in range(20):
        mine = [list(q) for q in queues]
        shuffled: list[RecordEvent] = []
        while any(mine):
            shuffled.append(rng.choice([q for q in mine if q]).pop(0))
        assert_hand_computed(folded(shuffled))


def test_a_merge_dated_before_the_old_numbers_events_gives_the_same_figures() -> None:
    early = RecordEvent(MERGE.id, MERGE.type, MERGE.source, month.at(1, 9), MERGE.subject, MERGE.payload)
    events = merged_month(early)
    assert_hand_computed(folded([early, *(e for e in events if e is not early)]))


def _merge(retired: str, into: str, at: datetime, event_id: str) -> RecordEvent:
    """A merge of `retired` into `into`, as an A40's event carries it (the retired Patient replaced-by)."""
    payload = {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [
            {"resource": {"resourceType": "Patient", "id": into}},
            {
                "resource": {
                    "resourceType": "Patient",
                    "id": retired,
                    "active": False,
                    "link": [{"other": {"reference": f"Patient/{into}"}, "type": "replaced-by"}],
                }
            },
        ],
    }
    return RecordEvent(event_id, PATIENT_MERGED.type, "urn:ods:RXX", at, into, payload)


def test_a_merge_reversed_later_makes_the_person_the_key_it_names_keeping_the_stay_the_engine_kept() -> None:
    # the engine: at the first merge SURVIVOR's stay (c-bob) stands and c-ann's is dropped; the reversal
    # begins RETIRED's state again and folds SURVIVOR's (with c-bob) into it: one person, c-bob's stay
    reversal = _merge(SURVIVOR, RETIRED, month.at(15, 9), "reversal")
    fold = folded([*merged_month(), reversal])
    november = figures(fold, "2026-11")
    assert fold.who(SURVIVOR) == fold.who(RETIRED) == RETIRED
    assert november[("people referred on", "")] == 1
    assert november[("first visits", "")] == 1
    assert november[("days from referral to first visit", "mean")] == 16.0
    assert november[("caseload at month end", "c-bob")] == 1
    assert ("caseload at month end", "c-ann") not in november
    assert figures(fold, "2026-12")[("discharges", "")] == 1


def test_the_key_map_follows_the_engines_rules_for_chains_and_reversals() -> None:
    # a chain: a into b, then b into c; a points at c
    who, _ = survivors_of([("a", "b"), ("b", "c")])
    assert who == {"a": "c", "b": "c"}
    # a reversal: a into b, then b into a; a is a person again and b is theirs
    who, folds = survivors_of([("a", "b"), ("b", "a")])
    assert who == {"b": "a"}
    assert folds == [("a", "b"), ("a", None), ("b", "a")]
    # the same merge again changes nothing; a merge into oneself is none (retirements drops it)
    assert survivors_of([("a", "b"), ("a", "b")]) == ({"a": "b"}, [("a", "b")])
    # keys merged into a key before it is merged away follow it, through a reversal of the last
    who, _ = survivors_of([("x", "a"), ("a", "b"), ("b", "a")])
    assert who == {"x": "a", "b": "a"}


def test_without_merges_a_log_is_counted_as_before() -> None:
    assert figures(folded(month.script()), "2026-11") == month.EXPECTED_KPIS
