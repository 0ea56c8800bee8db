"""A stopping hub applies what its embedded broker still holds before the broker (and its log, held in
memory) goes, and says so only when that is a wait: a last clock tick's few records, applied within
moments, are no warning (`carehub demo` printed one at the end of a run where nothing went wrong)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from typing import Any

import pytest

from hub import embedded


def lags(monkeypatch: pytest.MonkeyPatch, said: Iterator[int]) -> None:
    async def lag(run: Any) -> int:
        return next(said)

    monkeypatch.setattr(embedded, "_lag", lag)


def warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "hub.embedded" and r.levelno >= logging.WARNING]


def test_records_applied_within_moments_are_applied_without_a_word(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    lags(monkeypatch, iter([3, 3, 0]))
    asyncio.run(embedded.drain(None, timeout=30))  # type: ignore[arg-type]
    assert warnings(caplog) == []


def test_a_stop_that_keeps_the_operator_waiting_says_how_much_is_left_and_how_to_stop_at_once(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(embedded, "QUIET_DRAIN_S", 0.5)
    lags(monkeypatch, iter([40] * 4 + [12] * 4 + [0]))
    asyncio.run(embedded.drain(None, timeout=60))  # type: ignore[arg-type]
    said = warnings(caplog)
    assert len(said) == 1, said  # said once, not at every poll
    assert "applying the 40 records" in said[0] and "Ctrl-C again" in said[0]


def test_what_could_not_be_applied_in_time_is_an_error_naming_how_much_went_with_the_broker(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(embedded, "QUIET_DRAIN_S", 0.2)
    lags(monkeypatch, iter([7] * 1000))
    asyncio.run(embedded.drain(None, timeout=1))  # type: ignore[arg-type]
    said = warnings(caplog)
    assert "applying the 7 records" in said[0]
    assert "stopped with 7 records" in said[-1]


def test_on_the_embedded_broker_a_second_signal_before_the_drain_is_only_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # a second Ctrl-C there raised KeyboardInterrupt mid-stop: the drain was skipped and the broker,
    # with messages the hub had acknowledged, stopped without a word
    import os
    import signal

    from hub.terminal import on_signal

    async def twice() -> bool:
        stop = on_signal(at_once_again=False)
        for _ in range(2):
            os.kill(os.getpid(), signal.SIGINT)
            await asyncio.sleep(0.05)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        return stop.is_set()

    with caplog.at_level(logging.INFO, logger="hub.terminal"):
        assert asyncio.run(twice())  # (alive to say so: not interrupted)
    said = [r.getMessage() for r in caplog.records if r.name == "hub.terminal"]
    assert said[0] == "stopping (signal SIGINT)"
    assert said[1].startswith("already stopping (signal SIGINT again)")
