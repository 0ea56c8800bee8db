"""Shared care record consumer: every event on the events topic, applied once, in one transaction
per batch together with its processed-event rows.

The identity links a batch shows (hub.core.identity_links: a hospital-number-only Patient and the same
person's verified NHS-numbered one) are published as merges with acks=all BEFORE that transaction
commits, as the rules engine's derived events are (consumers.coordination): a crash repeats the batch,
which finds the same links with the same ids, applied once. Duplicates are asked too (another consumer,
delivery's, applies events to the record under the same processed rows, and may have applied them first),
in a query or two a batch. The identity conflicts it shows (a hospital number two NHS numbers claim, one
linked already that another claims, demographics that disagree) are logged at WARNING by person key.
`carehub replay` folds the log without this consumer, so it never publishes them again: they are on
the log already.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence

from faststream.kafka import KafkaBroker, KafkaRouter
from faststream.kafka.annotations import KafkaMessage

from consumers.coordination import Publish, publisher
from consumers.decoding import Decoded, decode_all, records_of
from consumers.middlewares import dead_letter, on_event_batches, retrying
from hub.core.errors import InfrastructureError, InvalidMessageError
from hub.core.identity_links import IdentityConflict, find_links
from hub.core.ports import RecordEvent, RecordUnitOfWork
from hub.core.record import ApplyResult, apply_events

log = logging.getLogger(__name__)
UnitOfWorkFactory = Callable[[], RecordUnitOfWork]


def apply_batch(uow_factory: UnitOfWorkFactory, events: Sequence[RecordEvent]) -> ApplyResult:
    """One transaction: the record writes and the processed-event rows commit together."""
    with uow_factory() as uow:
        result = apply_events(uow, events)
        uow.commit()
    return result


def apply_and_link(
    uow_factory: UnitOfWorkFactory,
    events: Sequence[RecordEvent],
    key_secret: bytes,
    publish_blocking: Callable[[Sequence[RecordEvent]], None],
) -> ApplyResult:
    """apply_batch, and the identity links the batch shows published (and acknowledged) before it commits."""
    with uow_factory() as uow:
        result = apply_events(uow, events)
        found = find_links(uow, key_secret, events)
        for conflict in found.conflicts:
            report_conflict(conflict)
        if found.links:
            publish_blocking(found.links)
            log.info("identity links published as merges: %d", len(found.links))
        uow.commit()
    return result


def report_conflict(conflict: IdentityConflict) -> None:
    """An identity conflict, for a person to resolve: logged at WARNING by person keys alone (never an
    NHS number, a hospital number or a name), each time a message names the number. Not dead-lettered:
    the message was applied, and the dead-letter store keeps input the hub refused."""
    log.warning(
        "identity conflict (%s): hospital-number person %s, linked into %s, claimed by %s; not linked "
        "(nor unlinked): check the people with the hospital, and send an A40 if they are one",
        conflict.reason,
        conflict.hospital_person,
        conflict.linked_into or "no one",
        ", ".join(conflict.claimants) or "no one",
    )


def record_router(
    uow_factory: UnitOfWorkFactory,
    broker: KafkaBroker,
    *,
    group_id: str,
    max_records: int = 500,
    on_applied: Callable[[ApplyResult], None] | None = None,
    key_secret: bytes | None = None,
) -> KafkaRouter:
    """The record consumer as a router; `broker` is where unappliable events are dead-lettered and, with
    the hub's `key_secret`, where the identity links it finds are published (without it, none are)."""
    router = KafkaRouter()
    publish: Publish = publisher(broker)

    async def apply(events: Sequence[RecordEvent]) -> ApplyResult:
        if key_secret is None:
            return await retrying(lambda: asyncio.to_thread(apply_batch, uow_factory, events))
        secret, loop = key_secret, asyncio.get_running_loop()

        def publish_blocking(links: Sequence[RecordEvent]) -> None:
            asyncio.run_coroutine_threadsafe(publish(links), loop).result()

        return await retrying(lambda: asyncio.to_thread(apply_and_link, uow_factory, events, secret, publish_blocking))

    @on_event_batches(router, group_id=group_id, max_records=max_records)
    async def on_events(message: KafkaMessage) -> None:
        records = records_of(message)
        decoded, rejected = decode_all(records)
        for record, error in rejected:
            await dead_letter(broker, record, error)
        try:
            result = await apply([event for _, event in decoded])
        except InfrastructureError:
            raise
        except Exception:  # a poison event: apply one by one, keep the rest, dead-letter it
            log.exception("batch of %d failed; applying one by one", len(decoded))
            result = await _one_by_one(broker, decoded, apply)
        if on_applied:
            on_applied(result)

    return router


async def _one_by_one(
    broker: KafkaBroker,
    decoded: Decoded,
    apply: Callable[[Sequence[RecordEvent]], Awaitable[ApplyResult]],
) -> ApplyResult:
    applied = duplicates = stale = 0
    for record, event in decoded:
        try:
            result = await apply([event])
        except InfrastructureError:
            raise
        except Exception as exc:
            await dead_letter(broker, record, InvalidMessageError(f"could not apply: {exc}"))
            continue
        applied, duplicates = applied + result.applied, duplicates + result.duplicates
        stale += result.stale
    return ApplyResult(applied=applied, duplicates=duplicates, stale=stale)
