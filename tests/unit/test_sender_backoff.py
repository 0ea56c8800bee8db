"""The webhook sender during a database outage: failed passes back off (doubling, capped), the first
failure is logged once, then a line a backoff step, and a line when passes work again."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any, cast

import httpx
import pytest

from consumers.delivery_sender import Outage, WebhookSender
from hub.core.errors import StoreUnavailableError

NOW = datetime(2026, 12, 7, 14, 49, tzinfo=UTC)


class FlakyOutbox:
    """An outbox whose `due` fails (as the store does with the database down) until `healed`."""

    def __init__(self, error: Exception) -> None:
        self.error = error
        self.healed = False
        self.passes = 0

    def due(self, now: datetime, skip: object = ()) -> list[object]:
        self.passes += 1
        if not self.healed:
            raise self.error
        return []


async def _run_through_outage(outbox: FlakyOutbox, outage_s: float, after_s: float) -> None:
    deliverer = SimpleNamespace(outbox=outbox, clock=lambda: NOW)
    client = httpx.AsyncClient(transport=httpx.MockTransport(lambda r: httpx.Response(204)))
    sender = WebhookSender(cast(Any, deliverer), client=client, interval=0.01, max_backoff=0.08)
    stopping = asyncio.Event()
    running = asyncio.create_task(sender.run(stopping))
    await asyncio.sleep(outage_s)
    outbox.healed = True
    await asyncio.sleep(after_s)
    stopping.set()
    await running


def _sender_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "consumers.delivery_sender"]


def test_a_database_outage_backs_off_and_logs_a_line_a_step_without_tracebacks(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    outbox = FlakyOutbox(StoreUnavailableError("database unavailable: OperationalError"))
    asyncio.run(_run_through_outage(outbox, outage_s=0.6, after_s=0.1))

    records = _sender_records(caplog)
    failing = [r for r in records if "failed" in r.getMessage() or "still failing" in r.getMessage()]
    # 0.6 s at a pass every 0.01 s would be ~60 passes and 60 tracebacks; backing off 0.01 -> 0.08 s: ~11
    assert len(failing) <= 14
    assert not any(r.exc_info for r in records), "a known infrastructure error needs no traceback"
    assert "database unavailable" in failing[0].getMessage()
    again = [r for r in records if "working again after" in r.getMessage()]
    assert len(again) == 1
    assert outbox.passes > len(failing)  # (it went on passing, every interval, once healed)


def test_an_unexpected_error_is_logged_whole_once_then_a_line_a_step(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    outbox = FlakyOutbox(RuntimeError("bug"))
    asyncio.run(_run_through_outage(outbox, outage_s=0.4, after_s=0.05))

    records = _sender_records(caplog)
    assert [r.levelname for r in records if r.exc_info] == ["ERROR"]
    assert all("bug" not in r.getMessage() for r in records[1:])  # (an unknown error's words may be data)
    assert len(records) <= 12


def test_the_backoff_doubles_to_its_cap_and_starts_again_after_a_pass_that_works() -> None:
    now = [0.0]
    outage = Outage("sender", first=0.2, cap=30.0, clock=lambda: now[0])
    error = StoreUnavailableError("database unavailable: OperationalError")
    waits = [outage.failed(error) for _ in range(10)]
    assert waits == [0.2, 0.4, 0.8, 1.6, 3.2, 6.4, 12.8, 25.6, 30.0, 30.0]
    outage.worked()
    assert outage.failed(error) == 0.2
