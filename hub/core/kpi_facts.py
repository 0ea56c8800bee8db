"""The facts the commissioner's KPIs (hub.core.kpis) are computed from: a fold over the event log.

`KpiFacts` gathers, per person, what the log says: referrals to the service and those the service
made, contacts, referral outcomes, caseload episodes, PIC summaries and their receipts, huddle
agendas, and every birth date and practice said of a person. It works in any partition order (a
person's events keep their order on their partition) and counts each event once (by id). An event it
cannot read (a resource without an id, a field of the wrong shape) is skipped and counted in
`skipped`, by reason, as the record consumer dead-letters it; the rest of the log still counts.
Nothing here computes a figure: hub.core.kpis does, from these facts.

Merges (A40) are followed at report time (`resolve`), whatever order the merge and the retired key's
events came in: each key is read as the person it was last merged into (`who`), as the rules engine
follows the merges (hub.core.coordination `_People`: merges of merges, at most MAX_HOPS, and a merge
reversed makes the survivor it names a person again), taking the merges in event-time order (a merge
and its reversal are on two partitions, in no order but their times). A merged person's referrals,
contacts, births, practices, deaths and stays are the union of their keys'. Of two stays of a merged
person open at once, the one the engine keeps is their stay: at each merge, the survivor's (hub.core.merges);
the other is no stay for the KPIs (on no caseload, never a discharge), as a second stay never is.
Nor is a stay closed entered-in-error (`$close-duplicate`: a duplicate a merge left open, which should
never have been on the record): whoever it was under, it is no stay, no discharge and no letter's.
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
from hub.core.kpi_merges import survivors_of
from hub.core.kpi_reading import (
    born_on,
    fhir_time,
    flagged,
    onward_destinations,
    practice_named,
    source_of,
    why_unreadable,
)
from hub.core.merges import retirements
from hub.core.pic_summary import by_its_practice, letter_practice, receipt_names
from hub.core.ports import Json, RecordEvent
from hub.core.record import resources_of
from hub.core.stays import opens_another_stay
from schemas.events import coordination as co
from schemas.events.patient import PATIENT_MERGED

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
    _in_error: set[str] = field(default_factory=set)  # those it closed entered-in-error: never a stay
    _opened_for: dict[str, set[str]] = field(default_factory=dict)  # episode -> the referrals it names
    _merges: list[tuple[datetime, int, str, str]] = field(default_factory=list)  # (time, order, retired, into)
    # (person, when, recipient, letter) per PIC summary receipt; recipient and letter where it names them
    _receipts: list[tuple[str, datetime, str | None, str | None]] = field(default_factory=list)
    _addressed: dict[str, str | None] = field(default_factory=dict)  # a letter (Composition id) -> its practice
    # what `resolve` made of the merges, for the events seen so far (len(_seen) when it was made)
    _resolved: int = -1
    _who: dict[str, str] = field(default_factory=dict)  # a key merged away -> the person it now is
    _keys: dict[str, list[str]] = field(default_factory=dict)  # a merged person -> their keys (theirs first)
    _dropped: set[str] = field(default_factory=set)  # a merged person's stays that are not their stay
    _more_stays: dict[str, set[str]] = field(default_factory=dict)  # referral -> stays under another key
    _merged_contacts: dict[str, list[tuple[datetime, str]]] = field(default_factory=dict)
    _stays_kept: list[Episode] = field(default_factory=list)  # the stays on a caseload (see stays)
    _died: dict[str, datetime] = field(default_factory=dict)  # a person -> when they died, as the engine knows

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

    # --- merges, followed at report time ------------------------------------------------------

    def who(self, key: str) -> str:
        """The person a key is now (itself, unless merged away): as `resolve` last found it."""
        return self._who.get(key, key)

    def keys_of(self, person: str) -> list[str]:
        """Every key of a person (`who` gives the person): theirs first, then those merged into them."""
        return self._keys.get(person) or [person]

    def stays(self) -> list[Episode]:
        """The stays on a caseload: every episode but a merged person's that is not their stay."""
        self.resolve()
        return self._stays_kept

    def episodes_of(self, person: str) -> list[str]:
        """A person's stays, in order: as the log opened them (a merged person's: as they began)."""
        keys = self.keys_of(person)
        if len(keys) == 1:
            held = self._episodes_of.get(person, [])
            return [e for e in held if e not in self._in_error] if self._in_error else held
        theirs = [self.episodes[e] for k in keys for e in self._episodes_of.get(k, ()) if e not in self._dropped]
        return [e.id for e in sorted(theirs, key=lambda e: (e.start, e.id))]

    def referrals_made(self, person: str) -> set[str]:
        """The referrals ever made for the person (under any of their keys); some may have moved since."""
        keys = self.keys_of(person)
        if len(keys) == 1:
            return self._referrals_of.get(person, set())
        return {rid for k in keys for rid in self._referrals_of.get(k, ())}

    def said_of(self, person: str, said: dict[str, list[tuple[datetime, Any]]]) -> list[tuple[datetime, Any]]:
        """What was said of the person (births, practices), under any of their keys, earliest first."""
        keys = self.keys_of(person)
        if len(keys) == 1:
            return said.get(person, [])
        return sorted((x for k in keys for x in said.get(k, ())), key=lambda x: x[0])

    def stays_ending(self, referral: Referral) -> set[str]:
        """The stays that end the referral's wait (those begun after it on the log, or opened for it;
        under another key of a merged person, those begun after it was made)."""
        more = self._more_stays.get(referral.id)
        return self._stays.get(referral.id, set()) | more if more else self._stays.get(referral.id, set())

    def resolve(self) -> None:
        """Follow the merges the log holds (once for the events seen so far): who each key now is, a
        merged person's contacts and stays, and the letters their discharges had."""
        if self._resolved == len(self._seen):
            return
        self._resolved = len(self._seen)
        self._who, folds = survivors_of([(r, i) for _, _, r, i in sorted(self._merges)])
        self._keys = {}
        for key, person in sorted(self._who.items()):
            self._keys.setdefault(person, [person]).append(key)
        self._dropped, self._more_stays, self._merged_contacts = set(), {}, {}
        self._fold_stays(folds)
        self._dropped |= self._in_error
        for person, keys in self._keys.items():
            self._end_waits(person)
            self._merged_contacts[person] = self._contacts_under(keys)
        self._stays_kept = [e for e in self.episodes.values() if e.id not in self._dropped]
        self._died = {}
        for key, state in self._deaths.items():  # (a death any of a person's keys knew of: hub.core.merges)
            died = (state or {}).get("died")
            if died:
                at, person = fhir_time(died.get("at"), datetime.fromisoformat(died["learned"])), self.who(key)
                self._died[person] = min(at, self._died.get(person, at))
        self._letters()

    def _fold_stays(self, folds: list[tuple[str, str | None]]) -> None:
        """One stay at a time for a merged person, as the engine keeps it (hub.core.merges): at each
        merge, the survivor's stays stand, and a retired key's stay open at the same time as one of
        theirs (by their times: two keys' events are in no order on the log), or opened for the same
        referral, is not a stay (`_dropped`); the rest become the survivor's. A key begun again has none."""
        held: dict[str, list[Episode]] = {}

        def stays_of(key: str) -> list[Episode]:
            if key not in held:
                held[key] = [self.episodes[e] for e in self._episodes_of.get(key, ())]
            return held[key]

        for retired, person in folds:
            if person is None:
                held[retired] = []
                continue
            theirs, ours = stays_of(retired), stays_of(person)
            held[retired] = []
            for stay in theirs:
                named = self._opened_for.get(stay.id, set())
                if any(_at_once(stay, o) or not named.isdisjoint(self._opened_for.get(o.id, ())) for o in ours):
                    self._dropped.add(stay.id)
                else:
                    ours.append(stay)

    def _end_waits(self, person: str) -> None:
        """A merged person's stay begun after a referral made under another of their keys ends its wait,
        as a stay begun after it on the log under its own key does."""
        stays = [self.episodes[e] for e in self.episodes_of(person)]
        for rid in self.referrals_made(person):
            referral = self.referrals.get(rid)
            if referral is None or self.who(referral.person) != person:
                continue  # (moved to someone else since)
            for stay in stays:
                if stay.person != referral.person and referral.at <= stay.start:
                    self._more_stays.setdefault(rid, set()).add(stay.id)

    def _contacts_under(self, keys: list[str]) -> list[tuple[datetime, str]]:
        """A merged person's contacts: each Encounter once, as the newest event for it under any of
        their keys says (the survivor's at a tie), and a partner's outcome of a referral once (the first)."""
        best: dict[str, tuple[datetime | None, tuple[datetime, str]]] = {}
        for key in keys:
            for contact, held in self._contacts.get(key, {}).items():
                said = self._contact_said.get((key, contact))
                if contact not in best:
                    best[contact] = (said, held)
                    continue
                was_said, was = best[contact]
                if said is None or was_said is None:  # a partner's outcome: the first said
                    best[contact] = (was_said, min(was, held))
                elif said > was_said:
                    best[contact] = (said, held)
        return sorted(held for _, held in best.values())

    def _letters(self) -> None:
        """Each PIC summary receipt is the letter of the person's latest discharge at or before it that
        has none yet (under any of their keys: the hub sends a merged person's letter as the survivor's).
        A receipt naming a recipient other than the practice its letter was addressed to (on a log from
        before only the practice's delivery was a receipt: another subscriber's) is no letter to the GP."""
        for episode in self.episodes.values():
            episode.letter = None
        for key, when, recipient, letter in self._receipts:
            if not by_its_practice(recipient, letter, self._addressed):
                continue
            stays = (self.episodes[e] for e in self.episodes_of(self.who(key)))
            closed = [e for e in stays if e.end is not None and e.end <= when]
            if closed:
                latest = max(closed, key=lambda e: e.end or when)
                if latest.letter is None:
                    latest.letter = when

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
        without one, by when it was said); a death any of their keys knew of is theirs (hub.core.merges)."""
        self.resolve()
        died = self._died.get(person)
        return died is not None and died <= t

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
        event for it says), and a partner's `attended` (face-to-face) or `contacted` (first-contact);
        under every key merged into them (ask `resolve` first; `person` is one `who` gives)."""
        merged = self._merged_contacts.get(person)
        return list(merged) if merged is not None else sorted(self._contacts.get(person, {}).values())

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
            (str(e["id"]), fhir_time((e.get("period") or {}).get("end"), event.time), e.get("status"))
            for e in of_kind(resources, "EpisodeOfCare")
        ]
        onward = [d for c in of_kind(resources, "Composition") for d in onward_destinations(c)]
        for eid, end, status in said:
            self._ended.add(eid)
            if status == "entered-in-error":
                self._in_error.add(eid)
            found = self.episodes.get(eid)
            if found is not None:
                found.end = end
            if onward or eid in self.summaries:  # (a re-sent close says the summary again)
                self.summaries[eid] = onward

    def _receipt(self, event: RecordEvent, resources: list[Json]) -> None:
        recipient, letter = next((receipt_names(c) for c in of_kind(resources, "Communication")), (None, None))
        self._receipts.append((event.subject, event.time, recipient, letter))  # (the letter it answers: see resolve)

    def _letter(self, event: RecordEvent, resources: list[Json]) -> None:
        practice = letter_practice(resources)  # (the hub's own letter: whom it was addressed to)
        for summary in of_kind(resources, "Composition"):
            self._addressed[str(summary.get("id"))] = practice

    def _merged(self, event: RecordEvent, resources: list[Json]) -> None:
        said = retirements(resources)
        self._merges += [(event.time, len(self._seen), retired, into) for retired, into in said]

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


def _at_once(one: Episode, other: Episode) -> bool:
    """Whether two stays were open at once (by their times: begun, and ended or not)."""
    return (other.end is None or one.start < other.end) and (one.end is None or other.start < one.end)


# what a referral outcome says happened, as a contact: "attended" is a visit, "contacted" a first
# contact (days to first contact), not a visit
_CONTACT_OF_OUTCOME = {"attended": "face-to-face", "contacted": "first-contact"}

_HANDLERS: dict[str, Any] = {
    co.REFERRAL_RECEIVED.type: KpiFacts._referral,
    co.CONTACT_RECORDED.type: KpiFacts._contact,
    co.REFERRAL_OUTCOME.type: KpiFacts._outcome,
    co.EPISODE_OPENED.type: KpiFacts._opened,
    co.EPISODE_CLOSED.type: KpiFacts._closed,
    co.PIC_SUMMARY_SENT.type: KpiFacts._letter,
    co.PIC_SUMMARY_RECEIPT.type: KpiFacts._receipt,
    co.HUDDLE_AGENDA.type: KpiFacts._huddle,
    PATIENT_MERGED.type: KpiFacts._merged,
}
