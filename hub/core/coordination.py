"""The coordination engine (hub.core.tasks) over a batch read from the log: each person's state loaded
and saved through the caller's unit of work, clock ticks fired in due order, the derived events
returned for the caller to publish. Pure, as the engine is: no clock reads, no I/O of its own.

Who holds each referral is kept beside the people's states, under a key of its own
(`referral-holder:<uuid>`, never a person key): a referral re-sent for someone else (a file row whose
NHS number was corrected keeps its referral id) moves from the person who held it (Engine.move).
Two people's events are on two partitions, in no order but the one they are read in: a correction
sent after its referral was applied is read after it; two sent at once may be taken either way round.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from hub.core.derived_events import Clock, Outcome
from hub.core.fhir_read import bundle_resources, focus_of
from hub.core.identity import stable_id
from hub.core.ports import CoordinationUnitOfWork, Json, RecordEvent
from hub.core.tasks import Engine, new_state
from schemas.events import coordination as co


@dataclass(frozen=True)
class Positioned:
    """An event and the partition of the log it was read from (clocks live on their person's partition)."""

    event: RecordEvent
    partition: int


def process(engine: Engine, uow: CoordinationUnitOfWork, batch: Sequence[Positioned]) -> list[RecordEvent]:
    """Apply a batch in log order inside the caller's unit of work; returns the derived events to publish.

    A clock tick fires, in due order, every clock of its partition that is due at or before the tick.
    """
    done = uow.processed([p.event.id for p in batch])
    states: dict[str, Json] = {}
    derived: list[RecordEvent] = []

    def state_of(person: str) -> Json:
        if person not in states:
            states[person] = uow.state(person) or new_state()
        return states[person]

    def settle(person: str, partition: int, out: Outcome) -> None:
        for clock in out.set:
            uow.set_clock(clock.id, clock.person_key, clock.due, clock.kind, partition)
        for clock_id in out.cleared:
            uow.clear_clock(clock_id)
        derived.extend(out.events)
        uow.save(person, states[person])

    for item in batch:
        event = item.event
        if event.id in done:
            continue
        if event.type == co.CLOCK_TICK.type:
            for clock_id, person, due, kind in uow.due_clocks(_tick_partition(event, item.partition), event.time):
                settle(person, item.partition, engine.fire(state_of(person), Clock(clock_id, person, due, kind)))
        else:
            state = state_of(event.subject)
            before = copy.deepcopy(state)
            out = Outcome()
            referral = _referral(event)
            held_by = _holder(uow, referral, event.subject)
            if referral and held_by:
                out.extend(engine.move(state, event, referral, held_by, state_of(held_by)))
            out.extend(engine.handle(state, event))
            if out.events or out.set or out.cleared or state != before:
                settle(event.subject, item.partition, out)
        uow.mark_processed(event.id)
        done.add(event.id)
    return derived


def _referral(event: RecordEvent) -> str | None:
    """The referral (`ServiceRequest/<id>`) a referral.received is about, the focus of the tasks it opens."""
    if event.type != co.REFERRAL_RECEIVED.type:
        return None
    focus = focus_of(bundle_resources(event.payload))
    return focus if focus and focus.startswith("ServiceRequest/") else None


HOLDER = "referral-holder:"  # the key prefix of who holds a referral, beside the people's states


def _holder(uow: CoordinationUnitOfWork, referral: str | None, person: str) -> str | None:
    """The person who held the referral until now, when another one; the referral is this person's now."""
    if referral is None:
        return None
    key = f"{HOLDER}{stable_id('referral-holder', referral)}"  # (fits the person key's column)
    held = (uow.state(key) or {}).get("person")
    if held != person:
        uow.save(key, {"referral": referral, "person": person})
    return str(held) if held and held != person else None


def _tick_partition(event: RecordEvent, read_from: int) -> int:
    for parameter in event.payload.get("parameter") or []:
        if parameter.get("name") == "partition" and isinstance(parameter.get("valueInteger"), int):
            return int(parameter["valueInteger"])
    return read_from


def tick(partition: int, at: datetime) -> RecordEvent:
    """A clock tick for one partition of the events topic."""
    return RecordEvent(
        id=stable_id("tick", str(partition), at.isoformat()),
        type=co.CLOCK_TICK.type,
        source="urn:carehub:clock",
        time=at,
        subject=f"clock-{partition}",
        payload={
            "resourceType": "Parameters",
            "id": stable_id("tick", str(partition), at.isoformat()),
            "parameter": [
                {"name": "partition", "valueInteger": partition},
                {"name": "time", "valueDateTime": at.isoformat()},
            ],
        },
    )
