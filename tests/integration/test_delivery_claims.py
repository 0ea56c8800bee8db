"""Each webhook delivery is tried by one sender at a time: a sender claims it in the outbox row
before its try, so two `carehub worker` processes on one database send it once, and a sender that
died mid-try leaves it to be tried again when its claim runs out. SqlOutbox.due finds each
subscription's first pending delivery by index, however long a dead endpoint's backlog. SQLite and
PostgreSQL, real processes and a real receiver."""

from __future__ import annotations

import asyncio
import collections
import os
import sqlite3
import sys
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from hub.bootstrap import Services
from hub.core.ledger import DISCLOSED, results, verify
from hub.settings import Settings
from hub.store.subscriptions import Delivery
from tests.integration import test_webhook_truth as truth
from tests.integration.test_delivery_order import Endpoints, serving
from tests.integration.test_webhook_truth import COUNCIL, VCSE, queue, subscribe

pytestmark = pytest.mark.timeout(240)
settings, services = truth.settings, truth.services  # the fixtures: SQLite and PostgreSQL
ROOT = Path(__file__).parents[2]

# one `carehub worker`'s sender, on the database the test made: it starts when told to, and stops
# when nothing is pending
SENDER = """
import asyncio, sys, time
from pathlib import Path
from consumers.delivery_sender import WebhookSender
from hub.bootstrap import build
from hub.settings import DatabaseSettings, SecuritySettings, Settings
from tests.integration.test_webhook_truth import SECRET_ENV, SERVER_SECRETS, a_deliverer

async def main(data_dir, url, go):
    db = DatabaseSettings(url=url) if url else DatabaseSettings()
    security = SERVER_SECRETS if url else SecuritySettings()
    services = build(Settings(data_dir=Path(data_dir), db=db, security=security))
    print("ready", flush=True)
    while not Path(go).exists():
        await asyncio.sleep(0.01)
    sender = WebhookSender(a_deliverer(services), env={SECRET_ENV: "s3cret"}, interval=0.01)
    stopping = asyncio.Event()
    sending = asyncio.create_task(sender.run(stopping))
    deadline = time.monotonic() + 120
    while services.outbox.listing("pending", 1) and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    stopping.set()
    await sending
    services.engine.dispose()

asyncio.run(main(*sys.argv[1:]))
"""


async def test_two_worker_processes_send_each_delivery_once_and_each_subscription_in_order(
    services: Services, settings: Settings, tmp_path: Path
) -> None:
    async with serving(Endpoints(delay=0.05)) as endpoints:
        queued: dict[str, list[str]] = {}
        for n, org in enumerate((COUNCIL, VCSE, COUNCIL)):
            subscribe(services, f"sub-{n}", org, url=endpoints.url(f"ok{n}"))
            queued[f"ok{n}"] = queue(services, f"sub-{n}", f"p{n}", datetime.now(UTC), n=8)
        go = tmp_path / "go"
        env = {"PATH": os.environ["PATH"], "PYTHONPATH": str(ROOT)}
        command = [sys.executable, "-c", SENDER, str(settings.data_dir), settings.db.url or "", str(go)]
        pipe = asyncio.subprocess.PIPE
        workers = [
            await asyncio.create_subprocess_exec(*command, cwd=ROOT, env=env, stdout=pipe, stderr=pipe)
            for _ in range(2)
        ]
        try:
            for worker in workers:
                assert worker.stdout is not None
                assert (await worker.stdout.readline()).strip() == b"ready"
            go.touch()  # both at once
            ended = [await asyncio.wait_for(worker.communicate(), 180) for worker in workers]
        finally:
            for worker in workers:
                if worker.returncode is None:
                    worker.kill()
                    await worker.wait()
        assert all(w.returncode == 0 for w in workers), ended
    posts = collections.Counter(e for path in queued for e in endpoints.posts.get(path, []))
    assert {e: posts[e] for path in queued for e in queued[path]} == {e: 1 for path in queued for e in queued[path]}
    assert {path: endpoints.accepted.get(path) for path in queued} == queued  # each in outbox order
    assert {d.status for d in services.outbox.listing(limit=100)} == {"delivered"}
    entries = list(services.ledger.entries())
    assert verify(entries)[1] is None  # two processes appending: one chain
    assert sorted(r.outcome for r in results(entries).values()) == [DISCLOSED] * 24


def test_a_claimed_delivery_is_no_other_senders_until_its_lease_ends(services: Services) -> None:
    from hub.store.subscriptions import LEASE

    now = datetime.now(UTC)
    first, _ = queue(services, "council", "p1", now, n=2)
    due = services.outbox.due(now)
    assert [d.event_id for d in due][:1] == [first]
    mine = services.outbox.claim(due[0], now)
    assert mine is not None and mine.attempts == 1
    assert services.outbox.claim(due[0], now) is None  # another sender, from the same read: not its
    assert services.outbox.due(now) == []  # the later one waits behind the one being sent
    # the claiming sender died: once its lease ends, the delivery is due again, and another takes it
    later = now + LEASE + timedelta(seconds=1)
    [again] = services.outbox.due(later, per_subscription=1)
    theirs = services.outbox.claim(again, later)
    assert theirs is not None and theirs.attempts == 2

    def settle(claimed: Delivery) -> bool:
        return services.outbox.settle(
            claimed.id, status="delivered", attempts=claimed.attempts, next_attempt_at=later, error=None,
            tried=claimed.attempts,
        )  # fmt: skip

    assert not settle(mine)  # the sender that lost it settles nothing
    assert settle(theirs)
    assert not settle(theirs)  # (once)
    assert [d.status for d in services.outbox.listing()] == ["pending", "delivered"]  # (newest first)


def vm_steps(engine: sa.Engine, read: Any) -> int:
    """How many SQLite virtual-machine steps (in thousands) `read` takes: its cost, untimed."""
    steps = [0]

    def count() -> int:
        steps[0] += 1
        return 0

    def watch(conn: Any, *_: Any) -> None:
        raw = conn.connection.driver_connection
        assert isinstance(raw, sqlite3.Connection)
        raw.set_progress_handler(count, 1000)

    sa.event.listen(engine, "before_cursor_execute", watch)
    try:
        read()
    finally:
        sa.event.remove(engine, "before_cursor_execute", watch)
    return steps[0]


@pytest.mark.parametrize("settings", ["sqlite"], indirect=True)
def test_finding_due_deliveries_costs_no_more_with_a_long_backlog(services: Services) -> None:
    now = datetime.now(UTC) - timedelta(minutes=1)
    body = {"event": {"id": "e", "type": "x", "time": now.isoformat()}, "resources": []}

    def backlog(n: int) -> None:  # dead endpoints' queues, spread over 20 subscriptions
        rows = [
            {"subscription_id": f"dead-{i % 20}", "event_id": uuid.uuid4().hex, "person_key": "p", "body": body}
            for i in range(n)
        ]
        services.outbox.enqueue(rows, now=now)

    backlog(1_000)
    short = vm_steps(services.engine, lambda: services.outbox.due(datetime.now(UTC)))
    backlog(39_000)
    long = vm_steps(services.engine, lambda: services.outbox.due(datetime.now(UTC)))
    assert long < 2 * short + 10, (short, long)  # (before: about 40 times as many)
