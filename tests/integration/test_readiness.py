"""/readyz answers whether the database and Kafka answer (200, or 503 naming what failed), cached
briefly; /healthz stays a liveness probe that answers whatever the dependencies do."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Mapping
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa
from fastapi import FastAPI

from consumers.app import build_broker
from hub.api.app import create_app
from hub.api.auth import TokenVerifier
from hub.api.health import Check, Readiness, database_answers, kafka_answers
from hub.bootstrap import build, running
from hub.kafka import free_port
from hub.settings import HttpSettings, KafkaSettings, MllpSettings, Settings
from hub.store.sql import SqlRecordReader
from tests.conftest import TansuProcess

pytestmark = pytest.mark.timeout(120)
SECRET = b"readiness-test-secret"


def _app(reader: SqlRecordReader, checks: Mapping[str, Check] | None = None) -> FastAPI:
    return create_app(reader, TokenVerifier(SECRET), checks=checks)


async def _get(app: FastAPI, path: str) -> httpx.Response:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://hub") as http:
        return await http.get(path)


async def test_readyz_is_503_naming_the_database_when_it_does_not_answer_and_healthz_stays_200() -> None:
    engine = sa.create_engine(f"postgresql+psycopg://carehub:x@127.0.0.1:{free_port()}/carehub?connect_timeout=1")
    app = _app(SqlRecordReader(engine))  # (no checks given: the reader's database)

    ready = await _get(app, "/readyz")
    assert ready.status_code == 503
    assert ready.json() == {"status": "not ready", "checks": {"database": "failed: OperationalError"}}
    assert "127.0.0.1" not in ready.text and "carehub:x" not in ready.text  # (never the URL)
    assert (await _get(app, "/healthz")).json() == {"status": "ok"}
    # the hub's Service probe leaves the database out (MLLP intake needs only Kafka), still showing it
    probe = await _get(app, "/readyz?exclude=database")
    assert probe.status_code == 200
    assert probe.json() == {"status": "ready", "checks": {"database": "failed: OperationalError"}}


@pytest.mark.kafka
async def test_readyz_is_200_with_sqlite_and_kafka_and_503_naming_kafka_once_it_stops(
    tmp_path: Path, tansu: TansuProcess
) -> None:
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'record.db'}")
    broker = build_broker(tansu.bootstrap)
    await broker.start()
    try:
        app = _app(SqlRecordReader(engine), {"database": database_answers(engine), "kafka": kafka_answers(broker)})
        ready = await _get(app, "/readyz")
        assert ready.status_code == 200, ready.text
        assert ready.json() == {"status": "ready", "checks": {"database": "ok", "kafka": "ok"}}

        tansu.stop()
        await asyncio.sleep(1.6)  # (past the cached answer)
        ready = await _get(app, "/readyz")
        assert ready.status_code == 503, ready.text
        assert ready.json()["checks"]["database"] == "ok"
        assert ready.json()["checks"]["kafka"].startswith("failed")
    finally:
        await broker.stop()


async def test_probes_share_one_cached_answer_and_a_hung_check_is_cut_short() -> None:
    calls = 0

    async def slow() -> None:
        nonlocal calls
        calls += 1
        await asyncio.sleep(10)

    readiness = Readiness({"database": slow}, timeout=0.2, keep=60)
    answers = await asyncio.gather(*(readiness.answer() for _ in range(20)))
    assert calls == 1
    assert answers[0] == {"database": "failed: no answer within 0.2 s"}
    assert await readiness.answer() == answers[0] and calls == 1  # (kept: no load on the database)


@pytest.mark.kafka
async def test_a_running_hub_serves_readyz_over_its_database_and_kafka(tmp_path: Path) -> None:
    settings = Settings(
        data_dir=tmp_path,
        kafka=KafkaSettings(group_id=f"t{uuid.uuid4().hex[:8]}-record"),
        mllp=MllpSettings(port=0),
        http=HttpSettings(port=0),
    )
    services = await asyncio.to_thread(build, settings)
    async with running(settings, services=services, mllp=False, consumers=False) as run:
        http = httpx.AsyncClient(base_url=f"http://127.0.0.1:{run.http_port}")
        ready = await http.get("/readyz")
        await http.aclose()
    assert ready.status_code == 200, ready.text
    assert ready.json() == {"status": "ready", "checks": {"database": "ok", "kafka": "ok"}}
