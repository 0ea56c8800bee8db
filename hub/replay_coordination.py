"""Replay for the coordination service: rebuild each person's tasks, episode (caseloads) and pending
deadline clocks from the log into a fresh database.

The tasks themselves are already in the replayed record (the rules engine's derived events are on
the log); this rebuilds the engine's own state, so caseload checks and clocks carry on from the
replayed database as they would have live. The engine runs over the log in log order (each
partition in its own order, across partitions by timestamp: hub.replay_read.InTimeOrder), as the
live consumer takes it, with its derived events discarded (they are on the log already).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa

from consumers.decoding import decode
from hub.core.coordination import HOLDER, Positioned, process
from hub.core.errors import InvalidMessageError
from hub.core.merges import MERGED_INTO
from hub.core.tasks import Engine
from hub.replay_read import OnTheLogBy, read_in_time_order
from hub.store.coordination import SqlCoordinationStore
from hub.store.memory import MemoryCoordinationStore


@dataclass(frozen=True)
class CoordinationReplay:
    people: int
    clocks: int
    events: int


async def rebuild(
    bootstrap: str,
    engine: sa.Engine,
    rules: Engine,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    received_by: datetime | None = None,
) -> CoordinationReplay:
    """Fold the log (events with since <= time <= until, written to the log by `received_by`: see
    hub.replay) through the rules engine, then write its state."""
    fold = MemoryCoordinationStore()
    uow = fold.unit_of_work()
    events = 0
    on_the_log = OnTheLogBy(received_by)
    async for records in read_in_time_order(bootstrap):  # (as the live consumer applied it)
        batch = []
        for record in records:
            if not on_the_log(record):
                continue
            try:
                event = decode(record)
            except InvalidMessageError:
                continue
            if (since is None or event.time >= since) and (until is None or event.time <= until):
                batch.append(Positioned(event, record.partition))
        events += len(batch)
        process(rules, uow, batch)
    uow.commit()
    await asyncio.to_thread(_write, engine, fold)
    # (not who holds each referral, nor a key merged into another person: hub.core.merges)
    people = sum(not key.startswith(HOLDER) and MERGED_INTO not in state for key, state in fold.states.items())
    return CoordinationReplay(people, len(fold.clocks), events)


def _write(engine: sa.Engine, fold: MemoryCoordinationStore) -> None:
    with SqlCoordinationStore(engine).unit_of_work() as sql:
        for person, state in fold.states.items():
            sql.save(person, state)
        for clock_id, (person, due, kind, partition) in fold.clocks.items():
            sql.set_clock(clock_id, person, due, kind, partition)
        for event_id in fold.done:
            sql.mark_processed(event_id)
        sql.commit()
