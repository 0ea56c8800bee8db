"""The coordinator's worklist over a real socket: the real app (uvicorn, httpx) over a real record (a
SQLite file, and PostgreSQL) built by `hub.bootstrap.build`; Kafka is a list whose events the test
applies as the record and rules-engine consumers do, the engine's derived tasks included.

* A community nursing referral for a person no practice knows (no huddle lists them) is on the
  referrals worklist, oldest first, with its triage and first-visit tasks, their due times and
  whether each is overdue (past due before the engine's clock ticks; escalated after).
* A referral accepted, declined or withdrawn leaves the list as soon as the API has answered,
  before the record has the decision, and stays off it once the record has it.
* Open tasks, by owner: a coordinator's, the team lead's (overdue ones), the team's.
* Only coordinators of the service may ask: anyone else is refused 403, the refusal ledgered, nothing
  of the referrals shown; a parameter the worklist does not take, or one given twice, is a 400.
* Every resource shown is in the disclosure ledger as disclosed (its version and content hash); a
  referral no agreement shares with the service, or whose person objected, is counted, never shown,
  and its refusal is ledgered.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from fhir.resources.R4B.bundle import Bundle

from hub.core.coordination import Positioned, process, tick
from hub.core.fhir_read import ODS_SYSTEM, outcome_of
from hub.core.ledger import resource_ref
from hub.core.ports import RecordEvent
from hub.core.record import apply_events
from hub.core.worklist import OVERDUE_EXTENSION
from schemas.events import coordination as co
from tests.builders import an_agreement, an_objection
from tests.integration.test_accept_race import NHS_SYSTEM, Kafka, Worker, bearer, serving
from tests.integration.test_decision_claims import nhs_numbers

pytestmark = pytest.mark.timeout(120)
PIC, PRACTICE, TRUST, VOLUNTARY, SOCIAL_CARE = (
    "Y0PIC",
    "Y00001",
    "RZZ",
    "VCS01",
    "E10000023",
)  # (PIC: hub/rules/croydon-pic.v3.yaml)
NOW = datetime.now(UTC).replace(microsecond=0)
REFERRALS, TASKS = "/coordination/worklist/referrals", "/coordination/worklist/tasks"
SHARED = ("demographics", "referrals", "tasks", "care-plans", "encounters", "consents")


@dataclass
class Hub:
    """One served API worker over the database, and the Kafka list it publishes to."""

    worker: Worker
    kafka: Kafka

    @property
    def services(self) -> Any:
        return self.worker.services

    def settle(self) -> None:
        """Apply what was published as the consumers would: the record, the rules engine, its tasks."""
        events = self.kafka.events()
        self._record(events)
        with self.services.coordination.unit_of_work() as uow:
            derived = process(self.services.rules, uow, [Positioned(e, 0) for e in events])
            uow.commit()
        self._record(derived)

    def tick(self, at: datetime) -> None:
        """The hub's clock reaching `at`: tasks due by then go overdue, to the team lead."""
        with self.services.coordination.unit_of_work() as uow:
            derived = process(self.services.rules, uow, [Positioned(tick(0, at), 0)])
            uow.commit()
        self._record(derived)

    def _record(self, events: list[RecordEvent]) -> None:
        with self.services.uow_factory() as uow:
            apply_events(uow, events)
            uow.commit()

    def get(self, path: str, org: str = PIC, role: str = "coordinator", **params: str) -> httpx.Response:
        with httpx.Client(base_url=self.worker.url, timeout=30) as client:
            return client.get(path, params=params, headers=bearer(self.services, org, role))

    def refer(self, nhs: str, by: str, source: str, authored: datetime, **more: Any) -> str:
        """A referral from `by` (a clinician of it), made `authored`: its id."""
        coding = {"system": co.REFERRAL_SOURCE_SYSTEM, "code": source}
        body = {
            "resourceType": "ServiceRequest",
            "status": "active",
            "intent": "order",
            "subject": {"identifier": {"system": NHS_SYSTEM, "value": nhs}},
            "authoredOn": authored.isoformat(),
            "extension": [{"url": co.SOURCE_EXTENSION, "valueCodeableConcept": {"coding": [coding]}}],
        } | more
        made = self.worker.post("/fhir/ServiceRequest", body, by, "clinician")
        assert made.status_code == 201, made.text
        return str(made.json()["id"])

    def command(self, path: str, org: str = PIC, role: str = "coordinator", **given: str) -> httpx.Response:
        params = [
            {"name": name, "valueDateTime" if name == "at" else "valueString": value} for name, value in given.items()
        ]
        return self.worker.post(path, {"resourceType": "Parameters", "parameter": params}, org, role)

    def ledger(self, since: int = 0) -> list[dict[str, Any]]:
        return [e.body for e in self.services.ledger.entries()][since:]


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest) -> str:
    return str(request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "postgres_url"))


@pytest.fixture
def hub(database_url: str, tmp_path: Path) -> Iterator[Hub]:
    kafka = Kafka()
    with serving(database_url, tmp_path, kafka, 1) as (worker,):
        loaded = NOW - timedelta(days=30)  # (before the first request: the policy caches them for a second)
        for party in (TRUST, PRACTICE):  # not VOLUNTARY: nothing shares its referrals with the service
            agreement = an_agreement(party, PIC, id=f"{party.lower()}-pic", categories=SHARED)
            worker.services.agreements.load(agreement, at=loaded)
        yield Hub(worker, kafka)


def bundle(answer: httpx.Response) -> dict[str, Any]:
    """A valid FHIR R4 searchset Bundle, as answered."""
    assert answer.status_code == 200, answer.text
    body: dict[str, Any] = answer.json()
    Bundle.model_validate(body)
    assert (body["resourceType"], body["type"]) == ("Bundle", "searchset")
    return body


def listed(body: dict[str, Any], mode: str = "match") -> list[str]:
    """`Type/id` of the Bundle's entries in `mode`, in order."""
    return [
        f"{e['resource']['resourceType']}/{e['resource']['id']}" for e in body["entry"] if e["search"]["mode"] == mode
    ]


def code_of(task: dict[str, Any]) -> str:
    return str(task["code"]["coding"][0]["code"])


def owner_of(task: dict[str, Any]) -> str:
    return str(task["owner"]["identifier"]["value"])


def overdue_said(entry: dict[str, Any]) -> bool:
    (said,) = [e["valueBoolean"] for e in entry.get("extension") or [] if e["url"] == OVERDUE_EXTENSION]
    return bool(said)


def withheld_said(body: dict[str, Any]) -> str:
    outcomes = [e["resource"] for e in body["entry"] if e["search"]["mode"] == "outcome"]
    return " ".join(i["diagnostics"] for o in outcomes for i in o["issue"])


# -- what waits, whoever the person's practice


def test_a_referral_for_a_person_no_practice_knows_is_on_the_worklist_with_its_tasks_oldest_first(hub: Hub) -> None:
    nobodys, registered, elsewhere = nhs_numbers(3)
    community = hub.refer(nobodys, TRUST, "community-nursing", NOW - timedelta(days=6))
    gp = hub.refer(registered, PRACTICE, "gp", NOW - timedelta(days=2))
    to_social_care = [{"identifier": {"system": ODS_SYSTEM, "value": SOCIAL_CARE}}]
    hub.refer(elsewhere, PRACTICE, "gp", NOW - timedelta(days=7), performer=to_social_care)  # (theirs, not ours)
    hub.settle()

    body = bundle(hub.get(REFERRALS))

    assert listed(body) == [f"ServiceRequest/{community}", f"ServiceRequest/{gp}"]
    assert body["total"] == 2
    first = body["entry"][0]["resource"]
    person = hub.services.reader.read("Patient", first["subject"]["reference"].removeprefix("Patient/"))
    assert person is not None and "generalPractitioner" not in person  # (no practice knows them)
    assert first["authoredOn"] == (NOW - timedelta(days=6)).isoformat()
    assert first["extension"][0]["valueCodeableConcept"]["coding"][0]["code"] == "community-nursing"
    assert body["entry"][0]["fullUrl"].endswith(f"/fhir/ServiceRequest/{community}")
    # each referral is followed by its open tasks, soonest due first: the triage past due (the engine's
    # clock has not ticked onto it yet), the first visit not
    tasks = body["entry"][1:3]
    assert [e["search"]["mode"] for e in tasks] == ["include", "include"]
    assert [code_of(e["resource"]) for e in tasks] == ["referral-triage", "first-visit"]
    assert [e["resource"]["focus"]["reference"] for e in tasks] == [f"ServiceRequest/{community}"] * 2
    assert [e["resource"]["restriction"]["period"]["end"] for e in tasks] == [
        (NOW - timedelta(days=3)).isoformat(),
        (NOW + timedelta(days=22)).isoformat(),
    ]
    assert [overdue_said(e) for e in tasks] == [True, False]
    assert [e["resource"]["focus"]["reference"] for e in body["entry"][4:]] == [f"ServiceRequest/{gp}"] * 2
    assert [overdue_said(e) for e in body["entry"][4:]] == [False, False]

    # once the clock has ticked, the triage is the team lead's, escalated, and still on the list
    hub.tick(NOW)
    again = bundle(hub.get(REFERRALS))
    triage = again["entry"][1]
    assert (code_of(triage["resource"]), owner_of(triage["resource"])) == ("referral-triage", "team-lead")
    assert triage["resource"]["businessStatus"]["coding"][0]["code"] == "overdue" and overdue_said(triage)


def test_referrals_accepted_declined_or_withdrawn_leave_the_worklist_before_and_after_the_record_has_it(
    hub: Hub,
) -> None:
    people = nhs_numbers(4)
    made = [hub.refer(nhs, TRUST, "community-nursing", NOW - timedelta(days=5 - n)) for n, nhs in enumerate(people)]
    accepted, declined, withdrawn, waiting = made
    hub.settle()
    assert listed(bundle(hub.get(REFERRALS))) == [f"ServiceRequest/{r}" for r in made]
    at = (NOW - timedelta(hours=1)).isoformat()

    answers = [
        hub.command(f"/fhir/ServiceRequest/{accepted}/$accept", coordinator="c-amara", at=at),
        hub.command(f"/fhir/ServiceRequest/{declined}/$decline", reason="moved away", at=at),
        hub.command(f"/fhir/ServiceRequest/{withdrawn}/$withdraw", TRUST, "clinician", reason="need met", at=at),
    ]

    assert [a.status_code for a in answers] == [201, 200, 200], [a.text for a in answers]
    before = bundle(hub.get(REFERRALS))  # (the consumers have not applied a decision yet)
    assert [outcome_of(hub.services.reader.read("ServiceRequest", r) or {}) for r in made] == [None] * 4
    assert listed(before) == [f"ServiceRequest/{waiting}"]
    assert {r.removeprefix("Task/") for r in listed(before, "include")} <= task_ids(hub, waiting)
    hub.settle()
    after = bundle(hub.get(REFERRALS))
    assert listed(after) == [f"ServiceRequest/{waiting}"]
    assert after["total"] == 1


def task_ids(hub: Hub, referral: str) -> set[str]:
    return {
        str(t["id"])
        for t in hub.services.reader.search("Task", None)
        if t.get("focus", {}).get("reference") == f"ServiceRequest/{referral}"
    }


def test_open_tasks_are_listed_soonest_due_first_and_filtered_by_owner(hub: Hub) -> None:
    first, second = nhs_numbers(2)
    community = hub.refer(first, TRUST, "community-nursing", NOW - timedelta(days=6))
    gp = hub.refer(second, PRACTICE, "gp", NOW - timedelta(days=2))
    hub.settle()
    accepted = hub.command(f"/fhir/ServiceRequest/{gp}/$accept", coordinator="c-amara", at=NOW.isoformat())
    assert accepted.status_code == 201, accepted.text
    hub.settle()
    hub.tick(NOW)
    held = {str(t["id"]): t for t in hub.services.reader.search("Task", None)}

    everyone = bundle(hub.get(TASKS))
    amara = bundle(hub.get(TASKS, owner="c-amara"))
    lead = bundle(hub.get(TASKS, owner="team-lead"))
    team = bundle(hub.get(TASKS, owner=PIC.lower()))  # (an ODS code in any case)

    shown = [held[r.removeprefix("Task/")] for r in listed(everyone)]
    assert all(t["status"] not in ("completed", "cancelled") for t in shown)
    assert {code_of(t) for t in shown} == {"referral-triage", "first-visit", "review-6-weeks", "review-12-weeks"}
    assert [t["restriction"]["period"]["end"] for t in shown] == sorted(
        t["restriction"]["period"]["end"] for t in shown
    )
    gp_triage = [t for t in held.values() if t.get("focus", {}).get("reference") == f"ServiceRequest/{gp}"]
    assert {t["status"] for t in gp_triage if code_of(t) == "referral-triage"} == {"completed"}  # (by the accept)
    assert {(code_of(t), owner_of(t)) for t in (held[r.removeprefix("Task/")] for r in listed(amara))} == {
        ("first-visit", "c-amara"),  # (the team's, given to the coordinator who accepted the person)
        ("review-6-weeks", "c-amara"),
        ("review-12-weeks", "c-amara"),
    }
    (escalated,) = lead["entry"]
    assert code_of(escalated["resource"]) == "referral-triage" and overdue_said(escalated)
    assert escalated["resource"]["focus"]["reference"] == f"ServiceRequest/{community}"
    assert {(code_of(e["resource"]), owner_of(e["resource"])) for e in team["entry"]} == {("first-visit", PIC)}
    assert len(team["entry"]) == 1  # (the first visit of the referral no one has accepted)
    assert len(everyone["entry"]) == len(amara["entry"]) + len(lead["entry"]) + len(team["entry"])
    assert bundle(hub.get(TASKS, owner="C-Amara"))["entry"] == amara["entry"]  # (as $accept takes them)
    assert bundle(hub.get(TASKS, owner="c-nobody"))["entry"] == []


# -- who may ask, and how


def test_anyone_but_a_coordinator_of_the_service_is_refused_and_the_refusal_ledgered(hub: Hub) -> None:
    (nhs,) = nhs_numbers(1)
    referral = hub.refer(nhs, TRUST, "community-nursing", NOW - timedelta(days=1), reasonCode=[{"text": "SECRET"}])
    hub.settle()
    before = len(hub.ledger())

    for org, role in ((TRUST, "clinician"), (PRACTICE, "coordinator"), (PIC, "clinician"), (PIC, "auditor")):
        for path in (REFERRALS, TASKS):
            refused = hub.get(path, org, role)

            assert refused.status_code == 403, refused.text
            assert refused.json()["resourceType"] == "OperationOutcome"
            assert f"only coordinators of {PIC}" in refused.text
            assert referral not in refused.text and "SECRET" not in refused.text and nhs not in refused.text
    entries = hub.ledger(before)
    assert len(entries) == 8
    assert {(e["channel"], e["decision"], e["person_key"], tuple(e["resources"])) for e in entries} == {
        ("worklist", "deny", None, ())
    }
    assert {(e["recipient_org"], e["basis"]["role"], e["basis"]["asked"]) for e in entries} >= {
        (TRUST, "clinician", REFERRALS),
        (PIC, "auditor", TASKS),
    }


@pytest.mark.parametrize(
    ("path", "params", "named"),
    [
        (TASKS, "onwer=c-amara", "onwer"),
        (TASKS, "owner=c-amara&owner=team-lead", "owner"),
        (TASKS, "owner=", "owner"),
        (TASKS, "owner=%20%20", "owner"),
        (TASKS, "owner=c-amara%0A", "owner"),
        (REFERRALS, "status=active", "status"),
        (REFERRALS, "performer=Y0PIC", "performer"),
    ],
)
def test_a_parameter_the_worklist_does_not_take_or_takes_once_is_refused_400_naming_it(
    hub: Hub, path: str, params: str, named: str
) -> None:
    before = len(hub.ledger())

    with httpx.Client(base_url=hub.worker.url, timeout=30) as client:
        refused = client.get(f"{path}?{params}", headers=bearer(hub.services, PIC, "coordinator"))

    assert refused.status_code == 400, refused.text
    (issue,) = refused.json()["issue"]
    assert refused.json()["resourceType"] == "OperationOutcome"
    assert issue["expression"] == [named] and named in issue["diagnostics"]
    assert len(hub.ledger()) == before  # (refused before anything was read)


# -- the information-sharing rules, as for every read


def test_every_resource_the_worklist_shows_is_in_the_ledger_as_disclosed(hub: Hub) -> None:
    (nhs,) = nhs_numbers(1)
    referral = hub.refer(nhs, TRUST, "community-nursing", NOW - timedelta(days=4))
    hub.settle()
    before = len(hub.ledger())

    referrals = bundle(hub.get(REFERRALS, org=PIC, role="coordinator"))
    after_referrals = len(hub.ledger())
    tasks = bundle(hub.get(TASKS))

    shown = [e["resource"] for e in referrals["entry"]]
    assert (shown[0]["resourceType"], shown[0]["id"]) == ("ServiceRequest", referral)
    entries = hub.ledger(before)
    disclosed = {ref for e in entries[: after_referrals - before] for ref in e["resources"]}
    assert disclosed == {resource_ref(r) for r in shown}  # (each by version and the hash of what was sent)
    assert all("/_history/" in ref for ref in disclosed)
    assert {(e["channel"], e["decision"], e["recipient_org"]) for e in entries} == {("worklist", "permit", PIC)}
    person = shown[0]["subject"]["reference"].removeprefix("Patient/")
    assert {e["person_key"] for e in entries} == {person}
    assert {ref for e in entries[after_referrals - before :] for ref in e["resources"]} == {
        resource_ref(e["resource"]) for e in tasks["entry"]
    }


def test_a_referral_not_shared_with_the_service_is_counted_and_never_shown(hub: Hub) -> None:
    shared, voluntary, objecting = nhs_numbers(3)
    ours = hub.refer(shared, TRUST, "community-nursing", NOW - timedelta(days=3))
    unshared = hub.refer(
        voluntary, VOLUNTARY, "voluntary-sector", NOW - timedelta(days=4), reasonCode=[{"text": "PRIVATE: lives alone"}]
    )
    objected = hub.refer(objecting, PRACTICE, "gp", NOW - timedelta(days=5))
    hub.settle()
    consent = an_objection(objecting, PIC, category="referrals")
    made = hub.worker.post("/fhir/Consent", consent, PRACTICE, "clinician")
    assert made.status_code == 201, made.text
    hub.settle()
    before = len(hub.ledger())

    answer = hub.get(REFERRALS)

    body = bundle(answer)
    assert listed(body) == [f"ServiceRequest/{ours}"]
    for hidden in (unshared, objected, voluntary, objecting, "PRIVATE"):
        assert hidden not in answer.text
    assert "2 referral(s) withheld under the information-sharing policy" in withheld_said(body)
    assert not [r for r in listed(body, "include") if r.removeprefix("Task/") in task_ids(hub, unshared)]
    denied = [e for e in hub.ledger(before) if e["decision"] == "deny"]
    assert sorted(ref.split("/_history/")[0] for e in denied for ref in e["resources"]) == sorted(
        [f"ServiceRequest/{unshared}", f"ServiceRequest/{objected}"]
    )
    reasons = " ".join(r for e in denied for r in e["reasons"])
    assert f"no agreement in force shares referrals from {VOLUNTARY} with {PIC}" in reasons
    assert f"the person objected to sharing referrals with {PIC}" in reasons
    # the service's own tasks on them stay its own to see, as in a FHIR read of them
    assert task_ids(hub, unshared) <= {r.removeprefix("Task/") for r in listed(bundle(hub.get(TASKS)))}


def test_an_admin_of_the_service_may_ask_but_is_shown_no_one_whose_role_reads_no_personal_data(hub: Hub) -> None:
    (nhs,) = nhs_numbers(1)
    referral = hub.refer(nhs, TRUST, "community-nursing", NOW - timedelta(days=4))
    hub.settle()
    before = len(hub.ledger())

    referrals = hub.get(REFERRALS, role="admin")
    tasks = hub.get(TASKS, role="admin")

    assert listed(bundle(referrals)) == [] and listed(bundle(tasks)) == []
    assert "1 referral(s) withheld" in withheld_said(referrals.json())
    assert "2 task(s) withheld" in withheld_said(tasks.json())
    assert referral not in referrals.text + tasks.text and nhs not in referrals.text + tasks.text
    denied = hub.ledger(before)
    assert {(e["decision"], e["channel"], e["basis"]["role"]) for e in denied} == {("deny", "worklist", "admin")}
    assert {r for e in denied for r in e["reasons"]} == {"the role admin has no purpose for reading personal data"}
    assert sum(len(e["resources"]) for e in denied) == 3
