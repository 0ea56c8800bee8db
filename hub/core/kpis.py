"""Commissioner KPIs from events (Croydon PIC minimum data set, shared/seeds/003), so they replay too.

A fold over the log in any partition order: every measure is per person first (a person's events
keep their order on their partition) and summed after. `report(month)` gives one row per measure and
breakdown, with the contract target where there is one.

Definitions (each names its source events):
    referrals                referral.received addressed to the service, authored in the month; by practice
                             (the person's registered practice, else the requester) and by source
    first visits             the person's first face-to-face contact after a referral, in the month
    days to first contact    referral -> first contact of any kind (mean, referrals whose first contact is in
                             the month)
    days to first visit      referral -> first face-to-face visit (mean), and % within 28 days (target 95%)
    discharges               episode.closed in the month
    declined                 referral.outcome declined in the month, by practice; % of the month's referrals
    age at referral          bands <65, 65-74, 75-84, 85+ from the birth date the referral carried
    GP letter                episode.closed -> pic-summary.receipt, hours; % within 48 h (target 90%)
    onward referrals         referral.received made by the service itself, in the month
    caseload                 open episodes per coordinator at the end of the month (target 28)
    over 12 weeks            % of the month's discharges that had been on the caseload more than 84 days
                             (target 20-25%)
    huddles attended         huddle.agenda Lists dated in the month, and those marked attended (target 95%)
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

from hub.core.ports import Json, RecordEvent
from hub.core.tasks import bundle_resources, contact_kind
from schemas.events import coordination as co

ODS_SYSTEM = "https://fhir.nhs.uk/Id/ods-organization-code"
BANDS = ((0, 65, "<65"), (65, 75, "65-74"), (75, 85, "75-84"), (85, 200, "85+"))


@dataclass(frozen=True)
class Row:
    """One figure: measure, breakdown ('' for the total), value, and target if the contract sets one."""

    kpi: str
    breakdown: str
    value: float
    target: str = ""


@dataclass
class _Referral:
    id: str
    person: str
    at: datetime
    practice: str
    source: str
    age: int | None
    first_contact: datetime | None = None
    first_visit: datetime | None = None


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
    referrals: list[_Referral] = field(default_factory=list)
    onward: list[datetime] = field(default_factory=list)
    declined: list[tuple[datetime, str]] = field(default_factory=list)
    episodes: dict[str, _Episode] = field(default_factory=dict)
    huddles: dict[str, tuple[date, bool]] = field(default_factory=dict)
    _seen: set[str] = field(default_factory=set)
    _contacts: dict[str, list[tuple[datetime, str]]] = field(default_factory=dict)

    def add(self, event: RecordEvent) -> None:
        if event.id in self._seen:
            return
        self._seen.add(event.id)
        resources = bundle_resources(event.payload)
        handler = _HANDLERS.get(event.type)
        if handler is not None:
            handler(self, event, resources)

    # --- per event type ----------------------------------------------------------------------

    def _referral(self, event: RecordEvent, resources: list[Json]) -> None:
        patient = next((r for r in resources if r.get("resourceType") == "Patient"), {})
        for request in (r for r in resources if r.get("resourceType") == "ServiceRequest"):
            requester = ((request.get("requester") or {}).get("identifier") or {}).get("value")
            if requester == self.service:
                self.onward.append(_time(request.get("authoredOn"), event.time))
                continue
            performers = {(p.get("identifier") or {}).get("value") for p in request.get("performer") or []}
            if performers and self.service not in performers:
                continue
            at = _time(request.get("authoredOn"), event.time)
            self.referrals.append(
                _Referral(
                    id=str(request["id"]),
                    person=event.subject,
                    at=at,
                    practice=_practice(patient) or str(requester or "unknown"),
                    source=_source(request),
                    age=_age(patient.get("birthDate"), at),
                )
            )

    def _contact(self, event: RecordEvent, resources: list[Json]) -> None:
        for encounter in (r for r in resources if r.get("resourceType") == "Encounter"):
            kind = contact_kind(encounter) or "unknown"
            at = _time((encounter.get("period") or {}).get("start"), event.time)
            self._contacts.setdefault(event.subject, []).append((at, kind))

    def _outcome(self, event: RecordEvent, resources: list[Json]) -> None:
        for request in (r for r in resources if r.get("resourceType") == "ServiceRequest"):
            outcome = next(
                (e.get("valueCode") for e in request.get("extension") or [] if e.get("url") == co.OUTCOME_EXTENSION),
                None,
            )
            if outcome == "declined":
                self.declined.append((event.time, str(request["id"])))
            elif outcome == "attended":
                self._contacts.setdefault(event.subject, []).append((event.time, "face-to-face"))

    def _opened(self, event: RecordEvent, resources: list[Json]) -> None:
        for episode in (r for r in resources if r.get("resourceType") == "EpisodeOfCare"):
            manager = ((episode.get("careManager") or {}).get("identifier") or {}).get("value") or "unallocated"
            start = _time((episode.get("period") or {}).get("start"), event.time)
            self.episodes[str(episode["id"])] = _Episode(str(episode["id"]), event.subject, str(manager), start)

    def _closed(self, event: RecordEvent, resources: list[Json]) -> None:
        for episode in (r for r in resources if r.get("resourceType") == "EpisodeOfCare"):
            found = self.episodes.get(str(episode["id"]))
            if found is not None:
                found.end = _time((episode.get("period") or {}).get("end"), event.time)

    def _receipt(self, event: RecordEvent, resources: list[Json]) -> None:
        closed = [e for e in self.episodes.values() if e.person == event.subject and e.end and e.end <= event.time]
        if closed:
            latest = max(closed, key=lambda e: e.end or event.time)
            if latest.letter is None:
                latest.letter = event.time

    def _huddle(self, event: RecordEvent, resources: list[Json]) -> None:
        for agenda in (r for r in resources if r.get("resourceType") == "List"):
            held = _time(agenda.get("date"), event.time).date()
            attended = any(
                e.get("url") == co.ATTENDED_EXTENSION and e.get("valueBoolean") is True
                for e in agenda.get("extension") or []
            )
            before = self.huddles.get(str(agenda["id"]))
            self.huddles[str(agenda["id"])] = (held, attended or bool(before and before[1]))

    # --- the report ----------------------------------------------------------------------------

    def report(self, month: str) -> list[Row]:
        """Every measure for `month` (YYYY-MM)."""
        start = datetime.strptime(month, "%Y-%m").replace(tzinfo=UTC)
        end = (start + timedelta(days=32)).replace(day=1)

        def inside(t: datetime | None) -> bool:
            return t is not None and start <= t < end

        self._first_contacts()
        rows: list[Row] = []
        referred = [r for r in self.referrals if inside(r.at)]
        rows.append(Row("referrals", "", len(referred)))
        rows += [Row("referrals by practice", p, n) for p, n in sorted(Counter(r.practice for r in referred).items())]
        rows += [Row("referrals by source", s, n) for s, n in sorted(Counter(r.source for r in referred).items())]
        bands = Counter(_band(r.age) for r in referred)
        rows += [Row("age at referral", label, bands.get(label, 0)) for _, _, label in BANDS]
        visited = [r for r in self.referrals if inside(r.first_visit)]
        rows.append(Row("first visits", "", len(visited)))
        contacted = [r for r in self.referrals if inside(r.first_contact)]
        rows.append(Row("days from referral to first contact", "mean", _mean_days(contacted, "first_contact")))
        rows.append(Row("days from referral to first visit", "mean", _mean_days(visited, "first_visit")))
        within = [r for r in visited if r.first_visit and r.first_visit - r.at <= timedelta(days=28)]
        rows.append(Row("first visits within 4 weeks", "%", _pct(len(within), len(visited)), "95%"))
        discharged = [e for e in self.episodes.values() if inside(e.end)]
        rows.append(Row("discharges", "", len(discharged)))
        declined = [rid for t, rid in self.declined if inside(t)]
        practice_of = {r.id: r.practice for r in self.referrals}
        rows += [
            Row("declined by practice", p, n)
            for p, n in sorted(Counter(practice_of.get(d, "unknown") for d in declined).items())
        ]
        rows.append(Row("declined", "% of referrals", _pct(len(declined), len(referred)), "to be baselined"))
        letters = [e for e in discharged if e.letter and e.end]
        hours = [((e.letter or e.start) - (e.end or e.start)) / timedelta(hours=1) for e in letters]
        rows.append(Row("hours from discharge to GP letter", "mean", round(sum(hours) / len(hours), 2) if hours else 0))
        rows.append(Row("GP letters within 48 hours", "%", _pct(sum(h <= 48 for h in hours), len(discharged)), "90%"))
        rows.append(Row("onward referrals", "", sum(inside(t) for t in self.onward)))
        loads = Counter(
            e.coordinator for e in self.episodes.values() if e.start < end and (e.end is None or e.end >= end)
        )
        for coordinator in sorted({e.coordinator for e in self.episodes.values() if e.start < end}):
            rows.append(Row("caseload at month end", coordinator, loads.get(coordinator, 0), "28"))
        long = [e for e in discharged if e.end and e.end - e.start > timedelta(days=84)]
        rows.append(Row("discharged after over 12 weeks on caseload", "%", _pct(len(long), len(discharged)), "20-25%"))
        held = [attended for day, attended in self.huddles.values() if start.date() <= day < end.date()]
        rows.append(Row("huddles held", "", len(held)))
        rows.append(Row("huddles attended", "%", _pct(sum(held), len(held)), "95%"))
        return rows

    def _first_contacts(self) -> None:
        for referral in self.referrals:
            after = sorted(c for c in self._contacts.get(referral.person, []) if c[0] >= referral.at)
            referral.first_contact = after[0][0] if after else None
            visits = [t for t, kind in after if kind == "face-to-face"]
            referral.first_visit = visits[0] if visits else None


_HANDLERS: dict[str, Any] = {
    co.REFERRAL_RECEIVED.type: KpiFold._referral,
    co.CONTACT_RECORDED.type: KpiFold._contact,
    co.REFERRAL_OUTCOME.type: KpiFold._outcome,
    co.EPISODE_OPENED.type: KpiFold._opened,
    co.EPISODE_CLOSED.type: KpiFold._closed,
    co.PIC_SUMMARY_RECEIPT.type: KpiFold._receipt,
    co.HUDDLE_AGENDA.type: KpiFold._huddle,
}


def _time(value: Any, default: datetime) -> datetime:
    if not isinstance(value, str):
        return default
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return default
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _practice(patient: Json) -> str | None:
    for gp in patient.get("generalPractitioner") or []:
        ident = gp.get("identifier") or {}
        if ident.get("system") == ODS_SYSTEM and ident.get("value"):
            return str(ident["value"])
    return None


def _source(request: Json) -> str:
    for ext in request.get("extension") or []:
        if ext.get("url") == co.SOURCE_EXTENSION:
            for coding in (ext.get("valueCodeableConcept") or {}).get("coding") or []:
                return str(coding.get("code"))
    return "not recorded"


def _age(birth: Any, at: datetime) -> int | None:
    if not isinstance(birth, str) or len(birth) < 10:
        return None
    try:
        born = date.fromisoformat(birth[:10])
    except ValueError:
        return None
    day = at.date()
    return day.year - born.year - ((day.month, day.day) < (born.month, born.day))


def _band(age: int | None) -> str:
    for low, high, label in BANDS:
        if age is not None and low <= age < high:
            return label
    return "unknown"


def _mean_days(referrals: list[_Referral], attribute: str) -> float:
    spans = [(getattr(r, attribute) - r.at) / timedelta(days=1) for r in referrals if getattr(r, attribute)]
    return round(sum(spans) / len(spans), 2) if spans else 0.0


def _pct(part: int, whole: int) -> float:
    return round(100 * part / whole, 1) if whole else 0.0
