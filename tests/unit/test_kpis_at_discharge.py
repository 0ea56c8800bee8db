"""The MDS's figures at discharge (activity 5-8 and 19, quality 10): each discharge of the month counts
the contacts of the stay it closed, from the referral the stay answered (or its start) to its end, and
no contact of another stay; a contact dated by day alone on the referral's day is in it."""

from __future__ import annotations

import copy
import random
from datetime import datetime

from hub.core.identity import stable_id
from hub.core.kpis import KpiFold
from hub.core.ports import RecordEvent
from tests import locality_month as month
from tests.locality_month import at
from tests.unit.test_kpis import person_ordered

AT_DISCHARGE = (
    ("face-to-face visits at discharge", "mean"),
    ("face-to-face follow-ups at discharge", "mean"),
    ("non-face-to-face contacts at discharge", "mean"),
    ("first to follow-up visit ratio", "follow-ups per first visit"),
    ("initial visits with no follow-up", "%"),
    ("days on caseload at discharge", "mean"),
)


def at_discharge(events: list[RecordEvent], of: str = "2026-11") -> dict[str, tuple[float | None, int | None]]:
    """The figures at discharge for the month `of`, as {kpi: (value, of)}, the events folded as they
    happened (a tie in the order given)."""
    return figures_of(sorted(events, key=lambda e: e.time), of)


def figures_of(events: list[RecordEvent], of: str = "2026-11") -> dict[str, tuple[float | None, int | None]]:
    """As at_discharge, the events folded in the order given."""
    fold = KpiFold(service=month.SERVICE)
    for event in events:
        fold.add(event)
    rows = {(r.kpi, r.breakdown): (r.value, r.of) for r in fold.report(of)}
    return {kpi: rows[kpi, breakdown] for kpi, breakdown in AT_DISCHARGE}


def expected(*figures: tuple[float | None, int | None]) -> dict[str, tuple[float | None, int | None]]:
    return {kpi: figure for (kpi, _), figure in zip(AT_DISCHARGE, figures, strict=True)}


def referral(who: str, when: datetime, n: int = 1) -> RecordEvent:
    """A GP's referral of `who`; the n-th has an id of its own."""
    event = month.referral(who, when, "gp")
    event.payload["entry"][0]["resource"]["id"] = request_id(who, n)
    return event


def request_id(who: str, n: int) -> str:
    return month.referral_id(who) if n == 1 else stable_id("referral", who, str(n))


def stay(who: str, start: datetime, end: datetime, n: int = 1) -> list[RecordEvent]:
    """The n-th stay of `who` on c-ann's caseload, opened for their n-th referral: opened and closed."""
    opened = month.episode(who, start, "c-ann")
    closed = month.episode(who, end, "c-ann", closed=True)
    for event in (opened, closed):
        episode = event.payload["entry"][0]["resource"]
        episode["id"] = stable_id("stay", who, str(n))
        episode["referralRequest"] = [{"reference": f"ServiceRequest/{request_id(who, n)}"}]
    closed.payload["entry"][0]["resource"]["period"] = {"start": start.isoformat(), "end": end.isoformat()}
    return [opened, closed]


def contact(who: str, when: datetime, kind: str, *, day_alone: bool = False) -> RecordEvent:
    """A coordinator's contact; dated by day alone (a FHIR date, the start of that UK day) if asked."""
    event = month.contact(who, when, kind)
    if day_alone:
        event = copy.deepcopy(event)
        encounter = event.payload["entry"][0]["resource"]
        encounter["id"] = stable_id("contact", who, kind, when.date().isoformat())
        encounter["period"] = {"start": when.date().isoformat()}
        event = RecordEvent(
            stable_id("by day", event.id, kind), event.type, event.source, when, event.subject, event.payload
        )
    return event


def test_a_client_discharged_with_no_contacts_had_none_and_there_is_no_ratio_to_give() -> None:
    # P3 referred 3 Nov 10:00, on the caseload 4 Nov 10:00 to 10 Nov 16:00 (6 days 6 hours), never seen
    events = [referral("P3", at(3, 10)), *stay("P3", at(4, 10), at(10, 16))]
    assert at_discharge(events) == expected((0.0, 1), (0.0, 1), (0.0, 1), (None, 0), (None, 0), (6.25, 1))


def test_the_contacts_of_an_earlier_stay_are_not_counted_in_a_later_one() -> None:
    # P3's first stay (October): referred 1 Oct, on the caseload 2-20 Oct, visited 5 Oct, followed
    # up 12 Oct, phoned 15 Oct; phoned again 25 Oct between stays (no one's: after the first stay,
    # before the second referral). Referred again 3 Nov (the first referral is on the log before the
    # second stay too, but ended by the first), on the caseload 4-20 Nov, visited 10 Nov.
    october = [
        referral("P3", at(1, 10, month=10)),
        *stay("P3", at(2, 10, month=10), at(20, 10, month=10)),
        contact("P3", at(5, 10, month=10), "face-to-face"),
        contact("P3", at(12, 10, month=10), "follow-up"),
        contact("P3", at(15, 10, month=10), "non-face-to-face"),
        contact("P3", at(25, 10, month=10), "non-face-to-face"),
    ]
    november = [referral("P3", at(3, 10), n=2), *stay("P3", at(4, 10), at(20, 10), n=2)]
    november.insert(2, contact("P3", at(10, 10), "face-to-face"))
    events = [*october, *november]
    assert at_discharge(events) == expected((1.0, 1), (0.0, 1), (0.0, 1), (0.0, 1), (100.0, 1), (16.0, 1))
    assert at_discharge(events, "2026-10") == expected((2.0, 1), (1.0, 1), (1.0, 1), (1.0, 1), (0.0, 1), (18.0, 1))


def test_a_referral_made_during_a_stay_brings_none_of_that_stays_contacts_into_the_next() -> None:
    # the same first stay (2-20 Oct), but P3 is referred again on 10 Oct, while on the caseload: that
    # referral waits on (the stay began before it) until the second stay (4-20 Nov) ends its wait. The
    # second stay's contacts run from 10 Oct, but the first stay's, to its end (12 and 15 Oct), are
    # the first's; the call of 25 Oct, while the referral waited, and the visit of 10 Nov are the second's
    events = [
        referral("P3", at(1, 10, month=10)),
        *stay("P3", at(2, 10, month=10), at(20, 10, month=10)),
        contact("P3", at(5, 10, month=10), "face-to-face"),
        referral("P3", at(10, 10, month=10), n=2),
        contact("P3", at(12, 10, month=10), "follow-up"),
        contact("P3", at(15, 10, month=10), "non-face-to-face"),
        contact("P3", at(25, 10, month=10), "non-face-to-face"),
        *stay("P3", at(4, 10), at(20, 10), n=2),
        contact("P3", at(10, 10), "face-to-face"),
    ]
    assert at_discharge(events) == expected((1.0, 1), (0.0, 1), (1.0, 1), (0.0, 1), (100.0, 1), (16.0, 1))
    assert at_discharge(events, "2026-10") == expected((2.0, 1), (1.0, 1), (1.0, 1), (1.0, 1), (0.0, 1), (18.0, 1))


def test_a_contact_dated_by_day_alone_on_the_referrals_day_is_in_the_stay_and_one_before_it_is_not() -> None:
    # referred 3 Nov 10:00; a visit and a call dated 3 Nov alone answer it (they may have come after it
    # that day), as they do for the first-visit figure; a call at 08:00 that day, with its time, came
    # before the referral, and one dated 2 Nov alone the day before: neither is in the stay
    events = [
        contact("P3", at(2, 12), "non-face-to-face", day_alone=True),
        contact("P3", at(3, 8), "first-contact"),
        referral("P3", at(3, 10)),
        contact("P3", at(3, 12), "face-to-face", day_alone=True),
        contact("P3", at(3, 13), "non-face-to-face", day_alone=True),
        *stay("P3", at(4, 10), at(20, 10)),
    ]
    assert at_discharge(events) == expected((1.0, 1), (0.0, 1), (1.0, 1), (0.0, 1), (100.0, 1), (16.0, 1))


def test_the_means_are_per_discharge_and_the_ratio_and_percentage_over_the_months_first_visits() -> None:
    # P3 (3-20 Nov): a call (first-contact), the first visit, a follow-up (sent twice: one contact), a
    # later face-to-face (a follow-up, not a second first visit), and a visit after the discharge (not
    # the stay's). P6 (9-19 Nov): a partner says it attended on 12 Nov: a face-to-face visit and the
    # first visit, as the first-visit figure takes it, with no follow-up.
    # Visits 3 and 1 (mean 2), follow-ups 2 and 0 (mean 1), not visits 1 and 0 (mean 0.5); 2 follow-ups
    # per 2 first visits = 1.0; first visits with no follow-up 1 of 2 = 50%; 17 and 10 days, mean 13.5
    follow_up = contact("P3", at(12, 10), "follow-up")
    events = [
        referral("P3", at(3, 10)),
        contact("P3", at(4, 9), "first-contact"),
        *stay("P3", at(3, 10), at(20, 10)),
        contact("P3", at(5, 10), "face-to-face"),
        follow_up,
        RecordEvent(
            "sent-again", follow_up.type, follow_up.source, follow_up.time, follow_up.subject, follow_up.payload
        ),
        contact("P3", at(18, 10), "face-to-face"),
        contact("P3", at(21, 10), "face-to-face"),
        referral("P6", at(9, 9)),
        *stay("P6", at(9, 12), at(19, 12)),
        month.outcome("P6", at(12, 11), "attended"),
    ]
    figures = expected((2.0, 2), (1.0, 2), (0.5, 2), (1.0, 2), (50.0, 2), (13.5, 2))
    assert at_discharge(events) == figures
    rng = random.Random(5)
    in_time = sorted(events, key=lambda e: e.time)
    for _ in range(10):  # in whatever order the people's partitions are read
        assert figures_of(person_ordered(in_time, rng)) == figures


def test_a_referral_seen_months_before_and_never_taken_on_opens_no_later_stays_window() -> None:
    # P3 referred 5 Jan, visited 6 Jan, followed up 7 Jan, phoned 8 Jan, never on the caseload; referred
    # again 3 Nov, on the caseload 4-20 Nov, never seen: the November stay had no contacts
    january = [
        referral("P3", at(5, 10, month=1)),
        contact("P3", at(6, 10, month=1), "face-to-face"),
        contact("P3", at(7, 10, month=1), "follow-up"),
        contact("P3", at(8, 10, month=1), "non-face-to-face"),
    ]
    november = [referral("P3", at(3, 10), n=2), *stay("P3", at(4, 10), at(20, 10), n=2)]
    assert at_discharge([*january, *november]) == expected(
        (0.0, 1), (0.0, 1), (0.0, 1), (None, 0), (None, 0), (16.0, 1)
    )


def test_a_visit_before_the_stay_opened_for_its_referral_is_the_stays() -> None:
    # P3 referred 1 Nov, assessed (visited) 2 Nov, then taken on 3 Nov for that referral, to 20 Nov
    events = [referral("P3", at(1, 10)), contact("P3", at(2, 10), "face-to-face"), *stay("P3", at(3, 10), at(20, 10))]
    assert at_discharge(events) == expected((1.0, 1), (0.0, 1), (0.0, 1), (0.0, 1), (100.0, 1), (17.0, 1))


def test_a_referral_only_phoned_months_before_opens_no_later_stays_window_either() -> None:
    # as above, but January's referral was only phoned (8 Jan); November's stay had one visit (10 Nov)
    january = [referral("P3", at(5, 10, month=1)), contact("P3", at(8, 10, month=1), "non-face-to-face")]
    november = [referral("P3", at(3, 10), n=2), *stay("P3", at(4, 10), at(20, 10), n=2)]
    november.insert(2, contact("P3", at(10, 10), "face-to-face"))
    assert at_discharge([*january, *november]) == expected(
        (1.0, 1), (0.0, 1), (0.0, 1), (0.0, 1), (100.0, 1), (16.0, 1)
    )
