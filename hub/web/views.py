"""The huddle agenda as the API page and the CLI see it: read from the record, decided, rendered.

HTML is built with `string.Template` and `html.escape` (Jinja2 is not a dependency here): every value
from the record goes through `escape` before it reaches the page. Another GP practice's agenda is
refused before anything is read (hub.core.huddle.refusal), the refusal recorded in the ledger.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import date, datetime
from html import escape
from importlib import resources
from string import Template

from hub.core.errors import ConsentDeniedError, InvalidMessageError
from hub.core.huddle import (
    SECTIONS,
    UK,
    Agenda,
    Item,
    agenda,
    disclosed,
    practice_reference,
    refusal,
    withheld_note,
    withhold,
)
from hub.core.huddle_reading import ODS_SYSTEM, local_day
from hub.core.ledger import Disclosure
from hub.core.policy import PURPOSE_OF_ROLE, Decision, person_of
from hub.core.ports import Json, RecordReader

KINDS = ("ServiceRequest", "Flag", "Encounter", "Task", "EpisodeOfCare")
_ODS = re.compile(r"^[A-Z0-9]{3,10}$")
Judged = list[tuple[Json, Decision]]


def gather(reader: RecordReader, practice_ods: str) -> list[Json]:
    """The practice's registered Patients, their practice Organizations, and their referrals, flags,
    stays and tasks (the agenda picks the week's from these), and their EpisodeOfCares: an item of a
    person who died says to close theirs while one is open (judged and ledgered with the item then)."""
    patients = reader.registered_with(practice_ods)
    keys = [str(p["id"]) for p in patients]
    refs = {str(gp["reference"]) for p in patients for gp in p.get("generalPractitioner") or [] if gp.get("reference")}
    practices = [
        org
        for ref in sorted(refs)
        if ref.startswith("Organization/") and (org := reader.read("Organization", ref.split("/", 1)[1])) is not None
    ]
    found: list[Json] = [*patients, *practices]
    for kind in KINDS:
        found += reader.search_many(kind, keys)
    return found + _named(reader, found)


def _named(reader: RecordReader, found: list[Json]) -> list[Json]:
    """The Organizations the record holds for the referrers and hospitals the items name (by ODS
    code: the hospital adapter's Organization for it; or by reference), to name them by."""
    held = {f"Organization/{r['id']}" for r in found if r.get("resourceType") == "Organization"}
    wanted: set[str] = set()
    for r in found:
        for party in (r.get("requester"), r.get("serviceProvider")):
            ref, ident = str((party or {}).get("reference") or ""), (party or {}).get("identifier") or {}
            if ref.startswith("Organization/"):
                wanted.add(ref)
            elif ident.get("system") == ODS_SYSTEM and _ODS.match(str(ident.get("value") or "")):
                wanted.add(practice_reference(str(ident["value"])))
    read = (reader.read("Organization", ref.split("/", 1)[1]) for ref in sorted(wanted - held))
    return [org for org in read if org is not None]


def refused(org: str, user: str, role: str, practice_ods: str, reason: str, at: datetime) -> Disclosure:
    """The ledger entry for a huddle refused whole: about no one (nothing was read), naming who asked."""
    return Disclosure(
        at=at,
        recipient_org=org,
        recipient_user=user,
        channel="huddle",
        person_key=None,
        resources=(),
        decision="deny",
        reasons=(reason,),
        basis={"role": role, "agreements": [], "consents": [], "practice": practice_ods},
    )


def decided_agenda(
    reader: RecordReader,
    practice_ods: str,
    meeting_date: date,
    judge: Callable[[Json], Decision],
    write: Callable[[Judged], None],
    *,
    viewer: tuple[str, str],
    refuse: Callable[[str], None],
    service: str | None = None,
) -> Agenda:
    """The agenda with only what `judge` permits: a person whose Patient is withheld is counted, not
    shown; every decision goes to `write` (the ledger) before anything is returned. `viewer` is the
    asker's (organisation, role): another GP practice is refused (ConsentDeniedError) before anything
    is read, the reason given to `refuse` (the ledger) first; `service`, the coordination service's
    ODS code (the rules' `service.ods`), is never taken for a practice's, whatever its shape."""
    if not _ODS.match(practice_ods):
        raise InvalidMessageError(f"{practice_ods!r} is not a practice ODS code (3 to 10 letters and digits)")
    if not 1900 <= meeting_date.year <= 9000:
        raise InvalidMessageError(f"{meeting_date} is not a plausible meeting day", ("date",))
    org, role = viewer
    reason = refusal(org, practice_ods, service)
    if reason is not None:
        refuse(reason)
        raise ConsentDeniedError(reason, ("practice",))
    found = gather(reader, practice_ods)
    full = agenda(practice_ods, meeting_date, found)
    shown = disclosed(full, found)
    people = {str(r["id"]): judge(r) for r in shown if r["resourceType"] == "Patient"}
    # a withheld person's items are withheld with the person's decision, as $everything does
    judged = [
        (r, people[str(r["id"])] if r["resourceType"] == "Patient" else _item_decision(r, people, judge)) for r in shown
    ]
    write(judged)
    permitted = {f"{r['resourceType']}/{r['id']}" for r, d in judged if d.permitted}
    kept = withhold(full, permitted.__contains__)
    return replace(kept, role_without_purpose=role) if PURPOSE_OF_ROLE.get(role) is None else kept


def _item_decision(resource: Json, people: dict[str, Decision], judge: Callable[[Json], Decision]) -> Decision:
    person = people.get(person_of(resource) or "")
    return person if person is not None and not person.permitted else judge(resource)


def when_text(item: Item) -> str:
    """The item's time in Europe/London: `Mon 23 Nov 2026 14:05`, or the day alone for a date."""
    day = local_day(item.when)
    if day is None:
        return item.when or "not recorded"
    if len(item.when) <= 10:
        return day.strftime("%a %d %b %Y")
    return datetime.fromisoformat(item.when).astimezone(UK).strftime("%a %d %b %Y %H:%M")


def nhs_text(nhs_number: str | None) -> str:
    """An NHS number spaced 3-3-4, as printed on NHS letters."""
    if not nhs_number:
        return ""
    n = nhs_number.replace(" ", "")
    return f"{n[:3]} {n[3:6]} {n[6:]}" if len(n) == 10 else n


def _section(code: str, items: Sequence[Item]) -> str:
    title = escape(SECTIONS[code])
    head = f'<section id="{code}" data-section="{code}">\n<h2>{title} <span class="count">({len(items)})</span></h2>\n'
    if not items:
        return head + '<p class="empty">None this week.</p>\n</section>'
    rows = "\n".join(
        f'<tr data-person="{escape(i.person_key)}" data-ref="{escape(i.reference)}"{_died(i)}>'
        f'<td class="name">{escape(i.name or "(name not held)")}</td>'
        f'<td class="nhs">{escape(nhs_text(i.nhs_number))}</td>'
        f'<td class="what">{escape(i.what)}</td>'
        f'<td class="when">{escape(when_text(i))}</td>'
        '<td class="notes"></td></tr>'
        for i in items
    )
    when = "Due" if code == "overdue-task" else "When"
    table = (
        f"<table>\n<thead><tr><th>Name</th><th>NHS number</th><th>What</th><th>{when}</th><th>Notes</th></tr></thead>"
        f"\n<tbody>\n{rows}\n</tbody>\n</table>"
    )
    return head + table + "\n</section>"


def _died(item: Item) -> str:
    """The row's mark for a person who died (its `what` says so in words, for print and the CLI alike)."""
    return ' class="died"' if item.died else ""


def render_page(shown: Agenda, *, generated: datetime, viewer: str) -> str:
    """The printable agenda page (four sections, print CSS), all values escaped."""
    template = Template(resources.files("hub.web.templates").joinpath("huddle.html").read_text(encoding="utf-8"))
    first, last = shown.window
    practice = shown.practice_name or shown.practice_ods
    sections = [
        ("new-referral", shown.referrals),
        ("newly-eligible", shown.eligible),
        ("recent-discharge", shown.discharges),
        ("overdue-task", shown.overdue),
    ]
    note = withheld_note(shown)
    withheld = ""
    if note:
        where = "" if shown.role_without_purpose else "not shown; "
        withheld = f'<p class="withheld" id="withheld">{escape(note)} ({where}the decisions are in the ledger).</p>'
    day = shown.meeting_date.strftime("%A %d %B %Y")
    return template.substitute(
        title=escape(f"Huddle agenda: {practice}, {shown.meeting_date.isoformat()}"),
        heading=escape(f"Huddle / MDT agenda: {practice} ({shown.practice_ods})"),
        meeting=escape(day),
        window=escape(f"{first.strftime('%a %d %b')} to {last.strftime('%a %d %b %Y')}"),
        generated=escape(generated.astimezone(UK).strftime("%d %b %Y %H:%M")),
        viewer=escape(viewer),
        withheld=withheld,
        sections="\n".join(_section(code, items) for code, items in sections),
    )


def render_refused(reason: str, *, generated: datetime, viewer: str) -> str:
    """The page a refused viewer gets (403): why, and nothing of the practice's agenda or record."""
    template = Template(
        resources.files("hub.web.templates").joinpath("huddle_refused.html").read_text(encoding="utf-8")
    )
    return template.substitute(
        reason=escape(reason),
        generated=escape(generated.astimezone(UK).strftime("%d %b %Y %H:%M")),
        viewer=escape(viewer),
    )
