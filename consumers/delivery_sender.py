"""Webhook and mailbox deliveries from the outbox the delivery consumer (consumers.delivery) fills,
each decided again before every attempt.

The sender decides again before every attempt (ledger channel "webhook" or "mailbox"), signs a webhook
body (HMAC-SHA256), retries with backoff and marks a delivery failed after the subscription's attempts,
for `carehub deliveries redeliver`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import os
from datetime import datetime, timedelta
from pathlib import Path

import httpx
import orjson

from consumers.delivery import Deliverer, people_in
from hub.core.delivery import ledger_entries, plan
from hub.core.ports import Json
from hub.store.subscriptions import Delivery
from schemas.events.coordination import PIC_SUMMARY_SENT
from schemas.subscriptions import Subscription

log = logging.getLogger(__name__)
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
    with os.fdopen(descriptor, "wb") as out:
        os.fchmod(out.fileno(), FILE_MODE)  # (a file left from a failed attempt keeps its mode otherwise)
        out.write(body)
    os.replace(partial, target)


def sign(secret: bytes, body: bytes) -> str:
    """The signature header value: sha256=<hex HMAC of the body>."""
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


def backoff(attempts: int) -> timedelta:
    """0.5 s, 1 s, 2 s ... capped at 5 minutes."""
    return timedelta(seconds=min(0.5 * 2 ** max(attempts - 1, 0), 300))


class WebhookSender:
    """Sends due outbox deliveries, deciding each again first."""

    def __init__(
        self,
        deliverer: Deliverer,
        *,
        client: httpx.AsyncClient | None = None,
        env: dict[str, str] | None = None,
        interval: float = 0.2,
    ) -> None:
        self.deliverer = deliverer
        self.client = client or httpx.AsyncClient(timeout=10)
        self.env = env if env is not None else os.environ
        self.interval = interval

    async def run(self, stopping: asyncio.Event) -> None:
        """Send until `stopping` is set; a database outage pauses, never loses, deliveries."""
        while not stopping.is_set():
            try:
                await self.once()
            except Exception:  # keep the loop alive; the outbox keeps the work
                log.exception("webhook sender pass failed; retrying")
            try:
                await asyncio.wait_for(stopping.wait(), self.interval)
            except TimeoutError:
                pass
        await self.client.aclose()

    async def once(self) -> int:
        """One pass over due deliveries; how many were settled (delivered, failed or withheld)."""
        d = self.deliverer
        due = await asyncio.to_thread(d.outbox.due, d.clock())
        settled = 0
        for delivery in due:
            settled += await self._attempt(delivery)
        return settled

    async def _attempt(self, delivery: Delivery) -> int:
        d = self.deliverer
        sub = await asyncio.to_thread(d.subscriptions.get, delivery.subscription_id)
        now = d.clock()
        attempts = delivery.attempts + 1
        if sub is None or (sub.webhook is None and sub.mailbox is None):
            await asyncio.to_thread(
                d.outbox.settle, delivery.id, status="failed", attempts=attempts, next_attempt_at=now,
                error="the subscription or its webhook no longer exists",
            )  # fmt: skip
            return 1
        people = people_in(delivery.person_key, delivery.body["resources"])
        judge = await asyncio.to_thread(d.judge, sub, people, now)
        planned = plan(
            subscription_id=sub.id,
            content=sub.content,
            event=delivery.body["event"],
            resources=delivery.body["resources"],
            decide=judge,
        )
        channel = "mailbox" if sub.webhook is None else "webhook"
        versions = await asyncio.to_thread(d.written, delivery.event_id)
        entries = ledger_entries(sub, channel, planned.judged, now, event=delivery.event_id, versions=versions)
        await asyncio.to_thread(d.ledger.append, entries)
        if planned.body is None:
            await asyncio.to_thread(
                d.outbox.settle, delivery.id, status="withheld", attempts=attempts, next_attempt_at=now,
                error="withheld: the policy no longer permits it",
            )  # fmt: skip
            return 1
        if sub.webhook is None:
            return await self._to_mailbox(sub, str(sub.mailbox), delivery, planned.body, attempts, now)
        secret = self.env.get(sub.webhook.secret_env)
        error = None
        if not secret:
            error = f"the webhook secret variable {sub.webhook.secret_env} is not set"
        else:
            body = orjson.dumps(planned.body)
            headers = {
                "Content-Type": "application/fhir+json",
                SIGNATURE_HEADER: sign(secret.encode(), body),
                "X-CareHub-Event-Id": delivery.event_id,
                "X-CareHub-Subscription": sub.id,
            }
            try:
                response = await self.client.post(str(sub.webhook.url), content=body, headers=headers)
                if response.is_success:
                    await self._delivered(sub, delivery, attempts, now, "webhook")
                    return 1
                error = f"HTTP {response.status_code}"
            except httpx.HTTPError as exc:
                error = f"{type(exc).__name__}: {exc}"
        final = attempts >= sub.max_attempts
        await asyncio.to_thread(
            d.outbox.settle, delivery.id, status="failed" if final else "pending", attempts=attempts,
            next_attempt_at=now + backoff(attempts), error=error,
        )  # fmt: skip
        if final:
            log.warning("webhook delivery %s failed after %d attempts: %s", delivery.id, attempts, error)
        return int(final)

    async def _to_mailbox(
        self, sub: Subscription, mailbox: str, delivery: Delivery, body: Json, attempts: int, now: datetime
    ) -> int:
        """Write the delivery into the practice's mailbox folder: a whole file or none (write, then rename)."""
        target = Path(mailbox) / f"{delivery.event_id}.json"
        try:
            await asyncio.to_thread(_write_whole, target, orjson.dumps(body, option=orjson.OPT_INDENT_2))
        except OSError as exc:
            final = attempts >= sub.max_attempts
            await asyncio.to_thread(
                self.deliverer.outbox.settle, delivery.id, status="failed" if final else "pending",
                attempts=attempts, next_attempt_at=now + backoff(attempts), error=f"mailbox: {exc.strerror or exc}",
            )  # fmt: skip
            return int(final)
        await self._delivered(sub, delivery, attempts, now, "mailbox")
        return 1

    async def _delivered(self, sub: Subscription, delivery: Delivery, attempts: int, now: datetime, how: str) -> None:
        """Settle a delivery; a PIC summary's delivery is the practice's receipt, published as an event
        (it closes the coordinator's PIC-summary task), when the summary (its Composition) was in it."""
        d = self.deliverer
        if delivery.body["event"].get("type") == PIC_SUMMARY_SENT.type:
            if any(r.get("resourceType") == "Composition" for r in delivery.body["resources"]):
                await d.receipt(sub, delivery, now, how)
            else:  # the policy let the letter's other resources through, not the summary: no letter came
                log.warning(
                    "delivery %s (subscription %s): the PIC summary itself was withheld by policy, so no "
                    "receipt: its task stays open",
                    delivery.id,
                    sub.id,
                )
        await asyncio.to_thread(
            d.outbox.settle, delivery.id, status="delivered", attempts=attempts, next_attempt_at=now, error=None
        )
