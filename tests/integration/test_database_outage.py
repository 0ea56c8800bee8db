"""The record's PostgreSQL unreachable for 10 seconds, for real (a TCP proxy in front of it drops
every connection and refuses new ones): the hub keeps answering AA (Kafka holds the events), reads
answer 503, the consumer pauses and retries, and once the database is back every event is applied
exactly once."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa

from adapters.hl7v2.transport import MllpClient
from hub.api.auth import issue_token
from hub.bootstrap import build, running
from hub.kafka import free_port
from hub.settings import HttpSettings, KafkaSettings, MllpSettings, SecuritySettings, Settings
from tests.builders import a_valid_nhs_number, an_adt, an_agreement

pytestmark = [pytest.mark.kafka, pytest.mark.postgres, pytest.mark.timeout(180)]


class Outage:
    """A TCP proxy to PostgreSQL that can be cut (connections dropped, new ones refused) and restored."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream = upstream_port
        self.port = free_port()
        self.server: asyncio.Server | None = None
        self.links: set[asyncio.StreamWriter] = set()

    async def up(self) -> None:
        self.server = await asyncio.start_server(self._link, "127.0.0.1", self.port)

    async def down(self) -> None:
        assert self.server
        self.server.close()
        await self.server.wait_closed()
        for writer in list(self.links):
            writer.transport.abort()
        self.links.clear()

    async def _link(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream)
        except OSError:
            writer.transport.abort()
            return
        self.links |= {writer, up_writer}

        async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError, asyncio.IncompleteReadError):
                while chunk := await source.read(65536):
                    sink.write(chunk)
                    await sink.drain()
            sink.transport.abort()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))


async def test_ten_seconds_without_the_database_loses_nothing(tmp_path: Path, postgres_url: str) -> None:
    outage = Outage(5432)
    await outage.up()
    via_proxy = postgres_url.replace("127.0.0.1:5432", f"127.0.0.1:{outage.port}") + "?connect_timeout=2"
    settings = Settings(
        data_dir=tmp_path,
        database_url=via_proxy,
        security=SecuritySettings(key_secret="outage-key", token_secret="outage-token-secret-at-least-32-bytes-long"),  # type: ignore[arg-type]
        kafka=KafkaSettings(group_id=f"t{uuid.uuid4().hex[:8]}-record"),
        mllp=MllpSettings(port=0),
        http=HttpSettings(port=0),
    )
    services = await asyncio.to_thread(build, settings)  # the proxy runs on this loop: never block it
    await asyncio.to_thread(services.agreements.load, an_agreement("RXX", "Y00001"), at=datetime.now(UTC))
    numbers = [a_valid_nhs_number() for _ in range(30)]
    async with running(settings, services=services) as run:
        client = await MllpClient.connect("127.0.0.1", run.mllp_port or 0)
        token = issue_token(services.secrets.token, org="Y00001", role="clinician", now=datetime.now(UTC))
        base = f"http://127.0.0.1:{run.http_port}/fhir"
        sent = 0

        async def send(batch: list[str]) -> None:
            nonlocal sent
            for number in batch:
                ack = await client.send(
                    an_adt(trigger="A03", nhs_number=number, control_id=f"O{sent}", visit=f"V{sent}")
                )
                assert b"MSA|AA" in ack
                sent += 1

        await send(numbers[:10])
        assert await run.caught_up(10, timeout=60)
        await outage.down()
        cut = time.monotonic()
        await send(numbers[10:20])  # Kafka keeps them; the hospital is told AA
        async with httpx.AsyncClient(base_url=base, timeout=10) as http:
            during = await http.get(
                f"/Patient?identifier=https://fhir.nhs.uk/Id/nhs-number|{numbers[0]}",
                headers={"Authorization": f"Bearer {token}"},
            )
        assert during.status_code == 503
        assert during.json()["resourceType"] == "OperationOutcome"
        await asyncio.sleep(max(0.0, 10 - (time.monotonic() - cut)))
        assert run.seen == 10  # paused, not skipping
        await outage.up()
        await send(numbers[20:])
        assert await run.caught_up(30, timeout=60)
        await client.close()
    engine = sa.create_engine(postgres_url)
    with engine.connect() as conn:
        processed = conn.execute(sa.text("select count(*) from processed_event where consumer = 'record'")).scalar_one()
        finished = conn.execute(
            sa.text(
                "select count(*) from record_resource"
                " where resource_type = 'Encounter' and content->>'status' = 'finished'"
            )
        ).scalar_one()
        versions = conn.execute(
            sa.text("select max(version_id) from record_resource where resource_type = 'Encounter'")
        ).scalar_one()
    engine.dispose()
    assert processed == 30
    assert finished == 30
    assert versions == 1
    await outage.down()
