"""Enhanced acknowledgment mode over a real MLLP socket (mllp.enhanced_acks): a message with MSH-15 or
MSH-16 valued gets the accept acknowledgment, CA, CE or CR, when MSH-15's condition (HL7 table 0155)
asks for one, and nothing when it does not; off (the default), every message is answered AA/AE/AR."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime

import pytest

from adapters.hl7v2.service import HospitalIntake
from adapters.hl7v2.transport import serve
from hub.settings import Settings
from schemas.topics import DEAD_LETTER, EVENTS
from tests.builders import an_adt
from tests.fakes import RecordingBroker

VT, FS, CR = b"\x0b", b"\x1c", b"\r"
NOW = datetime(2026, 11, 25, 9, 30, tzinfo=UTC)
pytestmark = pytest.mark.timeout(60)


def acks(accept: str, application: str = "NE", **fields: str) -> bytes:
    """an_adt with MSH-15 and MSH-16 as given (the builder's are AL and NE)."""
    message = an_adt(**fields)  # type: ignore[arg-type]
    return message.replace(b"|||AL|NE|GBR|", f"|||{accept}|{application}|GBR|".encode(), 1)


def bad(control_id: str, accept: str, application: str = "NE") -> bytes:
    return acks(accept, application, control_id=control_id, nhs_number="9434765918")  # check digit wrong: AE/CE


@asynccontextmanager
async def hub(*, enhanced: bool) -> AsyncIterator[tuple[RecordingBroker, int]]:
    broker = RecordingBroker()
    intake = HospitalIntake(broker, key_secret=b"enhanced", clock=lambda: NOW, enhanced_acks=enhanced)  # type: ignore[arg-type]
    server = await serve(intake.receive, intake.refuse, "127.0.0.1", 0, limit=1_048_576)
    try:
        yield broker, server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


async def converse(port: int, messages: list[bytes]) -> list[tuple[str, str]]:
    """Send every message on one connection, then read every ACK that comes: (MSA-1, MSA-2) each."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"".join(VT + m + FS + CR for m in messages))
    await writer.drain()
    got = []
    try:
        while True:
            frame = await asyncio.wait_for(reader.readuntil(FS + CR), 2)
            msa = next(s for s in frame.removeprefix(VT).decode().split("\r") if s.startswith("MSA"))
            got.append(tuple(msa.split("|")[1:3]))
    except TimeoutError:
        pass
    finally:
        writer.close()
    return got  # type: ignore[return-value]


async def test_each_condition_of_msh_15_is_honoured_in_enhanced_mode_on_one_connection() -> None:
    async with hub(enhanced=True) as (broker, port):
        got = await converse(
            port,
            [
                acks("AL", control_id="AL-OK"),
                acks("NE", "AL", control_id="NE-OK"),
                acks("ER", control_id="ER-OK"),
                acks("SU", control_id="SU-OK"),
                bad("AL-BAD", "AL"),
                bad("NE-BAD", "NE"),
                bad("ER-BAD", "ER"),
                bad("SU-BAD", "SU"),
                acks("", "AL", control_id="EMPTY-OK"),  # MSH-16 alone valued: enhanced, MSH-15 taken as AL
                acks("XX", control_id="ODD-OK"),  # outside table 0155: answered rather than left silent
            ],
        )
    assert got == [
        ("CA", "AL-OK"),
        ("CA", "SU-OK"),
        ("CE", "AL-BAD"),
        ("CE", "ER-BAD"),
        ("CA", "EMPTY-OK"),
        ("CA", "ODD-OK"),
    ]
    assert len(broker.on(EVENTS.name)) == 6  # every good message is taken, answered or not
    assert len(broker.on(DEAD_LETTER.name)) == 4  # and every bad one kept, answered or not


async def test_a_commit_reject_is_cr_with_its_err_segment() -> None:
    training = acks("AL", control_id="TRAIN").replace(b"|P|2.4|", b"|T|2.4|", 1)
    async with hub(enhanced=True) as (_, port):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(VT + training + FS + CR)
        await writer.drain()
        frame = await asyncio.wait_for(reader.readuntil(FS + CR), 5)
        writer.close()
    segments = {s[:3]: s.split("|") for s in frame.removeprefix(VT).removesuffix(FS + CR).decode().split("\r") if s}
    assert segments["MSA"][1:3] == ["CR", "TRAIN"]
    assert segments["ERR"][3].startswith("202^")


@pytest.mark.parametrize("accept", ["AL", "NE", "ER", "SU"])
async def test_off_by_default_every_message_is_answered_in_original_mode(accept: str) -> None:
    async with hub(enhanced=False) as (_, port):
        got = await converse(port, [acks(accept, control_id="OK"), bad("BAD", accept)])
    assert got == [("AA", "OK"), ("AE", "BAD")]


def test_the_setting_is_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    read: Callable[[], Settings] = Settings
    assert read().mllp.enhanced_acks is False
    monkeypatch.setenv("CAREHUB_MLLP__ENHANCED_ACKS", "true")
    assert read().mllp.enhanced_acks is True
