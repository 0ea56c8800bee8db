"""A referral's decision that Kafka did not take (answered 503) and that its coordinator never sends
again does not sit claimed and unsent: the next command to meet the claim publishes it, then answers
as it would had Kafka taken it. Two API workers on one database (a SQLite file, and PostgreSQL), over
real sockets, as in tests/integration/test_accept_race.py, whose workers and consumers these share.

* An accept lost that way is published by another coordinator's accept of the referral or a decline
  of it (each refused 409, naming the accept), by an accept of another referral for the person, and
  by an accept of its coordinator refused at the caseload cap; the record then shows the person on
  that coordinator's caseload, as the refusals say. Kafka having taken it after all (a timeout after
  sending) changes nothing: its copy and the one sent again are the same event.
* A decline lost that way is published by an accept of the referral, refused 409 naming it.
* A decision Kafka took is sent once: commands that meet it before the record has it send nothing.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from hub.core.errors import BrokerUnavailableError
from schemas.envelope import Envelope
from tests.integration.test_accept_race import Kafka, Worker, consume, referred, serving
from tests.integration.test_decision_claims import CAP, decline, nhs_numbers, outcome, refused, unfinished

pytestmark = pytest.mark.timeout(120)


@dataclass
class SlowKafka(Kafka):
    """Kafka that, while `slow`, takes each event but does not acknowledge it in time (as a publish
    timing out after sending does): the event is on the log, the caller is told it failed."""

    slow: bool = False

    async def publish(self, envelope: Envelope) -> None:
        await super().publish(envelope)
        if self.slow:
            raise BrokerUnavailableError("Kafka did not acknowledge in time")


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest) -> str:
    return str(request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "postgres_url"))


@pytest.fixture
def kafka() -> SlowKafka:
    return SlowKafka()


@pytest.fixture
def workers(database_url: str, tmp_path: Path, kafka: SlowKafka) -> Iterator[list[Worker]]:
    with serving(database_url, tmp_path, kafka, 2) as both:
        yield both


def care_managers(workers: list[Worker], person: str) -> list[tuple[str, str]]:
    """The person's EpisodeOfCare on the record: (status, coordinator) each."""
    episodes = workers[0].services.reader.search("EpisodeOfCare", person)
    return [(str(e["status"]), str(e["careManager"]["identifier"]["value"])) for e in episodes]


def test_an_accept_kafka_did_not_take_is_published_by_another_coordinators_accept_refused_naming_it(
    workers: list[Worker], kafka: SlowKafka
) -> None:
    # one Kafka never took (down); one it took but did not acknowledge in time (slow): both answered 503
    (lost, lost_person), (late, late_person) = (referred(workers[0], kafka, nhs) for nhs in nhs_numbers(2))
    kafka.down = True
    lost_answer = workers[0].accept(lost, "c-ann")
    kafka.down, kafka.slow = False, True
    late_answer = workers[0].accept(late, "c-ann")
    kafka.slow = False

    others = [workers[1].accept(referral, "c-bob") for referral in (lost, late)]

    for answer in (lost_answer, late_answer):
        unfinished(answer, "is held for coordinator c-ann", "Send the same $accept (coordinator c-ann) again")
    for answer in others:
        refused(answer, "was accepted already, onto the caseload of coordinator c-ann")
    consume(workers[1].services, kafka.events())
    assert care_managers(workers, lost_person) == care_managers(workers, late_person) == [("active", "c-ann")]
    assert [w.caseloads() for w in workers] == [{"c-ann": 2}] * 2
    for referral in (lost, late):  # the hub's answer and the record agree, now and after
        refused(workers[0].accept(referral, "c-bob"), "coordinator c-ann")
        assert workers[1].accept(referral, "c-ann").status_code == 200


def test_an_accept_kafka_did_not_take_is_published_by_a_decline_of_the_referral_refused_naming_it(
    workers: list[Worker], kafka: SlowKafka
) -> None:
    referral, person = referred(workers[0], kafka)
    kafka.down = True
    lost = workers[0].accept(referral, "c-ann")
    kafka.down = False

    declined = decline(workers[1], referral, "moved out of the area")

    unfinished(lost, f"ServiceRequest/{referral} is held for coordinator c-ann")
    refused(declined, f"ServiceRequest/{referral} was accepted, onto coordinator c-ann's caseload", "$close")
    consume(workers[0].services, kafka.events())
    assert outcome(workers[0].services.reader.read("ServiceRequest", referral) or {}) == ("active", "accepted")
    assert care_managers(workers, person) == [("active", "c-ann")]


def test_an_accept_kafka_did_not_take_is_published_by_an_accept_of_another_referral_for_the_person(
    workers: list[Worker], kafka: SlowKafka
) -> None:
    first, person = referred(workers[0], kafka)
    second, _ = referred(workers[0], kafka)
    kafka.down = True
    lost = workers[0].accept(first, "c-ann")
    kafka.down = False

    other = workers[1].accept(second, "c-bob")

    unfinished(lost, f"ServiceRequest/{first} is held for coordinator c-ann")
    refused(other, "this person is already on a caseload", "coordinator c-ann")
    consume(workers[0].services, kafka.events())
    assert care_managers(workers, person) == [("active", "c-ann")]
    assert [w.caseloads() for w in workers] == [{"c-ann": 1}] * 2


def test_an_accept_refused_at_the_cap_publishes_the_accepts_of_its_coordinator_kafka_did_not_take(
    workers: list[Worker], kafka: SlowKafka
) -> None:
    made = [referred(workers[0], kafka, nhs) for nhs in nhs_numbers(CAP + 1)]
    answers = [workers[n % 2].accept(referral, "c-ann") for n, (referral, _) in enumerate(made[: CAP - 1])]
    kafka.down = True
    lost = workers[0].accept(made[CAP - 1][0], "c-ann")
    kafka.down = False
    consume(workers[0].services, kafka.events())
    assert [w.caseloads() for w in workers] == [{"c-ann": CAP - 1}] * 2  # (the cap counts CAP: one is lost)

    over = workers[1].accept(made[CAP][0], "c-ann")

    assert [a.status_code for a in answers] == [201] * (CAP - 1)
    unfinished(lost, "is held for coordinator c-ann")
    refused(over, f"coordinator c-ann already has {CAP} people on their caseload (cap {CAP})")
    consume(workers[0].services, kafka.events())
    assert [w.caseloads() for w in workers] == [{"c-ann": CAP}] * 2
    assert care_managers(workers, made[CAP - 1][1]) == [("active", "c-ann")]


def test_a_decline_kafka_did_not_take_is_published_by_an_accept_of_the_referral_refused_naming_it(
    workers: list[Worker], kafka: SlowKafka
) -> None:
    referral, person = referred(workers[0], kafka)
    kafka.down = True
    lost = decline(workers[0], referral, "moved out of the area")
    kafka.down = False

    accepted = workers[1].accept(referral, "c-bob")

    unfinished(lost, f"ServiceRequest/{referral} is declined", "Send the same $decline again")
    refused(accepted, f"ServiceRequest/{referral} was declined", "refer them again")
    consume(workers[0].services, kafka.events())
    record = workers[0].services.reader.read("ServiceRequest", referral) or {}
    assert (outcome(record), record.get("note")) == (("revoked", "declined"), [{"text": "moved out of the area"}])
    assert care_managers(workers, person) == []


def test_a_decision_kafka_took_is_sent_once_though_commands_meet_it_before_the_record_has_it(
    workers: list[Worker], kafka: SlowKafka
) -> None:
    accepted, _ = referred(workers[0], kafka)
    declined, _ = referred(workers[0], kafka, nhs_numbers(1)[0])
    first = workers[0].accept(accepted, "c-ann")
    no = decline(workers[0], declined, "moved out of the area")
    sent = [e.id for e in kafka.published]

    again = [
        workers[1].accept(accepted, "c-ann"),  # a double click
        workers[1].accept(accepted, "c-bob"),
        decline(workers[1], accepted, "no"),
        workers[1].accept(declined, "c-bob"),
        decline(workers[1], declined, "moved out of the area"),
    ]

    assert (first.status_code, no.status_code) == (201, 200), (first.text, no.text)
    assert [a.status_code for a in again] == [200, 409, 409, 409, 200], [a.text for a in again]
    assert [e.id for e in kafka.published] == sent
