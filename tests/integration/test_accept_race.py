"""`$accept` of one referral, sent at once to two API workers on one database (a SQLite file, and
PostgreSQL), over real sockets: exactly one accept wins.

* Each worker is the real app over its own `hub.bootstrap.build` (its own engine and connections)
  served by uvicorn in its own thread and event loop: all two API processes share is the database,
  and all these two share too. Kafka is a list both publish to; the test applies it as the record
  and coordination consumers do, and folds it into the commissioner's KPIs.
* The first accept is answered 201 with the EpisodeOfCare; the same accept again (the same
  coordinator) 200 with that EpisodeOfCare; an accept for another coordinator 409, naming who has it.
  The record holds one EpisodeOfCare, and the caseload API and the KPIs count it once, for the same
  coordinator.
* Accepts of two referrals for one person, at once or before the consumers have the first: one is
  answered 201, the other 409 (the person is on a caseload, naming the EpisodeOfCare); once that
  episode is closed, a new referral for them can be accepted.
* Accept events that reach the consumers twice anyway (a redelivery; a worker that could not see the
  claim) make one EpisodeOfCare: every accept of a referral has the same ids.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from hub.api.app import create_app
from hub.api.auth import TokenVerifier, issue_token
from hub.api.routes.coordination import CoordinationApi
from hub.bootstrap import Services, build
from hub.core.coordination import Positioned, process
from hub.core.errors import BrokerUnavailableError
from hub.core.huddle import UK
from hub.core.kpis import KpiFold
from hub.core.ports import RecordEvent
from hub.core.record import apply_events
from hub.settings import DatabaseSettings, SecuritySettings, Settings
from schemas.envelope import Envelope
from schemas.events import coordination as co
from tests.serving import served

pytestmark = pytest.mark.timeout(90)
NHS_SYSTEM = "https://fhir.nhs.uk/Id/nhs-number"
PRACTICE = "Y00001"
SECURITY = SecuritySettings(
    key_secret="accept-race-person-key-secret-of-32-bytes", token_secret="accept-race-token-secret-of-32-bytes!"
)
AUTHORED = datetime.now(UTC).replace(microsecond=0) - timedelta(days=3)
AT = AUTHORED + timedelta(days=1)  # when every accept says it happened
MONTH = AT.astimezone(UK).strftime("%Y-%m")


@dataclass
class Kafka:
    """The events topic: what the workers published, in order; `down` makes publishing fail."""

    published: list[Envelope] = field(default_factory=list)
    down: bool = False

    async def publish(self, envelope: Envelope) -> None:
        if self.down:
            raise BrokerUnavailableError("Kafka did not acknowledge; nothing was recorded, send it again")
        self.published.append(envelope)

    def events(self, since: int = 0) -> list[RecordEvent]:
        return [
            RecordEvent(e.id, e.type, e.source, e.time, e.subject, orjson.loads(e.data)) for e in self.published[since:]
        ]


@dataclass
class Worker:
    """One API worker: the services it was built with and where it listens."""

    services: Services
    url: str = ""

    def post(self, path: str, body: dict[str, Any], org: str, role: str) -> httpx.Response:
        with httpx.Client(base_url=self.url, timeout=30) as client:
            return client.post(path, json=body, headers=bearer(self.services, org, role))

    def accept(self, referral: str, coordinator: str) -> httpx.Response:
        given = [{"name": "coordinator", "valueString": coordinator}, {"name": "at", "valueDateTime": AT.isoformat()}]
        params = {"resourceType": "Parameters", "parameter": given}
        return self.post(f"/fhir/ServiceRequest/{referral}/$accept", params, ods(self.services), "coordinator")

    def caseloads(self) -> dict[str, int]:
        with httpx.Client(base_url=self.url, timeout=30) as client:
            got = client.get(
                "/coordination/caseloads", headers=bearer(self.services, ods(self.services), "coordinator")
            )
        assert got.status_code == 200, got.text
        return {c["coordinator"]: c["people"] for c in got.json()["caseloads"] if c["people"]}


def ods(services: Services) -> str:
    return services.rules.rules.service.ods


def bearer(services: Services, org: str, role: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {issue_token(services.secrets.token, org=org, role=role, now=datetime.now(UTC))}"}


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest) -> str:
    return str(request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "postgres_url"))


@pytest.fixture
def kafka() -> Kafka:
    return Kafka()


@contextlib.contextmanager
def serving(database_url: str, data: Path, kafka: Kafka, count: int) -> Iterator[list[Worker]]:
    """`count` API workers on one database, each built and served on its own, all publishing to `kafka`."""
    workers: list[Worker] = []
    with contextlib.ExitStack() as stack:
        for n in range(count):
            db = DatabaseSettings(url=database_url)
            services = build(Settings(data_dir=data / f"worker-{n}", db=db, security=SECURITY))
            stack.callback(services.engine.dispose)
            key, publish = services.secrets.key, kafka.publish
            commands = CoordinationApi(services.reader, services.coordination, services.rules, key, publish)
            tokens = TokenVerifier(services.secrets.token)
            app = create_app(services.reader, tokens, services.ledger, services.policy, publish, commands)
            workers.append(Worker(services, stack.enter_context(served(app, f"accept-worker-{n}"))))
        yield workers


@pytest.fixture
def workers(database_url: str, tmp_path: Path, kafka: Kafka) -> Iterator[list[Worker]]:
    with serving(database_url, tmp_path, kafka, 2) as both:
        yield both


def consume(services: Services, events: list[RecordEvent]) -> None:
    """Apply events as the record and the coordination consumers do (each event once, in log order)."""
    with services.uow_factory() as uow:
        apply_events(uow, events)
        uow.commit()
    with services.coordination.unit_of_work() as uow:
        process(services.rules, uow, [Positioned(e, 0) for e in events])
        uow.commit()


def referred(worker: Worker, kafka: Kafka, nhs: str = "9434765919") -> tuple[str, str]:
    """A GP's referral, on the record: its id and the person's key."""
    coding = {"system": co.REFERRAL_SOURCE_SYSTEM, "code": "gp"}
    body = {
        "resourceType": "ServiceRequest",
        "status": "active",
        "intent": "order",
        "subject": {"identifier": {"system": NHS_SYSTEM, "value": nhs}},
        "authoredOn": AUTHORED.isoformat(),
        "extension": [{"url": co.SOURCE_EXTENSION, "valueCodeableConcept": {"coding": [coding]}}],
    }
    made = worker.post("/fhir/ServiceRequest", body, PRACTICE, "clinician")
    assert made.status_code == 201, made.text
    consume(worker.services, kafka.events())
    return str(made.json()["id"]), str(made.json()["subject"]["reference"]).removeprefix("Patient/")


def race(workers: list[Worker], referral: str, coordinators: list[str]) -> list[httpx.Response]:
    """Accepts of the referral for each coordinator, all let go at once, spread over the workers."""
    start = threading.Barrier(len(coordinators))

    def one(n: int) -> httpx.Response:
        start.wait()
        return workers[n % len(workers)].accept(referral, coordinators[n])

    with ThreadPoolExecutor(len(coordinators)) as pool:
        return list(pool.map(one, range(len(coordinators))))


def care_manager(episode: dict[str, Any]) -> str:
    return str(episode["careManager"]["identifier"]["value"])


def assert_one_episode(workers: list[Worker], kafka: Kafka, person: str, episode_id: str, coordinator: str) -> None:
    """The record holds one EpisodeOfCare for the person; the caseload API (every worker) and the KPIs
    count it once, for its coordinator."""
    services = workers[0].services
    episodes = services.reader.search("EpisodeOfCare", person)
    assert [(e["id"], care_manager(e)) for e in episodes] == [(episode_id, coordinator)]
    assert services.coordination.caseloads() == {coordinator: 1}
    assert [w.caseloads() for w in workers] == [{coordinator: 1}] * len(workers)
    fold = KpiFold(service=ods(services))
    for event in kafka.events():
        fold.add(event)
    loads = {r.breakdown: r.value for r in fold.report(MONTH) if r.kpi == "caseload at month end" and r.value}
    assert loads == {coordinator: 1}


def test_accepts_of_one_referral_racing_on_two_workers_open_one_episode_and_tell_the_others(
    workers: list[Worker], kafka: Kafka
) -> None:
    referral, person = referred(workers[0], kafka)
    coordinators = ["c-ann", "c-bob"] * 4

    answers = race(workers, referral, coordinators)

    said = [(c, a.status_code) for c, a in zip(coordinators, answers, strict=True)]
    assert [a.status_code for a in answers].count(201) == 1, said
    (won,) = [a.json() for a in answers if a.status_code == 201]
    winner = care_manager(won)
    for coordinator, answer in zip(coordinators, answers, strict=True):
        if coordinator == winner:  # the same accept again: that episode, 200
            assert answer.status_code in (200, 201), answer.text
            assert (answer.json()["resourceType"], answer.json()["id"]) == ("EpisodeOfCare", won["id"])
            assert answer.headers["Location"] == f"/fhir/EpisodeOfCare/{won['id']}"
        else:
            assert answer.status_code == 409, answer.text
            issue = answer.json()["issue"][0]
            assert (answer.json()["resourceType"], issue["code"]) == ("OperationOutcome", "business-rule")
            assert f"coordinator {winner} (EpisodeOfCare/{won['id']})" in issue["diagnostics"]
    consume(workers[1].services, kafka.events())
    assert_one_episode(workers, kafka, person, won["id"], winner)


def test_the_same_accept_again_once_recorded_is_answered_with_its_episode_and_publishes_nothing(
    workers: list[Worker], kafka: Kafka
) -> None:
    referral, person = referred(workers[0], kafka)
    first = workers[0].accept(referral, "c-ann")
    assert first.status_code == 201, first.text
    consume(workers[0].services, kafka.events())
    published = len(kafka.published)

    again = workers[1].accept(referral, "c-ann")
    other = workers[1].accept(referral, "c-bob")

    assert again.status_code == 200, again.text
    assert again.json()["id"] == first.json()["id"]
    assert other.status_code == 409, other.text
    assert len(kafka.published) == published
    assert_one_episode(workers, kafka, person, first.json()["id"], "c-ann")


def test_an_accept_kafka_did_not_take_holds_the_referral_and_the_same_accept_again_publishes_it(
    workers: list[Worker], kafka: Kafka
) -> None:
    referral, person = referred(workers[0], kafka)
    kafka.down = True
    lost = workers[0].accept(referral, "c-ann")
    kafka.down = False

    other = workers[1].accept(referral, "c-bob")
    again = workers[1].accept(referral, "c-ann")

    assert lost.status_code == 503, lost.text
    assert other.status_code == 409, other.text
    assert again.status_code == 200, again.text
    consume(workers[0].services, kafka.events())
    assert_one_episode(workers, kafka, person, again.json()["id"], "c-ann")


def test_an_accept_answered_503_says_the_referral_is_held_for_its_coordinator_and_to_send_it_again(
    workers: list[Worker], kafka: Kafka
) -> None:
    referral, person = referred(workers[0], kafka)
    kafka.down = True
    lost = workers[0].accept(referral, "c-ann")
    lost_again = workers[1].accept(referral, "c-ann")  # (a retry while Kafka is still down says the same)
    kafka.down = False

    other = workers[1].accept(referral, "c-bob")
    again = workers[0].accept(referral, "c-ann")

    assert again.status_code == 200, again.text
    episode = again.json()["id"]
    for answer in (lost, lost_again):
        assert answer.status_code == 503, answer.text
        issue = answer.json()["issue"][0]
        assert (answer.json()["resourceType"], issue["code"]) == ("OperationOutcome", "transient")
        said = issue["diagnostics"]
        assert f"ServiceRequest/{referral} is held for coordinator c-ann (EpisodeOfCare/{episode})" in said
        assert "Kafka did not acknowledge all of the accept" in said
        assert "Send the same $accept (coordinator c-ann) again to complete it" in said
    assert other.status_code == 409, other.text
    assert f"coordinator c-ann (EpisodeOfCare/{episode})" in other.json()["issue"][0]["diagnostics"]
    consume(workers[0].services, kafka.events())
    assert_one_episode(workers, kafka, person, episode, "c-ann")


def assert_person_on_a_caseload(answer: httpx.Response, episode_id: str) -> None:
    assert answer.status_code == 409, answer.text
    issue = answer.json()["issue"][0]
    assert (answer.json()["resourceType"], issue["code"]) == ("OperationOutcome", "business-rule")
    assert "this person is already on a caseload" in issue["diagnostics"]
    assert f"EpisodeOfCare/{episode_id}" in issue["diagnostics"]


def test_accepts_of_two_referrals_for_one_person_racing_on_two_workers_open_one_episode(
    workers: list[Worker], kafka: Kafka
) -> None:
    first, person = referred(workers[0], kafka)
    second, _ = referred(workers[1], kafka)
    start = threading.Barrier(2)

    def one(n: int) -> httpx.Response:
        start.wait()
        return workers[n].accept((first, second)[n], ("c-ann", "c-bob")[n])

    with ThreadPoolExecutor(2) as pool:
        answers = list(pool.map(one, range(2)))

    assert sorted(a.status_code for a in answers) == [201, 409], [a.text for a in answers]
    (won,) = [a.json() for a in answers if a.status_code == 201]
    (lost,) = [a for a in answers if a.status_code == 409]
    assert_person_on_a_caseload(lost, won["id"])
    consume(workers[0].services, kafka.events())
    assert_one_episode(workers, kafka, person, won["id"], care_manager(won))


def test_an_accept_of_another_referral_for_the_person_before_the_consumers_have_the_first_is_refused(
    workers: list[Worker], kafka: Kafka
) -> None:
    first, person = referred(workers[0], kafka)
    second, _ = referred(workers[0], kafka)
    accepted = workers[0].accept(first, "c-ann")
    assert accepted.status_code == 201, accepted.text
    published = len(kafka.published)

    other = workers[1].accept(second, "c-bob")  # (the consumers have not applied the first yet)
    again = workers[1].accept(second, "c-bob")

    assert_person_on_a_caseload(other, accepted.json()["id"])
    assert_person_on_a_caseload(again, accepted.json()["id"])
    assert len(kafka.published) == published
    consume(workers[1].services, kafka.events())
    assert_one_episode(workers, kafka, person, accepted.json()["id"], "c-ann")


def test_once_the_persons_episode_is_closed_another_referral_for_them_can_be_accepted(
    workers: list[Worker], kafka: Kafka
) -> None:
    first, person = referred(workers[0], kafka)
    second, _ = referred(workers[0], kafka)
    accepted = workers[0].accept(first, "c-ann")
    consume(workers[0].services, kafka.events())
    closing = {
        "resourceType": "Parameters",
        "parameter": [{"name": "at", "valueDateTime": AT.isoformat()}, {"name": "goals", "valueString": "Home"}],
    }
    closed = workers[0].post(
        f"/fhir/EpisodeOfCare/{accepted.json()['id']}/$close", closing, ods(workers[0].services), "coordinator"
    )
    assert closed.status_code == 200, closed.text
    consume(workers[0].services, kafka.events())

    reopened = workers[1].accept(second, "c-bob")

    assert reopened.status_code == 201, reopened.text
    consume(workers[1].services, kafka.events())
    episodes = workers[0].services.reader.search("EpisodeOfCare", person)
    assert sorted((e["id"], e["status"], care_manager(e)) for e in episodes) == sorted(
        [(accepted.json()["id"], "finished", "c-ann"), (reopened.json()["id"], "active", "c-bob")]
    )
    assert [w.caseloads() for w in workers] == [{"c-bob": 1}] * 2


def test_accept_events_of_one_referral_that_reach_the_consumers_twice_make_one_episode_the_first(
    database_url: str, tmp_path: Path, kafka: Kafka
) -> None:
    # a worker that cannot see the claim (on another database) accepts the same referral for someone
    # else; its events reach the record's consumers after the first's, and all of them again after that
    elsewhere_url = f"sqlite:///{tmp_path / 'elsewhere.db'}"
    with (
        serving(database_url, tmp_path / "here", kafka, 1) as (here,),
        serving(elsewhere_url, tmp_path / "elsewhere", kafka, 1) as (elsewhere,),
    ):
        referral, person = referred(here, kafka)
        consume(elsewhere.services, kafka.events())
        first = here.accept(referral, "c-ann")
        second = elsewhere.accept(referral, "c-bob")
        assert (first.status_code, second.status_code) == (201, 201)  # neither could know of the other

        consume(here.services, kafka.events())
        consume(here.services, kafka.events())  # redelivered

        assert_one_episode([here], kafka, person, first.json()["id"], "c-ann")


def test_an_episode_opened_for_the_referral_before_claims_were_kept_answers_as_a_claim_does(
    workers: list[Worker], kafka: Kafka
) -> None:
    referral, person = referred(workers[0], kafka)
    ods_ = ods(workers[0].services)
    episode = {  # as an accept made before this release wrote it: a random id, no claim row
        "resourceType": "EpisodeOfCare",
        "id": "3f0c1f6e-0000-4000-8000-000000000001",
        "status": "active",
        "patient": {"reference": f"Patient/{person}"},
        "careManager": {"identifier": {"system": co.COORDINATOR_SYSTEM, "value": "c-ann"}},
        "referralRequest": [{"reference": f"ServiceRequest/{referral}"}],
        "period": {"start": AT.isoformat()},
    }
    opened = RecordEvent(
        "3f0c1f6e-0000-4000-8000-000000000002", co.EPISODE_OPENED.type, f"urn:ods:{ods_}", AT, person, episode
    )
    consume(workers[0].services, [*kafka.events(), opened])
    published = len(kafka.published)

    again = workers[1].accept(referral, "c-ann")
    other = workers[0].accept(referral, "c-bob")

    assert again.status_code == 200, again.text
    assert again.json()["id"] == episode["id"]
    assert other.status_code == 409, other.text
    assert f"coordinator c-ann (EpisodeOfCare/{episode['id']})" in other.json()["issue"][0]["diagnostics"]
    assert len(kafka.published) == published  # nothing more to say: it is on the record
