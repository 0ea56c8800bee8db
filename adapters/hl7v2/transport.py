"""MLLP framing over TCP (python-hl7's asyncio server, reader and writer); the wire protocol only.

One frame in, its ACK frame out, in order, per connection (in enhanced mode none, one or two: the
frames the handler returns). Frames are read with the reader's bounded
`readuntil`, the call python-hl7's `readblock` makes, because `readblock` throws away what it read of
a frame it refuses: here `refuse` gets a refused frame's first bytes, to dead-letter them and answer
the sender's control ID.

A frame over the size limit is read on to its end block, keeping only its first HEAD_BYTES and a
running SHA-256 of the whole (memory stays at a few times the limit whatever the frame's size), then
refused; its framing is intact, so the connection goes on. Bytes before a frame's start block belong
to no frame and are skipped, so the frame after them is answered as any other: a sender's trailer
(frames ending 1C 0D 0A), CR LF or padding is logged at DEBUG, anything else at WARNING, both by count
alone. A frame without a start block (an end block with none before it), or an over-size one with no
end block within DRAIN_FACTOR times the limit or before the sender goes quiet for `idle` seconds, is
refused and the connection closed, because the framing can no longer be trusted. Before closing, the
listener stops writing and drops what still arrives for up to LINGER_S: a socket closed with unread
bytes sends a reset, which can destroy the answer before the sender has read it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import socket
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from hl7.mllp import HL7StreamReader, HL7StreamWriter, open_hl7_connection, start_hl7_server

log = logging.getLogger(__name__)

START_BLOCK = b"\x0b"
END_BLOCK = b"\x1c\x0d"
HEAD_BYTES = 64 * 1024  # enough for MSH, EVN, PID and PV1 of any real ADT
DRAIN_FACTOR = 64
LINGER_S = 2.0
KEEPALIVE_S = 120  # idle seconds before TCP keepalive probes a connection (see _keep_alive)
BETWEEN_FRAMES = b" \t\r\n"  # a trailer after an end block (1C 0D 0A, CR LF), padding: skipped quietly


@dataclass(frozen=True)
class RefusedFrame:
    """A frame the transport would not take: why, its first bytes (start block removed), its size,
    where it came from, whether it was over the size limit and whether its end block was read, and the
    SHA-256 of the whole of it (hex), which names it where only its head is kept."""

    reason: str
    head: bytes
    size: int
    origin: str
    oversize: bool
    ended: bool
    digest: str


Receive = Callable[[bytes, str], Awaitable[Sequence[bytes]]]  # the ACK frames to write, in order (none: no answer)
Refuse = Callable[[RefusedFrame], Awaitable[Sequence[bytes]]]


async def serve(
    receive: Receive,
    refuse: Refuse,
    host: str,
    port: int,
    *,
    limit: int,
    idle: float = 10.0,
    connections: int = 0,
    per_host: int = 0,
    quiet: float = 0.0,
) -> asyncio.Server:
    """Listen for MLLP; `receive(frame, origin)` returns the ACK, `refuse(frame)` answers a bad frame.

    At most `connections` at once, and `per_host` from one address (0: no limit): one more is closed
    at once, unread, and said at WARNING (once a minute an address, with how many since), so that a
    sender that opens connections and never closes them, or a flood of them, cannot take every file
    descriptor the hub has, nor, from one address, every place the others need. `quiet` (seconds, 0:
    never) closes a connection that sends no complete frame for that long, between frames or in the
    middle of one: a place held by a sender that has gone silent is freed."""
    open_now = 0
    by_host: dict[str, int] = {}
    refusals = _Refusals()

    async def on_connection(reader: HL7StreamReader, writer: HL7StreamWriter) -> None:
        nonlocal open_now
        peer = writer.get_extra_info("peername") or ("?", 0)
        address, origin = str(peer[0]), f"mllp:{peer[0]}:{peer[1]}"
        full = ""
        if connections and open_now >= connections:
            full = f"{open_now} are open, the most this listener takes (mllp.max_connections)"
        elif per_host and by_host.get(address, 0) >= per_host:
            full = f"{by_host[address]} are open from it, the most one address holds (mllp.max_connections_per_host)"
        if full:
            refusals.say(address, origin, full)
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
            return
        open_now += 1
        by_host[address] = by_host.get(address, 0) + 1
        _keep_alive(writer.get_extra_info("socket"))
        try:
            await _converse(reader, writer, receive, refuse, _Framing(origin, limit, idle, quiet))
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            open_now -= 1
            by_host[address] -= 1
            if not by_host[address]:
                del by_host[address]
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    server: asyncio.Server = await start_hl7_server(on_connection, host, port, limit=limit)
    return server


def _keep_alive(sock: socket.socket | None) -> None:
    """TCP keepalive on an accepted connection (first probe after KEEPALIVE_S idle, then every 10 s,
    6 unanswered closing it): a sender whose host or NAT dropped the connection without a word, as
    firewalls do to idle ones, frees its place within a few minutes rather than holding it for ever."""
    if sock is None:
        return
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        for option, value in (("TCP_KEEPIDLE", KEEPALIVE_S), ("TCP_KEEPINTVL", 10), ("TCP_KEEPCNT", 6)):
            if hasattr(socket, option):  # (Linux; elsewhere the system's defaults)
                sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, option), value)


class _Refusals:
    """Connections closed for want of a place, said at WARNING at most once a minute an address and
    MOST_A_MINUTE times a minute in all (a flood from many addresses), the rest counted; addresses
    not heard from for a minute are forgotten."""

    EVERY_S = 60.0
    MOST_A_MINUTE = 20

    def __init__(self) -> None:
        self._said: dict[str, tuple[float, int]] = {}  # address: (when last said, closed since)
        self._minute, self._in_minute, self._unsaid = 0.0, 0, 0

    def say(self, address: str, origin: str, why: str) -> None:
        now = time.monotonic()
        if now - self._minute >= self.EVERY_S:
            if self._unsaid:
                log.warning("MLLP: %d more connections closed for want of a place, not each said", self._unsaid)
            self._minute, self._in_minute, self._unsaid = now, 0, 0
            self._said = {a: said for a, said in self._said.items() if now - said[0] < self.EVERY_S}
        last, since = self._said.get(address, (-self.EVERY_S, 0))
        if now - last < self.EVERY_S or self._in_minute >= self.MOST_A_MINUTE:
            self._said[address] = (last, since + 1)
            self._unsaid += 1
            return
        more = f" ({since} more from this address closed in the last minute)" if since else ""
        log.warning("MLLP connection from %s closed: %s%s", origin, why, more)
        self._said[address] = (now, 0)
        self._in_minute += 1


@dataclass(frozen=True)
class _Framing:
    """One connection's reading rules: where it comes from, the size limit, how long a stall may last."""

    origin: str
    limit: int
    idle: float
    quiet: float = 0.0  # seconds without a complete frame before the connection is closed (0: never)


async def _converse(
    reader: HL7StreamReader, writer: HL7StreamWriter, receive: Receive, refuse: Refuse, framing: _Framing
) -> None:
    while (frame := await _read_frame(reader, framing)) is not None:
        if isinstance(frame, bytes):
            await _answer(writer, await receive(frame, framing.origin))
            continue
        log.warning("frame from %s refused: %s", framing.origin, frame.reason)
        await _answer(writer, await refuse(frame))
        if not (frame.oversize and frame.ended):
            await _linger(reader, writer)
            return


async def _answer(writer: HL7StreamWriter, replies: Sequence[bytes]) -> None:
    """Write the ACKs, if any (in enhanced mode a sender may ask for none, or for two)."""
    for reply in replies:
        writer.writeblock(reply)
    if replies:
        await writer.drain()


async def _read_frame(reader: HL7StreamReader, framing: _Framing) -> bytes | RefusedFrame | None:
    """The next frame's message, a refused frame, or None when the sender has gone."""
    try:
        if framing.quiet:
            block: bytes = await asyncio.wait_for(reader.readuntil(END_BLOCK), framing.quiet)
        else:
            block = await reader.readuntil(END_BLOCK)
    except asyncio.IncompleteReadError:
        return None  # gone between frames or mid-frame: there is no one to answer
    except TimeoutError:
        log.info("MLLP connection from %s closed: no complete frame for %g seconds", framing.origin, framing.quiet)
        return None
    except asyncio.LimitOverrunError:
        return await _oversize(reader, framing)
    # the last start block: before it, whatever came between frames, a frame cut off (the sender dropped
    # mid-frame and began again) included, which must never be taken as the start of this one
    stray, start, message = block[: -len(END_BLOCK)].rpartition(START_BLOCK)
    if not start:  # (`message` is then the whole frame)
        reason = "frame does not begin with the MLLP start block (0x0B)"
        digest = hashlib.sha256(message).hexdigest()
        return RefusedFrame(reason, message[:HEAD_BYTES], len(message), framing.origin, False, True, digest)
    _skipped(stray, framing.origin)
    return message


def _skipped(stray: bytes, origin: str) -> None:
    """Log bytes that came before a start block, by count: never their content, which may be patient data."""
    if not stray:
        return
    where = "before an MLLP start block (0x0B)"
    if stray.strip(BETWEEN_FRAMES):
        log.warning(
            "skipped %d bytes from %s %s: not whitespace, so the sender's framing is suspect", len(stray), origin, where
        )
    else:
        log.debug("skipped %d bytes of whitespace from %s %s", len(stray), origin, where)


async def _oversize(reader: HL7StreamReader, framing: _Framing) -> RefusedFrame:
    """Read the rest of a frame over the limit in bounded pieces, keeping its first HEAD_BYTES and
    hashing the whole (from where the head shows it starts, once the head is full: see _frame_start)."""
    head, size, ended, stop = bytearray(), 0, False, ""
    whole: Any = None  # hashlib's running SHA-256
    while not stop:
        try:
            piece = (await asyncio.wait_for(reader.readuntil(END_BLOCK), framing.idle))[: -len(END_BLOCK)]
            ended, stop = True, "ended"
        except asyncio.LimitOverrunError as over:  # no end block yet: take all but the last byte,
            piece = await reader.readexactly(over.consumed)  # which may begin one
        except asyncio.IncompleteReadError as gone:
            piece, stop = gone.partial, "the connection closed"
        except TimeoutError:  # take what came before the silence: at least the byte left above, so no wait
            piece = await reader.read(2 * framing.limit)
            stop = f"nothing came for {framing.idle:g} seconds"
        room = max(HEAD_BYTES + 1 - len(head), 0)
        head += piece[:room]
        if whole is not None:
            whole.update(piece)
        elif len(head) > HEAD_BYTES:  # (the head no longer changes, nor so where the frame starts)
            whole = hashlib.sha256(head[_frame_start(head) :])
            whole.update(piece[room:])
        size += len(piece)
        if not stop and size > DRAIN_FACTOR * framing.limit:
            stop = f"{size:,} bytes were read"
    start = _frame_start(head)
    _skipped(bytes(head[: max(start - 1, 0)]), framing.origin)
    size -= start
    if ended:
        reason = f"frame of {size:,} bytes exceeds the {framing.limit:,} byte limit"
    else:
        reason = f"frame exceeds the {framing.limit:,} byte limit and had no end block (0x1C 0x0D) when {stop}"
    kept = bytes(head[start : start + HEAD_BYTES])
    digest = (whole or hashlib.sha256(head[start:])).hexdigest()
    return RefusedFrame(reason, kept, size, framing.origin, oversize=True, ended=ended, digest=digest)


def _frame_start(head: bytearray) -> int:
    """Where a frame begins in what was read of it: after its last start block, since whatever came
    before belongs to no frame (see _read_frame); at 0 when no start block was read."""
    return head.rfind(START_BLOCK) + 1


async def _linger(reader: HL7StreamReader, writer: HL7StreamWriter) -> None:
    """Stop writing, then drop what the sender still sends, for up to LINGER_S, before closing."""
    with contextlib.suppress(OSError, TimeoutError):
        writer.write_eof()
        async with asyncio.timeout(LINGER_S):
            while await reader.read(HEAD_BYTES):
                pass


class MllpClient:
    """A sending system's side of MLLP: one frame out, wait for its ACK (used by demo and tests)."""

    def __init__(self, reader: HL7StreamReader, writer: HL7StreamWriter) -> None:
        self._reader = reader
        self._writer = writer

    @classmethod
    async def connect(cls, host: str, port: int) -> MllpClient:
        """Open a connection to an MLLP listener."""
        reader, writer = await open_hl7_connection(host, port, limit=16 * 1024 * 1024)
        return cls(reader, writer)

    async def send(self, message: bytes) -> bytes:
        """Send one message and return the ACK frame's bytes."""
        self._writer.writeblock(message)
        await self._writer.drain()
        return bytes(await self._reader.readblock())

    async def close(self) -> None:
        """Close the connection."""
        self._writer.close()
        with contextlib.suppress(ConnectionError):
            await self._writer.wait_closed()
