"""The demo's care coordination month: referrals from practices and partners, a PIC service that
triages, allocates, visits and discharges, and what that leaves behind: tasks with deadlines, caseloads,
PIC summaries in practice mailboxes, a huddle agenda and the commissioner's KPIs.

Everything goes through the hub's own front doors (the FHIR API with each organisation's token), so
the demo exercises the same paths a practice or a coordinator would. Output names no person: the
huddle page, behind a token, does.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

import httpx
from rich.console import Console
from rich.table import Table

from adapters.hl7v2.synthetic import Locality, Person
from hub.api.auth import issue_token
from hub.bootstrap import Running
from hub.core.days import UK
from hub.core.deaths import death_said
from hub.core.huddle import SECTIONS
from hub.core.identity import person_key
from hub.core.task_status import FINAL
from hub.core.tasks import FIND_PRACTICE
from hub.kpi_report import fold_log, write_report
from schemas.events import coordination as co
from schemas.subscriptions import Subscription

NHS = "https://fhir.nhs.uk/Id/nhs-number"
REASONS = (
    "lives alone, two falls this autumn",
    "carer stress; wife has dementia",
    "struggling with medicines after discharge",
    "socially isolated since bereavement",
    "benefits and housing worries",
    "wants to get back to the lunch club",
)
SOURCES = ("gp", "gp", "huddle", "adult-social-care", "community-nursing", "voluntary-sector")
COORDINATORS = ("c-amara", "c-ben", "c-chloe")
log = logging.getLogger(__name__)


@dataclass
class Month:
    """What the coordination month did, for the report."""

    referrals: Counter[str]
    accepted: int
    declined: int
    closed: int
    busiest: str  # the month (YYYY-MM) most referrals fell in
    practice: str  # the practice of the latest referral, whose huddle agenda the demo shows
    letters: str = ""  # the month (YYYY-MM, UK) the discharges from the service, and so their GP letters, fell in


def _params(**values: str) -> dict[str, Any]:
    parameters = [{"name": k.replace("_", "-"), "valueString": v} for k, v in values.items()]
    return {"resourceType": "Parameters", "parameter": parameters}


async def _until(check: Any, within: float = 60) -> bool:
    deadline = asyncio.get_running_loop().time() + within
    while asyncio.get_running_loop().time() < deadline:
        if check():
            return True
        await asyncio.sleep(0.1)
    return False


async def run_month(run: Running, locality: Locality, start: datetime, end: datetime, seed: int) -> Month:
    """Refer, triage, allocate, visit and discharge between `start` and `end` (event time, never later
    than now), through the API."""
    services = run.services
    rules = services.rules.rules
    for practice in locality.practices:
        mailbox = services.settings.data_dir / "mailbox" / practice.ods
        services.subscriptions.save(
            Subscription(
                id=f"pic-summary-{practice.ods.lower()}",
                org=practice.ods,
                events=(co.PIC_SUMMARY_SENT.type,),
                mailbox=str(mailbox),
            )
        )
    rng = random.Random(seed)  # noqa: S311 - invented people, not secrets
    living = [p for p in locality.people if not _died(services, p)]  # (no one refers someone who has died)
    people: list[Person] = rng.sample(living, min(24, len(living)))
    now = datetime.now(UTC)
    secret = services.secrets.token
    service = {"Authorization": f"Bearer {issue_token(secret, org=rules.service.ods, role='coordinator', now=now)}"}
    latest = min(end, now) - timedelta(hours=1)
    step = max(end - start - timedelta(days=3), timedelta(days=1)) / len(people)

    def when(t: datetime) -> datetime:
        return min(t, latest)

    sources: Counter[str] = Counter()
    months: Counter[str] = Counter()
    referrals: list[tuple[dict[str, Any], datetime]] = []
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{run.http_port}/fhir", timeout=30) as http:
        for i, person in enumerate(people):
            at = when(start + step * i + timedelta(hours=9 + i % 5))
            months[at.strftime("%Y-%m")] += 1
            source = SOURCES[i % len(SOURCES)]
            gp = issue_token(secret, org=person.practice.ods, role="clinician", now=now)
            body = {
                "resourceType": "ServiceRequest",
                "status": "active",
                "intent": "order",
                "authoredOn": at.isoformat(),
                "subject": {"identifier": {"system": NHS, "value": person.nhs_number}},
                "reasonCode": [{"text": REASONS[i % len(REASONS)]}],
                "extension": [
                    {
                        "url": co.SOURCE_EXTENSION,
                        "valueCodeableConcept": {"coding": [{"system": co.REFERRAL_SOURCE_SYSTEM, "code": source}]},
                    }
                ],
            }
            made = await http.post("/ServiceRequest", json=body, headers={"Authorization": f"Bearer {gp}"})
            made.raise_for_status()
            referrals.append((made.json(), at))
            sources[source] += 1
        await _until(lambda: all(services.reader.read("ServiceRequest", r["id"]) for r, _ in referrals))
        accepted = declined = closed = 0
        episodes: list[tuple[dict[str, Any], datetime]] = []
        for i, (referral, at) in enumerate(referrals):
            if i % 8 == 7:
                answer = await http.post(
                    f"/ServiceRequest/{referral['id']}/$decline",
                    json=_params(reason="does not wish to engage", at=when(at + timedelta(days=2)).isoformat()),
                    headers=service,
                )
                declined += answer.status_code == 200
                continue
            if i >= 18:
                continue  # still waiting for triage: these go overdue
            person = referral["subject"]["reference"].removeprefix("Patient/")
            triaged = when(at + timedelta(days=1, hours=2))
            await http.post(
                f"/Patient/{person}/$record-contact",
                json=_params(kind="first-contact", at=triaged.isoformat(), referral=referral["id"]),
                headers=service,
            )
            coordinator = COORDINATORS[i % len(COORDINATORS)]
            answer = await http.post(
                f"/ServiceRequest/{referral['id']}/$accept",
                json=_params(coordinator=coordinator, at=when(triaged + timedelta(minutes=30)).isoformat()),
                headers=service,
            )
            if answer.status_code != 201:
                continue
            accepted += 1
            if i % 3 != 2:
                visit = when(triaged + timedelta(days=2 + i % 6, hours=1))
                await http.post(
                    f"/Patient/{person}/$record-contact",
                    json=_params(kind="face-to-face", at=visit.isoformat(), referral=referral["id"]),
                    headers=service,
                )
                episodes.append((answer.json(), visit))
        await _until(lambda: all(services.reader.read("EpisodeOfCare", e["id"]) for e, _ in episodes))
        for k, (episode, _) in enumerate(episodes[:5]):  # discharged from the service this morning
            answer = await http.post(
                f"/EpisodeOfCare/{episode['id']}/$close",
                json=_params(
                    at=(latest - timedelta(hours=5 - k)).isoformat(),
                    goals="Back at the lunch club weekly; feels less alone",
                    interventions="Befriending referral; benefits check; falls assessment booked",
                    onward_referrals="Age UK befriending",
                    follow_up="GP to review medicines at next visit",
                ),
                headers=service,
            )
            closed += answer.status_code == 200
    if run.tick is not None:
        await run.tick()  # the hub's clock, now: every deadline already past runs out
    letters = latest.astimezone(UK).strftime("%Y-%m")  # (the last close's: the closes are this morning's)
    return Month(sources, accepted, declined, closed, months.most_common(1)[0][0], people[-1].practice.ods, letters)


def _died(services: Any, person: Person) -> bool:
    """Whether the record says the person died (the month's ADT discharged about one in ten so)."""
    patient = services.reader.read("Patient", person_key(services.secrets.key, person.nhs_number, None))
    return patient is not None and death_said(patient) is not None


async def settle(run: Running, within: float = 120) -> None:
    """Wait until every consumer has been through everything on the log (the rules engine's own
    derived events included), or say who is still behind."""
    lag = await run.settled(within)
    if lag:
        log.warning("the consumers had not caught up after %.0f s: %s", within, lag)


def report(run: Running, month: Month, locality: Locality, console: Console, meeting: date) -> None:
    """Referrals, tasks, caseloads and a huddle agenda, with no person named."""
    services = run.services
    referrals = Table("source", "referrals", title="Referrals to the PIC service")
    for source, n in sorted(month.referrals.items()):
        referrals.add_row(source, str(n))
    console.print(referrals)
    console.print(f"Accepted {month.accepted}, declined {month.declined}, discharged from the service {month.closed}")
    tasks = services.reader.search("Task", None)
    counts: Counter[tuple[str, str]] = Counter()
    for task in tasks:
        code = task["code"]["coding"][0]["code"]
        counts[(code, task["status"])] += 1
        counts[(code, "late")] += "businessStatus" in task
    columns = ("requested", "completed", "cancelled", "late")
    table = Table("task", "open", "completed", "cancelled", "went overdue", title="Coordinator tasks and their clocks")
    for code in sorted({c for c, _ in counts}):
        table.add_row(code, *(str(counts[(code, s)]) for s in columns))
    console.print(table)
    loads = Table("coordinator", "people", "cap", title="Caseloads")
    for coordinator, n in sorted(services.coordination.caseloads().items()):
        loads.add_row(coordinator, str(n), str(services.rules.rules.caseload_cap))
    console.print(loads)
    letters = sum(1 for _ in (services.settings.data_dir / "mailbox").rglob("*.json"))
    console.print(
        f"PIC summaries delivered to practice mailboxes: {letters} (under {services.settings.data_dir / 'mailbox'})"
    )
    held = sum(  # summaries for people whose GP practice nobody has named
        t["code"]["coding"][0]["code"] == FIND_PRACTICE and t["status"] not in FINAL for t in tasks
    )
    if held:
        console.print(
            f"PIC summaries held until the person's GP practice is known: {held}; each is a {FIND_PRACTICE} "
            "task for the coordinator, and the summary goes as soon as an ADT, register row or GP referral names it"
        )
    from hub.core.huddle import agenda
    from hub.web.views import gather

    shown = agenda(month.practice, meeting, gather(services.reader, month.practice))
    huddle = Table("section", "items", title=f"Huddle agenda for {month.practice} on {meeting} (names on the page)")
    for code, label in SECTIONS.items():
        huddle.add_row(label, str(sum(1 for i in shown.items if i.section == code)))
    console.print(huddle)


async def kpis(run: Running, month: str, console: Console, letters: str = "") -> None:
    """The commissioner's report for the month, from the log; and where the discharges from the service
    fell in another month (`letters`: this morning's, after a month of referrals), that month's GP
    letters figure too, which the month's report cannot show (it has no discharge to count)."""
    rules = run.services.rules.rules
    fold, _ = await fold_log(run.bootstrap, rules.service.ods)
    out = run.services.settings.data_dir / "kpi"
    # the same files `carehub kpi` writes, so a commissioner's concatenation tells them apart
    rows, _ = write_report(fold, month, out, title=rules.service.name, now=datetime.now(UTC))
    headline = {(r.kpi, r.breakdown): r.value for r in rows}

    def shown(kpi: str, breakdown: str, unit: str = "") -> str:
        value = headline[(kpi, breakdown)]
        return "n/a" if value is None else f"{value:g}{unit}"  # (no value: nothing to divide by)

    pending = headline[("GP letters within 48 hours", "pending")]
    console.print(
        f"KPIs for {month}: {shown('referrals', '')} referrals, "
        f"first visits within 4 weeks {shown('first visits within 4 weeks', '%', '%')} (target 95%), "
        f"GP letters within 48 h {shown('GP letters within 48 hours', '%', '%')} (target 90%"
        + (f"; {pending:g} discharges still within their 48 h are not counted yet" if pending else "")
        + f"); report in {out}"
    )
    if letters and letters != month:
        said = {(r.kpi, r.breakdown): r.value for r in fold.report(letters)}
        within, waiting = said[("GP letters within 48 hours", "%")], said[("GP letters within 48 hours", "pending")]
        console.print(
            f"GP letters within 48 h for {letters}, when this morning's discharges from the service fell: "
            + ("n/a" if within is None else f"{within:g}%")
            + (f" ({waiting:g} still within their 48 h, not counted yet)" if waiting else "")
            + f" (target 90%; `carehub kpi --month {letters}` for its report)"
        )
