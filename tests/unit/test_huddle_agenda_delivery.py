"""A published huddle agenda (huddle.agenda's List) is delivered to a GP practice only if it is that
practice's own, whatever the subscription's scope and the agreements (consumers.delivery
Deliverer.judge, hub.core.delivery.huddle_bounded): it lists a practice's people, as a read of another
practice's agenda is refused. Each refusal is a `deny` in the ledger, about no one. Over the in-memory
record and a fake broker."""

from __future__ import annotations

import asyncio
from datetime import UTC, date, datetime
from typing import Any, cast

import pytest

from consumers.delivery import Deliverer
from hub.core.huddle import agenda, to_fhir_list
from hub.core.ports import RecordEvent
from hub.store.agreements import PolicySource
from hub.store.memory import MemoryLedger, MemoryRecordStore, MemoryRegistrations
from schemas.events.coordination import HUDDLE_AGENDA
from schemas.subscriptions import Subscription
from tests.builders import an_agreement
from tests.fakes import KeptOutbox, KeptSubscriptions

NOW = datetime(2026, 12, 8, 10, 0, tzinfo=UTC)
MEETING = date(2026, 12, 9)
HERE, THERE, PCN, SERVICE = "Y00001", "Y00002", "U12345", "Y02345"  # (a coordination service of Y-code shape)
# the walkthrough's agreement: direct care between both practices, their PCN and the service
SHARED = [an_agreement(HERE, THERE, PCN, SERVICE, categories=("demographics", "care-plans", "provenance"))]


class Agreements:
    def current(self) -> list[Any]:
        return SHARED


class Published:
    """The broker's part of a delivery: what each subscriber's topic was sent."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, str]] = []


def a_deliverer(ledger: MemoryLedger, published: Published, *, enforce: bool = True) -> Deliverer:
    store = MemoryRecordStore()
    deliverer = Deliverer(
        broker=cast(Any, None),
        bootstrap="",
        uow_factory=store.unit_of_work,
        subscriptions=cast(Any, KeptSubscriptions([])),
        outbox=cast(Any, KeptOutbox()),
        policy=PolicySource(cast(Any, Agreements()), store.reader()),
        ledger=ledger,
        registrations=MemoryRegistrations(),
        clock=lambda: NOW,
        enforce=enforce,
        service=SERVICE,
    )

    async def publish(sub: Subscription, event: RecordEvent, body: Any) -> None:
        published.sent.append((sub.org, event.id))

    deliverer._publish = publish  # type: ignore[method-assign]
    return deliverer


def agenda_event(practice: str) -> RecordEvent:
    listed = to_fhir_list(agenda(practice, MEETING, []))
    listed["note"] = [{"text": "Patient/p1: died on 1 December 2026"}]  # (what a death note names)
    return RecordEvent(f"ev-{practice}", HUDDLE_AGENDA.type, "urn:carehub:huddle", NOW, listed["id"], listed)


def subscriber(org: str) -> Subscription:
    return Subscription(id=f"{org.lower()}-agendas", org=org, events=(HUDDLE_AGENDA.type,), scope="all-permitted")


def delivered(practice: str, org: str, *, enforce: bool = True) -> tuple[list[tuple[str, str]], list[Any]]:
    ledger, published = MemoryLedger(), Published()
    deliverer = a_deliverer(ledger, published, enforce=enforce)
    asyncio.run(deliverer._deliver(agenda_event(practice), [subscriber(org)], [], {}, set()))
    return published.sent, [e.body for e in ledger.entries()]


def test_another_practices_agenda_is_not_delivered_to_a_gp_practice_and_the_refusal_is_in_the_ledger() -> None:
    sent, entries = delivered(HERE, THERE)

    assert sent == []
    assert [(e["recipient_org"], e["decision"], e["person_key"], e["channel"]) for e in entries] == [
        (THERE, "deny", None, "topic")
    ]
    assert entries[0]["reasons"][0].startswith(f"{THERE} is a GP practice, and a practice sees only its own huddle")
    [named] = entries[0]["resources"]  # (the List, by its id and content hash)
    assert named.startswith(f"List/{agenda_event(HERE).payload['id']}")


@pytest.mark.parametrize(
    ("practice", "org"),
    [
        (THERE, THERE),  # its own
        (HERE, PCN),  # a PCN's care coordinators attend its huddles
        (HERE, SERVICE),  # the coordination service, whatever the shape of its code
    ],
)
def test_an_agenda_goes_to_its_practice_and_to_those_that_attend_its_huddle_as_the_policy_decides(
    practice: str, org: str
) -> None:
    sent, entries = delivered(practice, org)

    assert sent == [(org, f"ev-{practice}")]
    assert [e["decision"] for e in entries] == ["permit"]


def test_the_rule_holds_with_enforcement_off_as_a_read_of_the_agenda_is_refused_without_a_policy() -> None:
    sent, entries = delivered(HERE, THERE, enforce=False)

    assert sent == [] and [e["decision"] for e in entries] == ["deny"]
