"""Webhook and mailbox deliveries from the outbox the delivery consumer (consumers.delivery) fills,
each decided again before every attempt.

The sender decides again before every attempt and records the decision in the ledger (channel
"webhook" or "mailbox") before anything is sent, then what the attempt came to (disclosed, possibly
disclosed, not disclosed: hub.core.ledger). It signs a webhook body (HMAC-SHA256), retries with
backoff and marks a delivery failed after the subscription's attempts, for `carehub deliveries
redeliver`. Each subscription's deliveries go in order (a later one never while an earlier one is
pending), subscriptions side by side (at most `concurrency` tries at once, a slot per try), so one
slow or dead endpoint holds up only its own; each delivery is claimed in the outbox before its try,
so senders in several workers never send one twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import hmac
import logging
import os
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import NamedTuple, ParamSpec, TypeVar

import httpx
import orjson

from consumers.delivery import Deliverer, people_in
from hub.core.delivery import ledger_entries, plan, result_entries
from hub.core.errors import InfrastructureError
from hub.core.ledger import DISCLOSED, NOT_DISCLOSED, POSSIBLY_DISCLOSED, Disclosure
from hub.core.pic_summary import letter_practice, mailbox_name, received_summary
from hub.core.ports import Json
from hub.store.subscriptions import Delivery
from schemas.events.coordination import PIC_SUMMARY_SENT
from schemas.subscriptions import Subscription

log = logging.getLogger(__name__)
P = ParamSpec("P")
T = TypeVar("T")
SIGNATURE_HEADER = "X-CareHub-Signature"


# a delivery holds patient data: readable by the hub's user and its group (a practice's pick-up
# account in that group), never by everyone, whatever the umask; folders the hub makes likewise
FILE_MODE, FOLDER_MODE = 0o640, 0o750


def _write_whole(target: Path, body: bytes) -> None:
    """`body` as `target`, whole or not at all (written beside it, then renamed), FILE_MODE."""
    if not target.parent.exists():  # (once per mailbox: not a stat of every folder above it per delivery)
        for folder in reversed([target.parent, *target.parent.parents]):
            if folder.exists():
                continue
            with contextlib.suppress(FileExistsError):  # (another delivery made it meanwhile)
                folder.mkdir(mode=FOLDER_MODE)
                os.chmod(folder, FOLDER_MODE)  # (mkdir's mode is filtered by the umask)
    partial = target.with_suffix(".partial")
    descriptor = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE)
    try:
        with os.fdopen(descriptor, "wb") as out:
            os.fchmod(out.fileno(), FILE_MODE)  # (a file left from a failed attempt keeps its mode otherwise)
            out.write(body)
        os.replace(partial, target)
    except OSError:
        with contextlib.suppress(OSError):  # (left behind, the practice's account could read part of it)
            os.unlink(partial)
        raise


def _written_into(target: Path, body: bytes) -> Sent:
    """What writing `body` as `target` came to (run on a mailbox thread: even a stat may hang)."""
    try:
        _write_whole(target, body)
    except OSError as exc:
        if target.with_suffix(".partial").exists():  # (its removal failed too: part of it may be read)
            return Sent(POSSIBLY_DISCLOSED, f"mailbox: {exc.strerror or type(exc).__name__} (a partial file was left)")
        return Sent(NOT_DISCLOSED, f"mailbox: {exc.strerror or type(exc).__name__}")
    return Sent(DISCLOSED)


def _file_name(delivery: Delivery, body: Json) -> str:
    """A delivery's mailbox file: a PIC summary's by its date, the NHS number it carries and its
    event (hub.core.pic_summary.mailbox_name), so a practice can sort and find it; any other by its
    event id. (Never logged: an error names the failure, not the file.)"""
    event = delivery.body["event"]
    if event.get("type") != PIC_SUMMARY_SENT.type:
        return f"{delivery.event_id}.json"
    at = datetime.fromisoformat(str(event.get("time") or body.get("timestamp")))
    sent = [
        e["resource"] for e in body.get("entry") or [] if isinstance(e, dict) and isinstance(e.get("resource"), dict)
    ]
    return mailbox_name(delivery.event_id, at, sent)


def sign(secret: bytes, body: bytes) -> str:
    """The signature header value: sha256=<hex HMAC of the body>."""
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


# failures before any of the request went out (no connection made: refused, no such host, no TLS,
# no free connection): the receiver had nothing. Any other failure came after some of it was sent.
NEVER_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout, httpx.ProxyError, httpx.UnsupportedProtocol)


@dataclass(frozen=True)
class Sent:
    """What an attempt to send came to (hub.core.ledger's outcomes), and the error if it failed."""

    outcome: str
    error: str = ""


def sent_by(response: httpx.Response | None, error: Exception | None = None) -> Sent:
    """A POST's outcome: a 2xx disclosed it; no connection, nothing; anything else may have (a
    timeout or an error answer after the request was sent: the receiver may have kept it)."""
    if response is not None and response.is_success:
        return Sent(DISCLOSED)
    if response is not None:
        return Sent(POSSIBLY_DISCLOSED, f"HTTP {response.status_code}: the receiver had it and may have kept it")
    named = f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
    if isinstance(error, NEVER_SENT):
        return Sent(NOT_DISCLOSED, f"{named} (no connection: nothing was sent)")
    return Sent(POSSIBLY_DISCLOSED, f"{named} (after the request was sent: it may have been received)")


def backoff(attempts: int) -> timedelta:
    """0.5 s, 1 s, 2 s ... capped at 5 minutes."""
    return timedelta(seconds=min(0.5 * 2 ** max(attempts - 1, 0), 300))


def _said(error: BaseException) -> str:
    """An error for a log line: an infrastructure error's words (they name the dependency, never a
    person), any other's kind only."""
    return f"{type(error).__name__}: {error}" if isinstance(error, InfrastructureError) else type(error).__name__


class Outage:
    """A run of failed passes: how long to wait before the next (`first` doubling to `cap`, back to
    `first` after a pass that works) and what to log: the first failure (whole, with its traceback,
    unless it is a known infrastructure error: the database or Kafka not answering), a line a
    backoff step, and a line when passes work again."""

    def __init__(self, what: str, first: float, cap: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.what, self.first, self.cap, self.clock = what, first, cap, clock
        self.failures = 0
        self.since = 0.0

    def failed(self, error: Exception) -> float:
        """Log a failed pass; the seconds to wait before the next."""
        self.failures += 1
        wait = min(self.first * 2.0 ** (self.failures - 1), self.cap)
        if self.failures == 1:
            self.since = self.clock()
            if isinstance(error, InfrastructureError):
                log.warning("%s pass failed (%s); retrying in %.1f s", self.what, _said(error), wait)
            else:
                log.error("%s pass failed; retrying in %.1f s", self.what, wait, exc_info=error)
        else:
            log.warning(
                "%s still failing after %.1f s (%d passes): %s; retrying in %.1f s",
                self.what,
                self.clock() - self.since,
                self.failures,
                _said(error),
                wait,
            )
        return wait

    def worked(self) -> None:
        """A pass worked: log the recovery after a run of failures, and start the backoff again."""
        if self.failures:
            log.warning("%s working again after %.1f s", self.what, self.clock() - self.since)
        self.failures = 0


class Tried(NamedTuple):
    """What one delivery's turn came to: how many deliveries it settled (0 or 1), and whether its
    subscription's next delivery may go now (not after a try that did not arrive: it waits behind)."""

    settled: int
    onward: bool


class WebhookSender:
    """Sends due outbox deliveries, deciding each again first: each subscription's in order (by
    outbox id, a later one never before an earlier one still pending), up to `concurrency` tries at
    once. Each delivery is claimed before its try (SqlOutbox.claim), so two senders, in one process
    or two workers, never try one delivery at once. Its database calls and mailbox writes run on
    threads of its own, so a hung mailbox share never takes the threads the rest of the worker uses."""

    def __init__(
        self,
        deliverer: Deliverer,
        *,
        client: httpx.AsyncClient | None = None,
        env: dict[str, str] | None = None,
        interval: float = 0.2,
        concurrency: int = 8,
        try_timeout: float = 10.0,
        store_threads: int = 4,
        max_backoff: float = 30.0,
    ) -> None:
        self.deliverer = deliverer
        self.client = client or httpx.AsyncClient(timeout=try_timeout)
        self.env = env if env is not None else os.environ
        self.interval = interval  # between passes, and the first wait after a failed one
        self.max_backoff = max_backoff  # failed passes wait `interval` doubling to this
        self.concurrency = concurrency
        self.try_timeout = try_timeout  # the whole of one try: connect, send, the answer (however slowly it trickles)
        self._busy: dict[str, asyncio.Task[int]] = {}  # subscription id -> the task sending its deliveries
        self._stopping = False
        self._gates: tuple[asyncio.AbstractEventLoop, asyncio.Semaphore, asyncio.Lock] | None = None
        self._store = ThreadPoolExecutor(store_threads, thread_name_prefix="carehub-sender-store")
        # a thread per try that may be under way: one hung share (at most one write each) leaves the
        # others theirs until as many are hung as there are slots
        self._files = ThreadPoolExecutor(concurrency, thread_name_prefix="carehub-sender-mailbox")
        self._writing: dict[str, Future[Sent]] = {}  # subscription id -> its last mailbox write

    async def run(self, stopping: asyncio.Event) -> None:
        """Send until `stopping` is set; a database outage pauses, never loses, deliveries. Each pass
        starts the subscriptions with due deliveries that are not being sent already, and does not
        wait for them: a slow endpoint delays only its own subscription's next pass. Failed passes
        back off (Outage), so an outage costs a few log lines, not a traceback every pass."""
        outage = Outage("webhook sender", self.interval, self.max_backoff)
        while not stopping.is_set():
            wait = self.interval
            try:
                await self._start_due()
            except Exception as exc:  # keep the loop alive; the outbox keeps the work
                wait = outage.failed(exc)
            else:
                outage.worked()
            try:
                await asyncio.wait_for(stopping.wait(), wait)
            except TimeoutError:
                pass
        self._stopping = True  # (each subscription's task ends after the delivery it is sending)
        await asyncio.gather(*self._busy.values(), return_exceptions=True)
        await self.client.aclose()
        self._store.shutdown(wait=False)
        self._files.shutdown(wait=False, cancel_futures=True)  # (a hung write's thread is left to the share)

    async def once(self) -> int:
        """One pass over due deliveries, waiting for all of them; how many were settled (delivered,
        failed or withheld)."""
        return sum(await asyncio.gather(*await self._start_due()))

    def _gated(self) -> tuple[asyncio.Semaphore, asyncio.Lock]:
        """The bound on tries at once, and the lock that keeps ledger appends in one order (made
        per event loop: a test may run passes in several)."""
        loop = asyncio.get_running_loop()
        if self._gates is None or self._gates[0] is not loop:
            self._gates = (loop, asyncio.Semaphore(self.concurrency), asyncio.Lock())
        return self._gates[1], self._gates[2]

    async def _db(self, call: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """`call` on the sender's own store threads (never the loop's default ones)."""
        return await asyncio.get_running_loop().run_in_executor(self._store, functools.partial(call, *args, **kwargs))

    async def _start_due(self) -> list[asyncio.Task[int]]:
        """Start a task per subscription with due deliveries and none sending now."""
        d = self.deliverer
        busy = set(self._busy)
        due = await self._db(d.outbox.due, d.clock(), skip=busy)
        queues: dict[str, list[Delivery]] = {}
        for delivery in due:
            if delivery.subscription_id not in self._busy:
                queues.setdefault(delivery.subscription_id, []).append(delivery)
        started = []
        for sub_id, queue in queues.items():
            task = asyncio.create_task(self._send_in_order(queue))
            self._busy[sub_id] = task
            task.add_done_callback(functools.partial(self._finished, sub_id))
            started.append(task)
        return started

    def _finished(self, sub_id: str, task: asyncio.Task[int]) -> None:
        self._busy.pop(sub_id, None)
        if task.cancelled() or (error := task.exception()) is None:
            return
        if isinstance(error, InfrastructureError):  # (the pass's backoff logs the outage: one line here)
            log.warning("sending subscription %s's deliveries failed (%s); retrying", sub_id, _said(error))
        else:
            log.error("sending subscription %s's deliveries failed; retrying", sub_id, exc_info=error)

    async def _send_in_order(self, queue: list[Delivery]) -> int:
        """A subscription's due deliveries in order, a slot taken for each try (not for the queue),
        as far as the first that did not arrive: the rest wait behind it, for its backoff."""
        slots, _ = self._gated()
        settled = 0
        for delivery in queue:
            if self._stopping:
                break
            async with slots:
                tried = await self._attempt(delivery)
            settled += tried.settled
            if not tried.onward:
                break
        return settled

    async def _record(self, entries: list[Disclosure]) -> None:
        _, ledger = self._gated()
        async with ledger:
            await self._db(self.deliverer.ledger.append, entries)

    async def _attempt(self, delivery: Delivery) -> Tried:
        """Claim a delivery, decide it again and send it: the decision is in the ledger before
        anything is sent, and what came of it after."""
        d = self.deliverer
        now = d.clock()
        claimed = await self._db(d.outbox.claim, delivery, now)
        if claimed is None:  # another sender took it first: its later ones are that sender's to send
            return Tried(0, onward=False)
        sub = await self._db(d.subscriptions.get, delivery.subscription_id)
        if sub is None or (sub.webhook is None and sub.mailbox is None):
            gone = "the subscription or its webhook no longer exists"
            return Tried(await self._settled(claimed.id, claimed.attempts, "failed", now, gone), onward=True)
        people = people_in(delivery.person_key, delivery.body["resources"])
        judge = await self._db(d.judge, sub, people, now)
        planned = plan(
            subscription_id=sub.id,
            content=sub.content,
            event=delivery.body["event"],
            resources=delivery.body["resources"],
            decide=judge,
        )
        channel = "mailbox" if sub.webhook is None else "webhook"
        versions = await self._db(d.written, delivery.event_id)
        attempt = uuid.uuid4().hex if planned.body is not None else None
        entries = ledger_entries(
            sub, channel, planned.judged, now, event=delivery.event_id, versions=versions, attempt=attempt
        )
        if planned.body is None:
            await self._record(entries)
            withheld = "withheld: the policy no longer permits it"
            return Tried(await self._settled(claimed.id, claimed.attempts, "withheld", now, withheld), onward=True)
        sent = await self._send(sub, claimed, planned.body, entries)
        return await self._settle(sub, claimed, sent, now, channel, planned.body)

    async def _settled(self, id: int, tried: int, status: str, at: datetime, error: str | None) -> int:
        """Settle a delivery claimed for its `tried`th try (1), unless another sender claimed it
        since (0: the claim ran out)."""
        done = await self._db(
            self.deliverer.outbox.settle, id, status=status, attempts=tried, next_attempt_at=at, error=error,
            tried=tried,
        )  # fmt: skip
        if not done:
            log.warning("delivery %s was claimed again while this try went on (its claim ran out)", id)
        return int(bool(done))

    async def _send(self, sub: Subscription, delivery: Delivery, body: Json, entries: list[Disclosure]) -> Sent:
        """Record the attempt, send, record its result (together, where nothing can be sent)."""
        secret = self.env.get(sub.webhook.secret_env) if sub.webhook is not None else None
        if sub.webhook is not None and not secret:
            sent = Sent(NOT_DISCLOSED, f"the webhook secret variable {sub.webhook.secret_env} is not set")
            await self._record([*entries, *result_entries(entries, sent.outcome, sent.error, self.deliverer.clock())])
            return sent
        await self._record(entries)  # (before anything leaves: a crash after sending leaves it recorded)
        if sub.webhook is None:
            sent = await self._to_mailbox(sub.id, str(sub.mailbox), delivery, body)
        else:
            sent = await self._post(sub, str(sub.webhook.url), delivery, body, str(secret))
        await self._record(result_entries(entries, sent.outcome, sent.error, self.deliverer.clock()))
        return sent

    async def _post(self, sub: Subscription, url: str, delivery: Delivery, body: Json, secret: str) -> Sent:
        content = orjson.dumps(body)
        headers = {
            "Content-Type": "application/fhir+json",
            SIGNATURE_HEADER: sign(secret.encode(), content),
            "X-CareHub-Event-Id": delivery.event_id,
            "X-CareHub-Subscription": sub.id,
        }
        try:
            async with asyncio.timeout(self.try_timeout):  # (the client's timeout bounds each read, not the try)
                response = await self.client.post(url, content=content, headers=headers)
        except TimeoutError:
            late = (
                f"no whole answer within {self.try_timeout:g} s (after the request was sent: it may have been received)"
            )
            return Sent(POSSIBLY_DISCLOSED, late)
        except httpx.HTTPError as exc:
            return sent_by(None, exc)
        return sent_by(response)

    async def _settle(
        self, sub: Subscription, delivery: Delivery, sent: Sent, now: datetime, how: str, body: Json
    ) -> Tried:
        if sent.outcome == DISCLOSED:
            return Tried(await self._delivered(sub, delivery, delivery.attempts, now, how, body), onward=True)
        final = delivery.attempts >= sub.max_attempts
        status, at = ("failed", now) if final else ("pending", now + backoff(delivery.attempts))
        settled = await self._settled(delivery.id, delivery.attempts, status, at, sent.error)
        if final:
            log.warning("%s delivery %s failed after %d attempts: %s", how, delivery.id, delivery.attempts, sent.error)
        return Tried(settled if final else 0, onward=False)

    async def _to_mailbox(self, sub_id: str, mailbox: str, delivery: Delivery, body: Json) -> Sent:
        """Write the delivery into the practice's mailbox folder: a whole file or none (write, then
        rename), on the sender's mailbox threads, waiting at most `try_timeout` for it; a folder whose
        last write has not returned (a share not answering) is not written again meanwhile."""
        writing = self._writing.get(sub_id)
        if writing is not None and not writing.done():
            return Sent(NOT_DISCLOSED, "mailbox: its last write has not returned (the folder is not answering)")
        target = Path(mailbox) / _file_name(delivery, body)
        content = orjson.dumps(body, option=orjson.OPT_INDENT_2)
        self._writing[sub_id] = writing = self._files.submit(_written_into, target, content)
        try:
            async with asyncio.timeout(self.try_timeout):
                return await asyncio.wrap_future(writing)
        except TimeoutError:
            if writing.cancelled():  # (never started: every mailbox thread was taken)
                return Sent(NOT_DISCLOSED, f"mailbox: no thread free to write it within {self.try_timeout:g} s")
            return Sent(POSSIBLY_DISCLOSED, f"mailbox: the write did not return within {self.try_timeout:g} s")

    async def _delivered(
        self, sub: Subscription, delivery: Delivery, attempts: int, now: datetime, how: str, body: Json
    ) -> int:
        """Settle a delivery (`body`: what went); a PIC summary's delivery to the practice it is
        addressed to is the practice's receipt, published as an event (it closes the coordinator's
        PIC-summary task and counts in the KPI), when the summary (its Composition) went in it."""
        if delivery.body["event"].get("type") == PIC_SUMMARY_SENT.type:
            await self._receipt(sub, delivery, now, how, body)
        return await self._settled(delivery.id, attempts, "delivered", now, None)

    async def _receipt(self, sub: Subscription, delivery: Delivery, now: datetime, how: str, body: Json) -> None:
        """The practice's receipt for a letter delivered as `body`, if it is one (hub.core.pic_summary.
        received_summary): any other subscriber's copy is theirs alone. The practice is the one the
        letter's event named, kept with the delivery (one queued before it was kept: the one its
        Patient, if that went, names)."""
        said = delivery.body
        practice = said["practice"] if "practice" in said else letter_practice(said["resources"])
        summary = received_summary(sub.org, practice, body)
        if summary is not None:
            await self.deliverer.receipt(sub, delivery, summary, now, how)
        elif sub.org == practice:  # the practice's own delivery without the letter: no letter came
            log.warning(
                "delivery %s (subscription %s): the PIC summary itself did not go (withheld by policy, or "
                "the subscription's content level), so no receipt: its task stays open",
                delivery.id,
                sub.id,
            )
