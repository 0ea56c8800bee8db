"""Coordination consumer: the rules engine over the events topic, and the clock that ticks onto it.

For each batch, in one database transaction: the coordination state of each person changes, clocks
are set, cleared or fired, and processed-event rows are written; the derived events (tasks, case
list flags, overdue escalations) are published with acks=all BEFORE that transaction commits, and
the Kafka offsets are committed after it. A crash anywhere therefore repeats the batch, never skips
it; the repeat derives the same events with the same ids, which every consumer applies once.

The derived events go out chunk after chunk, at most `CHUNK` in flight, each chunk acknowledged
within the publish budget (10 s) or the batch is redone whole (the chunks already acknowledged go
again, with the same ids): a tick that fires thousands of clocks gets a budget per chunk, and a
Kafka that is down is still reported within one.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine, Sequence
from datetime import UTC, datetime
from typing import Any

from aiokafka.errors import KafkaError
from faststream.kafka import KafkaBroker, KafkaRouter
from faststream.kafka.annotations import KafkaMessage

from consumers.decoding import decode_all, records_of
from consumers.middlewares import dead_letter, on_event_batches, retrying
from hub.core.coordination import Positioned, process, tick
from hub.core.errors import BrokerUnavailableError, InfrastructureError, InvalidMessageError
from hub.core.ports import CoordinationUnitOfWork, RecordEvent
from hub.core.tasks import Engine
from schemas.topics import EVENTS

log = logging.getLogger(__name__)
Publish = Callable[[Sequence[RecordEvent]], Coroutine[Any, Any, None]]


# Derived events in flight at once. aiokafka parks a send that finds its partition's batch full
# until that batch drains, and wakes every parked send at each drain, so sends at once cost the
# square of their number: on Tansu 1,000 took 0.16 s, 4,000 2.6 s, and 8,000 never finished
# (aiokafka expires what waits longer than its 10 s request timeout). A tick firing 4,000 people's
# clocks derives about 8,700 events: published at once, every try ran out of the budget; in
# chunks of 250 they took 0.9 s.
CHUNK = 250


def publisher(broker: KafkaBroker, timeout: float = 10.0, chunk: int = CHUNK) -> Publish:
    """Publish derived events to the events topic, keyed by person, in order, `chunk` at a time;
    BrokerUnavailableError when Kafka does not acknowledge a chunk within `timeout` seconds."""

    async def publish(events: Sequence[RecordEvent]) -> None:
        for start in range(0, len(events), chunk):
            part = events[start : start + chunk]
            try:
                await asyncio.wait_for(_send(broker, part), timeout)
            except (TimeoutError, KafkaError, OSError) as exc:
                raise BrokerUnavailableError(
                    f"Kafka did not acknowledge the derived events ({start} of {len(events)} acknowledged,"
                    f" the next {len(part)} not within {timeout:g} s); the batch will be redone"
                ) from exc
            log.debug("derived events acknowledged: %d of %d", start + len(part), len(events))

    return publish


async def _send(broker: KafkaBroker, events: Sequence[RecordEvent]) -> None:
    sends = []
    for event in events:
        envelope = event.envelope()
        headers = envelope.kafka_headers()
        sends.append(broker.publish(envelope.data, EVENTS.name, key=envelope.subject.encode(), headers=headers))
    await asyncio.gather(*sends)


def run_batch(
    engine: Engine,
    uow_factory: Callable[[], CoordinationUnitOfWork],
    batch: Sequence[Positioned],
    publish_blocking: Callable[[Sequence[RecordEvent]], None],
) -> int:
    """One transaction: derive, publish (and wait for the acks), then commit. Returns events derived."""
    with uow_factory() as uow:
        derived = process(engine, uow, batch)
        publish_blocking(derived)
        uow.commit()
    return len(derived)


def coordination_router(
    engine: Engine,
    uow_factory: Callable[[], CoordinationUnitOfWork],
    broker: KafkaBroker,
    *,
    group_id: str,
    max_records: int = 500,
    on_done: Callable[[int, int], None] | None = None,
) -> KafkaRouter:
    """The rules engine as a router; `on_done(events seen, events derived)` reports progress."""
    router = KafkaRouter()
    publish = publisher(broker)

    @on_event_batches(router, group_id=group_id, max_records=max_records)
    async def on_events(message: KafkaMessage) -> None:
        records = records_of(message)
        decoded, _ = decode_all(records)  # the record consumer dead-letters what cannot be decoded
        batch = [Positioned(event, record.partition) for record, event in decoded]
        loop = asyncio.get_running_loop()

        def publish_blocking(events: Sequence[RecordEvent]) -> None:
            asyncio.run_coroutine_threadsafe(publish(events), loop).result()

        async def apply(items: Sequence[Positioned]) -> int:
            return await retrying(lambda: asyncio.to_thread(run_batch, engine, uow_factory, items, publish_blocking))

        try:
            derived = await apply(batch)
        except InfrastructureError:
            raise
        except Exception:  # a poison event: one by one, keep the rest, dead-letter it
            log.exception("coordination batch of %d failed; applying one by one", len(batch))
            derived = 0
            for (record, _), item in zip(decoded, batch, strict=True):
                try:
                    derived += await apply([item])
                except InfrastructureError:
                    raise
                except Exception as exc:
                    await dead_letter(broker, record, InvalidMessageError(f"coordination rules could not apply: {exc}"))
        if on_done:
            on_done(len(records), derived)

    return router


class Ticker:
    """The hub's clock on the log: a tick onto every partition of the events topic every `every` seconds.

    Several hubs ticking at once is harmless: firing a clock is decided by state, once.
    """

    def __init__(self, broker: KafkaBroker, *, every: float, partitions: int = EVENTS.partitions) -> None:
        self._broker = broker
        self._every = every
        self._partitions = partitions

    async def tick_once(self, at: datetime | None = None) -> None:
        now = at or datetime.now(UTC)
        for partition in range(self._partitions):
            envelope = tick(partition, now).envelope()
            await self._broker.publish(
                envelope.data,
                EVENTS.name,
                key=envelope.subject.encode(),
                partition=partition,
                headers=envelope.kafka_headers(),
            )

    async def run(self, stopping: asyncio.Event) -> None:
        while not stopping.is_set():
            try:
                await self.tick_once()
            except Exception as exc:  # Kafka away: the next tick carries the time forward
                log.warning("clock tick not published: %s", exc)
            try:
                await asyncio.wait_for(stopping.wait(), self._every)
            except TimeoutError:
                continue
