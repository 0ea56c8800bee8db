"""The coordination engine (hub.core.tasks) over a batch read from the log: each person's state loaded
and saved through the caller's unit of work, clock ticks fired in due order, the derived events
returned for the caller to publish. Pure, as the engine is: no clock reads, no I/O of its own.

Who holds each referral is kept beside the people's states, under a key of its own
(`referral-holder:<uuid>`, never a person key): a referral re-sent for someone else (a file row whose
NHS number was corrected keeps its referral id) moves from the person who held it (Engine.move).
Two people's events are on two partitions, in no order but the one they are read in: a correction
sent after its referral was applied is read after it; two sent at once may be taken either way round.

An A40 (read from the survivor's partition) folds the retired key's state into the survivor's
(Engine.merge) and leaves the retired key's state a pointer to them (hub.core.merges). Every later
event and clock of a retired key, found so in the engine's own state store (never the record, which
lags the log), is applied to the survivor's state, as the survivor's event; the clocks it sets go on
the survivor's partition, as their merge saw it.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from hub.core.derived_events import Clock, Outcome
from hub.core.fhir_read import bundle_resources, focus_of
from hub.core.identity import MAX_HOPS, stable_id
from hub.core.merges import MERGED, MERGED_INTO, PARTITION, pointer, retirements
from hub.core.ports import CoordinationUnitOfWork, Json, RecordEvent
from hub.core.tasks import Engine, new_state
from schemas.events import coordination as co
from schemas.events.patient import PATIENT_MERGED


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
    people = _People(uow)
    derived: list[RecordEvent] = []

    def settle(person: str, partition: int, out: Outcome) -> None:
        for clock in out.set:
            uow.set_clock(clock.id, clock.person_key, clock.due, clock.kind, partition)
        for clock_id in out.cleared:
            uow.clear_clock(clock_id)
        derived.extend(out.events)
        uow.save(person, people.state(person))

    for item in batch:
        event = item.event
        if event.id in done:
            continue
        if event.type == co.CLOCK_TICK.type:
            for clock_id, key, due, kind in uow.due_clocks(_tick_partition(event, item.partition), event.time):
                person = people.survivor(key)
                settle(person, item.partition, engine.fire(people.state(person), Clock(clock_id, person, due, kind)))
        else:
            if event.type == PATIENT_MERGED.type:
                for into, out, repointed in people.merge(engine, event, item.partition):
                    settle(into, people.partition(into, item.partition, event.subject), out)
                    for key in repointed:
                        uow.save(key, people.state(key))
            person = people.survivor(event.subject)
            state = people.state(person)
            before = copy.deepcopy(state)
            out = Outcome()
            event = event if person == event.subject else _as(event, person)  # (a retired key's: the survivor's)
            referral = _referral(event)
            held_by = _holder(uow, people, referral, person)
            if referral and held_by:
                out.extend(engine.move(state, event, referral, held_by, people.state(held_by)))
            out.extend(engine.handle(state, event))
            if out.events or out.set or out.cleared or state != before:
                settle(person, people.partition(person, item.partition, item.event.subject), out)
        uow.mark_processed(event.id)
        done.add(event.id)
    return derived


class _People:
    """The people's states a batch has read, and where each key's events go: a key an A40 retired
    keeps only a pointer to the person it was merged into (hub.core.merges), followed for its later
    events and clocks, through merges of merges (at most MAX_HOPS, as the record follows them)."""

    def __init__(self, uow: CoordinationUnitOfWork) -> None:
        self._uow = uow
        self._states: dict[str, Json] = {}

    def state(self, key: str) -> Json:
        if key not in self._states:
            self._states[key] = self._uow.state(key) or new_state()
        return self._states[key]

    def chain(self, key: str) -> list[str]:
        """`key`, then each key it was merged into, in turn (never round a loop)."""
        keys = [key]
        for _ in range(MAX_HOPS):
            into = self.state(keys[-1]).get(MERGED_INTO)
            if not into or into in keys:
                break
            keys.append(str(into))
        return keys

    def survivor(self, key: str) -> str:
        """The person whose state `key`'s events change now: itself, unless a merge retired it."""
        last = self.chain(key)[-1]
        if MERGED_INTO in self.state(last):  # (past MAX_HOPS: the chain ends here, as the record's does)
            self._states[last] = new_state()
        return last

    def partition(self, person: str, read_from: int, subject: str | None = None) -> int:
        """The partition a person's clocks go on: where their own events are read, as their merge
        said it, for the events of a key merged into them (read from that key's partition)."""
        if subject is None or subject == person:
            return read_from
        return int(self.state(person).get(PARTITION, read_from))

    def merge(self, engine: Engine, event: RecordEvent, read_from: int) -> list[tuple[str, Outcome, list[str]]]:
        """Follow an A40 (read from partition `read_from`, its survivor's): each retired key's state
        folded into its survivor's (Engine.merge), the retired key, and the keys merged into it
        before, left pointing at the survivor (so a chain is one hop, however many merges made it);
        (survivor, what the fold did, the keys now pointing at them) for each. A merge reversed (the
        survivor named was merged into the key it now retires) makes the survivor named a person
        again, so no chain loops."""
        done = []
        for retired, into in retirements(bundle_resources(event.payload)):
            if retired in self.chain(into) and MERGED_INTO in self.state(into):
                self._states[into] = new_state()  # reversed: the survivor named is a person again
            survivor = self.survivor(into)
            if survivor == self.survivor(retired):
                continue  # (the same merge again, or one the chain holds already)
            out, theirs = Outcome(), self.state(retired)
            before = [k for k in theirs.get(MERGED) or () if k != survivor]
            if MERGED_INTO not in theirs:  # (a key merged away before points on; its state went there)
                out = engine.merge(self.state(survivor), theirs, retired, _as(event, survivor))
            if survivor == event.subject:
                self.state(survivor)[PARTITION] = read_from
            repointed = [retired, *(k for k in before if self.state(k).get(MERGED_INTO) == retired)]
            for key in repointed:
                self._states[key] = pointer(survivor)
            done.append((survivor, out, repointed))
        return done


def _as(event: RecordEvent, person: str) -> RecordEvent:
    """The event as the survivor's: what it derives names them, as the record files it under them."""
    return RecordEvent(event.id, event.type, event.source, event.time, person, event.payload)


def _referral(event: RecordEvent) -> str | None:
    """The referral (`ServiceRequest/<id>`) a referral.received is about, the focus of the tasks it opens."""
    if event.type != co.REFERRAL_RECEIVED.type:
        return None
    focus = focus_of(bundle_resources(event.payload))
    return focus if focus and focus.startswith("ServiceRequest/") else None


HOLDER = "referral-holder:"  # the key prefix of who holds a referral, beside the people's states


def _holder(uow: CoordinationUnitOfWork, people: _People, referral: str | None, person: str) -> str | None:
    """The person who held the referral until now, when another one; the referral is this person's now.
    (One who held it under a key since merged into this person holds it still: no move.)"""
    if referral is None:
        return None
    key = f"{HOLDER}{stable_id('referral-holder', referral)}"  # (fits the person key's column)
    held = (uow.state(key) or {}).get("person")
    if held != person:
        uow.save(key, {"referral": referral, "person": person})
    now = people.survivor(str(held)) if held else None
    return now if now and now != person else None


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
