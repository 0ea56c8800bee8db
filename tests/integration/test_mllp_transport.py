"""MLLP over real sockets: framing, pipelined frames, oversized and broken frames never kill the listener."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest

from adapters.hl7v2.message import read_header
from adapters.hl7v2.transport import MllpClient, serve
from tests.builders import an_adt

VT, FS, CR = b"\x0b", b"\x1c", b"\r"
LIMIT = 64 * 1024
pytestmark = pytest.mark.timeout(30)


@dataclass
class Echo:
    """A trivial receive callback: records each frame and answers `ACK <control id>`."""

    frames: list[bytes] = field(default_factory=list)
    origins: list[str] = field(default_factory=list)
    refusals: list[str] = field(default_factory=list)

    async def receive(self, frame: bytes, origin: str) -> bytes:
        self.frames.append(frame)
        self.origins.append(origin)
        header = read_header(frame)
        return b"ACK " + (header.control_id.encode() if header else b"?")

    def refuse(self, reason: str) -> bytes:
        self.refusals.append(reason)
        return b"REFUSED " + reason.encode()


@dataclass
class Listener:
    echo: Echo
    port: int


@pytest.fixture
async def listener() -> AsyncIterator[Listener]:
    echo = Echo()
    server = await serve(echo.receive, echo.refuse, "127.0.0.1", 0, limit=LIMIT)
    try:
        yield Listener(echo, server.sockets[0].getsockname()[1])
    finally:
        server.close()
        await server.wait_closed()


async def raw_connection(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", port)


async def read_frame(reader: asyncio.StreamReader) -> bytes:
    return await asyncio.wait_for(reader.readuntil(FS + CR), 5)


async def close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(ConnectionError):
        await writer.wait_closed()


async def still_serves(port: int, control_id: str = "ALIVE") -> None:
    client = await MllpClient.connect("127.0.0.1", port)
    try:
        reply = await asyncio.wait_for(client.send(an_adt(control_id=control_id)), 5)
    finally:
        await client.close()
    assert reply == b"ACK " + control_id.encode()


async def test_a_frame_is_vt_message_fs_cr_and_the_ack_comes_back_framed(listener: Listener) -> None:
    message = an_adt(control_id="F1")
    reader, writer = await raw_connection(listener.port)
    writer.write(VT + message + FS + CR)
    await writer.drain()
    assert await read_frame(reader) == VT + b"ACK F1" + FS + CR
    await close(writer)
    assert listener.echo.frames == [message]  # framing bytes removed, the message untouched
    assert listener.echo.origins[0].startswith("mllp:127.0.0.1:")


async def test_the_client_sends_and_receives_in_order_on_one_connection(listener: Listener) -> None:
    client = await MllpClient.connect("127.0.0.1", listener.port)
    try:
        replies = [await client.send(an_adt(control_id=f"C{i}")) for i in range(5)]
    finally:
        await client.close()
    assert replies == [f"ACK C{i}".encode() for i in range(5)]
    assert len(listener.echo.frames) == 5


async def test_two_frames_in_one_tcp_write_each_get_an_ack_in_order(listener: Listener) -> None:
    reader, writer = await raw_connection(listener.port)
    writer.write(VT + an_adt(control_id="P1") + FS + CR + VT + an_adt(control_id="P2") + FS + CR)
    await writer.drain()
    assert await read_frame(reader) == VT + b"ACK P1" + FS + CR
    assert await read_frame(reader) == VT + b"ACK P2" + FS + CR
    await close(writer)
    assert [read_header(f).control_id for f in listener.echo.frames] == ["P1", "P2"]  # type: ignore[union-attr]


async def test_a_frame_split_over_many_writes_is_reassembled(listener: Listener) -> None:
    message = an_adt(control_id="SPLIT")
    data = VT + message + FS + CR
    reader, writer = await raw_connection(listener.port)
    for i in range(0, len(data), 7):
        writer.write(data[i : i + 7])
        await writer.drain()
        await asyncio.sleep(0)
    assert await read_frame(reader) == VT + b"ACK SPLIT" + FS + CR
    await close(writer)
    assert listener.echo.frames == [message]


async def test_a_frame_just_under_the_limit_is_accepted(listener: Listener) -> None:
    message = an_adt(control_id="BIG", family="X" * (LIMIT - 1000))
    assert len(message) < LIMIT
    client = await MllpClient.connect("127.0.0.1", listener.port)
    try:
        assert await client.send(message) == b"ACK BIG"
    finally:
        await client.close()


async def test_a_frame_over_the_limit_is_refused_and_the_server_keeps_serving(listener: Listener) -> None:
    reader, writer = await raw_connection(listener.port)
    writer.write(VT + an_adt(control_id="HUGE", family="X" * (LIMIT + 10)) + FS + CR)
    await writer.drain()
    reply = await read_frame(reader)
    assert reply.startswith(VT + b"REFUSED frame exceeds the 65536 byte limit")
    assert await asyncio.wait_for(reader.read(), 5) == b""  # then the connection is closed
    await close(writer)
    assert listener.echo.frames == []
    assert listener.echo.refusals == ["frame exceeds the 65536 byte limit"]
    await still_serves(listener.port)


async def test_a_stream_far_over_the_limit_without_an_end_block_does_not_kill_the_server(
    listener: Listener,
) -> None:
    reader, writer = await raw_connection(listener.port)
    with contextlib.suppress(ConnectionError):
        for _ in range(16):
            writer.write(VT + b"X" * LIMIT)
            await writer.drain()
    with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
        reply = await read_frame(reader)
        assert b"REFUSED" in reply
    await close(writer)
    assert listener.echo.frames == []
    await still_serves(listener.port)


async def test_a_frame_without_a_start_block_is_refused_and_the_connection_closed(listener: Listener) -> None:
    reader, writer = await raw_connection(listener.port)
    writer.write(an_adt(control_id="NOVT") + FS + CR)
    await writer.drain()
    reply = await read_frame(reader)
    assert reply == VT + b"REFUSED frame does not begin with the MLLP start block (0x0B)" + FS + CR
    assert await asyncio.wait_for(reader.read(), 5) == b""
    await close(writer)
    assert listener.echo.frames == []
    await still_serves(listener.port)


async def test_a_client_that_disconnects_mid_frame_does_not_kill_the_server(listener: Listener) -> None:
    _, writer = await raw_connection(listener.port)
    writer.write(VT + an_adt(control_id="HALF")[:60])
    await writer.drain()
    await close(writer)
    await asyncio.sleep(0.05)
    assert listener.echo.frames == []
    await still_serves(listener.port)


async def test_a_client_that_resets_mid_frame_does_not_kill_the_server(listener: Listener) -> None:
    _, writer = await raw_connection(listener.port)
    writer.write(VT + an_adt(control_id="RST")[:60])
    await writer.drain()
    writer.transport.abort()  # RST rather than FIN
    await asyncio.sleep(0.05)
    await still_serves(listener.port)


async def test_a_client_that_leaves_before_reading_its_ack_does_not_kill_the_server(listener: Listener) -> None:
    _, writer = await raw_connection(listener.port)
    writer.write(VT + an_adt(control_id="GONE") + FS + CR)
    await writer.drain()
    writer.transport.abort()
    await asyncio.sleep(0.05)
    await still_serves(listener.port)


async def test_many_clients_at_once_each_get_their_own_acks(listener: Listener) -> None:
    async def one(n: int) -> list[bytes]:
        client = await MllpClient.connect("127.0.0.1", listener.port)
        try:
            return [await client.send(an_adt(control_id=f"K{n}-{i}")) for i in range(3)]
        finally:
            await client.close()

    results = await asyncio.gather(*(one(n) for n in range(10)))
    assert results == [[f"ACK K{n}-{i}".encode() for i in range(3)] for n in range(10)]
