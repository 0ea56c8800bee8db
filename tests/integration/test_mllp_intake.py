"""HospitalIntake behind a real MLLP socket, a recording broker in Kafka's place: what a sender is told
about a frame the transport refuses, and what of it reaches the dead-letter topic (and so the store)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import tracemalloc
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest

from adapters.hl7v2.service import HospitalIntake
from adapters.hl7v2.transport import serve
from hub.settings import MllpSettings
from schemas.events.rejected import OUTCOME_HEADER
from schemas.topics import DEAD_LETTER, EVENTS
from tests.builders import an_adt
from tests.fakes import RecordingBroker

VT, FS, CR = b"\x0b", b"\x1c", b"\r"
LIMIT = MllpSettings().max_message_bytes  # the production default, 1 MiB
NOW = datetime(2026, 11, 25, 9, 30, tzinfo=UTC)
KEPT = 64 * 1024  # of a frame over the limit, as README says
pytestmark = pytest.mark.timeout(60)


@dataclass
class Hub:
    broker: RecordingBroker
    port: int


@pytest.fixture
async def hub() -> AsyncIterator[Hub]:
    broker = RecordingBroker()
    intake = HospitalIntake(broker, key_secret=b"mllp-intake", clock=lambda: NOW)  # type: ignore[arg-type]
    server = await serve(intake.receive, intake.refuse, "127.0.0.1", 0, limit=LIMIT)
    try:
        yield Hub(broker, server.sockets[0].getsockname()[1])
    finally:
        server.close()
        await server.wait_closed()


def msa_and_err(reply: bytes) -> tuple[list[str], list[str]]:
    lines = {s[:3]: s.split("|") for s in reply.removeprefix(VT).removesuffix(FS + CR).decode().split("\r") if s}
    return lines["MSA"], lines.get("ERR", [])


def issue(headers: dict[str, str]) -> dict[str, Any]:
    found: dict[str, Any] = orjson.loads(headers[OUTCOME_HEADER])["issue"][0]
    return found


async def test_a_20_mb_frame_is_answered_AR_with_its_size_its_first_bytes_dead_lettered_and_the_connection_kept(
    hub: Hub,
) -> None:
    message = an_adt(control_id="BIG20", family="X" * 20_000_000)
    reader, writer = await asyncio.open_connection("127.0.0.1", hub.port)
    writer.write(VT + message + FS + CR + VT + an_adt(control_id="AFTER") + FS + CR)
    await writer.drain()
    refused = await asyncio.wait_for(reader.readuntil(FS + CR), 30)
    after = await asyncio.wait_for(reader.readuntil(FS + CR), 10)
    writer.close()
    msa, err = msa_and_err(refused)
    reason = f"frame of {len(message):,} bytes exceeds the 1,048,576 byte limit; the hub kept its first 65,536 bytes"
    assert msa[1:3] == ["AR", "BIG20"]
    assert err[8] == reason
    assert msa_and_err(after)[0][1:3] == ["AA", "AFTER"]
    [(_, kept, key, headers)] = hub.broker.on(DEAD_LETTER.name)
    assert (kept, key) == (message[:KEPT], b"RXX")
    assert (issue(headers)["code"], issue(headers)["diagnostics"]) == ("too-long", reason)
    assert len(hub.broker.on(EVENTS.name)) == 1  # AFTER's


def send_and_read(port: int, data: bytes) -> bytes:
    """A sender on a blocking socket (so that the bytes it sends are not copied into Python's heap)."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(data)
        reply = b""
        while not reply.endswith(FS + CR):
            reply += sock.recv(4096) or b"?" + FS + CR
    return reply


async def test_reading_a_20_mb_frame_holds_a_few_times_the_limit_in_memory_not_the_frame(hub: Hub) -> None:
    frame = VT + an_adt(control_id="BIG20", family="X" * 20_000_000) + FS + CR
    tracemalloc.start()
    try:
        reply = await asyncio.to_thread(send_and_read, hub.port, frame)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert msa_and_err(reply)[0][1:3] == ["AR", "BIG20"]
    assert peak < 8 * LIMIT, f"peak {peak:,} bytes while reading a {len(frame):,} byte frame"  # about 6 here


async def test_a_frame_without_a_start_block_is_answered_AR_and_dead_lettered_whole(hub: Hub) -> None:
    message = an_adt(control_id="NOVT")
    reader, writer = await asyncio.open_connection("127.0.0.1", hub.port)
    writer.write(message + FS + CR)
    await writer.drain()
    msa, err = msa_and_err(await asyncio.wait_for(reader.readuntil(FS + CR), 5))
    with contextlib.suppress(ConnectionError):
        assert await asyncio.wait_for(reader.read(), 5) == b""  # then closed: the framing is not to be trusted
    writer.close()
    assert msa[1:3] == ["AR", "NOVT"]
    assert err[8] == "frame does not begin with the MLLP start block (0x0B)"
    [(_, kept, _, headers)] = hub.broker.on(DEAD_LETTER.name)
    assert (kept, issue(headers)["code"]) == (message, "structure")
