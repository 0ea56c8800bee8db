"""Hostile input: whatever bytes arrive, the adapter answers with a HubError (AE/AR), never a crash."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from adapters.hl7v2.message import parse, read_header, split_batch
from adapters.hl7v2.replies import ack
from adapters.hl7v2.to_fhir import MappedEvent, map_message
from hub.core.errors import HubError
from tests.builders import an_adt

TRIGGERS = ("A01", "A02", "A03", "A04", "A08", "A11", "A13", "A28", "A31", "A40")
SEEDS = [an_adt(trigger=t) for t in TRIGGERS] + [
    an_adt(trigger="A03", seg_end=b"\r\n", charset="8859/1", family="JOSÉ", encoding="latin-1"),
    b"FHS|^~\\&|PAS\rBHS|^~\\&|PAS\r" + an_adt(control_id="B1") + an_adt(control_id="B2") + b"BTS|2\rFTS|1\r",
]
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
NOW = datetime(2026, 11, 25, tzinfo=UTC)
DELIMITERS = [b"|", b"^", b"~", b"\\", b"&", b"\r", b"\n", b'""', b"\\F\\", b"\\X0\\", b"\\H\\", b"\x0b", b"\x1c"]
HL7_TEXT = st.lists(
    st.sampled_from([*'|^~\\&"+-. 0123456789AZaz#É€\r\n\x00', "NHS", "NSTS", "\\F\\", "\\X41\\"]), max_size=30
).map("".join)


def survive(raw: bytes) -> list[MappedEvent]:
    """Map and answer; only HubError may escape map_message, and the ACK must always be built."""
    events: list[MappedEvent] = []
    error: HubError | None = None
    try:
        for message in split_batch(raw) or [raw]:
            events += map_message(message, key_secret=b"fuzz")
    except HubError as exc:
        error = exc
    if error is not None:
        assert isinstance(error.diagnostics, str) and error.diagnostics
        assert all(isinstance(part, str) for part in error.expression)
        assert isinstance(error.code, str) and error.code
    reply = ack(read_header(raw), error, control_id="F1", now=NOW)
    assert reply.startswith(b"MSH")
    assert reply.endswith(b"\r")
    assert reply.count(b"\r") == (2 if error is None else 3)  # MSH, MSA[, ERR]: never split by content
    back = read_header(reply)
    assert back is not None
    assert back.message_type == "ACK"
    for event in events:
        assert event.event_time.tzinfo is not None
        assert event.payload["resourceType"] == "Bundle"
    return events


@FUZZ
@given(st.binary(max_size=2000))
def test_arbitrary_bytes(raw: bytes) -> None:
    survive(raw)


@FUZZ
@given(st.binary(max_size=600))
@example(b"|^~\\&|||||||ADT^A01|1|P|2.4")
@example(b"||||")
@example(b"^~\\&^^^^")
def test_arbitrary_bytes_after_an_msh_prefix(tail: bytes) -> None:
    survive(b"MSH" + tail)
    survive(b"MSH|^~\\&|" + tail)


@FUZZ
@given(st.sampled_from(SEEDS), st.lists(st.tuples(st.integers(0, 10_000), st.binary(max_size=8)), max_size=6))
def test_mutated_valid_messages(seed: bytes, edits: list[tuple[int, bytes]]) -> None:
    raw = bytearray(seed)
    for at, chunk in edits:
        at %= len(raw) + 1
        raw[at : at + len(chunk)] = chunk
    survive(bytes(raw))


@FUZZ
@given(st.sampled_from(SEEDS), st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 7)), min_size=1, max_size=12))
def test_random_bit_flips(seed: bytes, flips: list[tuple[int, int]]) -> None:
    raw = bytearray(seed)
    for at, bit in flips:
        raw[at % len(raw)] ^= 1 << bit
    survive(bytes(raw))


@FUZZ
@given(st.sampled_from(SEEDS), st.integers(0, 10_000), st.sampled_from(DELIMITERS))
def test_separators_inserted_or_truncated(seed: bytes, at: int, separator: bytes) -> None:
    at %= len(seed)
    survive(seed[:at] + separator + seed[at:])
    survive(seed[:at])
    survive(seed[:at] + separator)


@FUZZ
@given(st.sampled_from(SEEDS), st.integers(0, 10_000), st.integers(1, 60))
def test_deleted_spans(seed: bytes, at: int, length: int) -> None:
    at %= len(seed)
    survive(seed[:at] + seed[at + length :])


@FUZZ
@given(
    trigger=st.sampled_from([*TRIGGERS, "A24", ""]),
    family=HL7_TEXT,
    given_name=HL7_TEXT,
    nhs=st.one_of(st.none(), st.from_regex(r"\A[0-9]{10}\Z"), HL7_TEXT),
    mrn=st.one_of(st.none(), HL7_TEXT),
    control_id=HL7_TEXT,
    sender=HL7_TEXT,
    practice=st.one_of(st.none(), HL7_TEXT),
    visit=st.one_of(st.none(), HL7_TEXT),
    patient_class=HL7_TEXT,
    charset=st.sampled_from(["UNICODE UTF-8", "8859/1", "ASCII", "", "UNICODE", "EBCDIC", "8859/1~UTF-8"]),
    version=st.sampled_from(["2.3", "2.4", "2.5.1", "2.8", "3.0", ""]),
)
def test_arbitrary_field_values_in_a_well_formed_message(
    trigger: str,
    family: str,
    given_name: str,
    nhs: str | None,
    mrn: str | None,
    control_id: str,
    sender: str,
    practice: str | None,
    visit: str | None,
    patient_class: str,
    charset: str,
    version: str,
) -> None:
    raw = an_adt(
        trigger=trigger,
        family=family,
        given=given_name,
        nhs_number=nhs,
        mrn=mrn,
        control_id=control_id,
        sender=sender,
        practice=practice,
        visit=visit,
        patient_class=patient_class,
        charset=charset,
        version=version,
        encoding="utf-8",
    )
    survive(raw)


TIMESTAMP = st.one_of(
    st.from_regex(r"\A[0-9]{4,14}([.][0-9]{1,4})?([+-][0-9]{4})?\Z"),
    st.from_regex(r"\A(0001|9999|1752|2026)(0[0-9]|1[0-3])([0-3][0-9])([0-2][0-9])?([+-][0-2][0-9][0-9]{2})?\Z"),
    HL7_TEXT,
)


@FUZZ
@given(event_time=TIMESTAMP, admit=TIMESTAMP, discharge=TIMESTAMP, born=TIMESTAMP)
@example(event_time="202611031105+9999", admit="", discharge="", born="19400312")
@example(event_time="99991231235959-2359", admit="", discharge="", born="19400312")
@example(event_time="00010101000000+2359", admit="", discharge="", born="19400312")
@example(event_time="202611031105", admit="00010101", discharge="9999123123-2300", born="00010101")
def test_arbitrary_time_stamps(event_time: str, admit: str, discharge: str, born: str) -> None:
    raw = an_adt(event_time=event_time or "202611031105", admit=admit, discharge=discharge)
    survive(raw.replace(b"|19400312|", b"|" + born.encode() + b"|"))


@pytest.mark.parametrize(
    "raw",
    [
        an_adt(family="X" * 200_000),
        an_adt(control_id="C" * 100_000),
        an_adt(nhs_number="9" * 100_000),
        an_adt(event_time="2" * 100_000),
        an_adt(mrn="~".join(f"M{i}^^^RXX^MR" for i in range(20_000))),
        an_adt(extra_segments=tuple(f"ZX{i % 10}|{'y' * 50}" for i in range(20_000))),
        an_adt(family="\\F\\" * 50_000),
        b"MSH|^~\\&|" + b"|" * 200_000,
        b"MSH|^~\\&|" + b"^" * 200_000,
        b"MSH|" + b"\\" * 200_000,
    ],
    ids=["name", "control-id", "nhs", "time", "identifiers", "segments", "escapes", "bars", "carets", "backslash"],
)
def test_oversized_fields_are_answered_not_crashed(raw: bytes) -> None:
    survive(raw)


def test_an_oversized_name_is_kept_whole() -> None:
    [event] = survive(an_adt(family="X" * 200_000))
    assert event.payload["entry"][0]["resource"]["name"][0]["family"] == "X" * 200_000


def test_parse_alone_raises_only_hub_errors_for_garbage() -> None:
    for raw in (b"", b"\x00" * 100, b"MSH\r", b"MSH|^~\\&\r\xff\xfe", b"\xef\xbb\xbf", b"\r\n\r\n"):
        with pytest.raises(HubError):
            parse(raw)
