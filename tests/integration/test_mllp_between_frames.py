"""MLLP over a real socket, HospitalIntake behind it: bytes a sender puts between frames (a frame ending
1C 0D 0A, CRLF, padding, other stray bytes) belong to no frame and are skipped, so every frame is answered
as normal and the connection goes on (review finding 7)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime

import pytest

from adapters.hl7v2.service import HospitalIntake
from adapters.hl7v2.transport import serve
from schemas.topics import DEAD_LETTER, EVENTS
from tests.builders import a_valid_nhs_number, an_adt
from tests.fakes import RecordingBroker

VT, FS, CR, LF = b"\x0b", b"\x1c", b"\r", b"\n"
LIMIT = 64 * 1024
NOW = datetime(2026, 11, 25, 9, 30, tzinfo=UTC)
TRANSPORT = "adapters.hl7v2.transport"
pytestmark = pytest.mark.timeout(30)


@dataclass
class Hub:
    broker: RecordingBroker
    port: int


@pytest.fixture
async def hub() -> AsyncIterator[Hub]:
    broker = RecordingBroker()
    intake = HospitalIntake(broker, key_secret=b"between-frames", clock=lambda: NOW)  # type: ignore[arg-type]
    server = await serve(intake.receive, intake.refuse, "127.0.0.1", 0, limit=LIMIT, idle=2.0)
    try:
        yield Hub(broker, server.sockets[0].getsockname()[1])
    finally:
        server.close()
        await server.wait_closed()


def a01(control_id: str) -> bytes:
    return an_adt(trigger="A01", control_id=control_id, nhs_number=a_valid_nhs_number(), visit=control_id)


def frame(control_id: str, *, before: bytes = b"", after: bytes = b"") -> bytes:
    return before + VT + a01(control_id) + FS + CR + after


async def msa(reader: asyncio.StreamReader) -> list[str]:
    reply = await asyncio.wait_for(reader.readuntil(FS + CR), 5)
    text = reply.removeprefix(VT).removesuffix(FS + CR).decode()
    return next(s for s in text.split("\r") if s.startswith("MSA")).split("|")[1:3]


async def conversation(port: int, *writes: bytes, pause: float = 0.05) -> list[list[str]]:
    """Each write in turn on one connection, its answer read before the next; then one more frame, to
    show the connection is still open."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        answers = []
        for data in writes:
            writer.write(data)
            await writer.drain()
            answers.append(await msa(reader))
            await asyncio.sleep(pause)  # the stray bytes arrive on their own, as they do from a real sender
        writer.write(frame("STILL-OPEN"))
        await writer.drain()
        answers.append(await msa(reader))
        return answers
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def test_frames_ending_fs_cr_lf_are_each_answered_aa_and_the_connection_goes_on(hub: Hub) -> None:
    answers = await conversation(hub.port, *(frame(c, after=LF) for c in ("LF1", "LF2", "LF3")))
    assert answers == [["AA", "LF1"], ["AA", "LF2"], ["AA", "LF3"], ["AA", "STILL-OPEN"]]
    assert hub.broker.on(DEAD_LETTER.name) == []
    assert len(hub.broker.on(EVENTS.name)) == 4


@pytest.mark.parametrize(
    "stray",
    [CR + LF, LF + LF, b"   ", b"\t \r\n ", LF * 5000],
    ids=["crlf", "two-lf", "spaces", "mixed", "many-lf"],
)
async def test_whitespace_before_a_start_block_is_skipped_and_the_frame_answered(hub: Hub, stray: bytes) -> None:
    answers = await conversation(hub.port, frame("W1", before=stray), frame("W2", before=stray, after=stray))
    assert answers == [["AA", "W1"], ["AA", "W2"], ["AA", "STILL-OPEN"]]
    assert hub.broker.on(DEAD_LETTER.name) == []


async def test_trailers_and_the_next_frame_in_one_write_are_each_answered(hub: Hub) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", hub.port)
    writer.write(frame("P1", after=CR + LF) + frame("P2", after=LF) + frame("P3", after=LF))
    await writer.drain()
    assert [await msa(reader) for _ in range(3)] == [["AA", "P1"], ["AA", "P2"], ["AA", "P3"]]
    writer.close()
    assert hub.broker.on(DEAD_LETTER.name) == []


@pytest.mark.parametrize("stray", [b"\x00", b"\x00\x00\x1c", b"junk", b"PID|1||H1^^^RZZ^MR"], ids=repr)
async def test_other_stray_bytes_before_a_start_block_are_skipped_too(hub: Hub, stray: bytes) -> None:
    answers = await conversation(hub.port, frame("J1", after=stray), frame("J2", before=stray))
    assert answers == [["AA", "J1"], ["AA", "J2"], ["AA", "STILL-OPEN"]]
    assert hub.broker.on(DEAD_LETTER.name) == []


async def test_skipped_bytes_are_logged_by_count_never_content(hub: Hub, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger=TRANSPORT)
    await conversation(hub.port, frame("L1", after=CR + LF), frame("L2", after=b"SMITH^JANE"))
    skips = [r for r in caplog.records if r.name == TRANSPORT and "skipped" in r.getMessage()]
    assert [(r.levelno, r.getMessage().split(" from ")[0]) for r in skips] == [
        (logging.DEBUG, "skipped 2 bytes of whitespace"),
        (logging.WARNING, "skipped 10 bytes"),
    ]
    assert all("SMITH" not in r.getMessage() and "\r" not in r.getMessage() for r in caplog.records)


async def test_a_frame_after_a_lf_with_no_start_block_is_still_refused_ar_to_its_control_id_and_closed(
    hub: Hub,
) -> None:
    startless = a01("NOVT")
    reader, writer = await asyncio.open_connection("127.0.0.1", hub.port)
    writer.write(frame("OK1", after=LF) + startless + FS + CR)
    await writer.drain()
    assert await msa(reader) == ["AA", "OK1"]
    assert await msa(reader) == ["AR", "NOVT"]  # its MSH is readable after the LF, so MSA-2 names it
    with contextlib.suppress(ConnectionError):
        assert await asyncio.wait_for(reader.read(), 5) == b""  # framing lost: closed, as before
    writer.close()
    [(_, kept, _, _)] = hub.broker.on(DEAD_LETTER.name)
    assert kept == LF + startless  # kept whole, as it came


async def test_an_over_size_frame_after_a_crlf_is_refused_ar_to_its_control_id_and_the_connection_goes_on(
    hub: Hub,
) -> None:
    big = an_adt(trigger="A01", control_id="HUGE", family="X" * (2 * LIMIT))
    reader, writer = await asyncio.open_connection("127.0.0.1", hub.port)
    writer.write(frame("B1", after=CR + LF) + VT + big + FS + CR + frame("B2", before=LF))
    await writer.drain()
    assert [await msa(reader) for _ in range(3)] == [["AA", "B1"], ["AR", "HUGE"], ["AA", "B2"]]
    writer.close()
    [(_, kept, _, _)] = hub.broker.on(DEAD_LETTER.name)
    assert kept.startswith(b"MSH|")  # neither the CR LF nor the start block


async def test_stray_bytes_then_the_sender_leaving_do_not_kill_the_listener(hub: Hub) -> None:
    _, writer = await asyncio.open_connection("127.0.0.1", hub.port)
    writer.write(frame("GONE", after=CR + LF + b"  "))
    await writer.drain()
    writer.close()
    await asyncio.sleep(0.1)
    assert await conversation(hub.port) == [["AA", "STILL-OPEN"]]


async def test_a_frame_cut_off_before_the_next_is_skipped_not_glued_to_it(hub: Hub) -> None:
    # (review: split at the first start block, the fragment's MSH and PID took the next frame's PV1 and
    # were accepted under the fragment's control id: one patient admitted with another's stay)
    whole = an_adt(trigger="A03", control_id="WHOLE", nhs_number="9434765919", family="SMITH")
    cut = an_adt(trigger="A01", control_id="CUT", nhs_number=a_valid_nhs_number(), family="JONES")
    fragment = VT + cut[: cut.index(b"PV1")]  # the sender dropped it after PID, then began again
    reader, writer = await asyncio.open_connection("127.0.0.1", hub.port)
    writer.write(fragment + VT + whole + FS + CR)
    await writer.drain()

    assert await msa(reader) == ["AA", "WHOLE"]
    writer.close()
    [(_, value, _, _)] = hub.broker.on(EVENTS.name)
    assert b"JONES" not in value and b"SMITH" in value
