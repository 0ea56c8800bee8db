"""`carehub replay`: rebuild the shared care record from the Kafka log into a fresh database.

Deterministic: the record's rules take time from events, never the wall clock, and shared
reference data does not depend on the order partitions are read in, so a replay of the same log
hashes the same as the live record (`carehub record hash`). Fast: envelopes are read from headers
without pydantic, payloads parsed with orjson and folded as plain dicts in memory (never
re-validated with fhir.resources: they were validated once, where they entered), and the final
state is written in bulk.

On more than one core the partitions are folded in worker processes (hub.replay_parallel) and
loaded from their shards, unless partitions turn out to depend on each other. The bulk write and
its cancellation are in hub.replay_write.

The log is read without a consumer group (partitions assigned, from the beginning, up to the high
watermark each fetch reports), so a replay never disturbs the live consumers' offsets.

Two clocks choose what is folded. `since`/`until` are event times (what each event says happened
when: an HL7 EVN, a referral's date). `received_by` is the log's own clock (each record's Kafka
timestamp: when the hub's process wrote it to its log, which its consumers applied at once): the
record as the hub held it at that moment (each partition up to its first record stamped later:
OnTheLogBy). A message sent late (a discharge in November sent in December) is in a replay
`--until` November but not in one `--as-of` November, as the hub did not hold it then. The
disclosure ledger's times are the wall clocks of the hub's own processes too: on hosts whose clocks
are kept in step (NTP), they line up with `received_by` to within that step.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Collection
from dataclasses import dataclass
from datetime import datetime
from types import TracebackType
from typing import Any, Final, Self

import orjson
import sqlalchemy as sa
from aiokafka import AIOKafkaConsumer, TopicPartition

from hub.core.ports import RecordEvent, StoredResource
from hub.core.record import apply_events
from hub.core.record_content import replaced_by
from hub.kafka import partitions_of
from hub.replay_write import (
    _bind,
    _cores,
    _Memo,
    _refuse_unless_empty,
    in_thread,
    sqlite_dialect,
    time_of,
    write,
)
from hub.store.sql import identifiers_of
from hub.store.tables import record_resource

log = logging.getLogger(__name__)
Progress = Callable[[int, int], None]  # (events read, events expected)
_HOT = 16  # events decoded at a time in a fold
# records taken from the consumer at a time (getmany's max_records), by every reader of the log: a
# fold, the export, the KPI report and bench/replay's raw reference. Fewer records alive at once keep
# aiokafka's record parsing in the CPU's caches: reading a million events took 8-10 s at 100-250,
# 10-13 s at 500 and 16-18 s at 5,000 on the 2-core VMs this was measured on (fetch sizes made no
# difference); a fold also applies each batch while its payloads are still warm
READ_BATCH = 250


Key = tuple[str, str]  # (resource type, id)
Row = tuple[str, str, str | None, int, str, str, str]  # a resource as SQLite's record_resource holds it
_PERSON: Final = 2  # where a Row holds the person key
_TIME: Final = 4  # the event time, as SQLite holds it (UTC, no offset: see time_of)
_EVENT: Final = 5  # the source event's id
_TEXT: Final = 6  # and the JSON text
_TEXT_ONLY = frozenset({"Provenance"})  # kinds a fold holds as text only (see FoldUnitOfWork)
_RECENT = 32_768  # resources a fold holds parsed, in each of its two generations (see FoldUnitOfWork)


class FoldUnitOfWork:
    """The record port over plain dicts, for one long fold: no copies, no transaction.

    Each resource is held as its row: the StoredResource's fields and its JSON text, made when it is
    put, while its content is still in the CPU's caches (made at write time, a million contents
    scattered over gigabytes of memory cost many times more to read than to serialise). The rules
    read content back as dicts: the resources put or read lately are held parsed too, in two
    generations of up to _RECENT each (a person's events come close together in the log, so the
    rules nearly always find what they read there); anything older is parsed from its text again
    when read, and Provenances (one for nearly every event, read again only by a merge) always are.
    Memory is what a long fold spends its time on: first touching it cost ~2 s of system time per
    GB on the VMs this was measured on, and parsed content takes about three times the memory of
    its text. Holding every resource parsed, a worker folding 500,000 events held 3.2 GB; holding
    the recent ones, 1.8 GB.
    """

    def __init__(self) -> None:
        # text as str, not as orjson's bytes: orjson.dumps returns its whole working buffer (~8 KiB,
        # whatever the text's length), and a fold keeps millions of them
        self.rows: dict[Key, Row] = {}
        self.identifiers: dict[Key, list[tuple[str, str, str, str]]] = {}  # record_identifier rows
        self.ids: defaultdict[str, list[str]] = defaultdict(list)  # each type's ids, in the order first put
        self.by_person: defaultdict[str, set[Key]] = defaultdict(set)  # (no empty set made a put)
        self.done: set[str] = set()
        self.merged_away: set[str] = set()  # every person a merge moved resources from (see of_person)
        self.retired: set[str] = set()  # every Patient whose content says who replaced them
        self._parsed: dict[Key, StoredResource] = {}  # resources lately put or read, parsed (see _RECENT)
        self._older: dict[Key, StoredResource] = {}  # the generation before
        self._touched: set[str] | None = None  # where a fold notes the people each put touches
        # event times as SQLite holds them (an event stamps several resources, and events share times;
        # forgotten every _RECENT times, so a log of distinct times does not grow it without end)
        self._at = _Memo(_bind(record_resource.c.event_time, sqlite_dialect()), most=_RECENT)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        return None

    def processed(self, event_ids: Collection[str]) -> set[str]:
        return {e for e in event_ids if e in self.done}

    def get(self, resource_type: str, id: str) -> StoredResource | None:
        key = (resource_type, id)
        found = self._parsed.get(key)
        if found is None:
            found = self._older.get(key)
            if found is None:
                row = self.rows.get(key)
                if row is None:
                    return None
                found = StoredResource(*row[:_TIME], time_of(row[_TIME]), row[_EVENT], orjson.loads(row[_TEXT]))
                if resource_type in _TEXT_ONLY:
                    return found
            self._keep(key, found)
        return found

    def _keep(self, key: Key, resource: StoredResource) -> None:
        parsed = self._parsed
        parsed[key] = resource
        if len(parsed) >= _RECENT:  # a generation full: the one before it is let go
            self._older, self._parsed = parsed, {}

    def find_by_identifier(self, resource_type: str, system: str, value: str) -> list[StoredResource]:
        found = [
            key
            for key, held in self.identifiers.items()
            if key[0] == resource_type and any(row[2:] == (system, value) for row in held)
        ]
        return [r for r in (self.get(*key) for key in found) if r is not None]

    def of_person(self, person_key: str, kind: str | None = None) -> list[StoredResource]:
        # only a merge asks for all of a person's resources: remember whom, whatever the merge's own
        # Patient write then does (it may be stale, or a later merge may make them a survivor); the
        # rules ask for one kind (the person's EpisodeOfCare, when a stay opens), which is no merge
        if kind is None:
            self.merged_away.add(person_key)
        held = self.by_person.get(person_key, ())
        found = (self.get(*key) for key in sorted(held) if kind in (None, key[0]))
        return [r for r in found if r is not None]

    def put(self, resource: StoredResource) -> None:
        kind, rid, person = resource.resource_type, resource.id, resource.person_key
        key = (kind, rid)
        old = self.rows.get(key)
        touched = self._touched
        if touched is not None:  # (here, not in an override: one call and one lookup fewer a put)
            if person:
                touched.add(person)
            if old is not None and old[_PERSON] and old[_PERSON] != person:
                touched.add(old[_PERSON])
        content = resource.content
        held = self._parsed.get(key) or self._older.get(key)
        if old is not None and held is not None and held.content is content:
            text = old[_TEXT]  # the same content again (stored content is never changed in place)
        else:
            text = orjson.dumps(content).decode()
            if "identifier" in content:
                self.identifiers[key] = [(kind, rid, s, v) for s, v in sorted(identifiers_of(content))]
            elif old is not None:
                self.identifiers.pop(key, None)
            if kind == "Patient":
                if "link" in content and replaced_by(content):
                    self.retired.add(rid)
                else:
                    self.retired.discard(rid)
        at = self._at[resource.event_time]
        self.rows[key] = (kind, rid, person, resource.version_id, at, resource.source_event_id, text)
        if kind not in _TEXT_ONLY:
            self._keep(key, resource)
        if old is None:
            self.ids[kind].append(rid)
        elif old[_PERSON] == person:
            return  # filed where it was: the common case, a new version of the same resource
        if old is not None and old[_PERSON]:
            self.by_person[old[_PERSON]].discard(key)
        if person:
            self.by_person[person].add(key)

    def mark_processed(self, event_id: str) -> None:
        self.done.add(event_id)

    def commit(self) -> None:
        return None


class _Names(dict[bytes, str]):
    """Decoded header values that repeat (event types, sources): one string each, not one per event."""

    def __missing__(self, raw: bytes) -> str:
        text = self[raw] = raw.decode()
        return text


def _decoder() -> Callable[[Any], RecordEvent | None]:
    names = _Names()

    def event(record: Any) -> RecordEvent | None:
        headers = dict(record.headers)
        try:
            return RecordEvent(
                headers["ce_id"].decode(),
                names[headers["ce_type"]],
                names[headers["ce_source"]],
                datetime.fromisoformat(headers["ce_time"].decode()),
                headers["ce_subject"].decode(),
                orjson.loads(record.value),
            )
        except (KeyError, ValueError, AttributeError, TypeError):  # (a header missing, none, not UTF-8 or ISO 8601)
            return None  # not a CareHub event: the live consumer dead-lettered it; so does replay

    return event


class OnTheLogBy:
    """Which records were on the log by a moment (None: all): each partition up to, not including, its
    first record stamped later (or not stamped at all). A record's timestamp is its producer's clock,
    and several producers write to one partition: one whose clock runs fast ends the partition there,
    early (by as much as that record was appended before its stamp says), rather than leaving a gap in
    it, so a person's events are always a prefix of their partition, as the hub held them. Producers'
    clocks are to be kept in step (NTP), as the hub's are for every time it records."""

    def __init__(self, moment: datetime | None) -> None:
        self.ms = None if moment is None else int(moment.timestamp() * 1000)
        self.ended: set[int] = set()  # partitions past the moment
        self.left_out = 0  # records refused: each ended partition's first record stamped later, and all after it

    def __call__(self, record: Any) -> bool:
        if self.ms is None:
            return True
        if record.partition in self.ended:
            self.left_out += 1
            return False
        if not 0 <= record.timestamp <= self.ms:
            self.ended.add(record.partition)
            self.left_out += 1
            return False
        return True


def _subject_of(record: Any) -> str | None:
    """The event's subject header, as the decoder reads it (a repeated header: the last one)."""
    found = None
    for name, value in record.headers:
        if name == "ce_subject":
            found = value
    return found.decode() if found is not None else None


async def read_log(
    bootstrap: str,
    *,
    batch: int = READ_BATCH,
    idle_ms: int = 1000,
    only: Callable[[int], bool] | None = None,
    partitions_read: Callable[[list[int]], None] | None = None,
) -> AsyncIterator[list[Any]]:
    """Every record on the events topic (or on the partitions `only` picks), partition by partition
    as fetched, up to the high watermark; `partitions_read` is told which partitions those are
    (none: the topic does not exist yet) before the first record."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_partition_fetch_bytes=8 * 1024 * 1024,
        fetch_max_bytes=64 * 1024 * 1024,
    )
    try:  # (started inside: stopped even when it cannot start)
        await consumer.start()
        partitions = [tp for tp in await partitions_of(consumer) if only is None or only(tp.partition)]
        if partitions_read is not None:
            partitions_read([tp.partition for tp in partitions])
        if not partitions:
            return
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        while True:
            fetched = await consumer.getmany(timeout_ms=idle_ms, max_records=batch)
            for tp in sorted(fetched, key=lambda t: t.partition):
                yield fetched[tp]
            if await _at_end(consumer, partitions):
                return
    finally:
        await consumer.stop()


async def _at_end(consumer: AIOKafkaConsumer, partitions: list[TopicPartition]) -> bool:
    """True once every partition's position has reached the high watermark its fetches reported."""
    for tp in partitions:
        end = consumer.highwater(tp)
        if end is None or await consumer.position(tp) < end:
            return False
    return True


@dataclass(frozen=True)
class ReplayResult:
    events: int
    applied: int
    skipped: int
    resources: int
    seconds: float
    workers: int = 1  # processes that folded the log (1: in the caller's own)
    refolded: int = 0  # people whose events were folded again together (merged across workers)
    left_out: int = 0  # records written to the log after `received_by` (OnTheLogBy), so not folded


async def replay(
    bootstrap: str,
    engine: sa.Engine,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    progress: Progress | None = None,
    workers: int | None = None,
    received_by: datetime | None = None,
) -> ReplayResult:
    """Fold the log (events with since <= time <= until, written to the log by `received_by`) into
    memory, then write it to `engine`.

    With more than one worker (default: one per core, at most 4 and at most one per partition) the
    partitions are folded in worker processes (hub.replay_parallel); where partitions turn out to
    depend on each other it folds again here, in one process, and says so in the log."""
    from hub import replay_machine as machine
    from hub.replay_parallel import MAX_WORKERS, log_extent, replay_in_parallel

    started = time.perf_counter()
    await asyncio.to_thread(_refuse_unless_empty, engine)  # before minutes of folding, not after
    wanted = min(workers if workers is not None else min(_cores(), 4), MAX_WORKERS)
    extent = await log_extent(bootstrap)
    short = machine.short_of_memory(sum(extent), machine.memory_available())
    if short:  # said before minutes of folding, not only after the system has stopped it
        log.warning(
            "replay: %s, so the system may stop it part way: it holds the record in memory until it writes it", short
        )
    wanted = min(wanted, len(extent))
    if wanted > 1:
        huge = sum(extent) / wanted >= machine.HUGE_PAGES_FROM
        outcome = await replay_in_parallel(
            bootstrap,
            engine,
            wanted,
            since=since,
            until=until,
            progress=progress,
            huge_pages=huge,
            events=sum(extent),
            received_by=received_by,
        )
        if isinstance(outcome, ReplayResult):
            return outcome
        log.warning("replay: %s, so the log is folded again in one process", outcome)
    fold = FoldUnitOfWork()
    gc.disable()  # fold and rows only grow; cyclic GC passes over them cost more than the work itself
    try:
        read, applied, skipped, left_out = await _fold(bootstrap, fold, since, until, progress, received_by=received_by)
        await in_thread(write, engine, fold)
    finally:
        gc.enable()
    seconds = time.perf_counter() - started
    return ReplayResult(read, applied, skipped, len(fold.rows), seconds, left_out=left_out)


async def _fold(
    bootstrap: str,
    fold: FoldUnitOfWork,
    since: datetime | None,
    until: datetime | None,
    progress: Progress | None,
    only: Callable[[int], bool] | None = None,
    subjects: Collection[str] | None = None,
    received_by: datetime | None = None,
) -> tuple[int, int, int, int]:
    """Fold the events on the partitions `only` picks (all) about the people `subjects` names (all),
    written to the log by `received_by` (all): (records read, events applied, records that are not
    CareHub events, records left out as written to the log later)."""
    read = applied = skipped = 0
    decode = _decoder()
    on_the_log = OnTheLogBy(received_by)
    batch = getattr(fold, "batch", None)  # a fold that wants to know each batch's events first
    async for records in read_log(bootstrap, only=only):
        # decoded and applied a few events at a time, not a whole fetch: each event's payload is
        # then still in the CPU's caches when the rules read it and when its resources are serialised
        for start in range(0, len(records), _HOT):
            events = []
            for record in records[start : start + _HOT]:
                if not on_the_log(record):
                    continue  # written to the log after the moment asked for
                if subjects is not None and _subject_of(record) not in subjects:
                    continue  # looked up in the headers: no need to parse the payload
                event = decode(record)
                if event is None:
                    skipped += 1
                elif (since is None or event.time >= since) and (until is None or event.time <= until):
                    events.append(event)
            if batch:
                batch(events)
            applied += apply_events(fold, events).applied
        read += len(records)
        if progress:
            progress(read, 0)
    return read, applied, skipped, on_the_log.left_out
