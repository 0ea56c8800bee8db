"""A PIC summary's receipt is the receipt of the practice the letter is addressed to, and only where
the summary itself went to it: the sender publishes no other (another subscriber's copy, a delivery at
`empty` or `id-only`), and the KPIs count none that a log from before names from another recipient."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import pytest

from consumers.delivery_sender import WebhookSender
from hub.core.delivery import body
from hub.core.kpis import KpiFold
from hub.core.pic_summary import composition, letter, letter_practice, receipt_names, received_summary, summary_sent
from hub.core.ports import Json, RecordEvent
from schemas.events import coordination as co
from schemas.subscriptions import Subscription
from tests import locality_month as month

ODS = "https://fhir.nhs.uk/Id/ods-organization-code"
GP, OTHER = "Y90002", "Y90001"
PERSON = month.PEOPLE["P6"]
EPISODE: Json = {"resourceType": "EpisodeOfCare", "id": month.episode_id("P6"), "status": "finished"}
SUMMARY = composition(
    episode=EPISODE, person=PERSON, at=month.at(27, 10), author="Y0PIC", author_name="PIC", sections={"goals": "Home"}
)
LETTER = letter(SUMMARY, person=PERSON, nhs="9990000069", practice=GP, episode=EPISODE, at=month.at(27, 10))
RESOURCES = [e["resource"] for e in LETTER["entry"]]
EVENT = {"id": "e1", "type": co.PIC_SUMMARY_SENT.type, "time": month.at(27, 10).isoformat()}
NOW = datetime(2026, 11, 28, 9, tzinfo=UTC)


def sent_at(content: str, resources: list[Json] = RESOURCES) -> Json:
    """The Bundle a delivery at `content` sends of the letter (as hub.core.delivery builds it)."""
    return body("sub", content, EVENT, resources)


def test_the_letters_practice_is_the_one_its_patient_names() -> None:
    assert letter_practice(RESOURCES) == GP
    unaddressed = [r for r in RESOURCES if r["resourceType"] != "Patient"]
    assert letter_practice(unaddressed) is None
    other_patient = [{**r, "id": "someone-else"} if r["resourceType"] == "Patient" else r for r in RESOURCES]
    assert letter_practice(other_patient) is None  # (only the Composition's subject addresses it)
    by_reference = [
        {**r, "generalPractitioner": [{"reference": "Organization/x"}]} if r["resourceType"] == "Patient" else r
        for r in RESOURCES
    ]
    assert letter_practice(by_reference) is None


@pytest.mark.parametrize(
    ("org", "content", "receipt"),
    [(GP, "full-resource", True), (OTHER, "full-resource", False), (GP, "empty", False), (GP, "id-only", False)],
)
def test_only_the_addressed_practices_delivery_carrying_the_summary_is_a_receipt(
    org: str, content: str, receipt: bool
) -> None:
    found = received_summary(org, GP, sent_at(content))
    assert (found["id"] if found else None) == (SUMMARY["id"] if receipt else None)


def test_a_delivery_without_the_summary_or_a_letter_addressed_to_no_one_is_no_receipt() -> None:
    patient_only = [r for r in RESOURCES if r["resourceType"] == "Patient"]
    assert summary_sent(sent_at("full-resource", patient_only)) is None
    assert received_summary(GP, None, sent_at("full-resource")) is None


def test_a_receipt_names_its_recipient_and_letter_where_it_does() -> None:
    said = {
        "resourceType": "Communication",
        "recipient": [{"identifier": {"system": ODS, "value": GP}}],
        "about": [{"reference": "Patient/x"}, {"reference": f"Composition/{SUMMARY['id']}"}],
    }
    assert receipt_names(said) == (GP, SUMMARY["id"])
    assert receipt_names({"resourceType": "Communication"}) == (None, None)  # (the locality month's)
    assert receipt_names({"recipient": [{"identifier": {"system": "other", "value": GP}}]}) == (None, None)


class Deliverer:
    def __init__(self) -> None:
        self.receipts: list[tuple[int, str, str]] = []
        self.settled: list[Any] = []
        self.outbox = SimpleNamespace(settle=lambda *args, **kwargs: self.settled.append(args))

    async def receipt(self, sub: Subscription, delivery: Any, summary: Json, at: datetime, how: str) -> None:
        self.receipts.append((delivery.id, sub.org, summary["id"]))


def subscription(org: str, content: str = "full-resource") -> Subscription:
    said = {"id": f"s-{org.lower()}", "org": org, "events": [co.PIC_SUMMARY_SENT.type], "content": content}
    return Subscription.model_validate(said | {"mailbox": "m"})


def test_the_sender_publishes_the_receipt_of_the_gps_own_delivery_of_the_summary_only() -> None:
    deliverer = Deliverer()
    sender = WebhookSender(deliverer, env={})  # type: ignore[arg-type]
    queued: Json = {"event": EVENT, "resources": RESOURCES, "practice": GP}
    legacy: Json = {"event": EVENT, "resources": RESOURCES}  # queued before the practice was kept: its Patient names it
    unnamed: Json = {"event": EVENT, "resources": [r for r in RESOURCES if r["resourceType"] != "Patient"]}
    withheld: Json = {"event": EVENT, "resources": [r for r in RESOURCES if r["resourceType"] == "Patient"]}
    withheld["practice"] = GP  # (the policy let the Patient through, not the summary)
    tries = [
        (1, subscription(GP), queued, "full-resource"),
        (2, subscription(OTHER), queued, "full-resource"),  # all-permitted: another practice's copy
        (3, subscription(GP, "empty"), queued, "empty"),
        (4, subscription(GP, "id-only"), queued, "id-only"),
        (5, subscription(GP), legacy, "full-resource"),
        (6, subscription(GP), unnamed, "full-resource"),  # (no practice to check against: none)
        (7, subscription(GP), withheld, "full-resource"),
    ]
    for n, sub, said, content in tries:
        delivery = SimpleNamespace(id=n, body=said)
        sent = sent_at(content, said["resources"])
        asyncio.run(sender._delivered(sub, delivery, 1, NOW, "mailbox", sent))  # type: ignore[arg-type]
    assert deliverer.receipts == [(1, GP, SUMMARY["id"]), (5, GP, SUMMARY["id"])]
    assert [args[0] for args in deliverer.settled] == [1, 2, 3, 4, 5, 6, 7]  # each delivered all the same


def a_letter_event() -> RecordEvent:
    return RecordEvent("letter-p6", co.PIC_SUMMARY_SENT.type, "urn:ods:Y0PIC", month.at(27, 10), PERSON, LETTER)


def a_receipt(recipient: str | None, at: datetime, about: str | None = SUMMARY["id"]) -> RecordEvent:
    communication: Json = {"resourceType": "Communication", "id": f"r-{recipient}", "status": "completed"}
    if recipient:
        communication["recipient"] = [{"identifier": {"system": ODS, "value": recipient}}]
    if about:
        communication["about"] = [{"reference": f"Composition/{about}"}]
    return RecordEvent(
        f"receipt-{recipient}-{about}", co.PIC_SUMMARY_RECEIPT.type, f"urn:ods:{recipient}", at, PERSON, communication
    )


def letter_of_p6(*events: RecordEvent) -> datetime | None:
    """P6's letter as the KPIs take it, folding the locality month without its receipt, then `events`."""
    fold = KpiFold(service=month.SERVICE)
    for event in [e for e in month.script() if e.type != co.PIC_SUMMARY_RECEIPT.type] + list(events):
        fold.add(event)
    [stay] = [e for e in fold.stays() if e.id == month.episode_id("P6")]
    return stay.letter


def test_an_older_logs_receipt_from_another_subscriber_is_no_letter_to_the_gp() -> None:
    assert letter_of_p6(a_letter_event(), a_receipt(OTHER, month.at(27, 11))) is None
    # the practice's own, later, is the letter (in any order on the log: the fold decides at report time)
    own = a_receipt(GP, month.at(28, 9))
    assert letter_of_p6(a_receipt(OTHER, month.at(27, 11)), own, a_letter_event()) == month.at(28, 9)


def test_a_receipt_the_fold_cannot_check_counts_as_it_always_did() -> None:
    assert letter_of_p6(a_letter_event(), a_receipt(None, month.at(28, 9))) == month.at(28, 9)  # names no recipient
    assert letter_of_p6(a_receipt(OTHER, month.at(28, 9))) == month.at(28, 9)  # its letter is not on the log
    assert letter_of_p6(a_letter_event(), a_receipt(OTHER, month.at(28, 9), about=None)) == month.at(28, 9)


def named_receipt(recipient: str, at: datetime) -> RecordEvent:
    """A receipt of P1's letter `pic-p1` naming its recipient, as the sender publishes one."""
    event = month.receipt("P1", at)
    [communication] = [e["resource"] for e in event.payload["entry"]]
    communication["recipient"] = [{"identifier": {"system": ODS, "value": recipient}}]
    communication["about"] = [{"reference": "Composition/pic-p1"}]
    event.payload["id"] = communication["id"] = f"receipt-{recipient}"
    return RecordEvent(f"receipt-event-{recipient}", event.type, event.source, at, event.subject, event.payload)


@pytest.mark.parametrize(("version", "merged"), [(3, False), (4, False), (4, True)])
def test_the_engine_takes_only_the_practices_receipt_as_the_letters_from_version_4(version: int, merged: bool) -> None:
    """An older log holds receipts from every subscriber: from rules version 4 the engine, as the KPIs,
    lets only the practice's answer the PIC summary task (the letter it read back names the practice)."""
    from hub.core.tasks import Engine
    from hub.rules import DEFAULT, load_rules
    from hub.store.memory import MemoryCoordinationStore
    from tests.unit.test_coordination_rules import discharged_from_the_service, run
    from tests.unit.test_engine_merges import merge_of

    engine = Engine(load_rules(DEFAULT.with_name(f"croydon-pic.v{version}.yaml")))
    store = MemoryCoordinationStore()
    registered = month.register_row("P1", month.at(1, 9), admissions=0, conditions=0)
    opened, closing = discharged_from_the_service(month.at(20, 9))
    for entry in closing.payload["entry"]:  # the summary about P1, as hub.core.pic_summary.composition makes it
        if entry["resource"]["resourceType"] == "Composition":
            entry["resource"]["subject"] = {"reference": f"Patient/{month.PEOPLE['P1']}"}
    derived = run(engine, [registered, opened, closing], store)
    [sent] = [e for e in derived if e.type == co.PIC_SUMMARY_SENT.type]  # to month.PRACTICE, read back off the log
    run(engine, [sent], store)  # the letter read back off the log
    if merged:  # (the person merged into another identity: the survivor's state holds the letter too)
        run(engine, [merge_of(month.PEOPLE["P1"], "survivor-key", "M1", month.at(20, 9, 30))], store)
    other = run(engine, [named_receipt("Y90001", month.at(20, 10))], store)
    done = [e for e in other if e.payload.get("resourceType") == "Task" and e.payload["status"] == "completed"]
    assert len(done) == (1 if version == 3 else 0)
    if version == 4:
        theirs = run(engine, [named_receipt(month.PRACTICE, month.at(20, 11))], store)
        assert [e.payload["status"] for e in theirs if e.payload.get("resourceType") == "Task"] == ["completed"]


def test_a_practice_code_in_lower_case_on_the_letter_is_the_practice_all_the_same() -> None:
    """HL7 is the one input that keeps an ODS code as sent (PD1-3 `y90002`): its letter's receipt is the
    practice's, and counts, as the same code in capitals."""
    assert received_summary(GP, GP.lower(), sent_at("full-resource")) is not None
    assert received_summary(OTHER, GP.lower(), sent_at("full-resource")) is None
    from hub.core.pic_summary import by_its_practice

    assert by_its_practice(GP, "c1", {"c1": GP.lower()}) and not by_its_practice(OTHER, "c1", {"c1": GP.lower()})
