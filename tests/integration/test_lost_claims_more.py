"""More of a claim whose events Kafka did not take (answered 503), completed by the next command that
meets it (tests/integration/test_lost_claims.py): two API workers on one database (a SQLite file, and
PostgreSQL), over real sockets, sharing those tests' workers, Kafka and consumers.

* A decision completed after the referral was corrected (a newer version on the record) is dated no
  earlier than that version, so the record keeps it: the referral says accepted (or declined).
* A command refused 409 anyway that meets a lost claim while Kafka is still down is answered its own
  409, not the 503 of a command its caller never sent; the claim waits for the next command.
* A refusal of a decline of an accepted referral the record lacks says truly which it is: Kafka has the
  accept (the consumers lag), it was not known sent and is sent again now, or Kafka is still down.
* A lost `$close` is completed by an accept for its person, refused 409 naming the episode and its
  close; the person then leaves the caseload and can be accepted again.
* An accept refused at the cap is answered its 409 though the database fails the completion's reads.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from hub.core.errors import StoreUnavailableError
from hub.core.ports import RecordEvent
from schemas.events import coordination as co
from tests.integration.test_accept_race import AT, Worker, consume, referred, serving
from tests.integration.test_decision_claims import (
    CAP,
    accepted_episode,
    close,
    decline,
    nhs_numbers,
    outcome,
    published,
    refused,
    unfinished,
)
from tests.integration.test_lost_claims import SlowKafka, care_managers

pytestmark = pytest.mark.timeout(120)


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


def corrected(worker: Worker, referral: str, person: str, later: timedelta) -> None:
    """The referrer corrects the referral (the same id), dated `later` after AT: on the record first."""
    services = worker.services
    current = {k: v for k, v in (services.reader.read("ServiceRequest", referral) or {}).items() if k != "meta"}
    current["reasonCode"] = [{"text": "corrected: falls at home"}]
    bundle = {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": current}]}
    event = RecordEvent(
        f"correction-{referral}", co.REFERRAL_RECEIVED.type, "urn:ods:Y00001", AT + later, person, bundle
    )
    consume(services, [event])


def diagnostics(answer: object) -> str:
    return str(answer.json()["issue"][0]["diagnostics"])  # type: ignore[attr-defined]


def test_a_lost_accept_completed_after_the_referral_was_corrected_is_on_the_record_as_accepted(
    workers: list[Worker], kafka: SlowKafka
) -> None:
    referral, person = referred(workers[0], kafka)
    kafka.down = True
    lost = workers[0].accept(referral, "c-ann")
    kafka.down = False
    corrected(workers[0], referral, person, timedelta(hours=1))

    other = workers[1].accept(referral, "c-bob")

    unfinished(lost, "is held for coordinator c-ann")
    refused(other, "onto the caseload of coordinator c-ann")
    consume(workers[0].services, kafka.events())
    record = workers[0].services.reader.read("ServiceRequest", referral) or {}
    assert outcome(record) == ("active", "accepted")
    assert record["reasonCode"] == [{"text": "corrected: falls at home"}]  # (the correction stands)
    assert care_managers(workers, person) == [("active", "c-ann")]
    [episode] = workers[0].services.reader.search("EpisodeOfCare", person)
    assert episode["period"]["start"] == AT.isoformat()  # on the caseload from when the accept said


def test_a_lost_decline_completed_after_the_referral_was_corrected_is_on_the_record_as_declined(
    workers: list[Worker], kafka: SlowKafka
) -> None:
    referral, person = referred(workers[0], kafka)
    kafka.down = True
    lost = decline(workers[0], referral, "moved out of the area")
    kafka.down = False
    corrected(workers[0], referral, person, timedelta(hours=1))

    accepted = workers[1].accept(referral, "c-bob")

    unfinished(lost, f"ServiceRequest/{referral} is declined")
    refused(accepted, f"ServiceRequest/{referral} was declined")
    consume(workers[0].services, kafka.events())
    record = workers[0].services.reader.read("ServiceRequest", referral) or {}
    assert (outcome(record), record.get("note")) == (("revoked", "declined"), [{"text": "moved out of the area"}])
    assert care_managers(workers, person) == []


def test_commands_refused_anyway_while_kafka_is_still_down_are_answered_their_own_409(
    workers: list[Worker], kafka: SlowKafka
) -> None:
    first, person = referred(workers[0], kafka)
    second, _ = referred(workers[0], kafka)
    declined, _ = referred(workers[0], kafka, nhs_numbers(1)[0])
    before = len(kafka.published)
    kafka.down = True
    workers[0].accept(first, "c-ann")
    decline(workers[0], declined, "moved out of the area")

    answers = {
        "another referral for the person": workers[1].accept(second, "c-bob"),  # refuse_held_person
        "another coordinator's accept": workers[1].accept(first, "c-bob"),  # accepted_already
        "a decline of the accepted": decline(workers[1], first, "no"),  # refuse_declining_accepted
        "an accept of the declined": workers[1].accept(declined, "c-bob"),  # refuse_accepting_declined
    }
    kafka.down = False

    assert {said: a.status_code for said, a in answers.items()} == dict.fromkeys(answers, 409), [
        a.text for a in answers.values()
    ]
    refused(answers["another referral for the person"], "this person is already on a caseload", "coordinator c-ann")
    refused(answers["a decline of the accepted"], "is not answering now", "the next command that meets")
    assert len(kafka.published) == before  # nothing was taken
    # Kafka back, the next command that meets each claim completes it: the record agrees with the 409s
    refused(workers[1].accept(second, "c-bob"), "this person is already on a caseload")
    refused(workers[1].accept(declined, "c-bob"), "was declined")
    consume(workers[0].services, kafka.events())
    assert care_managers(workers, person) == [("active", "c-ann")]
    reader = workers[0].services.reader
    assert outcome(reader.read("ServiceRequest", declined) or {}) == ("revoked", "declined")


def test_a_decline_of_an_accept_the_record_lacks_is_refused_saying_truly_whether_kafka_has_it(
    workers: list[Worker], kafka: SlowKafka
) -> None:
    taken, lost, still_down = (referred(workers[0], kafka, nhs)[0] for nhs in nhs_numbers(3))
    assert workers[0].accept(taken, "c-ann").status_code == 201  # Kafka has it; the consumers lag
    kafka.down = True
    workers[0].accept(lost, "c-ann")
    workers[0].accept(still_down, "c-ann")
    refusal_while_down = decline(workers[1], still_down, "no")
    kafka.down = False
    sent = len(kafka.published)

    refused(decline(workers[1], taken, "no"), "Kafka has that $accept", "as soon as the consumers catch up")
    assert len(kafka.published) == sent  # nothing sent again
    refused(decline(workers[1], lost, "no"), "not known to have taken that $accept", "sent again now")
    assert len(kafka.published) == sent + 2  # the outcome and the episode opened
    refused(refusal_while_down, "did not acknowledge that $accept", "is not answering now")
    for said in ("Kafka has", "sent again now"):
        assert said not in diagnostics(refusal_while_down)


def test_a_lost_close_is_completed_by_an_accept_for_its_person_refused_naming_the_episode(
    workers: list[Worker], kafka: SlowKafka
) -> None:
    episode, person = accepted_episode(workers, kafka)
    ten = AT + timedelta(hours=1)
    kafka.down = True
    lost = close(workers[0], episode, at=ten.isoformat(), goals="home with support")
    kafka.down = False
    again, _ = referred(workers[0], kafka)  # the person is referred again

    answer = workers[1].accept(again, "c-bob")

    unfinished(lost, f"EpisodeOfCare/{episode} is closed")
    refused(answer, f"EpisodeOfCare/{episode}", "coordinator c-ann", "its $close", "sent again now")
    assert len(published(kafka, co.EPISODE_CLOSED.type)) == 1
    consume(workers[0].services, kafka.events())
    [recorded] = workers[0].services.reader.search("EpisodeOfCare", person)
    assert (recorded["status"], recorded["period"]["end"]) == ("finished", ten.isoformat())
    assert workers[0].services.coordination.caseloads() == {}  # the cap place is free
    assert (workers[0].services.coordination.state(person) or {}).get("episode") is None
    assert workers[1].accept(again, "c-bob").status_code == 201


def test_a_lost_close_met_while_kafka_is_still_down_is_named_with_what_to_send_again(
    workers: list[Worker], kafka: SlowKafka
) -> None:
    episode, _ = accepted_episode(workers, kafka)
    again, _ = referred(workers[0], kafka)
    kafka.down = True
    close(workers[0], episode, goals="home with support")

    answer = workers[1].accept(again, "c-bob")

    refused(answer, f"EpisodeOfCare/{episode}", "its $close", "send that $close again (the same parameters)")
    assert published(kafka, co.EPISODE_CLOSED.type) == []


def test_an_accept_refused_at_the_cap_is_answered_409_though_the_database_fails_its_completion(
    workers: list[Worker], kafka: SlowKafka, monkeypatch: pytest.MonkeyPatch
) -> None:
    made = [referred(workers[0], kafka, nhs)[0] for nhs in nhs_numbers(CAP + 1)]
    for referral in made[:CAP]:
        assert workers[0].accept(referral, "c-ann").status_code == 201

    def unavailable(coordinator: str) -> list[dict[str, object]]:
        raise StoreUnavailableError("the database did not answer")

    monkeypatch.setattr(workers[1].services.coordination, "unsent_acceptances", unavailable)
    over = workers[1].accept(made[CAP], "c-ann")

    refused(over, f"coordinator c-ann already has {CAP} people on their caseload (cap {CAP})")


def test_an_accept_kafka_took_after_all_behind_a_correction_on_the_log_is_on_the_record_as_accepted(
    workers: list[Worker], kafka: SlowKafka
) -> None:
    # Kafka took the accept's outcome but did not acknowledge it (503); the correction, dated after the
    # accept, reached the record before that copy did (the consumers lagging): the copy is older
    referral, person = referred(workers[0], kafka)
    since = len(kafka.published)
    kafka.slow = True
    unfinished(workers[0].accept(referral, "c-ann"), "is held for coordinator c-ann")
    kafka.slow = False
    corrected(workers[0], referral, person, timedelta(hours=1))
    consume(workers[0].services, kafka.events(since))

    refused(workers[1].accept(referral, "c-bob"), "onto the caseload of coordinator c-ann")

    consume(workers[0].services, kafka.events(since + 1))
    assert care_managers(workers, person) == [("active", "c-ann")]
    assert outcome(workers[0].services.reader.read("ServiceRequest", referral) or {}) == ("active", "accepted")
