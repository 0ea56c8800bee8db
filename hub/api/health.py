"""Probes: /healthz says the process answers (liveness), /readyz that the database and Kafka answer
(readiness), each check bounded by a timeout and the answer kept briefly, so probes never load them."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from typing import Annotated, Protocol

import sqlalchemy as sa
from fastapi import APIRouter, Query
from fastapi.responses import JSONResponse

Check = Callable[[], Awaitable[None]]  # returns when the dependency answered; raises when it did not


class Pingable(Protocol):
    """A broker that can say whether Kafka answers (FastStream's KafkaBroker.ping: describe-cluster)."""

    async def ping(self, timeout: float | None) -> bool: ...


def _select_one(engine: sa.Engine) -> None:
    with engine.connect() as conn:
        conn.execute(sa.text("SELECT 1"))


def database_answers(engine: sa.Engine) -> Check:
    """SELECT 1 on a thread (a blocked connect never blocks the event loop); while one has not
    returned, checks wait on it rather than start another, so a hung database holds one thread."""
    last: list[asyncio.Task[None]] = []

    async def check() -> None:
        if not last or last[0].done():
            task = asyncio.create_task(asyncio.to_thread(_select_one, engine))
            task.add_done_callback(lambda t: t.cancelled() or t.exception())  # (retrieved: never "unretrieved")
            last[:] = [task]
        await asyncio.shield(last[0])  # (a timeout stops the waiting, not the thread: it is not cancellable)

    return check


def kafka_answers(broker: Pingable, timeout: float = 2.0) -> Check:
    """The broker's cluster metadata, asked for once."""

    async def check() -> None:
        if not await broker.ping(timeout):
            raise ConnectionError("Kafka did not answer")

    return check


class Readiness:
    """Runs the checks side by side, each within `timeout`, and keeps the answer for `keep` seconds;
    requests meanwhile share one run, so probes, however many, put no load on what is checked."""

    def __init__(self, checks: Mapping[str, Check], *, timeout: float = 2.0, keep: float = 1.5) -> None:
        self.checks = dict(checks)
        self.timeout = timeout
        self.keep = keep
        self._answer: tuple[float, dict[str, str]] | None = None
        self._running: asyncio.Task[dict[str, str]] | None = None

    async def answer(self) -> dict[str, str]:
        """Each check's name -> "ok" or why it failed (an error's kind, never its message: no data)."""
        now = asyncio.get_running_loop().time()
        if self._answer is not None and now - self._answer[0] < self.keep:
            return self._answer[1]
        if self._running is None or self._running.done():
            self._running = asyncio.create_task(self._run())
        answer = await asyncio.shield(self._running)
        self._answer = (asyncio.get_running_loop().time(), answer)
        return answer

    async def _run(self) -> dict[str, str]:
        said = await asyncio.gather(*(self._one(check) for check in self.checks.values()))
        return dict(zip(self.checks, said, strict=True))

    async def _one(self, check: Check) -> str:
        try:
            async with asyncio.timeout(self.timeout):
                await check()
        except TimeoutError:
            return f"failed: no answer within {self.timeout:g} s"
        except Exception as exc:  # (any failure is a "not ready"; its message may carry a host or data)
            return f"failed: {type(exc).__name__}"
        return "ok"


def router(readiness: Readiness) -> APIRouter:
    """GET /healthz and GET /readyz: no token needed, no patient data, outside the OpenAPI document.
    `/readyz?exclude=database` leaves a check out of the verdict (as Kubernetes' own /readyz does):
    the hub's Service probe, since MLLP intake needs only Kafka while the database is away."""
    routes = APIRouter()

    @routes.get("/healthz", include_in_schema=False)
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @routes.get("/readyz", include_in_schema=False)
    async def readyz(exclude: Annotated[list[str], Query()] = []) -> JSONResponse:  # noqa: B006 (FastAPI copies it)
        checks = await readiness.answer()  # (all of them shown; the excluded ones only as information)
        ready = all(said == "ok" for name, said in checks.items() if name not in exclude)
        body = {"status": "ready" if ready else "not ready", "checks": checks}
        return JSONResponse(body, status_code=200 if ready else 503)

    return routes
