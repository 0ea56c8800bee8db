"""Hostile input: whatever bytes arrive, the adapter answers with a HubError (AE/AR), never a crash."""

from __future__ import annotations

from datetime import UTC, datetime

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from adapters.hl7v2.message import read_header, split_batch
from adapters.hl7v2.replies import ack
from adapters.hl7v2.to_fhir import map_message
from hub.core.errors import HubError
from tests.builders import an_adt

SEEDS = [an_adt(trigger=t) for t in ("A01", "A03", "A08", "A11", "A13", "A40")]
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
NOW = datetime(2026, 11, 25, tzinfo=UTC)


def survive(raw: bytes) -> None:
    """Map and answer; only HubError may escape map_message, and the ACK must always be built."""
    error: HubError | None = None
    try:
        for message in split_batch(raw) or [raw]:
            map_message(message, key_secret=b"fuzz")
    except HubError as exc:
        error = exc
    reply = ack(read_header(raw), error, control_id="F1", now=NOW)
    assert reply.startswith(b"MSH")
    assert b"MSA" in reply


@FUZZ
@given(st.binary(max_size=2000))
def test_arbitrary_bytes(raw: bytes) -> None:
    survive(raw)


@FUZZ
@given(st.sampled_from(SEEDS), st.lists(st.tuples(st.integers(0, 10_000), st.binary(max_size=8)), max_size=6))
def test_mutated_valid_messages(seed: bytes, edits: list[tuple[int, bytes]]) -> None:
    raw = bytearray(seed)
    for at, chunk in edits:
        at %= len(raw) + 1
        raw[at : at + len(chunk)] = chunk
    survive(bytes(raw))


@FUZZ
@given(st.sampled_from(SEEDS), st.integers(0, 600), st.sampled_from([b"|", b"^", b"~", b"\\", b"&", b"\r", b'""']))
def test_separators_inserted_or_truncated(seed: bytes, at: int, separator: bytes) -> None:
    at %= len(seed)
    survive(seed[:at] + separator + seed[at:])
    survive(seed[:at])


def test_an_oversized_field_is_handled() -> None:
    survive(an_adt(family="X" * 200_000))
