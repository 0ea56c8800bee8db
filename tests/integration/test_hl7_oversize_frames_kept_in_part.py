"""An MLLP frame over mllp.max_message_bytes, or without its start block and longer than what is kept,
is dead-lettered in part and marked so, as the file path marks an input too large to keep whole (the
frame's whole size and SHA-256, hub.core.errors.KEPT_IN_PART): `carehub deadletters show ID --raw` then
refuses to write the head as if it were the input. Its ERR says the size and the limit (0357: 104)."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
import typer

from adapters.hl7v2.service import HospitalIntake
from adapters.hl7v2.transport import serve
from hub.cli_deadletters import _partial_raw
from hub.core.errors import kept_in_part
from hub.store.queries import KeptDeadLetter
from schemas.events.rejected import OUTCOME_HEADER
from schemas.topics import DEAD_LETTER
from tests.builders import an_adt
from tests.fakes import RecordingBroker

VT, FS, CR = b"\x0b", b"\x1c", b"\r"
LIMIT = 1_048_576
NOW = datetime(2026, 11, 25, 9, 30, tzinfo=UTC)
pytestmark = pytest.mark.timeout(60)


@pytest.fixture
async def listening() -> AsyncIterator[tuple[RecordingBroker, int]]:
    broker = RecordingBroker()
    intake = HospitalIntake(broker, key_secret=b"kept-in-part", clock=lambda: NOW)  # type: ignore[arg-type]
    server = await serve(intake.receive, intake.refuse, "127.0.0.1", 0, limit=LIMIT)
    try:
        yield broker, server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


async def exchange(port: int, data: bytes) -> list[str]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    await writer.drain()
    reply = await asyncio.wait_for(reader.readuntil(FS + CR), 30)
    writer.close()
    return [s for s in reply.removeprefix(VT).removesuffix(FS + CR).decode().split("\r") if s]


def outcome(broker: RecordingBroker) -> tuple[bytes, dict[str, Any]]:
    [(_, kept, _, headers)] = broker.on(DEAD_LETTER.name)
    return kept, orjson.loads(headers[OUTCOME_HEADER])


def letter(kept: bytes, reason: dict[str, Any]) -> KeptDeadLetter:
    digest = hashlib.sha256(kept).hexdigest()
    return KeptDeadLetter(
        id=1,
        received_at=NOW,
        source="urn:ods:RXX",
        origin="mllp:x",
        digest=digest,
        reason=reason,
        size=len(kept),
        content=kept,
    )


async def test_an_oversize_frame_is_kept_in_part_with_its_whole_size_and_digest(
    listening: tuple[RecordingBroker, int],
) -> None:
    broker, port = listening
    message = an_adt(control_id="BIG3", family="X" * (3 * LIMIT))
    [_, msa, err] = (s.split("|") for s in await exchange(port, VT + message + FS + CR))
    assert msa[1:3] == ["AR", "BIG3"]
    assert err[3] == "104^Value too long^HL70357"  # not 207, which blames the hub
    assert f"{len(message):,} bytes" in err[8] and f"{LIMIT:,} byte limit" in err[8]
    kept, reason = outcome(broker)
    assert kept == message[: 64 * 1024]
    assert kept_in_part(reason) == (len(message), hashlib.sha256(message).hexdigest())
    with pytest.raises(typer.Exit):  # `deadletters show ID --raw` without --partial
        _partial_raw(letter(kept, reason), allowed=False)


async def test_a_frame_after_stray_bytes_is_known_by_its_own_bytes(listening: tuple[RecordingBroker, int]) -> None:
    broker, port = listening
    message = an_adt(control_id="BIG4", family="Y" * (2 * LIMIT))
    await exchange(port, b"\r\n" + VT + message + FS + CR)
    _, reason = outcome(broker)
    assert kept_in_part(reason) == (len(message), hashlib.sha256(message).hexdigest())


async def test_a_frame_without_a_start_block_longer_than_its_head_is_marked_too(
    listening: tuple[RecordingBroker, int],
) -> None:
    broker, port = listening
    message = an_adt(control_id="NOVT2", family="Z" * (200 * 1024))  # under the limit, over what is kept
    [_, msa, _] = (s.split("|") for s in await exchange(port, message + FS + CR))
    assert msa[1] == "AR"
    kept, reason = outcome(broker)
    assert kept == message[: 64 * 1024]
    assert kept_in_part(reason) == (len(message), hashlib.sha256(message).hexdigest())


async def test_a_frame_kept_whole_is_not_marked(listening: tuple[RecordingBroker, int]) -> None:
    broker, port = listening
    message = an_adt(control_id="NOVT3")
    await exchange(port, message + FS + CR)
    kept, reason = outcome(broker)
    assert kept == message
    assert kept_in_part(reason) is None
    _partial_raw(letter(kept, reason), allowed=False)  # (written as it is: it is the input)
