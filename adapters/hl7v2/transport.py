"""MLLP framing over TCP (python-hl7's asyncio reader and writer); the wire protocol only.

One frame in, one ACK frame out, in order, per connection. A frame over the size limit or
without a start block is answered by the handler's `reject` reply and the connection closed,
because the framing can no longer be trusted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from hl7.mllp import (
    HL7StreamReader,
    HL7StreamWriter,
    InvalidBlockError,
    open_hl7_connection,
    start_hl7_server,
)

log = logging.getLogger(__name__)

Receive = Callable[[bytes, str], Awaitable[bytes]]
Refuse = Callable[[str], bytes]


async def serve(receive: Receive, refuse: Refuse, host: str, port: int, *, limit: int) -> asyncio.Server:
    """Listen for MLLP; `receive(frame, origin)` returns the ACK, `refuse(reason)` answers a bad frame."""

    async def on_connection(reader: HL7StreamReader, writer: HL7StreamWriter) -> None:
        peer = writer.get_extra_info("peername") or ("?", 0)
        origin = f"mllp:{peer[0]}:{peer[1]}"
        try:
            await _converse(reader, writer, receive, refuse, origin)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    server: asyncio.Server = await start_hl7_server(on_connection, host, port, limit=limit)
    return server


async def _converse(
    reader: HL7StreamReader,
    writer: HL7StreamWriter,
    receive: Receive,
    refuse: Refuse,
    origin: str,
) -> None:
    while not reader.at_eof():
        try:
            frame = await reader.readblock()
        except asyncio.IncompleteReadError:
            return
        except ValueError:
            writer.writeblock(refuse(f"frame exceeds the {reader._limit} byte limit"))
            await writer.drain()
            return
        except InvalidBlockError:
            writer.writeblock(refuse("frame does not begin with the MLLP start block (0x0B)"))
            await writer.drain()
            return
        writer.writeblock(await receive(frame, origin))
        await writer.drain()


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
