"""GET /metrics: the Prometheus text format (0.0.4), written by hand (one endpoint of a few lines does
not need prometheus_client): MLLP ACKs by sender and code, each sender's last message, dead letters.

Sender ODS codes (MSH-4) and counts only, never patient data, so it needs no token (as /readyz). The
counts are this process's and start at zero with it, as Prometheus counters do."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence

from fastapi import APIRouter
from fastapi.responses import PlainTextResponse

log = logging.getLogger(__name__)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
UNKNOWN = "unknown"  # no MSH-4 the hub could read
OTHER = "other"  # every sender past the cap, or whose MSH-4 is too long to be an ODS code
MAX_SENDERS = 1_000  # distinct sender labels kept: a peer inventing MSH-4s cannot grow memory for ever
MAX_SENDER_CHARS = 64  # (an ODS code is 3 to 5 characters; HL7's HD namespace ID at most 20)

Tally = Callable[[], tuple[int, int]]  # dead letters (outstanding, resolved): hub.store.dead_letter_status.tally


def escape(value: str) -> str:
    """A label value as the text format quotes it: backslash, double quote and line feed escaped."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


class Metrics:
    """This process's MLLP counts (told by the intake: `record`) and where dead letters are counted."""

    def __init__(
        self,
        dead_letters: Tally | None = None,
        *,
        clock: Callable[[], float] = time.time,
        max_senders: int = MAX_SENDERS,
        timeout: float = 2.0,
    ) -> None:
        self.started = clock()
        self._clock = clock
        self._max_senders = max_senders
        self._tally = dead_letters
        self._timeout = timeout
        self._lock = threading.Lock()  # (the intake runs on the event loop; a test may call from a thread)
        self._acks: dict[tuple[str, str], int] = {}
        self._last: dict[str, float] = {}
        self._named = 0  # senders with a label of their own (unknown and other aside)
        self._full = False  # (the cap reached: said once)
        self._reading: asyncio.Task[tuple[int, int]] | None = None

    def record(self, sender: str, codes: Sequence[str]) -> None:
        """One message answered: `sender` its MSH-4 ('' unread), `codes` each ACK's MSA-1 (none at
        all where enhanced mode's MSH-15/16 ask for none: the message still counts as heard)."""
        now = self._clock()
        with self._lock:
            label = self._label(sender)
            self._last[label] = now
            for code in codes:
                self._acks[label, code] = self._acks.get((label, code), 0) + 1

    def _label(self, sender: str) -> str:
        """The sender's label: its MSH-4 in capitals (as the hub matches senders, so `rcb` and `RCB`
        are one feed); `unknown` and `other` are the hub's own buckets, a sender so named included.
        Past the cap (which anyone who can reach the listener can fill with made-up senders) a new
        sender counts under `other`, said once at WARNING, so an operator knows to look there."""
        sender = sender.strip().upper()
        if not sender:
            return UNKNOWN
        if sender in self._last and sender not in (UNKNOWN.upper(), OTHER.upper()):
            return sender
        if len(sender) > MAX_SENDER_CHARS or sender in (UNKNOWN.upper(), OTHER.upper()):
            return OTHER
        if self._named >= self._max_senders:
            if not self._full:
                self._full = True
                log.warning(
                    "the MLLP metrics name %d senders, their most: senders new since are counted under "
                    'sender="other" (a restart counts afresh)',
                    self._max_senders,
                )
            return OTHER
        self._named += 1
        return sender

    async def exposition(self) -> str:
        """The text a scrape gets."""
        with self._lock:
            acks, last = sorted(self._acks.items()), sorted(self._last.items())
        lines = [
            *_family("carehub_up", "gauge", "1 while this process answers.", [((), 1)]),
            *_family(
                "carehub_start_time_seconds",
                "gauge",
                "When this process started counting (Unix time); its counters restart at zero with it.",
                [((), self.started)],
            ),
            *_family(
                "carehub_mllp_acks_total",
                "counter",
                "ACKs the MLLP listener sent, by sender (MSH-4) and code (MSA-1): an enhanced-mode message may "
                "have two (CA then AA) or none.",
                [((("sender", s), ("ack", code)), n) for (s, code), n in acks],
            ),
            *_family(
                "carehub_mllp_last_message_timestamp_seconds",
                "gauge",
                "When the last message from each sender (MSH-4) was answered (Unix time).",
                [((("sender", s),), at) for s, at in last],
            ),
        ]
        if self._tally is not None:
            lines += await self._dead_letter_lines(self._tally)
        return "\n".join(lines) + "\n"

    async def _dead_letter_lines(self, tally: Tally) -> list[str]:
        counted = await self._dead_letters(tally)
        lines = _family(
            "carehub_dead_letter_store_up",
            "gauge",
            "1 when the dead-letter store answered this scrape, else 0.",
            [((), 0 if counted is None else 1)],
        )
        if counted is not None:
            outstanding, resolved = counted
            lines += _family(
                "carehub_dead_letters_outstanding", "gauge", "Dead letters not resolved.", [((), outstanding)]
            )
            lines += _family("carehub_dead_letters_resolved", "gauge", "Dead letters resolved.", [((), resolved)])
        return lines

    async def _dead_letters(self, tally: Tally) -> tuple[int, int] | None:
        """The store's tally on a thread, within the timeout; scrapes meanwhile share one read, so a
        database that hangs holds one thread (as /readyz). None when it did not answer."""
        if self._reading is None or self._reading.done():
            self._reading = asyncio.create_task(asyncio.to_thread(tally))
            self._reading.add_done_callback(lambda t: t.cancelled() or t.exception())  # (retrieved, always)
        try:
            async with asyncio.timeout(self._timeout):
                return await asyncio.shield(self._reading)
        except Exception as exc:  # (the database away: the gauges are left out, store_up says why)
            log.debug("dead letters not counted: %s", type(exc).__name__)
            return None


def _family(name: str, kind: str, text: str, samples: Iterable[tuple[tuple[tuple[str, str], ...], float]]) -> list[str]:
    lines = [f"# HELP {name} {_help(text)}", f"# TYPE {name} {kind}"]
    for labels, value in samples:
        said = ",".join(f'{key}="{escape(val)}"' for key, val in labels)
        lines.append(f"{name}{{{said}}} {_number(value)}" if said else f"{name} {_number(value)}")
    return lines


def router(metrics: Metrics) -> APIRouter:
    """GET /metrics: no token needed (no patient data), outside the OpenAPI document."""
    routes = APIRouter()

    @routes.get("/metrics", include_in_schema=False)
    async def scrape() -> PlainTextResponse:
        return PlainTextResponse(await metrics.exposition(), media_type=CONTENT_TYPE)

    return routes
