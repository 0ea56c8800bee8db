"""Commissioner KPIs from events (Croydon PIC minimum data set, shared/seeds/003), so they replay too.

A fold over the log in any partition order: every measure is per person first (a person's events
keep their order on their partition) and summed after. `report(month)` gives one row per measure and
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
                             stops, if sooner) whose 28th day has passed, not declined and not ended by a
                             caseload episode that closed without the visit: those the % above cannot show
    discharges               episode.closed in the month
    declined                 referrals to the service whose latest outcome is declined, by the month of that
                             outcome, by practice; % of the month's referrals
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

A percentage or mean with nothing to divide by has no value (None), not 0. An event the fold cannot
read (a resource without an id, a field of the wrong shape) is skipped and counted in `skipped`, by
reason, as the record consumer dead-letters it; the rest of the log still counts.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

from hub.core.errors import InvalidMessageError
from hub.core.fhir_read import (
    bundle_resources,
    contact_kind,
    extension,
    identifier_value,
    of_kind,
    referrals_of,
)
from hub.core.huddle import UK
from hub.core.kpi_reading import (
    IN_A_SUMMARY,
    age_at,
    band,
    band_labels,
    born_on,
    days_between,
    fhir_time,
    flagged,
    onward_destinations,
    practice_named,
    said_near,
    source_of,
    why_unreadable,
)
from hub.core.pic_summary import LETTER_DUE
from hub.core.ports import Json, RecordEvent
from hub.core.record import resources_of
from schemas.events import coordination as co

# what a payload of the wrong shape raises in a handler (a list where a dict belongs, and so on)
_UNREADABLE = (InvalidMessageError, LookupError, AttributeError, TypeError, ValueError, OverflowError)


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


@dataclass
class _Referral:
    id: str
    person: str
    at: datetime
    practice: str | None  # as the referral's own Patient says (see KpiFold.practice_of)
    source: str
    born: date | None  # as the referral's own Patient says
    requester: str = "unknown"
    first_contact: datetime | None = None
    first_visit: datetime | None = (
        None  # the visit this referral's wait is measured to, if it is the earliest it answered
    )
    visited: datetime | None = None  # when a visit answered it (the same visit may carry an earlier referral)


@dataclass
class _Episode:
    id: str
    person: str
    coordinator: str
    start: datetime
    end: datetime | None = None
    letter: datetime | None = None


@dataclass
class KpiFold:
    """Folds events into the measures; feed every event of the log, then ask for a month."""

    service: str
    referrals: dict[str, _Referral] = field(default_factory=dict)
    onward: dict[str, datetime] = field(default_factory=dict)  # a referral the service made -> when
    onward_to: dict[str, str] = field(default_factory=dict)  # and where to (its performer)
    onward_people: dict[str, str] = field(default_factory=dict)  # and whom
    summaries: dict[str, list[str]] = field(default_factory=dict)  # episode -> its summary's onward destinations
    outcomes: dict[str, tuple[datetime, str]] = field(default_factory=dict)
    episodes: dict[str, _Episode] = field(default_factory=dict)
    huddles: dict[str, tuple[date, bool, bool]] = field(default_factory=dict)  # id -> (day, attended, cancelled)
    skipped: Counter[str] = field(default_factory=Counter)
    _seen: set[str] = field(default_factory=set)
    _contacts: dict[str, list[tuple[datetime, str]]] = field(default_factory=dict)
    _births: dict[str, list[tuple[datetime, date]]] = field(default_factory=dict)  # person -> (said at, born)
    _practices: dict[str, list[tuple[datetime, str]]] = field(default_factory=dict)  # person -> (said at, ODS)
    _last: datetime | None = None  # the latest event time seen: how far the log has got
    _meetings: dict[str, datetime] = field(default_factory=dict)  # huddle -> when it meets
    _referrals_of: dict[str, set[str]] = field(default_factory=dict)  # person -> their referrals so far
    _stays: dict[str, set[str]] = field(default_factory=dict)  # referral -> the stays that end its wait
    _episodes_of: dict[str, list[str]] = field(default_factory=dict)  # person -> their episodes, in log order
    _episode_of: dict[tuple[str, str], str] = field(default_factory=dict)  # (person, referral) -> the one it opened

    def add(self, event: RecordEvent) -> None:
        """Fold one event; one the fold cannot read is skipped and counted, never raised."""
        if event.id in self._seen:
            return
        self._seen.add(event.id)
        self._last = event.time if self._last is None else max(self._last, event.time)
        handler = _HANDLERS.get(event.type)
        resources = None
        try:  # each handler reads everything before it changes anything: a skip leaves no trace
            if handler is not None:
                resources = resources_of(event)
                handler(self, event, resources)
        except _UNREADABLE as exc:
            self.skip(f"{event.type}: {why_unreadable(exc)}")
            return
        self._said_of_person(event, bundle_resources(event.payload) if resources is None else resources)

    @property
    def log_up_to(self) -> datetime | None:
        """The latest event time the fold has seen: how far the log goes (None: no event yet)."""
        return self._last

    def skip(self, reason: str) -> None:
        """Count an event or record left out of the figures, and why."""
        self.skipped[reason] += 1

    # --- per event type ----------------------------------------------------------------------

    def _said_of_person(self, event: RecordEvent, resources: list[Json]) -> None:
        """Remember the birth date and the practice any event's Patient says of the person (the
        subject), and when; the hub's own letter says only what it was told, and is not taken."""
        if event.type == co.PIC_SUMMARY_SENT.type:
            return
        for patient in of_kind(resources, "Patient"):
            if patient.get("id") != event.subject:
                continue
            born = born_on(patient.get("birthDate"))
            if born is not None:
                self._births.setdefault(event.subject, []).append((event.time, born))
            practice = practice_named(patient, resources)
            if practice is not None:
                self._practices.setdefault(event.subject, []).append((event.time, practice))

    def _referral(self, event: RecordEvent, resources: list[Json]) -> None:
        patient = next(iter(of_kind(resources, "Patient")), {})
        said = [
            (str(r["id"]), self._request(event, patient, resources, r)) for r in of_kind(resources, "ServiceRequest")
        ]
        for rid, what in said:
            self.referrals.pop(rid, None)  # a later event for the same request replaces the earlier
            self.onward.pop(rid, None)
            self.onward_to.pop(rid, None)
            self.onward_people.pop(rid, None)
            if isinstance(what, _Referral):
                self.referrals[rid] = what
                self._referrals_of.setdefault(event.subject, set()).add(rid)
            elif what is not None:
                self.onward[rid], self.onward_to[rid] = what
                self.onward_people[rid] = event.subject

    def _request(
        self, event: RecordEvent, patient: Json, resources: list[Json], request: Json
    ) -> _Referral | tuple[datetime, str] | None:
        """A referral to the service, an onward referral's time and destination, or None (addressed elsewhere)."""
        at = fhir_time(request.get("authoredOn"), event.time)
        requester = identifier_value(request.get("requester"))
        performers = sorted({str(identifier_value(p)) for p in request.get("performer") or [] if identifier_value(p)})
        if requester == self.service:
            return at, ", ".join(performers) or "not recorded"
        if performers and self.service not in performers:
            return None
        practice = practice_named(patient, resources)
        born = born_on(patient.get("birthDate"))
        return _Referral(
            str(request["id"]), event.subject, at, practice, source_of(request), born, str(requester or "unknown")
        )

    def _contact(self, event: RecordEvent, resources: list[Json]) -> None:
        said = [
            (fhir_time((e.get("period") or {}).get("start"), event.time), contact_kind(e) or "unknown")
            for e in of_kind(resources, "Encounter")
        ]
        self._contacts.setdefault(event.subject, []).extend(said)

    def _outcome(self, event: RecordEvent, resources: list[Json]) -> None:
        requests = of_kind(resources, "ServiceRequest")
        said = [(str(r["id"]), extension(r, co.OUTCOME_EXTENSION, "valueCode")) for r in requests]
        for rid, outcome in said:
            if outcome is not None:
                self.outcomes[rid] = (event.time, outcome)  # the latest outcome is the referral's
            if outcome in _CONTACT_OF_OUTCOME:  # a partner saying it reached the person is a contact
                self._contacts.setdefault(event.subject, []).append((event.time, _CONTACT_OF_OUTCOME[outcome]))

    def _opened(self, event: RecordEvent, resources: list[Json]) -> None:
        said = [
            (
                _Episode(
                    str(e["id"]),
                    event.subject,
                    str(identifier_value(e.get("careManager")) or "unallocated"),
                    fhir_time((e.get("period") or {}).get("start"), event.time),
                ),
                referrals_of(e),
            )
            for e in of_kind(resources, "EpisodeOfCare")
        ]
        for episode, named in said:
            if self._another_stay(episode, named):
                continue  # the first stay stands (see caseload)
            before = self.episodes.get(episode.id)
            if before is not None:  # a re-sent opening does not reopen a closed episode
                episode.end, episode.letter = before.end, before.letter
            else:
                self._episodes_of.setdefault(episode.person, []).append(episode.id)
            self.episodes[episode.id] = episode
            for referral in named:
                self._episode_of.setdefault((episode.person, referral), episode.id)
            # the stay ends the referrals on the log before it (log order, as the rules engine
            # decides it: hub.core.tasks) and those it was opened for
            for rid in {
                *self._referrals_of.get(event.subject, ()),
                *(r.removeprefix("ServiceRequest/") for r in named),
            }:
                self._stays.setdefault(rid, set()).add(episode.id)

    def _another_stay(self, episode: _Episode, named: set[str]) -> bool:
        """A second stay: the person has another episode open, or one of these referrals opened another."""
        theirs = (self.episodes[e] for e in self._episodes_of.get(episode.person, ()) if e != episode.id)
        if any(e.end is None for e in theirs):
            return True
        return any(self._episode_of.get((episode.person, r), episode.id) != episode.id for r in named)

    def _closed(self, event: RecordEvent, resources: list[Json]) -> None:
        said = [
            (str(e["id"]), fhir_time((e.get("period") or {}).get("end"), event.time))
            for e in of_kind(resources, "EpisodeOfCare")
        ]
        onward = [d for c in of_kind(resources, "Composition") for d in onward_destinations(c)]
        for eid, end in said:
            found = self.episodes.get(eid)
            if found is not None:
                found.end = end
            if onward or eid in self.summaries:  # (a re-sent close says the summary again)
                self.summaries[eid] = onward

    def _receipt(self, event: RecordEvent, resources: list[Json]) -> None:
        closed = [e for e in self.episodes.values() if e.person == event.subject and e.end and e.end <= event.time]
        if closed:
            latest = max(closed, key=lambda e: e.end or event.time)
            if latest.letter is None:
                latest.letter = event.time

    def _huddle(self, event: RecordEvent, resources: list[Json]) -> None:
        said = [
            (
                str(agenda["id"]),
                fhir_time(agenda.get("date"), event.time),
                flagged(agenda, co.ATTENDED_EXTENSION),
                flagged(agenda, co.CANCELLED_EXTENSION),
            )
            for agenda in of_kind(resources, "List")
        ]
        for hid, meeting, attended, cancelled in said:
            day = meeting.astimezone(UK).date()
            self._meetings[hid] = meeting
            # the agenda is published again as the week goes on: what the last one to say so said of
            # the meeting (held and attended, or cancelled) stands until another says otherwise
            before = self.huddles.get(hid)
            if attended or cancelled:
                self.huddles[hid] = (day, attended, cancelled and not attended)
            else:
                self.huddles[hid] = (day, bool(before and before[1]), bool(before and before[2]))

    # --- the report ----------------------------------------------------------------------------

    def report(self, month: str) -> list[Row]:
        """Every measure for `month` (YYYY-MM, a Europe/London month)."""
        start = datetime.strptime(month, "%Y-%m").replace(tzinfo=UK)
        end = start.replace(year=start.year + start.month // 12, month=start.month % 12 + 1)

        def inside(t: datetime | None) -> bool:
            return t is not None and start <= t < end

        self._first_contacts()
        referred = [r for r in self.referrals.values() if inside(r.at)]
        discharged = [e for e in self.episodes.values() if inside(e.end)]
        return [
            *self._referral_rows(referred),
            *self._visit_rows(inside),
            self._waiting_row(end),
            Row("discharges", "", len(discharged)),
            *self._declined_rows(inside, len(referred)),
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
            *self._huddle_rows(start.date(), end.date()),
        ]

    def _referral_rows(self, referred: list[_Referral]) -> list[Row]:
        rows = [Row("referrals", "", len(referred))]
        practices = Counter(self.practice_of(r) for r in referred)
        rows += [Row("referrals by practice", p, n) for p, n in sorted(practices.items())]
        rows += [Row("referrals by source", s, n) for s, n in sorted(Counter(r.source for r in referred).items())]
        bands = Counter(band(age_at(r.born or said_near(self._births.get(r.person), r.at), r.at)) for r in referred)
        return rows + [Row("age at referral", label, bands.get(label, 0)) for label in band_labels()]

    def practice_of(self, referral: _Referral) -> str:
        """The person's practice, for a referral (see the module's definitions)."""
        said = referral.practice or said_near(self._practices.get(referral.person), referral.at)
        return said or (referral.requester if referral.source == "gp" else "unknown")

    def _onward_rows(self, inside: Callable[[datetime | None], bool], discharged: list[_Episode]) -> list[Row]:
        made = [rid for rid, at in self.onward.items() if inside(at)]
        destinations = [self.onward_to[rid] for rid in made]
        # a summary's words are the coordinator's free text: counted, never shown (a name or an NHS
        # number written there must not reach an aggregate report)
        destinations += [IN_A_SUMMARY for e in discharged for _ in self.summaries.get(e.id, [])]
        people = {self.onward_people[rid] for rid in made}
        people |= {e.person for e in discharged if self.summaries.get(e.id)}
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

    def _declined_rows(self, inside: Callable[[datetime | None], bool], referred: int) -> list[Row]:
        # only referrals to the service: an outcome on a referral to someone else is not this service declined
        declined = [
            self.practice_of(self.referrals[rid])
            for rid, (at, outcome) in self.outcomes.items()
            if outcome == "declined" and rid in self.referrals and inside(at)
        ]
        rows = [Row("declined by practice", p, n) for p, n in sorted(Counter(declined).items())]
        return [*rows, Row("declined", "% of referrals", _pct(len(declined), referred), "to be baselined", of=referred)]

    def _letter_rows(self, discharged: list[_Episode]) -> list[Row]:
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
        started = [e for e in self.episodes.values() if e.start < end]
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

    def _first_contacts(self) -> None:
        by_person: dict[str, list[_Referral]] = {}
        for referral in sorted(self.referrals.values(), key=lambda r: (r.at, r.id)):
            referral.first_contact = referral.first_visit = referral.visited = None
            by_person.setdefault(referral.person, []).append(referral)
        for person, referrals in by_person.items():
            contacts = sorted(self._contacts.get(person, []))
            self._answer(referrals, [t for t, _ in contacts], "first_contact")
            self._answer(referrals, [t for t, kind in contacts if kind == "face-to-face"], "first_visit")

    def _answer(
        self,
        referrals: list[_Referral],
        contacts: list[datetime],
        attribute: str,
    ) -> None:
        """Each contact answers the referrals waiting for it, once: the earliest of them carries it."""
        answered: set[str] = set()
        for t in contacts:
            waiting = [r for r in referrals if r.at <= t and r.id not in answered and not self._over(r, t)]
            if waiting:
                setattr(waiting[0], attribute, t)
                answered |= {r.id for r in waiting}
                if attribute == "first_visit":
                    for referral in waiting:
                        referral.visited = t

    def _over(self, referral: _Referral, t: datetime) -> bool:
        """No longer waiting at t: declined by then, or the person has been on the caseload since it
        (a stay begun after it on the log, or opened for it) and discharged by then without the
        contact it waited for."""
        at, outcome = self.outcomes.get(referral.id, (t, ""))
        if outcome == "declined" and at <= t:
            return True
        stays = (self.episodes.get(eid) for eid in self._stays.get(referral.id, ()))
        return any(e is not None and e.end is not None and e.end <= t for e in stays)


# what a referral outcome says happened, as a contact: "attended" is a visit, "contacted" a first
# contact (days to first contact), not a visit
_CONTACT_OF_OUTCOME = {"attended": "face-to-face", "contacted": "first-contact"}

_HANDLERS: dict[str, Any] = {
    co.REFERRAL_RECEIVED.type: KpiFold._referral,
    co.CONTACT_RECORDED.type: KpiFold._contact,
    co.REFERRAL_OUTCOME.type: KpiFold._outcome,
    co.EPISODE_OPENED.type: KpiFold._opened,
    co.EPISODE_CLOSED.type: KpiFold._closed,
    co.PIC_SUMMARY_RECEIPT.type: KpiFold._receipt,
    co.HUDDLE_AGENDA.type: KpiFold._huddle,
}


def _long(discharged: list[_Episode]) -> list[_Episode]:
    return [e for e in discharged if e.end and e.end - e.start > timedelta(days=84)]


def _mean_days(referrals: list[_Referral], attribute: str) -> float | None:
    spans = [(getattr(r, attribute) - r.at) / timedelta(days=1) for r in referrals if getattr(r, attribute)]
    return round(sum(spans) / len(spans), 2) if spans else None


def _pct(part: int, whole: int) -> float | None:
    return round(100 * part / whole, 1) if whole else None
