"""A referrer's `$withdraw` claims the referral as `$accept` and `$decline` do (hub.store.coordination):
on two API workers over one database, before the consumers have applied anything, whichever of the three
reaches the database first wins and the others are refused 409; once the service has accepted or
declined a referral its referrer no longer withdraws it; a withdrawal Kafka did not take (503) is
published by the next command that meets its claim."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from schemas.events import coordination as co
from tests.integration.test_accept_race import AT, PRACTICE, Kafka, Worker, consume, referred, serving
from tests.integration.test_decision_claims import decline, nhs_numbers, outcome, published, refused, unfinished

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest) -> str:
    return str(request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "postgres_url"))


@pytest.fixture
def kafka() -> Kafka:
    return Kafka()


@pytest.fixture
def workers(database_url: str, tmp_path: Path, kafka: Kafka) -> Iterator[list[Worker]]:
    with serving(database_url, tmp_path, kafka, 2) as both:
        yield both


def withdraw(worker: Worker, referral: str) -> httpx.Response:
    said = [{"name": "reason", "valueString": "Moved out of the area"}, {"name": "at", "valueDateTime": AT.isoformat()}]
    body = {"resourceType": "Parameters", "parameter": said}
    return worker.post(f"/fhir/ServiceRequest/{referral}/$withdraw", body, PRACTICE, "clinician")


def test_an_accept_or_decline_just_after_a_withdrawal_on_another_worker_is_refused_naming_it(
    workers: list[Worker], kafka: Kafka
) -> None:
    referral, person = referred(workers[0], kafka)

    withdrawn = withdraw(workers[0], referral)
    accepted = workers[1].accept(referral, "c-bob")  # (the consumers have not applied the withdrawal)
    declined = decline(workers[1], referral, "not eligible")

    assert withdrawn.status_code == 200, withdrawn.text
    for answer in (accepted, declined):
        refused(answer, f"ServiceRequest/{referral} was withdrawn by its referrer")
    assert published(kafka, co.EPISODE_OPENED.type) == []
    consume(workers[1].services, kafka.events())
    reader = workers[0].services.reader
    assert outcome(reader.read("ServiceRequest", referral) or {}) == ("revoked", "withdrawn")
    assert reader.search("EpisodeOfCare", person) == []


def test_a_withdrawal_just_after_an_accept_or_a_decline_on_another_worker_is_refused(
    workers: list[Worker], kafka: Kafka
) -> None:
    (accepted_one, _), (declined_one, _) = (referred(workers[0], kafka, nhs) for nhs in nhs_numbers(2))
    assert workers[0].accept(accepted_one, "c-ann").status_code == 201
    assert decline(workers[0], declined_one, "not eligible").status_code == 200
    sent = len(kafka.published)

    after_accept, after_decline = withdraw(workers[1], accepted_one), withdraw(workers[1], declined_one)

    refused(after_accept, f"ServiceRequest/{accepted_one} was accepted by the service", "contact the service")
    refused(after_decline, f"ServiceRequest/{declined_one} was declined already")
    assert len(kafka.published) == sent  # nothing withdrawn
    consume(workers[0].services, kafka.events())
    reader = workers[0].services.reader
    assert outcome(reader.read("ServiceRequest", accepted_one) or {}) == ("active", "accepted")
    assert outcome(reader.read("ServiceRequest", declined_one) or {}) == ("revoked", "declined")


def test_a_withdrawal_and_an_accept_racing_on_two_workers_one_wins_and_the_record_says_which(
    workers: list[Worker], kafka: Kafka
) -> None:
    for nhs in nhs_numbers(3):
        referral, person = referred(workers[0], kafka, nhs)
        start = threading.Barrier(2)

        def one(n: int, referral: str = referral, start: threading.Barrier = start) -> httpx.Response:
            start.wait()
            return withdraw(workers[0], referral) if n == 0 else workers[1].accept(referral, "c-bob")

        with ThreadPoolExecutor(2) as pool:
            withdrawn, accepted = pool.map(one, range(2))

        consume(workers[0].services, kafka.events())
        record = workers[0].services.reader
        if accepted.status_code == 201:
            refused(withdrawn, f"ServiceRequest/{referral} was accepted by the service")
            assert outcome(record.read("ServiceRequest", referral) or {}) == ("active", "accepted")
            assert [e["id"] for e in record.search("EpisodeOfCare", person)] == [accepted.json()["id"]]
        else:
            assert withdrawn.status_code == 200, withdrawn.text
            refused(accepted, f"ServiceRequest/{referral} was withdrawn by its referrer")
            assert outcome(record.read("ServiceRequest", referral) or {}) == ("revoked", "withdrawn")
            assert record.search("EpisodeOfCare", person) == []


def test_a_withdrawal_kafka_did_not_take_is_published_by_an_accept_refused_naming_it(
    workers: list[Worker], kafka: Kafka
) -> None:
    referral, person = referred(workers[0], kafka)
    kafka.down = True
    lost = withdraw(workers[0], referral)
    kafka.down = False

    accepted = workers[1].accept(referral, "c-bob")

    unfinished(lost, f"ServiceRequest/{referral} is withdrawn", "Send the same $withdraw again")
    refused(accepted, f"ServiceRequest/{referral} was withdrawn by its referrer")
    assert len(published(kafka, co.REFERRAL_OUTCOME.type)) == 1  # the withdrawal, sent by the accept
    again = withdraw(workers[1], referral)  # the same withdrawal again: it stands, and is not sent twice
    assert (again.status_code, again.json()["status"]) == (200, "revoked"), again.text
    assert len(published(kafka, co.REFERRAL_OUTCOME.type)) == 1
    consume(workers[0].services, kafka.events())
    reader = workers[0].services.reader
    stored = reader.read("ServiceRequest", referral) or {}
    assert outcome(stored) == ("revoked", "withdrawn")
    assert kafka.published[-1].source == f"urn:ods:{PRACTICE}"  # the referrer's word, whoever sent it
    assert reader.search("EpisodeOfCare", person) == []
