"""A scripted month in one locality (November 2026), with its task lists worked out by hand.

Practice Y01 has six people; the PIC service is Y0PIC (hub/rules/croydon-pic.v4.yaml); coordinators
c-ann and c-bob. The expectations below were computed by hand from the rules file, not by the code:

  P1  register row 3 admissions, 2 conditions        -> case list (croydon-a)
      discharged 10 Nov 12:00 (on case list)          -> discharge follow-up due 12 Nov 12:00; contact 11 Nov completes
  P2  register row 1 admission, 4 conditions          -> not eligible; discharged 12 Nov: no task
  P3  GP referral 3 Nov 10:00                         -> case list (croydon-b); triage due 6 Nov 10:00;
                                                         first visit due 1 Dec 10:00
      phone contact 5 Nov 15:00                       -> triage completed
      episode opened 6 Nov 09:00, c-ann               -> reviews due 18 Dec 09:00 and 29 Jan 09:00;
                                                         first visit moves to c-ann
      face-to-face 20 Nov 10:00                       -> first visit completed
      discharged from hospital 24 Nov 09:00           -> discharge follow-up due 26 Nov 09:00, never done:
                                                         overdue at 26 Nov 09:00, escalated to team-lead
  P4  social-care referral 4 Nov 10:00                -> triage due 7 Nov 10:00 (overdue then, escalated);
                                                         first visit due 2 Dec 10:00
      declined 13 Nov 11:00                           -> both cancelled
  P5  voluntary-sector referral addressed to the council (LA123), 5 Nov -> case list (croydon-b); no tasks
  P6  huddle referral 9 Nov 09:00                     -> case list; triage due 12 Nov 09:00; first visit due 7 Dec 09:00
      episode opened 10 Nov 09:30, c-bob; face-to-face 12 Nov 08:00 -> triage and first visit completed
      phone call (non-face-to-face) 18 Nov 14:00, home visit (follow-up) 25 Nov 10:00
                                                      -> nothing: the reviews wait 28 and 70 days
      episode closed 27 Nov 10:00                     -> reviews cancelled; PIC summary due 29 Nov 10:00
      practice receipt 28 Nov 09:00                   -> PIC summary completed
      onward referral to the council (LA123) 20 Nov  -> no tasks (not addressed to the service)
Huddles at Y01 on 3, 10, 17 and 24 Nov; the PIC attended three.
Ticks: every day at midnight, and 30 Nov 23:59. Overdue: exactly two (P4 triage, P3 discharge follow-up).
Caseloads at the end: c-ann 1 (P3), c-bob 0.

The commissioner's KPIs for November 2026, by hand (EXPECTED_KPIS):
  referrals to the service 3 (P3 gp, P4 adult-social-care, P6 huddle), all Y01, all aged 86 (85+),
  so none of unknown age (every referral carries the birth date 1940-03-01)
  first visits 2 (P6 12 Nov, P3 20 Nov); both within 4 weeks: 100%
  days to first contact: P3 2d5h = 2.2083, P6 2d23h = 2.9583 -> mean 2.58
  days to first visit: P3 17.0, P6 2.9583 -> mean 9.98
  discharges 1 (P6); declined 1 (P4, Y01) = 33.3% of referrals
  GP letter: P6 closed 27 Nov 10:00, receipt 28 Nov 09:00 = 23 h; within 48 h 100%; none pending
  (a discharge with no letter yet and its 48 h still running at the last event on the log)
  onward referrals 1 (P6's, made by the service, to LA123; P6's close carries no PIC summary here), so
  1 to LA123 and 1 person referred on; caseload at month end c-ann 1, c-bob 0; discharged after over 12 weeks 0%
  huddles held 4, attended 75%
  at discharge, of the one discharge (P6's stay; P1's and P2's are hospital discharges, P3 is still on
  the caseload, so their contacts count nowhere here). The stay ends the wait of P6's referral (9 Nov
  09:00, before the stay on the log and named by it, not declined), so its contacts run from 9 Nov
  09:00 to the close, 27 Nov 10:00: face-to-face 12 Nov 08:00 (the referral's first visit, as the
  first-visit figure counts it), non-face-to-face 18 Nov 14:00, follow-up 25 Nov 10:00.
    face-to-face visits: 12 Nov and 25 Nov = 2 -> mean 2 / 1 = 2.0
    face-to-face follow-ups: 2 visits - 1 first visit = 1 -> mean 1.0
    non-face-to-face contacts: 18 Nov = 1 -> mean 1.0
    first to follow-up ratio: 1 follow-up / 1 first visit = 1.0 follow-ups per first visit (of 1)
    initial visits with no follow-up: the 12 Nov visit has the 25 Nov one after it -> 0 of 1 = 0%
    days on caseload: opened 10 Nov 09:30 (the episode.opened's start: the close's own period.start,
    09:00, is not read), closed 27 Nov 10:00 = 17 days 30 minutes = 17 + 0.5 / 24 = 17.0208 -> 17.02
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from hub.core.identity import stable_id
from hub.core.ports import RecordEvent
from schemas.events import coordination as co
from schemas.events import encounter as enc

ODS = "https://fhir.nhs.uk/Id/ods-organization-code"
NHS = "https://fhir.nhs.uk/Id/nhs-number"
PRACTICE = "Y01"
SERVICE = "Y0PIC"
PEOPLE = {f"P{i}": f"person-{i}" for i in range(1, 7)}
NHS_NUMBERS = {"P1": "9990000018", "P2": "9990000026", "P3": "9990000034"}
NHS_NUMBERS |= {"P4": "9990000042", "P5": "9990000050", "P6": "9990000069"}


def at(day: int, hour: int = 0, minute: int = 0, month: int = 11, year: int = 2026) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=UTC)


def _event(type_: str, who: str, time: datetime, payload: dict[str, Any], source: str = PRACTICE) -> RecordEvent:
    return RecordEvent(
        id=stable_id("script", type_, who, time.isoformat()),
        type=type_,
        source=f"urn:ods:{source}",
        time=time,
        subject=PEOPLE[who],
        payload=payload,
    )


def _bundle(*resources: dict[str, Any]) -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": r} for r in resources]}


def patient(who: str) -> dict[str, Any]:
    return {
        "resourceType": "Patient",
        "id": PEOPLE[who],
        "identifier": [{"system": NHS, "value": NHS_NUMBERS[who]}],
        "birthDate": "1940-03-01",
        "generalPractitioner": [{"identifier": {"system": ODS, "value": PRACTICE}}],
    }


def register_row(who: str, time: datetime, admissions: int, conditions: int) -> RecordEvent:
    def obs(code: str, value: int) -> dict[str, Any]:
        return {
            "resourceType": "Observation",
            "id": stable_id("obs", who, code, time.isoformat()),
            "status": "final",
            "code": {"coding": [{"system": co.MEASURE_SYSTEM, "code": code}]},
            "subject": {"reference": f"Patient/{PEOPLE[who]}"},
            "effectiveDateTime": time.isoformat(),
            "valueInteger": value,
        }

    payload = _bundle(
        patient(who), obs("non-elective-admissions-12m", admissions), obs("long-term-conditions", conditions)
    )
    return _event(co.REGISTER_ROW.type, who, time, payload)


def referral_id(who: str) -> str:
    return stable_id("referral", who)


def referral(who: str, time: datetime, source: str, to: str = SERVICE, by: str = PRACTICE) -> RecordEvent:
    request = {
        "resourceType": "ServiceRequest",
        "id": referral_id(who) if by == PRACTICE else stable_id("onward", who, time.isoformat()),
        "status": "active",
        "intent": "order",
        "category": [{"coding": [{"system": "http://snomed.info/sct", "code": co.PATIENT_REFERRAL}]}],
        "subject": {"reference": f"Patient/{PEOPLE[who]}"},
        "authoredOn": time.isoformat(),
        "requester": {"identifier": {"system": ODS, "value": by}},
        "performer": [{"identifier": {"system": ODS, "value": to}}],
        "reasonCode": [{"text": "struggling at home"}],
        "extension": [
            {
                "url": co.SOURCE_EXTENSION,
                "valueCodeableConcept": {"coding": [{"system": co.REFERRAL_SOURCE_SYSTEM, "code": source}]},
            }
        ],
    }
    return _event(co.REFERRAL_RECEIVED.type, who, time, _bundle(request, patient(who)), source=by)


def outcome(who: str, time: datetime, value: str) -> RecordEvent:
    request = {
        "resourceType": "ServiceRequest",
        "id": referral_id(who),
        "status": "revoked" if value == "declined" else "active",
        "intent": "order",
        "subject": {"reference": f"Patient/{PEOPLE[who]}"},
        "extension": [{"url": co.OUTCOME_EXTENSION, "valueCode": value}],
    }
    return _event(co.REFERRAL_OUTCOME.type, who, time, _bundle(request), source=SERVICE)


def contact(who: str, time: datetime, kind: str) -> RecordEvent:
    encounter = {
        "resourceType": "Encounter",
        "id": stable_id("contact", who, time.isoformat()),
        "status": "finished",
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "HH"},
        "type": [{"coding": [{"system": co.CONTACT_SYSTEM, "code": kind}]}],
        "subject": {"reference": f"Patient/{PEOPLE[who]}"},
        "period": {"start": time.isoformat(), "end": time.isoformat()},
    }
    return _event(co.CONTACT_RECORDED.type, who, time, _bundle(encounter), source=SERVICE)


def episode_id(who: str) -> str:
    return stable_id("episode", who)


def episode(who: str, time: datetime, coordinator: str, closed: bool = False) -> RecordEvent:
    resource: dict[str, Any] = {
        "resourceType": "EpisodeOfCare",
        "id": episode_id(who),
        "status": "finished" if closed else "active",
        "patient": {"reference": f"Patient/{PEOPLE[who]}"},
        "careManager": {"identifier": {"system": co.COORDINATOR_SYSTEM, "value": coordinator}},
        "managingOrganization": {"identifier": {"system": ODS, "value": SERVICE}},
        "referralRequest": [{"reference": f"ServiceRequest/{referral_id(who)}"}],
        "period": {"start": time.isoformat()},
    }
    type_ = co.EPISODE_CLOSED.type if closed else co.EPISODE_OPENED.type
    if closed:
        resource["period"] = {"start": at(10, 9).isoformat(), "end": time.isoformat()}
    return _event(type_, who, time, _bundle(resource), source=SERVICE)


def discharge(who: str, time: datetime) -> RecordEvent:
    stay = {
        "resourceType": "Encounter",
        "id": stable_id("stay", who, time.isoformat()),
        "status": "finished",
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "IMP"},
        "subject": {"reference": f"Patient/{PEOPLE[who]}"},
        "period": {"start": (time - timedelta(days=3)).isoformat(), "end": time.isoformat()},
    }
    return _event(enc.ENCOUNTER_DISCHARGED.type, who, time, _bundle(patient(who), stay), source="RCB")


def receipt(who: str, time: datetime) -> RecordEvent:
    communication = {
        "resourceType": "Communication",
        "id": stable_id("receipt", who),
        "status": "completed",
        "subject": {"reference": f"Patient/{PEOPLE[who]}"},
        "received": time.isoformat(),
    }
    return _event(co.PIC_SUMMARY_RECEIPT.type, who, time, _bundle(communication))


def huddle(day: int, attended: bool) -> RecordEvent:
    agenda = {
        "resourceType": "List",
        "id": stable_id("huddle", PRACTICE, str(day)),
        "status": "current",
        "mode": "snapshot",
        "title": f"Huddle {PRACTICE}",
        "date": at(day, 13).isoformat(),
        "source": {"identifier": {"system": ODS, "value": PRACTICE}},
        "extension": [{"url": co.ATTENDED_EXTENSION, "valueBoolean": attended}],
    }
    return RecordEvent(
        id=stable_id("script-huddle", str(day)),
        type=co.HUDDLE_AGENDA.type,
        source=f"urn:ods:{SERVICE}",
        time=at(day, 13),
        subject=f"huddle-{PRACTICE}",
        payload=agenda,
    )


def script() -> list[RecordEvent]:
    """The month's events, in the order they happened (ticks excluded)."""
    return [
        register_row("P1", at(2, 9), 3, 2),
        register_row("P2", at(2, 9), 1, 4),
        referral("P3", at(3, 10), "gp"),
        referral("P4", at(4, 10), "adult-social-care"),
        referral("P5", at(5, 14), "voluntary-sector", to="LA123"),
        contact("P3", at(5, 15), "first-contact"),
        episode("P3", at(6, 9), "c-ann"),
        referral("P6", at(9, 9), "huddle"),
        discharge("P1", at(10, 12)),
        episode("P6", at(10, 9, 30), "c-bob"),
        contact("P1", at(11, 10), "follow-up"),
        contact("P6", at(12, 8), "face-to-face"),
        discharge("P2", at(12, 10)),
        outcome("P4", at(13, 11), "declined"),
        contact("P6", at(18, 14), "non-face-to-face"),
        contact("P3", at(20, 10), "face-to-face"),
        referral("P6", at(20, 11), "care-coordination", to="LA123", by=SERVICE),
        discharge("P3", at(24, 9)),
        contact("P6", at(25, 10), "follow-up"),
        episode("P6", at(27, 10), "c-bob", closed=True),
        receipt("P6", at(28, 9)),
        huddle(3, attended=True),
        huddle(10, attended=True),
        huddle(17, attended=False),
        huddle(24, attended=True),
    ]


def tick_times() -> list[datetime]:
    return [at(d) for d in range(2, 31)] + [at(30, 23, 59)]


# --- the hand-computed answer: person -> {rule: (status, due, owner, overdue)} -------------------
EXPECTED_TASKS: dict[str, dict[str, tuple[str, datetime, str, bool]]] = {
    "P1": {"discharge-follow-up": ("completed", at(12, 12), SERVICE, False)},
    "P3": {
        "referral-triage": ("completed", at(6, 10), SERVICE, False),
        "first-visit": ("completed", at(1, 10, month=12), "c-ann", False),
        "review-6-weeks": ("requested", at(18, 9, month=12), "c-ann", False),
        "review-12-weeks": ("requested", at(29, 9, month=1, year=2027), "c-ann", False),
        "discharge-follow-up": ("requested", at(26, 9), "team-lead", True),
    },
    "P4": {
        "referral-triage": ("cancelled", at(7, 10), "team-lead", True),
        "first-visit": ("cancelled", at(2, 10, month=12), SERVICE, False),
    },
    "P6": {
        "referral-triage": ("completed", at(12, 9), "c-bob", False),
        "first-visit": ("completed", at(7, 9, month=12), "c-bob", False),
        "review-6-weeks": ("cancelled", at(22, 9, 30, month=12), "c-bob", False),
        "review-12-weeks": ("cancelled", at(2, 9, 30, month=2, year=2027), "c-bob", False),
        "pic-summary": ("completed", at(29, 10), "c-bob", False),
    },
}
EXPECTED_OVERDUE = {("P4", "referral-triage", at(7, 10)), ("P3", "discharge-follow-up", at(26, 9))}
EXPECTED_CASE_LIST = {"P1": "croydon-a", "P3": "croydon-b", "P5": "croydon-b", "P6": "croydon-b"}
EXPECTED_CASELOADS = {"c-ann": 1, "c-bob": 0}

EXPECTED_KPIS: dict[tuple[str, str], float] = {
    ("referrals", ""): 3,
    ("referrals by practice", PRACTICE): 3,
    ("referrals by source", "adult-social-care"): 1,
    ("referrals by source", "gp"): 1,
    ("referrals by source", "huddle"): 1,
    ("age at referral", "<65"): 0,
    ("age at referral", "65-74"): 0,
    ("age at referral", "75-84"): 0,
    ("age at referral", "85+"): 3,
    # a band of its own for referrals that carry no birth date, so the bands add up to the referrals;
    # every referral this month carries one (patient(): 1940-03-01), so it is 0
    ("age at referral", "unknown"): 0,
    ("first visits", ""): 2,
    ("days from referral to first contact", "mean"): 2.58,
    ("days from referral to first visit", "mean"): 9.98,
    ("first visits within 4 weeks", "%"): 100.0,
    # at the month's end (the log's last event, 28 Nov 09:00): P3 and P6 visited, P4 declined
    ("referrals waiting over 4 weeks for a first visit", "at month end"): 0,
    ("discharges", ""): 1,
    ("declined by practice", PRACTICE): 1,
    ("declined", "% of referrals"): 33.3,
    ("hours from discharge to GP letter", "mean"): 23.0,
    ("GP letters within 48 hours", "%"): 100.0,
    ("GP letters within 48 hours", "pending"): 0,  # P6's letter came: decided
    ("onward referrals", ""): 1,
    ("onward referrals by destination", "LA123"): 1,
    ("people referred on", ""): 1,
    ("caseload at month end", "c-ann"): 1,
    ("caseload at month end", "c-bob"): 0,
    ("discharged after over 12 weeks on caseload", "%"): 0.0,
    # at discharge: P6's stay, 9 Nov 09:00 (its referral) to 27 Nov 10:00 (worked in the docstring)
    ("face-to-face visits at discharge", "mean"): 2.0,  # 12 Nov face-to-face, 25 Nov follow-up
    ("face-to-face follow-ups at discharge", "mean"): 1.0,  # 25 Nov (12 Nov is the first visit)
    ("non-face-to-face contacts at discharge", "mean"): 1.0,  # 18 Nov
    ("first to follow-up visit ratio", "follow-ups per first visit"): 1.0,  # 1 / 1
    ("initial visits with no follow-up", "%"): 0.0,  # 12 Nov's has 25 Nov's after it
    ("days on caseload at discharge", "mean"): 17.02,  # 10 Nov 09:30 -> 27 Nov 10:00
    ("huddles held", ""): 4,
    ("huddles attended", "%"): 75.0,
}
