"""The weekly GP huddle / PCN MDT agenda: who a practice's meeting should talk about, and why.

Pure: the caller hands in the resources (the practice's registered people and what the record holds
about them) and the meeting date; nothing here reads a clock or a store. Four sections:

    new referrals       ServiceRequests authored in the window (any status but entered-in-error)
    newly eligible      active case-list Flags (ELIGIBLE in FLAG_SYSTEM) whose period started in the window
    recent discharges   finished hospital Encounters whose period.end falls in the window (a
                        coordinator's contact, typed in CONTACT_SYSTEM, is not a hospital stay)
    overdue tasks       coordinator Tasks whose businessStatus is `overdue` and that are still open
                        (not completed, cancelled, failed, rejected or entered-in-error), whatever their age

A person whose Patient says they died (deceasedDateTime, or deceasedBoolean true) is no new referral
and not newly eligible; where they are still on the agenda (the discharge that was their death, an
overdue letter), each item says they died and when, and, while an EpisodeOfCare of theirs is open,
that it should be closed (the EpisodeOfCare is then disclosed with the item, so the policy decides
it too): a meeting must not plan a visit to a bereaved family.

The window is the seven Europe/London days before the meeting day: [day - 7, day), so a referral
authored at 00:00 on the meeting day is on next week's agenda. People count as the practice's when
their Patient's generalPractitioner names it, by ODS identifier or by reference to an Organization
carrying that ODS code (the hospital adapter's `Organization/{stable_id("ods", code)}` among them):
the record's newest word on their practice, a register row's or a hospital's (hub.core.record), so
someone who moved is on their new practice's agenda, as their PIC summary goes there.

Who may see it (`refusal`, and `agenda_refusal` for a published one): a GP practice (an ODS code of a
letter and five digits) sees its own practice's agenda only; every other organisation that attends
huddles (the coordination service, a PCN, the council, the hospital, a voluntary organisation) sees what
the sharing policy lets it. A PCN's code (U and five digits) and the coordination service's own are
never taken for a practice's; any other organisation with a code of that shape (a Y-code hub) is.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import date, datetime, timedelta
from typing import Any

from hub.core.deaths import death_said
from hub.core.huddle_reading import (  # (UK, ODS_SYSTEM and display_name: importable from here, as before)
    ODS_SYSTEM as ODS_SYSTEM,
)
from hub.core.huddle_reading import UK as UK
from hub.core.huddle_reading import (
    describe_discharge,
    describe_flag,
    describe_referral,
    describe_task,
    discharge_time,
    flag_time,
    instant_of,
    ods_codes,
    overdue_due,
    person_in,
    referral_time,
)
from hub.core.huddle_reading import display_name as display_name
from hub.core.identity import stable_id
from hub.core.stays import is_open

Json = dict[str, Any]
WINDOW_DAYS = 7
NHS_SYSTEM = "https://fhir.nhs.uk/Id/nhs-number"
CLOSE_EPISODE = "; their episode of care should be closed"
# Not (yet) in schemas/events/coordination.py: how a huddle.agenda List names its practice and sections.
AGENDA_SYSTEM = "https://carehub.invalid/Id/huddle-agenda"
SECTION_SYSTEM = "https://carehub.invalid/CodeSystem/huddle-section"
PRACTICE_EXTENSION = "https://carehub.invalid/StructureDefinition/huddle-practice"
SECTIONS = {
    "new-referral": "New referrals",
    "newly-eligible": "Newly eligible for care coordination",
    "recent-discharge": "Recent discharges",
    "overdue-task": "Overdue tasks",
}
# a GP practice's ODS code: a letter and five digits (Y00001), as adapters/referrals reads one; a PCN's
# is shaped so too, with a U (U12345), and PCN care coordinators attend huddles
GP_PRACTICE = re.compile(r"[A-Z][0-9]{5}", re.ASCII)
PCN = re.compile(r"U[0-9]{5}", re.ASCII)


@dataclass(frozen=True)
class Item:
    """One line of the agenda: whom, what, when (the record's own FHIR time), and the resource."""

    section: str
    person_key: str
    name: str | None
    nhs_number: str | None
    what: str
    when: str
    reference: str
    died: str | None = None  # the person died: when, and what is still to do (also at the end of `what`)
    episode: str | None = None  # the open EpisodeOfCare `died` says to close


@dataclass(frozen=True)
class Agenda:
    """A practice's agenda for one meeting; `withheld_*` count what the sharing policy kept back."""

    practice_ods: str
    meeting_date: date
    referrals: tuple[Item, ...] = ()
    eligible: tuple[Item, ...] = ()
    discharges: tuple[Item, ...] = ()
    overdue: tuple[Item, ...] = ()
    practice_name: str | None = None
    withheld_people: int = 0
    withheld_items: int = 0
    notes: tuple[str, ...] = field(default=())
    role_without_purpose: str | None = None  # the viewer's role reads nothing personal: why all is withheld

    @property
    def window(self) -> tuple[date, date]:
        """First and last day the dated sections cover (inclusive)."""
        return self.meeting_date - timedelta(days=WINDOW_DAYS), self.meeting_date - timedelta(days=1)

    @property
    def items(self) -> tuple[Item, ...]:
        return self.referrals + self.eligible + self.discharges + self.overdue

    def people(self) -> list[str]:
        """Person keys on the agenda, in order of first appearance."""
        return list(dict.fromkeys(i.person_key for i in self.items))


def agenda(practice_ods: str, meeting_date: date, resources: Iterable[Json]) -> Agenda:
    """The agenda for `practice_ods`'s meeting on `meeting_date`, from whatever `resources` hold."""
    found = list(resources)
    organizations = {f"Organization/{r['id']}": r for r in found if r.get("resourceType") == "Organization"}
    patients = {
        str(r["id"]): r
        for r in found
        if r.get("resourceType") == "Patient" and practice_ods in practice_codes(r, organizations)
    }
    start = datetime.combine(meeting_date - timedelta(days=WINDOW_DAYS), datetime.min.time(), UK)
    end = datetime.combine(meeting_date, datetime.min.time(), UK)

    def in_window(text: str | None) -> bool:
        instant = instant_of(text)
        return instant is not None and start <= instant < end

    deaths = _deaths(patients, found)
    names = _names(organizations.values())

    def section(name: str, keep: Callable[[Json], str | None], describe: Callable[[Json], str]) -> tuple[Item, ...]:
        items = []
        for r in found:
            person = person_in(r)
            when = keep(r)
            if person in patients and when is not None and not (person in deaths and name in _NOT_AFTER_DEATH):
                items.append(
                    _item(name, patients[person], describe(r), when, r, *deaths.get(str(person), (None, None)))
                )
        return tuple(sorted(items, key=lambda i: (instant_of(i.when) or end, i.name or "", i.reference)))

    practice = next((o for o in organizations.values() if practice_ods in ods_codes(o)), None)
    return Agenda(
        practice_ods=practice_ods,
        meeting_date=meeting_date,
        referrals=section("new-referral", referral_time(in_window), lambda r: describe_referral(r, names)),
        eligible=section("newly-eligible", flag_time(in_window), describe_flag),
        discharges=section("recent-discharge", discharge_time(in_window), lambda r: describe_discharge(r, names)),
        overdue=section("overdue-task", overdue_due, describe_task),
        practice_name=str(practice["name"]) if practice and practice.get("name") else None,
    )


def _names(organizations: Iterable[Json]) -> dict[str, str]:
    """Each named Organization's name, by each of its ODS codes and by its reference."""
    names: dict[str, str] = {}
    for org in organizations:
        if org.get("name"):
            names |= {code: str(org["name"]) for code in ods_codes(org)} | {
                f"Organization/{org['id']}": str(org["name"])
            }
    return names


def is_gp_practice(code: str, service: str | None = None) -> bool:
    """Whether an ODS code is taken for a GP practice's (a letter and five digits), whatever its case:
    never a PCN's (U and five digits) nor the coordination service's own (`service`, the rules'
    `service.ods`); any other organisation with a code of that shape is."""
    found = code.strip().upper()
    if service is not None and found == service.strip().upper():
        return False
    return GP_PRACTICE.fullmatch(found) is not None and PCN.fullmatch(found) is None


def refusal(org: str, practice_ods: str, service: str | None = None) -> str | None:
    """Why `org` may not see `practice_ods`'s agenda, or None if it may (the policy then decides each
    person and item). The agenda lists a practice's registered people, so another GP practice
    (is_gp_practice; `service`, the coordination service's code, is none) is refused whatever it
    holds: the answer never depends on the record (not even on whether the practice has anyone on it)."""
    asker, practice = org.strip().upper(), practice_ods.strip().upper()
    if not is_gp_practice(asker, service) or asker == practice:
        return None
    return (
        f"{asker} is a GP practice, and a practice sees only its own huddle agenda: {practice}'s is for "
        f"{practice} and the organisations that attend its huddle under the sharing agreements"
    )


def agenda_refusal(org: str, resource: Json, service: str | None = None) -> str | None:
    """Why a published agenda (a List to_fhir_list made: its practice in PRACTICE_EXTENSION) may not go to
    `org`, as `refusal` says for one read; None for any other resource, or where it may."""
    if resource.get("resourceType") != "List":
        return None
    said = (e.get("valueIdentifier") for e in resource.get("extension") or [] if e.get("url") == PRACTICE_EXTENSION)
    practice = next((str(i["value"]) for i in said if isinstance(i, dict) and i.get("value")), None)
    return None if practice is None else refusal(org, practice, service)


def withheld_note(agenda: Agenda) -> str | None:
    """What the agenda says of what it does not show, or None: the counts, and why (the policy, or the
    viewer's role, which sees no clinical detail whatever anyone's consent)."""
    if not (agenda.withheld_people or agenda.withheld_items):
        return None
    counts = f"{agenda.withheld_people} person(s) and {agenda.withheld_items} item(s)"
    if agenda.role_without_purpose:
        return (
            f"{counts} not shown: the {agenda.role_without_purpose} role does not see clinical detail (people, "
            "referrals, discharges, tasks), whatever anyone's consent; its organisation's clinicians and "
            "coordinators may see them"
        )
    return f"{counts} withheld under the information-sharing policy"


_NOT_AFTER_DEATH = frozenset({"new-referral", "newly-eligible"})  # no one to refer or find eligible


def _deaths(patients: Mapping[str, Json], found: list[Json]) -> dict[str, tuple[str, str | None]]:
    """By person key, for those who died: what their items say of it, and the open EpisodeOfCare it
    says to close (their latest, when the record holds one)."""
    open_episodes = {
        person_in(r): f"EpisodeOfCare/{r['id']}"
        for r in found
        if r.get("resourceType") == "EpisodeOfCare" and is_open(r.get("status"))
    }
    found_dead = {key: (died, open_episodes.get(key)) for key, p in patients.items() if (died := describe_death(p))}
    return {key: (died + (CLOSE_EPISODE if episode else ""), episode) for key, (died, episode) in found_dead.items()}


def describe_death(patient: Json) -> str | None:
    """`Died Sun 06 Dec 2026 23:00` (UK time; `date not recorded` for deceasedBoolean alone); None for
    a Patient not said to have died."""
    said = death_said(patient)
    if said is None:
        return None
    died = patient.get("deceasedDateTime") if said == "deceasedDateTime" else None
    instant = instant_of(str(died)) if died else None
    day_only = len(str(died)) <= 10  # (a date alone is a day, not its midnight)
    when = instant.astimezone(UK).strftime("%a %d %b %Y" + ("" if day_only else " %H:%M")) if instant else None
    when = when or (str(died) if died else "date not recorded")
    return f"Died {when}"


def practice_refs(patient: Json) -> tuple[list[str], set[str]]:
    """What a Patient's generalPractitioner names: the ids of the Organizations it references, in
    order, and the ODS codes it gives by identifier."""
    refs: list[str] = []
    codes: set[str] = set()
    for gp in patient.get("generalPractitioner") or []:
        kind, _, rid = str(gp.get("reference", "")).partition("/")
        if kind == "Organization" and rid and rid not in refs:
            refs.append(rid)
        ident = gp.get("identifier") or {}
        if ident.get("system") == ODS_SYSTEM and ident.get("value"):
            codes.add(str(ident["value"]))
    return refs, codes


def practice_codes(patient: Json, organizations: Mapping[str, Json]) -> set[str]:
    """ODS codes of the practices a Patient is registered with: from generalPractitioner's identifier,
    or from the Organization it references (looked up in `organizations`, keyed `Organization/{id}`)."""
    codes: set[str] = set()
    for gp in patient.get("generalPractitioner") or []:
        ident = gp.get("identifier") or {}
        if ident.get("system") == ODS_SYSTEM and ident.get("value"):
            codes.add(str(ident["value"]))
        ref = str(gp.get("reference", ""))
        if ref in organizations:
            codes |= ods_codes(organizations[ref])
    return codes


def practice_reference(practice_ods: str) -> str:
    """The hospital adapter's reference for a practice's Organization (hub.core.identity.stable_id)."""
    return f"Organization/{stable_id('ods', practice_ods)}"


def withhold(full: Agenda, permitted: Callable[[str], bool]) -> Agenda:
    """The agenda without the people whose Patient may not be shown, and without the items whose
    resource may not be; `permitted` takes a reference (`Patient/{key}`, `Task/{id}`)."""
    hidden = {p for p in full.people() if not permitted(f"Patient/{p}")}

    def keep(items: tuple[Item, ...]) -> tuple[Item, ...]:
        return tuple(_unsaid(i, permitted) for i in items if i.person_key not in hidden and permitted(i.reference))

    kept = replace(
        full,
        referrals=keep(full.referrals),
        eligible=keep(full.eligible),
        discharges=keep(full.discharges),
        overdue=keep(full.overdue),
    )
    shown_people = {i.person_key for i in kept.items}
    return replace(
        kept,
        withheld_people=full.withheld_people + len(set(full.people()) - shown_people),
        withheld_items=full.withheld_items + len(full.items) - len(kept.items),
    )


def _unsaid(item: Item, permitted: Callable[[str], bool]) -> Item:
    """The item without the note to close an EpisodeOfCare that may not be shown (it would say it is open)."""
    if item.episode is None or permitted(item.episode):
        return item
    died = str(item.died).removesuffix(CLOSE_EPISODE)
    return replace(item, what=item.what.removesuffix(CLOSE_EPISODE), died=died, episode=None)


def disclosed(full: Agenda, resources: Iterable[Json]) -> list[Json]:
    """What showing `full` would disclose: each person's Patient, each item's resource, and the open
    EpisodeOfCare an item of a person who died says to close."""
    wanted = {f"Patient/{p}" for p in full.people()} | {i.reference for i in full.items}
    wanted |= {i.episode for i in full.items if i.episode}
    return [r for r in resources if f"{r.get('resourceType')}/{r.get('id')}" in wanted]


def to_fhir_list(agenda: Agenda) -> Json:
    """The agenda as a FHIR R4 List (status current, mode snapshot): one entry per item, pointing at
    the resource, its section in entry.flag; the practice in an extension, the meeting in `date`."""
    entries = [
        {
            "flag": {"coding": [{"system": SECTION_SYSTEM, "code": i.section, "display": SECTIONS[i.section]}]},
            "item": {"reference": i.reference},
        }
        for i in agenda.items
    ]
    day = agenda.meeting_date.isoformat()
    practice: Json = {"system": ODS_SYSTEM, "value": agenda.practice_ods}
    result: Json = {
        "resourceType": "List",
        "id": stable_id("huddle-agenda", agenda.practice_ods, day),
        "extension": [{"url": PRACTICE_EXTENSION, "valueIdentifier": practice}],
        "identifier": [{"system": AGENDA_SYSTEM, "value": f"{agenda.practice_ods}/{day}"}],
        "status": "current",
        "mode": "snapshot",
        "title": f"Huddle agenda for {agenda.practice_name or agenda.practice_ods}, {day}",
        "code": {"text": "GP huddle / MDT agenda"},
        "date": day,
        "orderedBy": {"text": "by section, then by date"},
    }
    withheld = withheld_note(agenda)
    notes = [*agenda.notes, *_death_notes(agenda), *([withheld] if withheld else [])]
    if notes:
        result["note"] = [{"text": n} for n in notes]
    if entries:
        result["entry"] = entries
    else:
        reason = "withheld" if agenda.withheld_items else "nilknown"
        system = "http://terminology.hl7.org/CodeSystem/list-empty-reason"
        result["emptyReason"] = {"coding": [{"system": system, "code": reason}]}
    return result


def _death_notes(agenda: Agenda) -> list[str]:
    """One note per person on the agenda who died (the List's entries point at their items only)."""
    died = {i.person_key: i.died for i in agenda.items if i.died}
    return [f"Patient/{key}: {text}" for key, text in died.items()]


def event_id(fhir_list: Json) -> str:
    """The huddle.agenda event id: the same agenda published twice is one event, a changed one a new one."""
    digest = hashlib.sha256(json.dumps(fhir_list, sort_keys=True).encode()).hexdigest()
    return stable_id("huddle-agenda-event", str(fhir_list["id"]), digest)


def _item(
    section: str, patient: Json, what: str, when: str, resource: Json, died: str | None, episode: str | None
) -> Item:
    return Item(
        section=section,
        person_key=str(patient["id"]),
        name=display_name(patient),
        nhs_number=next(
            (str(i["value"]) for i in patient.get("identifier") or [] if i.get("system") == NHS_SYSTEM), None
        ),
        what=f"{what}. {died}" if died else what,
        when=when,
        reference=f"{resource['resourceType']}/{resource['id']}",
        died=died,
        episode=episode,
    )
