"""Enhanced acknowledgment mode over a real MLLP socket, for the senders (MSH-4) named in
mllp.enhanced_ack_senders: a message with MSH-15 or MSH-16 valued gets the accept acknowledgment
(CA, CR) where MSH-15's condition (HL7 table 0155) asks for one, then the application acknowledgment
(AA, AE, AR) where MSH-16's does; nothing committed is answered CE whatever they say. Every other
sender is answered AA/AE/AR, whatever MSH-15/16 say (most UK engines send AL|NE and expect AA)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime

import pytest

from adapters.hl7v2.service import HospitalIntake
from adapters.hl7v2.transport import serve
from hub.settings import MllpSettings
from schemas.topics import DEAD_LETTER, EVENTS
from tests.builders import an_adt
from tests.fakes import RecordingBroker

VT, FS, CR = b"\x0b", b"\x1c", b"\r"
NOW = datetime(2026, 11, 25, 9, 30, tzinfo=UTC)
pytestmark = pytest.mark.timeout(60)
Answer = tuple[str, str, str]  # MSA-1, MSA-2, and ERR-3's condition code ("" without ERR)


class DownBroker(RecordingBroker):
    """Kafka unreachable: nothing is taken, not even a dead letter."""

    async def publish(self, value: bytes, topic: str, *, key: bytes, headers: dict[str, str]) -> None:
        raise OSError("connection refused")


def acks(accept: str, application: str, control_id: str, *, bad: bool = False, sender: str = "RXX") -> bytes:
    """an_adt with MSH-15 and MSH-16 as given; `bad`: its NHS number's check digit wrong (AE)."""
    nhs_number = "9434765918" if bad else "9434765919"
    message = an_adt(control_id=control_id, nhs_number=nhs_number, mrn=None if bad else "M100", sender=sender)
    return message.replace(b"|||AL|NE|GBR|", f"|||{accept}|{application}|GBR|".encode(), 1)


def training(accept: str, application: str, control_id: str) -> bytes:
    return acks(accept, application, control_id).replace(b"|P|2.4|", b"|T|2.4|", 1)


@asynccontextmanager
async def hub(broker: RecordingBroker, senders: tuple[str, ...] = ("rxx ",)) -> AsyncIterator[int]:
    listed = MllpSettings(enhanced_ack_senders=senders).enhanced_ack_senders  # (as an operator sets it)
    intake = HospitalIntake(broker, key_secret=b"enhanced", clock=lambda: NOW, enhanced_ack_senders=listed)  # type: ignore[arg-type]
    server = await serve(intake.receive, intake.refuse, "127.0.0.1", 0, limit=1_048_576)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


async def converse(port: int, messages: list[bytes]) -> list[Answer]:
    """Send every message on one connection, then a last plain one (AL|AL) whose CA and AA end the
    conversation: every ACK that came, in order, is then read."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"".join(VT + m + FS + CR for m in [*messages, acks("AL", "AL", "LAST")]))
    await writer.drain()
    got: list[Answer] = []
    try:
        while got[-1:] != [("AA", "LAST", "")]:
            frame = await asyncio.wait_for(reader.readuntil(FS + CR), 10)
            segments = {s[:3]: s.split("|") for s in frame.removeprefix(VT).removesuffix(FS + CR).decode().split("\r")}
            condition = segments["ERR"][3].split("^")[0] if "ERR" in segments else ""
            got.append((segments["MSA"][1], segments["MSA"][2], condition))
    finally:
        writer.close()
    assert got[-2:] == [("CA", "LAST", ""), ("AA", "LAST", "")]
    return got[:-2]


async def test_each_condition_of_msh_15_and_16_is_honoured_in_order_on_one_connection() -> None:
    broker = RecordingBroker()
    async with hub(broker) as port:
        got = await converse(
            port,
            [
                acks("AL", "NE", "AL-NE"),
                acks("AL", "NE", "AL-NE bad", bad=True),
                acks("NE", "AL", "NE-AL"),
                acks("NE", "AL", "NE-AL bad", bad=True),
                acks("AL", "AL", "AL-AL bad", bad=True),
                acks("ER", "NE", "ER-NE"),
                acks("ER", "NE", "ER-NE bad", bad=True),
                acks("ER", "ER", "ER-ER"),
                acks("SU", "ER", "SU-ER bad", bad=True),
                acks("NE", "NE", "NE-NE"),
                acks("", "AL", "-AL"),
                acks("AL", "", "AL-"),
                acks("XX", "NE", "XX-NE"),
                training("AL", "AL", "T AL-AL"),
                training("NE", "AL", "T NE-AL"),
            ],
        )
    assert got == [
        ("CA", "AL-NE", ""),
        ("CA", "AL-NE bad", "102"),  # kept in the dead-letter store (committed), and says why
        ("AA", "NE-AL", ""),
        ("AE", "NE-AL bad", "102"),
        ("CA", "AL-AL bad", "102"),
        ("AE", "AL-AL bad", "102"),
        # ER|NE: nothing either way (a content error is the application's, and MSH-16 is NE)
        # ER|ER: nothing on success
        ("CA", "SU-ER bad", "102"),
        ("AE", "SU-ER bad", "102"),
        # NE|NE: nothing
        ("AA", "-AL", ""),  # one field empty: that acknowledgment is not asked for
        ("CA", "AL-", ""),
        ("CA", "XX-NE", ""),  # outside table 0155: answered rather than left silent
        ("CR", "T AL-AL", "202"),  # rejected: no application acknowledgment follows
        ("AR", "T NE-AL", "202"),
    ]
    assert len(broker.on(EVENTS.name)) == 9  # every good message taken, answered or not (LAST's included)
    assert len(broker.on(DEAD_LETTER.name)) == 7  # and every refused one kept, answered or not


@pytest.mark.parametrize("asked", [("NE", "NE"), ("SU", "NE"), ("ER", "AL"), ("AL", "AL")])
async def test_nothing_committed_is_answered_ce_whatever_msh_15_says(asked: tuple[str, str]) -> None:
    async with hub(DownBroker()) as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(VT + acks(*asked, "DOWN") + FS + CR + VT + acks(*asked, "DOWN", bad=True) + FS + CR)
        await writer.drain()
        frames = [await asyncio.wait_for(reader.readuntil(FS + CR), 10) for _ in range(2)]
        writer.close()
    msa = [next(s for s in f.decode().split("\r") if s.startswith("MSA")).split("|")[1:3] for f in frames]
    assert msa == [["CE", "DOWN"], ["CE", "DOWN"]]  # neither taken nor kept: the sender must send again


async def test_a_sender_not_listed_is_answered_in_original_mode_whatever_msh_15_and_16_say() -> None:
    async with hub(RecordingBroker(), senders=("RYY",)) as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        sent = [
            acks(a, b, f"{a}-{b}", bad=bad) for a, b in [("AL", "NE"), ("NE", "NE"), ("ER", "AL")] for bad in (0, 1)
        ]
        writer.write(b"".join(VT + m + FS + CR for m in sent))
        await writer.drain()
        frames = [await asyncio.wait_for(reader.readuntil(FS + CR), 10) for _ in sent]
        writer.close()
    msa = [next(s for s in f.decode().split("\r") if s.startswith("MSA")).split("|")[1] for f in frames]
    assert msa == ["AA", "AE"] * 3


def test_the_senders_are_cleaned_as_an_operator_may_write_them() -> None:
    assert MllpSettings(enhanced_ack_senders=(" rxx", "RXX", "", "ryy ")).enhanced_ack_senders == ("RXX", "RYY")
    assert MllpSettings().enhanced_ack_senders == ()
