"""The coordination commands that decide something once claim it in the database before they
publish, as `$accept` does (tests/integration/test_accept_race.py, whose workers, Kafka and
consumers these tests share): two API workers on one database (a SQLite file, and PostgreSQL),
over real sockets, the consumers applying the log only when a test says so (the record lags).

* A referral's decision: `$decline` then straight away `$accept` (another worker, another
  coordinator) is refused 409, naming the decline; the two at once, one wins and the record says
  which. A decline sent again is answered with the one that stands; one Kafka did not take holds
  the referral declined, and the same decline again publishes it.
* The caseload cap: back-to-back accepts for one coordinator, sent faster than the consumers
  apply them (one after another, or all at once), stop at the cap; an episode closed frees its
  place once the record and the rules engine have the close.
* `$close`: two closes of one episode in quick succession, the first stands and the second is
  refused 409 naming when it was closed; the same close again, before the record has it, is
  answered with it (once the record has it, 409 as before); one Kafka did not take keeps the
  episode closed, and the same close again publishes it.
* An accept of a referral for a person the record says has died is refused 409.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from hub.core import nhs_number
from hub.core.ports import RecordEvent
from schemas.events import coordination as co
from schemas.events.patient import PATIENT_UPDATED
from tests.integration.test_accept_race import (
    AT,
    NHS_SYSTEM,
    Kafka,
    Worker,
    consume,
    ods,
    referred,
    serving,
)

pytestmark = pytest.mark.timeout(120)
CAP = 28  # the shipped rules' caseload cap (hub/rules/croydon-pic.v4.yaml)


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


def nhs_numbers(count: int) -> list[str]:
    """`count` valid NHS numbers (check digit and all), none a placeholder."""
    found: list[str] = []
    n = 0
    while len(found) < count:
        first_nine = f"943{n:06d}"
        n += 1
        digit = nhs_number.check_digit(first_nine)
        if digit is not None and nhs_number.is_valid(f"{first_nine}{digit}"):
            found.append(f"{first_nine}{digit}")
    return found


def command(worker: Worker, path: str, **given: str) -> httpx.Response:
    """A coordinator's command with these parameters (`at` a dateTime, the rest strings)."""
    params = [
        {"name": name.replace("_", "-"), "valueDateTime" if name == "at" else "valueString": value}
        for name, value in given.items()
    ]
    body = {"resourceType": "Parameters", "parameter": params}
    return worker.post(path, body, ods(worker.services), "coordinator")


def decline(worker: Worker, referral: str, reason: str, at: str = AT.isoformat()) -> httpx.Response:
    return command(worker, f"/fhir/ServiceRequest/{referral}/$decline", reason=reason, at=at)


def close(worker: Worker, episode: str, **given: str) -> httpx.Response:
    return command(worker, f"/fhir/EpisodeOfCare/{episode}/$close", **given)


def refused(answer: httpx.Response, *said: str) -> None:
    """A 409 OperationOutcome (business-rule) whose diagnostics say each of `said`."""
    assert answer.status_code == 409, answer.text
    issue = answer.json()["issue"][0]
    assert (answer.json()["resourceType"], issue["code"]) == ("OperationOutcome", "business-rule"), answer.text
    for words in said:
        assert words in issue["diagnostics"], answer.text


def unfinished(answer: httpx.Response, *said: str) -> None:
    """A 503 OperationOutcome (transient) whose diagnostics say each of `said`."""
    assert answer.status_code == 503, answer.text
    issue = answer.json()["issue"][0]
    assert (answer.json()["resourceType"], issue["code"]) == ("OperationOutcome", "transient"), answer.text
    for words in said:
        assert words in issue["diagnostics"], answer.text


def outcome(referral: dict[str, Any]) -> tuple[str, str | None]:
    said = [e.get("valueCode") for e in referral.get("extension") or [] if e.get("url") == co.OUTCOME_EXTENSION]
    return str(referral["status"]), (said[0] if said else None)


def published(kafka: Kafka, type_: str) -> list[str]:
    return [e.id for e in kafka.published if e.type == type_]


def accepted_episode(workers: list[Worker], kafka: Kafka, nhs: str = "9434765919") -> tuple[str, str]:
    """A referral accepted onto c-ann's caseload, on the record: the EpisodeOfCare id and the person."""
    referral, person = referred(workers[0], kafka, nhs)
    accepted = workers[0].accept(referral, "c-ann")
    assert accepted.status_code == 201, accepted.text
    consume(workers[0].services, kafka.events())
    return str(accepted.json()["id"]), person


# -- 1. a referral's decision: accept or decline, whichever reaches the database first


def test_a_decline_then_at_once_an_accept_on_another_worker_is_refused_naming_the_decline(
    workers: list[Worker], kafka: Kafka
) -> None:
    referral, person = referred(workers[0], kafka)

    declined = decline(workers[0], referral, "moved out of the area")
    accepted = workers[1].accept(referral, "c-bob")  # (the consumers have not applied the decline)

    assert declined.status_code == 200, declined.text
    refused(accepted, f"ServiceRequest/{referral} was declined", "refer them again")
    assert published(kafka, co.EPISODE_OPENED.type) == []
    consume(workers[1].services, kafka.events())
    reader = workers[0].services.reader
    assert outcome(reader.read("ServiceRequest", referral) or {}) == ("revoked", "declined")
    assert reader.search("EpisodeOfCare", person) == []
    assert [w.caseloads() for w in workers] == [{}, {}]


def test_a_decline_and_an_accept_racing_on_two_workers_one_wins_and_the_record_says_which(
    workers: list[Worker], kafka: Kafka
) -> None:
    for nhs in nhs_numbers(4):
        referral, person = referred(workers[0], kafka, nhs)
        start = threading.Barrier(2)

        def one(n: int, referral: str = referral, start: threading.Barrier = start) -> httpx.Response:
            start.wait()
            return decline(workers[0], referral, "declined") if n == 0 else workers[1].accept(referral, "c-bob")

        with ThreadPoolExecutor(2) as pool:
            declined, accepted = pool.map(one, range(2))

        consume(workers[0].services, kafka.events())
        record = workers[0].services.reader
        if accepted.status_code == 201:
            refused(declined, f"ServiceRequest/{referral} was accepted")
            assert outcome(record.read("ServiceRequest", referral) or {}) == ("active", "accepted")
            assert [e["id"] for e in record.search("EpisodeOfCare", person)] == [accepted.json()["id"]]
        else:
            assert declined.status_code == 200, declined.text
            refused(accepted, f"ServiceRequest/{referral} was declined")
            assert outcome(record.read("ServiceRequest", referral) or {}) == ("revoked", "declined")
            assert record.search("EpisodeOfCare", person) == []


def test_a_decline_sent_again_before_the_record_has_it_is_answered_with_the_first(
    workers: list[Worker], kafka: Kafka
) -> None:
    referral, _ = referred(workers[0], kafka)

    first = decline(workers[0], referral, "moved out of the area")
    again = decline(workers[1], referral, "a second thought", at=(AT + timedelta(hours=1)).isoformat())

    assert (first.status_code, again.status_code) == (200, 200), again.text
    assert again.json()["note"] == first.json()["note"] == [{"text": "moved out of the area"}]
    consume(workers[0].services, kafka.events())
    record = workers[0].services.reader.read("ServiceRequest", referral) or {}
    assert (outcome(record), record.get("note")) == (("revoked", "declined"), [{"text": "moved out of the area"}])


def test_a_decline_kafka_did_not_take_holds_the_referral_declined_and_the_same_decline_again_publishes_it(
    workers: list[Worker], kafka: Kafka
) -> None:
    referral, person = referred(workers[0], kafka)
    kafka.down = True
    lost = decline(workers[0], referral, "moved out of the area")
    kafka.down = False

    other = workers[1].accept(referral, "c-bob")
    again = decline(workers[1], referral, "moved out of the area")

    unfinished(lost, f"ServiceRequest/{referral} is declined", "Send the same $decline again")
    refused(other, f"ServiceRequest/{referral} was declined")
    assert again.status_code == 200, again.text
    consume(workers[0].services, kafka.events())
    reader = workers[0].services.reader
    assert outcome(reader.read("ServiceRequest", referral) or {}) == ("revoked", "declined")
    assert reader.search("EpisodeOfCare", person) == []


# -- 2. the caseload cap, however far behind the consumers are


def test_back_to_back_accepts_for_one_coordinator_stop_at_the_cap_before_the_consumers_have_them(
    workers: list[Worker], kafka: Kafka
) -> None:
    referrals = [referred(workers[0], kafka, nhs)[0] for nhs in nhs_numbers(CAP + 2)]

    answers = [workers[n % 2].accept(referral, "c-ann") for n, referral in enumerate(referrals)]

    assert [a.status_code for a in answers] == [201] * CAP + [409] * 2, [a.text for a in answers[CAP - 1 :]]
    for answer in answers[CAP:]:
        refused(answer, f"coordinator c-ann already has {CAP} people on their caseload (cap {CAP})")
    consume(workers[1].services, kafka.events())
    assert [w.caseloads() for w in workers] == [{"c-ann": CAP}] * 2


def test_accepts_for_one_coordinator_racing_on_two_workers_stop_at_the_cap(workers: list[Worker], kafka: Kafka) -> None:
    referrals = [referred(workers[0], kafka, nhs)[0] for nhs in nhs_numbers(CAP + 4)]
    start = threading.Barrier(len(referrals))

    def one(n: int) -> httpx.Response:
        start.wait()
        return workers[n % 2].accept(referrals[n], "c-ann")

    with ThreadPoolExecutor(len(referrals)) as pool:
        answers = list(pool.map(one, range(len(referrals))))

    assert sorted(a.status_code for a in answers) == [201] * CAP + [409] * 4
    consume(workers[0].services, kafka.events())
    assert [w.caseloads() for w in workers] == [{"c-ann": CAP}] * 2


def test_an_episode_claimed_and_closed_on_the_record_frees_its_place_under_the_cap(
    workers: list[Worker], kafka: Kafka
) -> None:
    referrals = [referred(workers[0], kafka, nhs)[0] for nhs in nhs_numbers(CAP + 2)]
    episodes = [workers[0].accept(referral, "c-ann") for referral in referrals[:CAP]]
    assert [a.status_code for a in episodes] == [201] * CAP
    consume(workers[0].services, kafka.events())

    closed = close(workers[0], episodes[0].json()["id"], at=(AT + timedelta(hours=1)).isoformat(), goals="Home")
    consume(workers[0].services, kafka.events())
    freed = workers[1].accept(referrals[CAP], "c-ann")
    over = workers[0].accept(referrals[CAP + 1], "c-ann")

    assert closed.status_code == 200, closed.text
    assert freed.status_code == 201, freed.text
    refused(over, f"coordinator c-ann already has {CAP} people on their caseload (cap {CAP})")
    consume(workers[0].services, kafka.events())
    assert [w.caseloads() for w in workers] == [{"c-ann": CAP}] * 2


# -- 3. $close: the first close of an episode stands


def test_two_closes_of_one_episode_in_quick_succession_the_first_stands_and_the_second_is_refused(
    workers: list[Worker], kafka: Kafka
) -> None:
    episode, person = accepted_episode(workers, kafka)
    ten, eleven = AT + timedelta(hours=1), AT + timedelta(hours=2)

    first = close(workers[0], episode, at=ten.isoformat(), goals="Home")
    second = close(workers[1], episode, at=eleven.isoformat(), goals="x")  # (the record has not the first)
    again = close(workers[1], episode, at=ten.isoformat(), goals="Home")  # a double click: the same close

    assert first.status_code == 200, first.text
    refused(second, f"EpisodeOfCare/{episode} was closed at {ten.isoformat()}")
    assert again.status_code == 200, again.text
    assert again.json() == first.json()
    assert len(set(published(kafka, co.EPISODE_CLOSED.type))) == 1
    consume(workers[1].services, kafka.events())
    reader = workers[0].services.reader
    [recorded] = reader.search("EpisodeOfCare", person)
    assert (recorded["status"], recorded["period"]["end"]) == ("finished", ten.isoformat())
    [summary] = next(e for e in kafka.events() if e.type == co.EPISODE_CLOSED.type).payload["entry"][1:]
    stored = reader.read("Composition", summary["resource"]["id"]) or {}
    assert stored.get("date") == ten.isoformat()
    assert "x</div>" not in str(stored.get("section"))
    count = len(kafka.published)

    after = close(workers[0], episode, at=ten.isoformat(), goals="Home")  # once recorded: closed already, as before
    later = close(workers[0], episode, at=eleven.isoformat(), goals="x")

    refused(after, f"EpisodeOfCare/{episode} was closed at {ten.isoformat()}", "already closed")
    refused(later, f"EpisodeOfCare/{episode} was closed at {ten.isoformat()}")
    assert len(kafka.published) == count


def test_a_close_kafka_did_not_take_keeps_the_episode_closed_and_the_same_close_again_publishes_it(
    workers: list[Worker], kafka: Kafka
) -> None:
    episode, person = accepted_episode(workers, kafka)
    ten = AT + timedelta(hours=1)
    kafka.down = True
    lost = close(workers[0], episode, at=ten.isoformat(), goals="home with support")
    kafka.down = False

    other = close(workers[1], episode, goals="something else")
    again = close(workers[1], episode, at=ten.isoformat(), goals="home with support")

    unfinished(lost, f"EpisodeOfCare/{episode} is closed", "Send the same $close again")
    refused(other, f"EpisodeOfCare/{episode} was closed at {ten.isoformat()}")
    assert again.status_code == 200, again.text
    consume(workers[0].services, kafka.events())
    [recorded] = workers[0].services.reader.search("EpisodeOfCare", person)
    assert (recorded["status"], recorded["period"]["end"]) == ("finished", ten.isoformat())


# -- 4. a person the record says has died


@pytest.mark.parametrize("died", [{"deceasedDateTime": "2025-01-02"}, {"deceasedBoolean": True}], ids=str)
def test_an_accept_for_a_person_the_record_says_died_is_refused(
    workers: list[Worker], kafka: Kafka, died: dict[str, Any]
) -> None:
    referral, person = referred(workers[0], kafka)
    patient = {
        "resourceType": "Patient",
        "id": person,
        "identifier": [{"system": NHS_SYSTEM, "value": "9434765919"}],
        **died,
    }
    bundle = {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": patient}]}
    consume(workers[0].services, [RecordEvent("a08-died", PATIENT_UPDATED.type, "urn:ods:RXX", AT, person, bundle)])

    accepted = workers[1].accept(referral, "c-ann")

    refused(accepted, "the record says this person has died")
    assert published(kafka, co.EPISODE_OPENED.type) == []


def test_a_close_kafka_did_not_take_is_published_by_the_next_close_however_it_is_worded(
    workers: list[Worker], kafka: Kafka
) -> None:
    # the coordinator rewords the summary instead of resending it: the lost close must not stay claimed
    # and unsent (the person held on the caseload, the GP never told), and the 409 must be true
    episode, person = accepted_episode(workers, kafka)
    ten = AT + timedelta(hours=1)
    kafka.down = True
    lost = close(workers[0], episode, at=ten.isoformat(), goals="home with support")
    kafka.down = False

    reworded = close(workers[1], episode, at=ten.isoformat(), goals="home with support, carer in place")

    unfinished(lost, f"EpisodeOfCare/{episode} is closed", "Send the same $close again")
    refused(reworded, f"EpisodeOfCare/{episode} was closed at {ten.isoformat()}", "the PIC summary sent to the GP")
    consume(workers[0].services, kafka.events())
    [recorded] = workers[0].services.reader.search("EpisodeOfCare", person)
    assert (recorded["status"], recorded["period"]["end"]) == ("finished", ten.isoformat())
