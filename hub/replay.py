"""`carehub replay`: rebuild the shared care record from the Kafka log into a fresh database.

Deterministic: the record's rules take time from events, never the wall clock, and shared
reference data does not depend on the order partitions are read in, so a replay of the same log
hashes the same as the live record (`carehub record hash`). Fast: envelopes are read from headers
without pydantic, payloads parsed with orjson and folded as plain dicts in memory (never
re-validated with fhir.resources: they were validated once, where they entered), and the final
state is written in bulk.

On more than one core the partitions are folded in worker processes (hub.replay_parallel) and
loaded from their shards, unless partitions turn out to depend on each other. The bulk write and
its cancellation are in hub.replay_write, the fold's record port in hub.replay_fold and the reading
of the log in hub.replay_read.

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
from collections.abc import Callable, Collection
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
import sqlalchemy as sa

from hub.core.ports import RecordEvent
from hub.core.record import apply_events
from hub.replay_fold import FoldUnitOfWork
from hub.replay_read import READ_BATCH as READ_BATCH  # (importable from here, as before: bench/replay)
from hub.replay_read import OnTheLogBy, read_in_time_order
from hub.replay_read import read_log as read_log  # (importable from here, as before: bench/replay)
from hub.replay_write import _cores, _refuse_unless_empty, in_thread, write

log = logging.getLogger(__name__)
Progress = Callable[[int, int], None]  # (events read, events expected)
_HOT = 16  # events decoded at a time in a fold


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


def _subject_of(record: Any) -> str | None:
    """The event's subject header, as the decoder reads it (a repeated header: the last one)."""
    found = None
    for name, value in record.headers:
        if name == "ce_subject":
            found = value
    return found.decode() if found is not None else None


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
    async for records in read_in_time_order(bootstrap, only=only):  # (as the live record applied them)
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
