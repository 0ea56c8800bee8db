"""Each subscription's webhook deliveries reach its receiver in outbox order, a later one never
while an earlier one is still pending; a try that does not arrive ends its subscription's pass and
gives up its slot, so slow endpoints hold up no other subscriber; a try is bounded as a whole, even
against a receiver that trickles its answer; and a mailbox share that stops answering never takes
the worker's threads. Real receivers on real sockets, a real FIFO for a hung write, the outbox and
ledger on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from consumers.delivery_sender import WebhookSender
from hub.bootstrap import Services
from hub.core.ledger import DISCLOSED, NOT_DISCLOSED, POSSIBLY_DISCLOSED, results, verify
from hub.kafka import free_port
from tests.integration import test_webhook_truth as truth
from tests.integration.test_webhook_truth import (
    COUNCIL,
    SECRET_ENV,
    VCSE,
    Clock,
    a_deliverer,
    outcomes_by_subscription,
    queue,
    subscribe,
)

pytestmark = pytest.mark.timeout(240)
settings, services = truth.settings, truth.services  # the fixtures: SQLite and PostgreSQL


@dataclass
class Endpoints:
    """Webhook endpoints on one real socket, by path: /ok answers 204; /flaky answers 503 to each
    event's first POST and 204 after; /fails answers 500 to the events in `failing`; /slow holds
    each POST until released (the sender's try timeout ends it first)."""

    port: int = field(default_factory=free_port)
    posts: dict[str, list[str]] = field(default_factory=dict)  # path -> event ids POSTed, in order
    accepted: dict[str, list[str]] = field(default_factory=dict)  # path -> event ids answered 2xx
    failing: set[str] = field(default_factory=set)
    delay: float = 0.0  # before each answer
    release: asyncio.Event = field(default_factory=asyncio.Event)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}/{path}"

    async def hook(self, request: Request) -> Response:
        await request.body()
        event, path = request.headers["x-carehub-event-id"], request.url.path.strip("/")
        seen = self.posts.setdefault(path, [])
        first = event not in seen
        seen.append(event)
        await asyncio.sleep(self.delay)
        if path == "slow":
            await self.release.wait()
        if (path == "flaky" and first) or (path == "fails" and event in self.failing):
            return Response(status_code=503 if path == "flaky" else 500)
        self.accepted.setdefault(path, []).append(event)
        return Response(status_code=204)


@contextlib.asynccontextmanager
async def serving(endpoints: Endpoints) -> AsyncIterator[Endpoints]:
    app = Starlette(routes=[Route("/{path}", endpoints.hook, methods=["POST"])])
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=endpoints.port, log_level="warning"))
    task = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.02)
    try:
        yield endpoints
    finally:
        endpoints.release.set()
        server.should_exit = True
        await task


async def until(done: Callable[[], object], within: float = 120.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not done() and loop.time() < deadline:
        await asyncio.sleep(0.05)


def in_order(posted: list[str], queued: list[str]) -> bool:
    """Whether every POST (failed ones too) came in outbox order: none of a later delivery before
    the last of an earlier one."""
    return posted == sorted(posted, key=queued.index)


async def test_a_later_delivery_never_overtakes_an_earlier_one_backing_off(services: Services) -> None:
    async with serving(Endpoints()) as endpoints:
        subscribe(services, "vcse", VCSE, url=endpoints.url("flaky"), max_attempts=5)
        queued = queue(services, "vcse", "p2", datetime.now(UTC), n=6)
        sender = WebhookSender(a_deliverer(services), env={SECRET_ENV: "s3cret"}, interval=0.02)
        stopping = asyncio.Event()
        sending = asyncio.create_task(sender.run(stopping))
        await until(lambda: len(endpoints.accepted.get("flaky", [])) == len(queued))
        stopping.set()
        await sending
    assert endpoints.accepted["flaky"] == queued
    # each first POST answered 503 and backed off; the next waited for it
    assert endpoints.posts["flaky"] == [e for e in queued for _ in range(2)]
    assert verify(services.ledger.entries())[1] is None


async def test_a_delivery_that_keeps_failing_holds_back_the_later_ones_only_until_it_is_failed(
    services: Services,
) -> None:
    async with serving(Endpoints()) as endpoints:
        subscribe(services, "council", COUNCIL, url=endpoints.url("fails"), max_attempts=2)
        clock = Clock()
        first, second = queue(services, "council", "p1", clock.now, n=2)
        endpoints.failing.add(first)
        sender = WebhookSender(a_deliverer(services, clock), env={SECRET_ENV: "s3cret"})
        for _ in range(3):
            await sender.once()
            clock.now += timedelta(minutes=1)  # past the backoff
        assert endpoints.posts["fails"] == [first, first, second]  # the second waited for the first's tries
        statuses = {d.event_id: d.status for d in services.outbox.listing()}
        assert statuses == {first: "failed", second: "delivered"}
        # the operator's redeliver puts it back at the head of the subscription's queue
        [failed] = [d.id for d in services.outbox.listing("failed")]
        assert services.outbox.redeliver([failed], now=clock.now) == 1
        endpoints.failing.clear()
        await sender.once()
    assert endpoints.accepted["fails"] == [second, first]
    assert outcomes_by_subscription(services)["council"] == [POSSIBLY_DISCLOSED] * 2 + [DISCLOSED] * 2


async def test_slow_endpoints_hold_a_slot_per_try_not_for_their_queue(services: Services) -> None:
    """Eight subscriptions whose endpoint never answers, three deliveries each, take all eight
    slots: the healthy one goes when the first of their tries ends, not after their queues."""
    async with serving(Endpoints()) as endpoints:
        for n in range(8):
            subscribe(services, f"council-{n}", COUNCIL, url=endpoints.url("slow"), max_attempts=6)
            queue(services, f"council-{n}", f"p{n}", datetime.now(UTC), n=3)
        subscribe(services, "vcse", VCSE, url=endpoints.url("ok"))
        client = httpx.AsyncClient(timeout=1.5)  # (each try ends at the client's timeout)
        sender = WebhookSender(a_deliverer(services), client=client, env={SECRET_ENV: "s3cret"}, interval=0.05)
        stopping = asyncio.Event()
        sending = asyncio.create_task(sender.run(stopping))
        await until(lambda: len(endpoints.posts.get("slow", [])) == 8)  # every slot taken
        healthy = queue(services, "vcse", "p9", datetime.now(UTC))
        await until(lambda: endpoints.accepted.get("ok"))
        slow_tries = len(endpoints.posts["slow"])
        stopping.set()
        await sending
    await client.aclose()
    assert endpoints.accepted["ok"] == healthy
    # no slow subscription went past its first delivery; (before: one whole queue of three, timed out)
    assert slow_tries <= 16, endpoints.posts["slow"]
    entries = list(services.ledger.entries())
    tried = {e.body["event"] for e in entries if e.body.get("recipient_user", "").startswith("subscription:council")}
    assert len(tried) == 8  # one delivery of each, the first: the rest waited behind it


async def test_a_receiver_trickling_its_answer_holds_a_try_no_longer_than_the_try_timeout(
    services: Services,
) -> None:
    cut_off: list[int] = []

    async def trickle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(65536)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 60\r\n\r\n")
        sent = 0
        try:
            for _ in range(60):  # a byte a second: each read well within the client's timeout
                await writer.drain()
                writer.write(b"x")
                sent += 1
                await asyncio.sleep(1)
            await writer.drain()
        except ConnectionError:
            cut_off.append(sent)
        finally:
            writer.close()

    server = await asyncio.start_server(trickle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    subscribe(services, "council", COUNCIL, url=f"http://127.0.0.1:{port}/hook", max_attempts=1)
    queue(services, "council", "p1", datetime.now(UTC))
    client = httpx.AsyncClient(timeout=5.0)  # (bounds each read: a byte a second never meets it)
    sender = WebhookSender(a_deliverer(services), client=client, env={SECRET_ENV: "s3cret"})  # (a try: 10 s)
    try:
        assert await sender.once() == 1
        await until(lambda: cut_off, within=90)
    finally:
        await client.aclose()
        server.close()
    assert cut_off and cut_off[0] < 60  # the sender hung up before the receiver had finished
    assert outcomes_by_subscription(services)["council"] == [POSSIBLY_DISCLOSED]
    [failed] = services.outbox.listing("failed")
    assert "no whole answer within 10 s" in str(failed.last_error)


async def test_a_mailbox_share_that_stops_answering_never_takes_the_workers_threads(
    services: Services, tmp_path: Path
) -> None:
    """Mailbox writes that never return (each into a FIFO nobody reads: open(2) blocks, as on a hard
    mount that stopped answering), as many as the loop's default pool has threads, leave it free,
    and a webhook subscription's deliveries, queued before and after, go."""
    hung = min(32, (os.cpu_count() or 1) + 4)  # the loop's default thread pool
    fifos: list[Path] = []
    for n in range(hung):
        box = tmp_path / f"box-{n}"
        box.mkdir()
        subscribe(services, f"gp-{n}", "Y00001", mailbox=str(box))
        [event] = queue(services, f"gp-{n}", f"p{n}", datetime.now(UTC))
        os.mkfifo(box / f"{event}.partial")
        fifos.append(box / f"{event}.partial")
    async with serving(Endpoints()) as endpoints:
        subscribe(services, "vcse", VCSE, url=endpoints.url("ok"))
        first = queue(services, "vcse", "p9", datetime.now(UTC))
        sender = WebhookSender(a_deliverer(services), env={SECRET_ENV: "s3cret"}, interval=0.05, concurrency=hung + 1)
        stopping = asyncio.Event()
        sending = asyncio.create_task(sender.run(stopping))
        readers: list[int] = []
        try:
            await until(lambda: endpoints.accepted.get("ok"))
            await asyncio.sleep(1.0)  # (the hung writes under way)
            # what the record consumer does (consumers/record.py): a call on the loop's default pool
            answered = await asyncio.wait_for(asyncio.to_thread(lambda: "answered"), 30)
            second = queue(services, "vcse", "p9", datetime.now(UTC))
            await until(lambda: len(endpoints.accepted.get("ok", [])) == 2, within=60)
        finally:
            for fifo in fifos:  # (a reader lets each hung open(2) return)
                with contextlib.suppress(OSError):
                    readers.append(os.open(fifo, os.O_RDONLY | os.O_NONBLOCK))
            stopping.set()
            await sending
            for fd in readers:
                os.close(fd)
    assert answered == "answered"
    assert endpoints.accepted["ok"] == first + second
    came = {r.outcome for r in results(services.ledger.entries()).values()}
    assert DISCLOSED in came and came <= {DISCLOSED, POSSIBLY_DISCLOSED, NOT_DISCLOSED}
