"""Consumer composition root: one KafkaBroker, one router per concern."""

from __future__ import annotations

import logging
from collections.abc import Callable

from faststream.kafka import KafkaBroker

from consumers.coordination import coordination_router
from consumers.deadletters import dead_letter_router
from consumers.delivery import Deliverer, delivery_router
from consumers.record import UnitOfWorkFactory, record_router
from hub.core.ports import CoordinationUnitOfWork, DeadLetters
from hub.core.record import ApplyResult
from hub.core.tasks import Engine


def build_broker(bootstrap: str, *, client_id: str = "carehub") -> KafkaBroker:
    """A broker that publishes with acks=all and logs per batch at DEBUG, not per message."""
    return KafkaBroker(
        bootstrap,
        acks="all",
        client_id=client_id,
        linger_ms=1,
        request_timeout_ms=10_000,
        log_level=logging.DEBUG,
        logger=logging.getLogger("carehub.kafka"),  # FastStream's service messages, under our name
    )


def include_consumers(
    broker: KafkaBroker,
    *,
    uow_factory: UnitOfWorkFactory,
    dead_letters: DeadLetters,
    group_prefix: str = "carehub",
    on_applied: Callable[[ApplyResult], None] | None = None,
    on_kept: Callable[[int], None] | None = None,
    deliverer: Deliverer | None = None,
    coordination: tuple[Engine, Callable[[], CoordinationUnitOfWork]] | None = None,
    on_coordinated: Callable[[int, int], None] | None = None,
    key_secret: bytes | None = None,
) -> list[str]:
    """Attach every consumer of the hub to `broker`; the consumer groups that read the events topic.
    `key_secret` (the hub's person-key secret) lets the record consumer publish identity links."""
    groups = [f"{group_prefix}-record"]
    router = record_router(uow_factory, broker, group_id=groups[0], on_applied=on_applied, key_secret=key_secret)
    broker.include_router(router)
    broker.include_router(dead_letter_router(dead_letters, group_id=dead_letter_group(group_prefix), on_kept=on_kept))
    if deliverer is not None:
        groups.append(f"{group_prefix}-delivery")
        broker.include_router(delivery_router(deliverer, group_id=groups[-1]))
    if coordination is not None:
        engine, factory = coordination
        groups.append(f"{group_prefix}-coordination")
        broker.include_router(coordination_router(engine, factory, broker, group_id=groups[-1], on_done=on_coordinated))
    return groups


def dead_letter_group(group_prefix: str) -> str:
    """The consumer group that keeps both dead-letter topics in the store."""
    return f"{group_prefix}-deadletters"
