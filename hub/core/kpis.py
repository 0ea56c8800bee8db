"""Commissioner KPIs from events (Croydon PIC minimum data set, shared/seeds/003), so they replay too.

A fold over the log in any partition order: every measure is per person first (a person's events
keep their order on their partition) and summed after. hub.core.kpi_facts gathers the facts (KpiFacts);
this module computes the figures from them: `KpiFold.report(month)` gives one row per measure and
breakdown, with the contract target where there is one. Months and days are Europe/London ones.

Definitions (each names its source events):
    referrals                referral.received addressed to the service, authored in the month; by practice
                             and by source. The practice is the one the referral's own Patient names, else
                             the latest one any event said of the person (hospital ADT, register rows,
                             referrals; never the hub's own letter) at or before the referral, else the
                             first one said after it, else the requester of a GP's referral, else
                             "unknown": never a voluntary organisation or a council that referred. One
                             ServiceRequest is one referral: a later event for the same request id (a
                             corrected re-send) replaces what the earlier one said
    first visits             face-to-face contacts that answered a referral, in the month (see below)
    days to first contact    referral -> first contact of any kind (mean, referrals whose first contact is in
                             the month)
    days to first visit      referral -> first face-to-face visit (mean), and % within 4 weeks (target 95%):
                             the visit's UK day no later than 28 days after the referral's UK day (a visit
                             in the afternoon of the 28th day is within, whatever the hour of referral)
    waiting over 4 weeks     referrals with no first visit yet at the end of the month (or where the log
                             stops, if sooner) whose 28th day has passed, not declined nor withdrawn by its
                             referrer (before the service took it on: a referral with a stay opened for it
                             waits for its visit until the stay closes, as the hub refuses a withdrawal
                             once the service has accepted or declined), and not ended by a caseload
                             episode that closed without the visit: those the % above cannot show
    discharges               episode.closed in the month
    declined                 referrals to the service whose latest outcome is declined (an outcome dated
                             before the one a referral has is stale, as the record takes it): by practice, those
                             declined in the month (by the month of that outcome, whenever referred); and
                             as a %, of the month's referrals (those counted under referrals) the ones
                             declined, whenever, as the log stands (a decline in a later month counts in
                             its referral's month). The % and its denominator are the same referrals, so
                             it never exceeds 100%; it need not be the count by practice over referrals
    age at referral          bands <65, 65-74, 75-84, 85+ from the birth date the referral carried, else
                             the latest one said of the person (any event's Patient whose id is the
                             subject: hospital ADT, register rows) at or before the referral, else the
                             first one said after it (a referral through the API carries none), and
                             "unknown" when the log holds none (the bands add up to the referrals)
    GP letter                episode.closed -> pic-summary.receipt, hours; % within 48 h (target 90%) of
                             the month's discharges whose letter came or whose 48 h have run out by the
                             last event on the log; the rest are "pending", not yet a miss
    onward referrals         referral.received made by the service itself, authored in the month, and the
                             destinations the PIC summaries of the month's discharges name in their
                             Onward referrals section (one a line, or separated by ';'; each once); by
                             destination (a referral's performer; what a summary names is counted under
                             IN_A_SUMMARY, its words never shown: they are free text, and may name the
                             person); and the people referred on (either way) in the month. One onward
                             referral both made through the hub and named in a summary counts twice
    caseload                 open episodes per coordinator at the end of the month (target 28). One stay at
                             a time: an episode.opened for a person with another episode open, or for a
                             referral that opened another (open or closed: a second accept, on a log from
                             before accepts were claimed), is not counted; the first in log order stands,
                             as the rules engine (hub.core.tasks) and the record decide
    over 12 weeks            % of the month's discharges that had been on the caseload more than 84 days
                             (target 20-25%)
    at discharge             per discharge of the month (an episode.closed: a person discharged twice
                             counts twice), from the contacts of the stay it closed (`contacts_in_stay`):
                             the person's contact.recorded (one per Encounter, as the newest event for it
                             says) and a partner's referral.outcome attended or contacted (once a
                             referral), from the earliest referral the stay answered (one whose wait it
                             ends, not declined nor ended by an earlier stay when it began) or the stay's
                             start, if earlier, to its end, both inclusive; one dated by day alone on
                             that first day is in (as it answers a referral made later that day); one at
                             or before the end of the person's stay before this one is that stay's.
                             Means of: face-to-face visits (kinds face-to-face and follow-up, and a
                             partner's attended); face-to-face follow-ups (those visits but the stay's
                             first visits, the ones the first-visit figure counts: a referral's first
                             face-to-face contact, so a later face-to-face is a follow-up, as is every
                             follow-up); non-face-to-face contacts (every contact that is not a visit:
                             kinds non-face-to-face and first-contact, and a partner's contacted; one of
                             no kind the hub knows is in neither). And over all the month's discharges:
                             follow-ups per first visit (the first to follow-up visit ratio, of the first
                             visits), and % of those first visits with no follow-up after them in the
                             stay (a follow-up before or at the same moment does not follow it)
    days on caseload         at discharge: the episode's start (as its episode.opened said) -> its close,
                             in days (elapsed time, as over 12 weeks), mean over the month's discharges.
                             The MDS's hours per client is not reported: the hub records no durations
    huddles attended         huddle.agenda Lists dated in the month, but those marked cancelled and those
                             whose time the log has not reached yet (an agenda is published ahead of the
                             meeting: it has not been held), and of them those marked attended (target 95%)

A contact answers every referral of the person that is waiting for one (made before it, not yet
answered, not declined, and not ended by a stay on the caseload that closed before the contact: one
begun after the referral on the log, in log order as the rules engine decides it, or opened for it), and
is used once: it counts as one first contact (first visit) however many
referrals it answers, and its wait is measured from the earliest of them. The MDS counts visits
("number of first visits", "% of visits within 4 weeks of referral"), so one visit is never two first
visits, and a later visit is a follow-up, not the first visit of a second, overlapping referral.

A person is counted once however many keys they had: an A40 merge is followed when the report is made
(hub.core.kpi_facts.KpiFacts.resolve), so a referral under a hospital number later merged into the NHS-
numbered identity is answered by a visit under either, their practice and age are the person's, they
are referred on once, and of two stays open at once the one the rules engine kept at the merge (the
survivor's) is their stay: the other is on no caseload and never a discharge, as a second stay never is.

A percentage or mean with nothing to divide by has no value (None), not 0. An event the fold cannot
read (a resource without an id, a field of the wrong shape) is skipped and counted in `skipped`, by
reason, as the record consumer dead-letters it; the rest of the log still counts.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from itertools import chain

from hub.core.days import answers_that_day
from hub.core.huddle import UK
from hub.core.kpi_facts import Episode, KpiFacts, Referral
from hub.core.kpi_months import month_bounds
from hub.core.kpi_reading import IN_A_SUMMARY, age_at, band, band_labels, days_between, said_near
from hub.core.pic_summary import LETTER_DUE
from schemas.events import coordination as co

# the contact kinds (schemas.events.coordination.CONTACT_KINDS, and a partner's outcomes: attended is a
# face-to-face, contacted a first-contact) that are face-to-face visits, and those that are not
VISITS = frozenset({"face-to-face", "follow-up"})
NOT_VISITS = frozenset({"first-contact", "non-face-to-face"})
RATIO = "follow-ups per first visit"


@dataclass(frozen=True)
class Row:
    """One figure: measure, breakdown ('' for the total), value (None: nothing to divide by), the
    target if the contract sets one, and for a percentage or a mean how many it is of (its
    denominator: 100% of one visit is not 100% of two hundred)."""

    kpi: str
    breakdown: str
    value: float | None
    target: str = ""
    of: int | None = None


class KpiFold(KpiFacts):
    """Folds events into the measures; feed every event of the log, then ask for a month."""

    def report(self, month: str) -> list[Row]:
        """Every measure for `month` (YYYY-MM, a Europe/London month)."""
        start, end = month_bounds(month)

        def inside(t: datetime | None) -> bool:
            return t is not None and start <= t < end

        self._first_contacts()  # (and follows the merges: hub.core.kpi_facts.KpiFacts.resolve)
        referred = [r for r in self.referrals.values() if inside(r.at)]
        discharged = [e for e in self.stays() if inside(e.end)]
        return [
            *self._referral_rows(referred),
            *self._visit_rows(inside),
            self._waiting_row(end),
            Row("discharges", "", len(discharged)),
            *self._declined_rows(inside, referred),
            *self._letter_rows(discharged),
            *self._onward_rows(inside, discharged),
            *self._caseload_rows(end),
            Row(
                "discharged after over 12 weeks on caseload",
                "%",
                _pct(len(_long(discharged)), len(discharged)),
                "20-25%",
                of=len(discharged),
            ),
            *self._at_discharge_rows(discharged),
            *self._huddle_rows(start.date(), end.date()),
        ]

    def _referral_rows(self, referred: list[Referral]) -> list[Row]:
        rows = [Row("referrals", "", len(referred))]
        practices = Counter(self.practice_of(r) for r in referred)
        rows += [Row("referrals by practice", p, n) for p, n in sorted(practices.items())]
        rows += [Row("referrals by source", s, n) for s, n in sorted(Counter(r.source for r in referred).items())]
        births = [r.born or said_near(self.said_of(self.who(r.person), self._births), r.at) for r in referred]
        bands = Counter(band(age_at(born, r.at)) for born, r in zip(births, referred, strict=True))
        return rows + [Row("age at referral", label, bands.get(label, 0)) for label in band_labels()]

    def practice_of(self, referral: Referral) -> str:
        """The person's practice, for a referral (see the module's definitions)."""
        said = referral.practice or said_near(self.said_of(self.who(referral.person), self._practices), referral.at)
        return said or (referral.requester if referral.source == "gp" else "unknown")

    def _onward_rows(self, inside: Callable[[datetime | None], bool], discharged: list[Episode]) -> list[Row]:
        made = [rid for rid, at in self.onward.items() if inside(at)]
        destinations = [self.onward_to[rid] for rid in made]
        # a summary's words are the coordinator's free text: counted, never shown (a name or an NHS
        # number written there must not reach an aggregate report)
        destinations += [IN_A_SUMMARY for e in discharged for _ in self.summaries.get(e.id, [])]
        people = {self.who(self.onward_people[rid]) for rid in made}  # (each person once, however merged)
        people |= {self.who(e.person) for e in discharged if self.summaries.get(e.id)}
        by = [Row("onward referrals by destination", d, n) for d, n in sorted(Counter(destinations).items())]
        return [Row("onward referrals", "", len(destinations)), *by, Row("people referred on", "", len(people))]

    def _visit_rows(self, inside: Callable[[datetime | None], bool]) -> list[Row]:
        visited = [r for r in self.referrals.values() if inside(r.first_visit)]
        contacted = [r for r in self.referrals.values() if inside(r.first_contact)]
        within = [r for r in visited if r.first_visit and days_between(r.at, r.first_visit) <= 28]
        return [
            Row("first visits", "", len(visited)),
            Row(
                "days from referral to first contact", "mean", _mean_days(contacted, "first_contact"), of=len(contacted)
            ),
            Row("days from referral to first visit", "mean", _mean_days(visited, "first_visit"), of=len(visited)),
            Row("first visits within 4 weeks", "%", _pct(len(within), len(visited)), "95%", of=len(visited)),
        ]

    def _waiting_row(self, end: datetime) -> Row:
        """Referrals still waiting for a first visit at the month's end (or where the log stops, if
        sooner) whose 4 weeks have run out: the people a percentage of visits made cannot show."""
        month_end = end - timedelta(microseconds=1)
        at = min(month_end, self._last) if self._last else month_end  # (inclusive)
        last_day = at.astimezone(UK).date()
        waiting = [
            r
            for r in self.referrals.values()
            if r.at <= at
            and (r.visited is None or r.visited > at)
            and not self._over(r, at)
            and (last_day - r.at.astimezone(UK).date()).days > 28
        ]
        return Row("referrals waiting over 4 weeks for a first visit", "at month end", len(waiting))

    def _declined_rows(self, inside: Callable[[datetime | None], bool], referred: list[Referral]) -> list[Row]:
        """The declines made in the month, by practice; and the % of the month's referrals declined
        (whenever): a % of the same referrals it counts, so never over 100%."""
        # only referrals to the service: an outcome on a referral to someone else is not this service declined
        declined = [
            self.practice_of(self.referrals[rid])
            for rid, (at, outcome) in self.outcomes.items()
            if outcome == "declined" and rid in self.referrals and inside(at)
        ]
        rows = [Row("declined by practice", p, n) for p, n in sorted(Counter(declined).items())]
        turned_down = sum(self.outcomes.get(r.id, (None, ""))[1] == "declined" for r in referred)
        percent = _pct(turned_down, len(referred))
        return [*rows, Row("declined", "% of referrals", percent, "to be baselined", of=len(referred))]

    def _letter_rows(self, discharged: list[Episode]) -> list[Row]:
        hours = [(e.letter - e.end) / timedelta(hours=1) for e in discharged if e.letter and e.end]
        last = self._last or datetime.min.replace(tzinfo=UTC)
        pending = [e for e in discharged if e.letter is None and e.end and e.end + LETTER_DUE > last]
        decided = len(discharged) - len(pending)  # a letter came, or 48 h passed on the log without one
        return [
            Row(
                "hours from discharge to GP letter",
                "mean",
                round(sum(hours) / len(hours), 2) if hours else None,
                of=len(hours),
            ),
            Row("GP letters within 48 hours", "%", _pct(sum(h <= 48 for h in hours), decided), "90%", of=decided),
            Row("GP letters within 48 hours", "pending", len(pending)),
        ]

    def _caseload_rows(self, end: datetime) -> list[Row]:
        started = [e for e in self.stays() if e.start < end]  # (a merged person's one stay: see stays)
        loads = Counter(e.coordinator for e in started if e.end is None or e.end >= end)
        return [
            Row("caseload at month end", c, loads.get(c, 0), "28") for c in sorted({e.coordinator for e in started})
        ]

    def _huddle_rows(self, first: date, after: date) -> list[Row]:
        last = self._last  # (an agenda is an event: the log reaches a meeting the moment it is held)
        held = [
            attended
            for hid, (day, attended, cancelled) in self.huddles.items()
            if first <= day < after and last is not None and self._meetings[hid] <= last and not cancelled
        ]
        return [
            Row("huddles held", "", len(held)),
            Row("huddles attended", "%", _pct(sum(held), len(held)), "95%", of=len(held)),
        ]

    def _at_discharge_rows(self, discharged: list[Episode]) -> list[Row]:
        """What the month's discharges had in their stays (MDS activity 5-8 and 19, quality 10): see
        `contacts_in_stay` for which contacts count, and the module's definitions."""
        stays = [_visits_in(self.contacts_in_stay(e), self._first_visits_of(self.who(e.person))) for e in discharged]
        n, firsts = len(discharged), sum(s.firsts for s in stays)
        days = [max(0.0, (e.end - e.start) / timedelta(days=1)) for e in discharged if e.end]
        follow_ups = sum(s.follow_ups for s in stays)
        return [
            Row("face-to-face visits at discharge", "mean", _mean([s.visits for s in stays]), of=n),
            Row("face-to-face follow-ups at discharge", "mean", _mean([s.follow_ups for s in stays]), of=n),
            Row("non-face-to-face contacts at discharge", "mean", _mean([s.remote for s in stays]), of=n),
            Row("first to follow-up visit ratio", RATIO, round(follow_ups / firsts, 2) if firsts else None, of=firsts),
            Row("initial visits with no follow-up", "%", _pct(sum(s.alone for s in stays), firsts), of=firsts),
            Row("days on caseload at discharge", "mean", _mean(days), of=n),
        ]

    def contacts_in_stay(self, stay: Episode) -> list[tuple[datetime, str]]:
        """The person's contacts during a stay, as (when, kind): from the earliest referral the stay
        answered (one whose wait it ends and that was still waiting when it began), or the stay's
        start if earlier, up to its end; one dated by day alone on that first day is in it (hub.core.days).
        A contact at or before the end of the person's stay before it is that stay's, never this one's."""
        person = self.who(stay.person)
        theirs = self.episodes_of(person)
        before = [self.episodes[e] for e in theirs[: theirs.index(stay.id)]] if stay.id in theirs else []
        answered = [
            r.at
            for r in (self.referrals.get(rid) for rid in self.referrals_made(person))
            if r is not None and self.who(r.person) == person and self._answered_by(r, stay)
        ]
        since, end = min([stay.start, *answered]), stay.end
        after = max((e.end for e in before if e.end is not None), default=None)
        return [
            (t, kind)
            for t, kind in self.contacts_of(person)
            if (since <= t or answers_that_day(t, since)) and (end is None or t <= end) and (after is None or t > after)
        ]

    def _answered_by(self, referral: Referral, stay: Episode) -> bool:
        """Whether the stay answered the referral: opened for it, or ended its wait, for which it must
        still have been waiting when the stay began (not declined, not ended by an earlier stay, not
        contacted or visited already: a referral answered months before and never taken on opens no
        later stay's window)."""
        if referral.id in self._opened_for.get(stay.id, ()):
            return True
        seen = [t for t in (referral.first_contact, referral.visited) if t is not None and t < stay.start]
        return stay.id in self.stays_ending(referral) and not seen and not self._over(referral, stay.start)

    def _first_visits_of(self, person: str) -> set[datetime]:
        """When the person's first visits were (the first-visit figure's: one a referral's, at most)."""
        referrals = (self.referrals.get(rid) for rid in self.referrals_made(person))
        return {r.first_visit for r in referrals if r and self.who(r.person) == person and r.first_visit is not None}

    def _first_contacts(self) -> None:
        self.resolve()
        by_person: dict[str, list[Referral]] = {}  # (a merged person's referrals under every key: one person)
        who = self._who.get
        for referral in sorted(self.referrals.values(), key=lambda r: (r.at, r.id)):
            referral.first_contact = referral.first_visit = referral.visited = None
            by_person.setdefault(who(referral.person, referral.person), []).append(referral)
        for person, referrals in by_person.items():
            contacts = self.contacts_of(person)
            self._answer(referrals, [t for t, _ in contacts], "first_contact")
            self._answer(referrals, [t for t, kind in contacts if kind == "face-to-face"], "first_visit")

    def _answer(
        self,
        referrals: list[Referral],
        contacts: list[datetime],
        attribute: str,
    ) -> None:
        """Each contact answers the referrals waiting for it, once: the earliest of them carries it. One
        dated by day alone answers a referral made later that UK day too (hub.core.days), as the record
        and the rules engine take it."""
        answered: set[str] = set()
        for t in contacts:
            waiting = [
                r
                for r in referrals
                if (r.at <= t or answers_that_day(t, r.at)) and r.id not in answered and not self._over(r, t)
            ]
            if waiting:
                setattr(waiting[0], attribute, t)
                answered |= {r.id for r in waiting}
                if attribute == "first_visit":
                    for referral in waiting:
                        referral.visited = t

    def _over(self, referral: Referral, t: datetime) -> bool:
        """No longer waiting at t: declined by then, withdrawn by its referrer by then with no stay opened
        for it (a withdrawal is refused once the service has accepted: a log from before that kept
        the visits of the stay the service opened), the person had died by then, or the person has been
        on the caseload since it (a stay begun after it on the log, or opened for it) and discharged by
        then without the contact it waited for."""
        at, outcome = self.outcomes.get(referral.id, (t, ""))
        if self.died_by(self._who.get(referral.person, referral.person), t):
            return True
        ids = set(chain(self._stays.get(referral.id, ()), self._more_stays.get(referral.id, ())))
        if at <= t and (outcome == "declined" or (outcome == co.WITHDRAWN and not self._opened_for_it(referral, ids))):
            return True
        stays = (self.episodes.get(eid) for eid in ids)
        return any(e is not None and e.end is not None and e.end <= t for e in stays)

    def _opened_for_it(self, referral: Referral, stays: set[str]) -> bool:
        return any(referral.id in self._opened_for.get(eid, ()) for eid in stays)


@dataclass(frozen=True)
class _Visits:
    """A stay's contacts, counted: face-to-face visits, of them first visits and follow-ups, first
    visits no follow-up came after, and the contacts that were not visits."""

    visits: int
    firsts: int
    follow_ups: int
    alone: int
    remote: int


def _visits_in(contacts: list[tuple[datetime, str]], first_visits: set[datetime]) -> _Visits:
    visits = [t for t, kind in contacts if kind in VISITS]
    firsts = sorted({t for t, kind in contacts if kind == "face-to-face" and t in first_visits})
    follow_ups = list(visits)
    for t in firsts:
        follow_ups.remove(t)  # (one contact each: a second at the same moment is a follow-up)
    alone = sum(not any(t > first for t in follow_ups) for first in firsts)
    remote = sum(kind in NOT_VISITS for _, kind in contacts)
    return _Visits(len(visits), len(firsts), len(follow_ups), alone, remote)


def _mean(values: list[int] | list[float]) -> float | None:
    return round(sum(values) / len(values), 2) if values else None


def _long(discharged: list[Episode]) -> list[Episode]:
    return [e for e in discharged if e.end and e.end - e.start > timedelta(days=84)]


def _mean_days(referrals: list[Referral], attribute: str) -> float | None:
    # (never below 0: an answer dated by day alone answers a referral made later that day)
    spans = [max(0.0, (getattr(r, attribute) - r.at) / timedelta(days=1)) for r in referrals if getattr(r, attribute)]
    return round(sum(spans) / len(spans), 2) if spans else None


def _pct(part: int, whole: int) -> float | None:
    return round(100 * part / whole, 1) if whole else None
