"""MLLP over real sockets: framing, pipelined frames, oversized and broken frames never kill the listener
and are answered, with what was read of them handed to `refuse`."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest

from adapters.hl7v2 import transport
from adapters.hl7v2.message import read_header
from adapters.hl7v2.transport import DRAIN_FACTOR, HEAD_BYTES, MllpClient, RefusedFrame, serve
from tests.builders import an_adt

VT, FS, CR = b"\x0b", b"\x1c", b"\r"
LIMIT = 64 * 1024
IDLE = 2.0  # (the client and the listener share one loop: a loaded runner may stall it for part of a second)
pytestmark = pytest.mark.timeout(30)


@dataclass
class Echo:
    """A trivial receive callback: records each frame and answers `ACK <control id>`."""

    frames: list[bytes] = field(default_factory=list)
    origins: list[str] = field(default_factory=list)
    refusals: list[RefusedFrame] = field(default_factory=list)

    async def receive(self, frame: bytes, origin: str) -> list[bytes]:
        self.frames.append(frame)
        self.origins.append(origin)
        header = read_header(frame)
        return [b"ACK " + (header.control_id.encode() if header else b"?")]

    async def refuse(self, frame: RefusedFrame) -> list[bytes]:
        self.refusals.append(frame)
        return [b"REFUSED " + frame.reason.encode()]


@dataclass
class Listener:
    echo: Echo
    port: int


@pytest.fixture
async def listener() -> AsyncIterator[Listener]:
    echo = Echo()
    server = await serve(echo.receive, echo.refuse, "127.0.0.1", 0, limit=LIMIT, idle=IDLE)
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


async def test_a_frame_over_the_limit_is_read_to_its_end_refused_with_its_size_and_the_connection_goes_on(
    listener: Listener,
) -> None:
    message = an_adt(control_id="HUGE", family="X" * (LIMIT * 3))
    reader, writer = await raw_connection(listener.port)
    writer.write(VT + message + FS + CR + VT + an_adt(control_id="NEXT") + FS + CR)
    await writer.drain()
    reason = f"frame of {len(message):,} bytes exceeds the 65,536 byte limit"
    assert await read_frame(reader) == VT + b"REFUSED " + reason.encode() + FS + CR
    assert await read_frame(reader) == VT + b"ACK NEXT" + FS + CR  # the framing held: the next frame is read
    await close(writer)
    [refused] = listener.echo.refusals
    assert (refused.size, refused.oversize, refused.ended) == (len(message), True, True)
    assert refused.head == message[:HEAD_BYTES]
    assert [read_header(f).control_id for f in listener.echo.frames] == ["NEXT"]  # type: ignore[union-attr]
    await still_serves(listener.port)


async def test_a_stream_over_the_limit_that_stops_without_an_end_block_is_refused_and_the_connection_closed(
    listener: Listener,
) -> None:
    reader, writer = await raw_connection(listener.port)
    with contextlib.suppress(ConnectionError):
        for _ in range(16):
            writer.write(VT + b"X" * LIMIT)
            await writer.drain()
    said = "frame exceeds the 65,536 byte limit and had no end block (0x1C 0x0D)"
    said += f" when nothing came for {IDLE:g} seconds"
    assert await read_frame(reader) == VT + b"REFUSED " + said.encode() + FS + CR
    assert await asyncio.wait_for(reader.read(), 5) == b""
    await close(writer)
    [refused] = listener.echo.refusals
    assert (refused.size, len(refused.head), refused.ended) == (16 * (LIMIT + 1) - 1, HEAD_BYTES, False)
    assert refused.head == b"X" * HEAD_BYTES  # the start block is not part of it
    assert listener.echo.frames == []
    await still_serves(listener.port)


async def test_a_stream_that_never_ends_is_refused_after_drain_factor_times_the_limit_and_the_sender_reads_why(
    listener: Listener,
) -> None:
    reader, writer = await raw_connection(listener.port)

    async def flood() -> None:
        with contextlib.suppress(ConnectionError):
            writer.write(VT)
            for _ in range(DRAIN_FACTOR * 2):
                writer.write(b"X" * LIMIT)
                await writer.drain()

    sending = asyncio.create_task(flood())
    reply = await read_frame(reader)
    assert reply.startswith(VT + b"REFUSED frame exceeds the 65,536 byte limit and had no end block (0x1C 0x0D) when ")
    assert reply.endswith(b" bytes were read" + FS + CR)
    assert await asyncio.wait_for(reader.read(), 10) == b""  # then the listener closes (no reset before the answer)
    sending.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await sending
    await close(writer)
    [refused] = listener.echo.refusals
    assert DRAIN_FACTOR * LIMIT < refused.size <= (DRAIN_FACTOR + 8) * LIMIT  # the last piece: a buffer or two
    await still_serves(listener.port)


async def test_a_frame_without_a_start_block_is_refused_whole_and_the_connection_closed(listener: Listener) -> None:
    message = an_adt(control_id="NOVT")
    reader, writer = await raw_connection(listener.port)
    writer.write(message + FS + CR)
    await writer.drain()
    reply = await read_frame(reader)
    assert reply == VT + b"REFUSED frame does not begin with the MLLP start block (0x0B)" + FS + CR
    assert await asyncio.wait_for(reader.read(), 5) == b""
    await close(writer)
    assert listener.echo.frames == []
    [refused] = listener.echo.refusals
    assert (refused.head, refused.size, refused.oversize) == (message, len(message), False)
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


async def test_a_connection_past_the_most_allowed_is_closed_unread_and_those_open_go_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    echo = Echo()
    server = await serve(echo.receive, echo.refuse, "127.0.0.1", 0, limit=LIMIT, idle=IDLE, connections=2)
    port = server.sockets[0].getsockname()[1]
    try:
        first, second = await MllpClient.connect("127.0.0.1", port), await MllpClient.connect("127.0.0.1", port)
        assert await asyncio.wait_for(first.send(an_adt(control_id="ONE")), 5) == b"ACK ONE"  # (both taken by now)
        reader, writer = await raw_connection(port)
        writer.write(VT + an_adt(control_id="THIRD") + FS + CR)
        try:  # closed, unanswered (reset, as it had sent a frame the listener did not read)
            assert await asyncio.wait_for(reader.read(), 5) == b""
        except ConnectionResetError:
            pass
        await close(writer)
        assert "closed: 2 are open, the most this listener takes" in caplog.text

        assert await asyncio.wait_for(second.send(an_adt(control_id="TWO")), 5) == b"ACK TWO"
        await first.close()
        await asyncio.sleep(0.2)  # (the listener sees it go)
        await still_serves(port)  # a place free again
        await second.close()
    finally:
        server.close()
        await server.wait_closed()


async def test_one_address_holds_at_most_its_share_and_refusals_are_said_once_a_minute(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # (review: one sender leaking connections took every place, and each refusal was a WARNING)
    echo = Echo()
    server = await serve(echo.receive, echo.refuse, "127.0.0.1", 0, limit=LIMIT, idle=IDLE, connections=10, per_host=2)
    port = server.sockets[0].getsockname()[1]
    try:
        held = [await raw_connection(port) for _ in range(2)]
        await asyncio.sleep(0.1)
        for _ in range(3):
            reader, writer = await raw_connection(port)
            assert await asyncio.wait_for(reader.read(), 5) == b""  # closed, unread
            await close(writer)
        said = [r.getMessage() for r in caplog.records if "closed: 2 are open from it" in r.getMessage()]
        assert len(said) == 1, said  # once, not three times
        for _, writer in held:
            await close(writer)
        await asyncio.sleep(0.2)
        await still_serves(port)
    finally:
        server.close()
        await server.wait_closed()


async def test_a_connection_quiet_for_quiet_seconds_is_closed_and_its_place_freed() -> None:
    echo = Echo()
    server = await serve(echo.receive, echo.refuse, "127.0.0.1", 0, limit=LIMIT, idle=IDLE, connections=1, quiet=0.5)
    port = server.sockets[0].getsockname()[1]
    try:
        reader, writer = await raw_connection(port)
        writer.write(VT + b"MSH|^~\\&|half a frame")  # then nothing more
        assert await asyncio.wait_for(reader.read(), 5) == b""  # closed by the listener
        await close(writer)
        await still_serves(port)  # the one place free again; a frame within the time is answered
    finally:
        server.close()
        await server.wait_closed()


def test_refusals_from_a_flood_of_addresses_are_said_a_few_times_a_minute_and_forgotten(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    # (review: one WARNING an address, kept for ever: a flood from many addresses was a flood of lines)
    now = [1000.0]
    monkeypatch.setattr(transport.time, "monotonic", lambda: now[0])
    refusals = transport._Refusals()
    for n in range(500):
        refusals.say(f"10.0.{n // 256}.{n % 256}", f"mllp:10.0.0.{n}:1", "full")
    assert len(caplog.records) == transport._Refusals.MOST_A_MINUTE
    now[0] += 61
    refusals.say("10.9.9.9", "mllp:10.9.9.9:1", "full")
    assert "480 more connections closed" in caplog.records[-2].getMessage()
    assert len(refusals._said) == 1  # the minute's addresses forgotten


def test_an_accepted_connection_is_kept_alive_so_a_silently_dropped_sender_frees_its_place() -> None:
    with socket.socket() as sock:
        transport._keep_alive(sock)
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
        if hasattr(socket, "TCP_KEEPIDLE"):
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == transport.KEEPALIVE_S
