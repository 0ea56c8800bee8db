"""Deliveries to subscribers: each event decided again for each subscription, at delivery time.

The delivery consumer reads the events topic in its own consumer group. The record applies each
event before it is delivered (the record consumer, given a moment, else this one; each event once,
in log order), so a Consent holds for every later event about that person, and the ledger names each
delivered resource by the record version the event wrote (hub.core.delivery.versions_written). For
each event and each matching subscription it decides every resource under the current agreements
and the person's consents, records each decision in the disclosure ledger, publishes what is
permitted to the subscriber's own topic, and queues a webhook or mailbox delivery, which
consumers.delivery_sender sends.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import orjson
from faststream.kafka import KafkaBroker, KafkaRouter
from faststream.kafka.annotations import KafkaMessage

from consumers.decoding import decode_all, records_of
from consumers.middlewares import on_event_batches, retrying
from consumers.record import UnitOfWorkFactory, apply_batch
from hub.core.delivery import (
    Registration,
    huddle_bounded,
    in_scope,
    ledger_entries,
    merged_chain,
    merges_in,
    note_registrations,
    plan,
    registered_as,
    registrations_in,
    versions_written,
)
from hub.core.errors import InfrastructureError
from hub.core.identity import MAX_HOPS, stable_id
from hub.core.pic_summary import for_practice, letter_practice
from hub.core.policy import UNENFORCED, Asker, ConsentRule, Decision, decide, person_of
from hub.core.ports import Json, Ledger, RecordEvent, RecordUnitOfWork, Registrations
from hub.core.record import resources_of
from hub.core.record_content import MERGED
from hub.kafka import create_topics
from hub.store.agreements import PolicySource
from hub.store.subscriptions import Delivery, SqlOutbox, SqlSubscriptions
from schemas.envelope import Envelope
from schemas.events.consent import CONSENT_RECORDED
from schemas.events.coordination import NOT_RECORDED, PIC_SUMMARY_RECEIPT, PIC_SUMMARY_SENT
from schemas.subscriptions import Subscription
from schemas.topics import EVENTS, subscriber_topic

log = logging.getLogger(__name__)
Position = tuple[int, int]  # (partition, offset) of an event on the events topic
ODS_SYSTEM = "https://fhir.nhs.uk/Id/ods-organization-code"
PROVENANCE = "Provenance"  # the record's Provenance for an event has the event's id (hub.core.record)


def _now() -> datetime:
    return datetime.now(UTC)


def people_in(person: str | None, resources: Sequence[Json]) -> set[str]:
    """Whose consents decide these resources: the event's (or delivery's) person and each person a
    resource is about (a merge carries two: the retired Patient is about the person it joined)."""
    found = {p for r in resources if isinstance(r, dict) and (p := person_of(r))}
    return found | {person} if person else found


@dataclass(frozen=True)
class _Said:
    """What an event says of registrations: by person, and the people a merge retired (into whom)."""

    registrations: dict[str, Registration]
    merged: dict[str, str]


def _read(event: RecordEvent) -> tuple[set[str], _Said]:
    """Whose consents decide an event (its person and each person a resource is about) and what it
    says of registrations, from its resources read once. A poison event (dead-lettered by the record
    consumer, not delivered): its subject only, and nothing said; a Patient of the wrong shape says
    nothing of registrations."""
    try:
        resources = resources_of(event)
    except Exception:
        return {event.subject}, _Said({}, {})
    try:
        said = _Said(registrations_in(event.type, event.time, event.id, resources), merges_in(event.type, resources))
    except Exception:
        said = _Said({}, {})
    return people_in(event.subject, resources), said


def _starts(positions: Sequence[Position] | None) -> dict[int, int]:
    """Each partition's first offset in a batch."""
    starts: dict[int, int] = {}
    for partition, offset in positions or ():
        starts[partition] = min(offset, starts.get(partition, offset))
    return starts


@dataclass
class _Registrations:
    """A batch's registrations: as they stand (`held`), as they stood before it (`start`), each
    partition's first offset in it (`starts`) and the people whose rows have been read (`asked`)."""

    held: dict[str, Registration]
    start: dict[str, Registration]
    starts: dict[int, int]
    asked: set[str]


def follow(uow_factory: UnitOfWorkFactory, events: Sequence[RecordEvent]) -> None:
    """Apply to the record, in order, those of `events` it has not applied yet (by event id, so the
    record consumer, ahead or behind, applies none of them again)."""
    try:
        apply_batch(uow_factory, events)
    except InfrastructureError:
        raise
    except Exception:  # a poison event: the rest around it, as the record consumer does (it dead-letters it)
        if len(events) == 1:
            log.warning("event %s could not be applied to the record; left to the record consumer", events[0].id)
            return
        for event in events:
            follow(uow_factory, [event])


def _written(uow: RecordUnitOfWork, event_id: str) -> dict[str, str]:
    provenance = uow.get(PROVENANCE, event_id)
    return versions_written(provenance.content if provenance else None)


@dataclass
class Recorded:
    """What the record has applied of a batch, and the versions each event that is delivered wrote."""

    applied: set[str]
    wanted: set[str]
    written: dict[str, dict[str, str]]


class Deliverer:
    """Decides and delivers events to subscriptions (topic + webhook outbox)."""

    def __init__(
        self,
        *,
        broker: KafkaBroker,
        bootstrap: str,
        uow_factory: UnitOfWorkFactory,
        subscriptions: SqlSubscriptions,
        outbox: SqlOutbox,
        policy: PolicySource,
        ledger: Ledger,
        registrations: Registrations,
        clock: Callable[[], datetime] = _now,
        enforce: bool = True,
        replication: int = 1,
        service: str | None = None,  # the coordination service's ODS code: never taken for a GP practice's
    ) -> None:
        self.enforce, self.service = enforce, service
        self.replication = replication
        self.broker, self.bootstrap = broker, bootstrap
        self.uow_factory = uow_factory
        self.subscriptions, self.outbox, self.policy, self.ledger = subscriptions, outbox, policy, ledger
        self.registrations = registrations
        self.clock = clock
        self._topics: set[str] = set()

    def judge(
        self, sub: Subscription, people: Collection[str], at: datetime, consents: list[ConsentRule] | None = None
    ) -> Callable[[Json], Decision]:
        """Decide for `sub` at `at`, under the consents of `people` (read now, unless given); another
        practice's huddle agenda never goes to a GP practice, enforced or not (huddle_bounded)."""
        if not self.enforce:
            return huddle_bounded(sub.org, lambda _: UNENFORCED, self.service)
        if consents is None:
            consents = [rule for rules in self.policy.consents_of(people).values() for rule in rules]
        agreements = self.policy.agreements()
        asker = Asker(sub.org, "system", at, purpose=sub.purpose)
        held: dict[tuple[str, str], Json | None] = {}  # (the referrals and episodes read for this judge)
        # a Task, Flag or episode is shared no further than the referral or episode it reveals
        return huddle_bounded(
            sub.org,
            lambda resource: decide(asker, resource, agreements, consents, origins=self.policy.origins(resource, held)),
            self.service,
        )

    def patient(self, person: str) -> Json | None:
        """The person's Patient as the record holds it now, if it does."""
        with self.uow_factory() as uow:
            held = uow.get("Patient", person)
            return held.content if held is not None else None

    def applied(self, event_ids: Collection[str]) -> set[str]:
        """Those of these events the record has applied."""
        with self.uow_factory() as uow:
            return uow.processed(event_ids)

    def written(self, event_id: str) -> dict[str, str]:
        """The record version of each resource the event wrote, by "Type/id"."""
        return self.written_by([event_id])[event_id]

    def written_by(self, event_ids: Collection[str]) -> dict[str, dict[str, str]]:
        """What each of these events wrote (as `written`), read in one transaction."""
        with self.uow_factory() as uow:
            return {e: _written(uow, e) for e in event_ids}

    def recorded(self, events: Sequence[RecordEvent], wanted: set[str]) -> Recorded:
        """What the record has applied of `events`, and what those of `wanted` wrote (one transaction)."""
        with self.uow_factory() as uow:
            applied = uow.processed([e.id for e in events])
            return Recorded(applied, wanted, {e: _written(uow, e) for e in wanted & applied})

    async def give_way(self, events: Sequence[RecordEvent], within: float) -> None:
        """Wait up to `within` seconds for the record consumer to apply these events, so that, while
        it keeps up, it (not `handle`) applies them, and counts them as applied."""
        waiting = {e.id for e in events if e.type not in NOT_RECORDED}
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        while waiting and loop.time() < deadline:
            waiting -= await asyncio.to_thread(self.applied, waiting)
            if waiting:
                await asyncio.sleep(0.1)

    async def handle(self, events: Sequence[RecordEvent], positions: Sequence[Position] | None = None) -> int:
        """Deliver a batch in order; the number of topic deliveries made. The record has applied each
        event before it is delivered, and the whole batch before this returns (and the batch is
        committed), so nothing later is ever applied before it. Whom each person is registered with
        is taken on from each event in log order, and kept when the batch is done, with where the
        batch began on each partition (from `positions`: each event's partition and offset), so that
        the batch redone after a crash starts from the registrations as they were before it."""
        delivered = done = 0
        read = {e.id: _read(e) for e in events}  # (each event's resources read once a batch)
        named = {e: people for e, (people, _) in read.items()}
        said = {e: news for e, (_, news) in read.items()}
        people = {p for found in named.values() for p in found}
        registered = {p for s in said.values() for p in (*s.registrations, *s.merged, *s.merged.values())}
        starts = _starts(positions)
        held = await asyncio.to_thread(self.registrations.of, people | registered, starts)
        batch = _Registrations(held, dict(held), starts, people | registered)
        changed: set[str] = set()
        active = await asyncio.to_thread(self.subscriptions.active)  # once a batch, not once an event
        consents = await asyncio.to_thread(self.policy.consents_of, people) if self.enforce else {}
        wanted = {e.id for e in events if any(e.type in s.events for s in active)}
        record = await asyncio.to_thread(self.recorded, events, wanted)
        for at, event in enumerate(events):
            try:
                news = said[event.id]
                changed |= note_registrations(held, news.registrations, news.merged, (event.time, event.id))
                subs = [s for s in active if event.type in s.events]
                changes = event.type in (CONSENT_RECORDED.type, MERGED)  # whose consents hold for whom
                if subs or changes:  # (an objection, or a merge, holds for every later event about them)
                    await self._follow(events[done : at + 1], record)
                    done = at + 1
                if changes and self.enforce:
                    consents.update(await asyncio.to_thread(self._consents_after, named[event.id], people))
                if subs:
                    versions = record.written.get(event.id, {})
                    theirs = [rule for p in sorted(named[event.id]) for rule in consents.get(p, [])]
                    # whom those the event names no practice for are registered with (its own PD1-3 otherwise)
                    unsaid = [p for p in named[event.id] if p not in news.registrations]
                    practices = await self._registered(unsaid, batch)
                    delivered += await self._deliver(event, subs, theirs, versions, practices)
            except InfrastructureError:
                raise
            except Exception:  # a poison event: the record consumer dead-letters it; deliver the rest
                log.exception("event %s could not be delivered; skipped", event.id)
        await self._follow(events[done:], record)
        if changed:
            kept = {p: held[p] for p in changed}
            before = {p: batch.start.get(p) for p in changed}
            revived = {s for news in said.values() for s in news.merged.values()}  # a merge's survivors
            await asyncio.to_thread(self.registrations.save, kept, before, starts, revived)
        return delivered

    async def _registered(self, people: Collection[str], batch: _Registrations) -> set[str]:
        """The practices these people are registered with as it stands (registered_as: someone merged
        away, their survivor's), reading the survivors' registrations the batch has not read yet."""
        for _ in range(MAX_HOPS):
            wanted = {k for p in people for k in merged_chain(batch.held, p)[1:] if k not in batch.asked}
            if not wanted:
                break
            found = await asyncio.to_thread(self.registrations.of, wanted, batch.starts)
            batch.asked |= wanted
            for key, registration in found.items():
                batch.held.setdefault(key, registration)
                batch.start.setdefault(key, registration)
        return {c for p in people if (r := registered_as(batch.held, p)) is not None for c in r.practices}

    def _consents_after(self, named: set[str], people: Collection[str]) -> dict[str, list[ConsentRule]]:
        """The consents, read again, of those in the batch whom a Consent or a merge just applied may
        change: the people it names (`named`) and whoever the record now knows as one of them (not
        everyone's: a batch of a list of objections would read them all again for each)."""
        known = self.policy.people_as(set(people) | named)
        now = {known[p] for p in named}
        return self.policy.consents_of({p for p in people if p in named or known[p] in now})

    async def _follow(self, events: Sequence[RecordEvent], record: Recorded) -> None:
        """Have the record apply these events (those it has not yet), and learn what they wrote."""
        waiting = [e for e in events if e.id not in record.applied and e.type not in NOT_RECORDED]
        if not waiting:
            return
        await asyncio.to_thread(follow, self.uow_factory, waiting)
        record.applied.update(e.id for e in waiting)
        delivered = [e.id for e in waiting if e.id in record.wanted]
        if delivered:  # (one transaction for them all, not one each)
            record.written.update(await asyncio.to_thread(self.written_by, delivered))

    async def _deliver(
        self,
        event: RecordEvent,
        subs: list[Subscription],
        consents: list[ConsentRule],
        versions: dict[str, str],
        registered: set[str],
    ) -> int:
        resources = [{**r, "meta": {**(r.get("meta") or {}), "source": event.source}} for r in resources_of(event)]
        addressed: Json = {}  # a letter's practice, as its event names it: only its delivery is a receipt
        if event.type == PIC_SUMMARY_SENT.type:  # (its Patient as the record holds it: name, birth date, address)
            addressed = {"practice": letter_practice(resources)}
            resources = for_practice(resources, await asyncio.to_thread(self.patient, event.subject))
        summary = {"id": event.id, "type": event.type, "time": event.time.isoformat()}
        delivered, queued = 0, []
        now = self.clock()
        for sub in subs:
            if not in_scope(sub.scope, sub.org, resources, registered):
                continue
            judge = self.judge(sub, (), now, consents)
            planned = plan(
                subscription_id=sub.id, content=sub.content, event=summary, resources=resources, decide=judge
            )
            # recorded before it leaves, and once however often a crash makes the batch be redone (the
            # publish that follows may then repeat: subscribers see at-least-once, by ce_id)
            entries = ledger_entries(sub, "topic", planned.judged, now, event=event.id, versions=versions)
            await asyncio.to_thread(self.ledger.append, entries, once=f"topic|{sub.id}|{event.id}")
            if planned.body is None:
                continue
            await self._publish(sub, event, planned.body)
            delivered += 1
            if sub.webhook or sub.mailbox:
                queued.append(
                    {
                        "subscription_id": sub.id,
                        "event_id": event.id,
                        "person_key": event.subject,
                        "body": {"event": summary, "resources": planned.permitted, **addressed},
                    }
                )
        if queued:
            await asyncio.to_thread(self.outbox.enqueue, queued, now=now)
        return delivered

    async def receipt(self, sub: Subscription, delivery: Delivery, summary: Json, at: datetime, how: str) -> None:
        """Publish the practice's receipt for a PIC summary (same id however often it is sent): `sub` is
        the practice's, and its delivery carried `summary` (the Composition: hub.core.pic_summary.received_summary).
        It names the practice and the letter, so that the folds need not take it on trust."""
        communication: Json = {
            "resourceType": "Communication",
            "id": stable_id("receipt", delivery.event_id, sub.id),
            "status": "completed",
            "subject": {"reference": f"Patient/{delivery.person_key}"},
            "received": at.isoformat(),
            "recipient": [{"identifier": {"system": ODS_SYSTEM, "value": sub.org}}],
            "note": [{"text": f"delivered by {how} to subscription {sub.id}"}],
            "about": [{"reference": f"Composition/{summary['id']}"}],
        }
        envelope = Envelope(
            id=stable_id("receipt-event", delivery.event_id, sub.id),
            source=f"urn:ods:{sub.org}",
            type=PIC_SUMMARY_RECEIPT.type,
            time=at,
            subject=str(delivery.person_key),
            data=orjson.dumps(communication),
        )
        await self.broker.publish(
            envelope.data, EVENTS.name, key=envelope.subject.encode(), headers=envelope.kafka_headers()
        )

    async def _publish(self, sub: Subscription, event: RecordEvent, body: Json) -> None:
        topic = subscriber_topic(sub.org)
        if topic.name not in self._topics:
            await create_topics(self.bootstrap, [topic], replication=self.replication)
            self._topics.add(topic.name)
        headers = {
            "ce_specversion": "1.0",
            "ce_id": event.id,
            "ce_source": event.source,
            "ce_type": event.type,
            "ce_time": event.time.isoformat(),
            "ce_subject": event.subject,
            "content-type": "application/fhir+json",
        }
        await self.broker.publish(orjson.dumps(body), topic.name, key=event.subject.encode(), headers=headers)


def delivery_router(
    deliverer: Deliverer, *, group_id: str, max_records: int = 200, record_wait: float = 2.0
) -> KafkaRouter:
    """The delivery consumer as a router; it gives the record consumer up to `record_wait` seconds
    to apply a batch before applying what is left itself."""
    router = KafkaRouter()

    @on_event_batches(router, group_id=group_id, max_records=max_records)
    async def on_events(message: KafkaMessage) -> None:
        records = records_of(message)
        decoded, _ = decode_all(records)  # the record consumer dead-letters what cannot be decoded
        events = [e for _, e in decoded]
        positions = [(r.partition, r.offset) for r, _ in decoded]

        async def deliver() -> int:
            await deliverer.give_way(events, record_wait)
            return await deliverer.handle(events, positions)

        await retrying(deliver)

    return router
