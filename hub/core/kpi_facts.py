"""The facts the commissioner's KPIs (hub.core.kpis) are computed from: a fold over the event log.

`KpiFacts` gathers, per person, what the log says: referrals to the service and those the service
made, contacts, referral outcomes, caseload episodes, PIC summaries and their receipts, huddle
agendas, and every birth date and practice said of a person. It works in any partition order (a
person's events keep their order on their partition) and counts each event once (by id). An event it
cannot read (a resource without an id, a field of the wrong shape) is skipped and counted in
`skipped`, by reason, as the record consumer dead-letters it; the rest of the log still counts.
Nothing here computes a figure: hub.core.kpis does, from these facts.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import date, datetime
from itertools import chain
from typing import Any

from hub.core.deaths import learn
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
    born_on,
    fhir_time,
    flagged,
    onward_destinations,
    practice_named,
    source_of,
    why_unreadable,
)
from hub.core.ports import Json, RecordEvent
from hub.core.record import resources_of
from hub.core.stays import opens_another_stay
from schemas.events import coordination as co

# what a payload of the wrong shape raises in a handler (a list where a dict belongs, and so on)
_UNREADABLE = (InvalidMessageError, LookupError, AttributeError, TypeError, ValueError, OverflowError)


@dataclass
class Referral:
    id: str
    person: str
    at: datetime
    practice: str | None  # as the referral's own Patient says (see hub.core.kpis.KpiFold.practice_of)
    source: str
    born: date | None  # as the referral's own Patient says
    requester: str = "unknown"
    first_contact: datetime | None = None
    first_visit: datetime | None = (
        None  # the visit this referral's wait is measured to, if it is the earliest it answered
    )
    visited: datetime | None = None  # when a visit answered it (the same visit may carry an earlier referral)


@dataclass
class Episode:
    id: str
    person: str
    coordinator: str
    start: datetime
    end: datetime | None = None
    letter: datetime | None = None


@dataclass
class KpiFacts:
    """What the log says, folded: feed every event of the log (hub.core.kpis.KpiFold asks for a month)."""

    service: str
    referrals: dict[str, Referral] = field(default_factory=dict)
    onward: dict[str, datetime] = field(default_factory=dict)  # a referral the service made -> when
    onward_to: dict[str, str] = field(default_factory=dict)  # and where to (its performer)
    onward_people: dict[str, str] = field(default_factory=dict)  # and whom
    summaries: dict[str, list[str]] = field(default_factory=dict)  # episode -> its summary's onward destinations
    outcomes: dict[str, tuple[datetime, str]] = field(default_factory=dict)
    episodes: dict[str, Episode] = field(default_factory=dict)
    huddles: dict[str, tuple[date, bool, bool]] = field(default_factory=dict)  # id -> (day, attended, cancelled)
    skipped: Counter[str] = field(default_factory=Counter)
    _seen: set[str] = field(default_factory=set)
    # person -> contact -> (when, kind): one per Encounter id (as the newest event for it says, as the
    # record keeps it) and one per partner's outcome of a referral (the first said)
    _contacts: dict[str, dict[str, tuple[datetime, str]]] = field(default_factory=dict)
    _contact_said: dict[tuple[str, str], datetime] = field(default_factory=dict)  # (person, Encounter) -> newest
    _births: dict[str, list[tuple[datetime, date]]] = field(default_factory=dict)  # person -> (said at, born)
    _practices: dict[str, list[tuple[datetime, str]]] = field(default_factory=dict)  # person -> (said at, ODS)
    _deaths: dict[str, Json] = field(default_factory=dict)  # person -> what hub.core.deaths.learn keeps
    _last: datetime | None = None  # the latest event time seen: how far the log has got
    _meetings: dict[str, datetime] = field(default_factory=dict)  # huddle -> when it meets
    _referrals_of: dict[str, set[str]] = field(default_factory=dict)  # person -> their referrals so far
    _stays: dict[str, set[str]] = field(default_factory=dict)  # referral -> the stays that end its wait
    _episodes_of: dict[str, list[str]] = field(default_factory=dict)  # person -> their episodes, in log order
    _episode_of: dict[tuple[str, str], str] = field(default_factory=dict)  # (person, referral) -> the one it opened
    _ended: set[str] = field(default_factory=set)  # the episodes an episode.closed named: ended for good
    _opened_for: dict[str, set[str]] = field(default_factory=dict)  # episode -> the referrals it names

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
        # as the rules engine learns a death (hub.core.deaths: the newest Patient, never a partner's form;
        # a person's events keep their order on their partition, so any partition order gives the same)
        learn(self._deaths.setdefault(event.subject, {}), event, resources)

    def died_by(self, person: str, t: datetime) -> bool:
        """Whether the person had died by t, as the rules engine knows it (a date of death; a death said
        without one, by when it was said)."""
        died = (self._deaths.get(person) or {}).get("died")
        if not died:
            return False
        return fhir_time(died.get("at"), datetime.fromisoformat(died["learned"])) <= t

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
            if isinstance(what, Referral):
                self.referrals[rid] = what
                self._referrals_of.setdefault(event.subject, set()).add(rid)
            elif what is not None:
                self.onward[rid], self.onward_to[rid] = what
                self.onward_people[rid] = event.subject

    def _request(
        self, event: RecordEvent, patient: Json, resources: list[Json], request: Json
    ) -> Referral | tuple[datetime, str] | None:
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
        return Referral(
            str(request["id"]), event.subject, at, practice, source_of(request), born, str(requester or "unknown")
        )

    def _contact(self, event: RecordEvent, resources: list[Json]) -> None:
        said = [
            (
                f"Encounter/{e['id']}",
                fhir_time((e.get("period") or {}).get("start"), event.time),
                contact_kind(e) or "unknown",
            )
            for e in of_kind(resources, "Encounter")
        ]
        held = self._contacts.setdefault(event.subject, {})
        for key, when, kind in said:
            if event.time >= self._contact_said.get((event.subject, key), event.time):  # (an older one: stale)
                held[key], self._contact_said[event.subject, key] = (when, kind), event.time

    def contacts_of(self, person: str) -> list[tuple[datetime, str]]:
        """The person's contacts as (when, kind), earliest first: each Encounter once (as the newest
        event for it says), and a partner's `attended` (face-to-face) or `contacted` (first-contact)."""
        return sorted(self._contacts.get(person, {}).values())

    def _outcome(self, event: RecordEvent, resources: list[Json]) -> None:
        requests = of_kind(resources, "ServiceRequest")
        said = [(str(r["id"]), extension(r, co.OUTCOME_EXTENSION, "valueCode")) for r in requests]
        for rid, outcome in said:
            held = self.outcomes.get(rid)
            if outcome is not None and held is not None and event.time < held[0]:
                continue  # dated before the outcome the referral has: stale, as the record skips it
            if outcome is not None:
                self.outcomes[rid] = (event.time, outcome)  # the latest outcome is the referral's
            if outcome in _CONTACT_OF_OUTCOME:  # a partner saying it reached the person is a contact
                said_before = self._contacts.setdefault(event.subject, {})  # (once: a re-send repeats it)
                said_before.setdefault(f"{rid} {outcome}", (event.time, _CONTACT_OF_OUTCOME[outcome]))

    def _opened(self, event: RecordEvent, resources: list[Json]) -> None:
        said = [
            (
                Episode(
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
            if episode.id in self._ended:
                continue  # closing is final: a re-sent opening changes nothing (hub.core.stays)
            if self._another_stay(episode, named):
                continue  # the first stay stands (see caseload)
            if episode.id not in self.episodes:  # (the same one again, open: it says who and since when)
                self._episodes_of.setdefault(episode.person, []).append(episode.id)
            self.episodes[episode.id] = episode
            self._opened_for[episode.id] = {r.removeprefix("ServiceRequest/") for r in named}
            for referral in named:
                self._episode_of.setdefault((episode.person, referral), episode.id)
            # the stay ends the referrals on the log before it (log order, as the rules engine
            # decides it: hub.core.tasks) and those it was opened for
            for rid in {
                *self._referrals_of.get(event.subject, ()),
                *(r.removeprefix("ServiceRequest/") for r in named),
            }:
                self._stays.setdefault(rid, set()).add(episode.id)

    def _another_stay(self, episode: Episode, named: set[str]) -> bool:
        """A second stay (hub.core.stays), asked of the person's episodes so far (open until closed)
        and the episode each of these referrals opened first."""
        person, opened = episode.person, self._episode_of
        theirs = ((e, self.episodes[e].end is None, ()) for e in self._episodes_of.get(person, ()))
        firsts = ((opened[(person, r)], False, (r,)) for r in named if (person, r) in opened)
        return opens_another_stay(episode.id, named, chain(theirs, firsts))

    def _closed(self, event: RecordEvent, resources: list[Json]) -> None:
        said = [
            (str(e["id"]), fhir_time((e.get("period") or {}).get("end"), event.time))
            for e in of_kind(resources, "EpisodeOfCare")
        ]
        onward = [d for c in of_kind(resources, "Composition") for d in onward_destinations(c)]
        for eid, end in said:
            self._ended.add(eid)
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


# what a referral outcome says happened, as a contact: "attended" is a visit, "contacted" a first
# contact (days to first contact), not a visit
_CONTACT_OF_OUTCOME = {"attended": "face-to-face", "contacted": "first-contact"}

_HANDLERS: dict[str, Any] = {
    co.REFERRAL_RECEIVED.type: KpiFacts._referral,
    co.CONTACT_RECORDED.type: KpiFacts._contact,
    co.REFERRAL_OUTCOME.type: KpiFacts._outcome,
    co.EPISODE_OPENED.type: KpiFacts._opened,
    co.EPISODE_CLOSED.type: KpiFacts._closed,
    co.PIC_SUMMARY_RECEIPT.type: KpiFacts._receipt,
    co.HUDDLE_AGENDA.type: KpiFacts._huddle,
}
