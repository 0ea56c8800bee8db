"""HospitalIntake on a recording broker: what is published, what is dead-lettered, what the sender is told."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest

from adapters.hl7v2 import transport
from adapters.hl7v2.service import HospitalIntake
from hub.core.errors import kept_in_part
from schemas.envelope import Envelope
from schemas.events.rejected import OUTCOME_HEADER
from schemas.topics import DEAD_LETTER, EVENTS
from tests.builders import a_valid_nhs_number, an_adt
from tests.fakes import RecordingBroker

NOW = datetime(2026, 11, 25, 9, 30, tzinfo=UTC)


def intake(broker: RecordingBroker) -> HospitalIntake:
    return HospitalIntake(broker, key_secret=b"intake", clock=lambda: NOW)  # type: ignore[arg-type]


def field(reply: bytes, segment: str, n: int) -> str:
    line = next(s for s in reply.decode().split("\r") if s.startswith(segment))
    return line.split("|")[n]


def published_ids(broker: RecordingBroker) -> list[str]:
    return [Envelope.from_kafka(value, headers).id for _, value, _, headers in broker.on(EVENTS.name)]


def issue(headers: dict[str, str]) -> dict[str, Any]:
    found: dict[str, Any] = orjson.loads(headers[OUTCOME_HEADER])["issue"][0]
    return found


# --- control IDs -------------------------------------------------------------------------------


async def test_a_resend_is_acknowledged_again_under_the_same_event_id_so_the_record_applies_it_once() -> None:
    broker = RecordingBroker()
    hub = intake(broker)
    message = an_adt(control_id="R1")
    (first, ack1), (again, ack2) = [await hub.accept(message, "mllp:test") for _ in range(2)]
    assert (field(ack1, "MSA", 1), field(ack2, "MSA", 1)) == ("AA", "AA")
    assert first.event_ids == again.event_ids
    assert published_ids(broker) == [*first.event_ids, *first.event_ids]


async def test_another_message_under_a_used_control_id_is_accepted_as_a_new_event_not_dropped() -> None:
    broker = RecordingBroker()
    hub = intake(broker)
    first, _ = await hub.accept(an_adt(control_id="R1", visit="V1"), "mllp:test")
    other = an_adt(control_id="R1", nhs_number=a_valid_nhs_number(), visit="V2", family="JONES")
    second, reply = await hub.accept(other, "mllp:test")
    assert (second.code, field(reply, "MSA", 2)) == ("AA", "R1")
    assert set(first.event_ids).isdisjoint(second.event_ids)
    assert published_ids(broker) == [*first.event_ids, *second.event_ids]
    assert broker.on(DEAD_LETTER.name) == []


# --- times -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("message", "place", "err_2"),
    [
        (an_adt(trigger="A01", admit="209901010930", control_id="T1"), "PV1-44", "PV1^1^44"),
        (an_adt(admit="202611031000", discharge="202611020900", control_id="T2"), "PV1-45", "PV1^1^45"),
        (an_adt(event_time="209911031105", control_id="T3"), "EVN-2", "EVN^1^2"),
    ],
    ids=["admitted-in-2099", "discharged-before-admitted", "event-in-2099"],
)
async def test_an_impossible_time_is_answered_AE_naming_the_field_and_dead_lettered_whole(
    message: bytes, place: str, err_2: str
) -> None:
    broker = RecordingBroker()
    outcome, reply = await intake(broker).accept(message, "mllp:test")
    assert (outcome.code, outcome.dead_lettered) == ("AE", True)
    assert field(reply, "MSA", 1) == "AE"
    assert (field(reply, "ERR", 2), field(reply, "ERR", 3)) == (err_2, "102^Data type error^HL70357")
    assert place in field(reply, "ERR", 8)
    assert broker.on(EVENTS.name) == []
    [(_, value, _, headers)] = broker.on(DEAD_LETTER.name)
    assert value == message
    assert issue(headers)["expression"] == [place]


# --- frames the transport refused --------------------------------------------------------------


async def test_an_oversize_frame_is_answered_AR_to_its_control_id_and_its_first_bytes_dead_lettered() -> None:
    broker = RecordingBroker()
    head = an_adt(control_id="BIG1", family="X" * 1000)[:600]
    reason = "frame of 20,971,520 bytes exceeds the 1,048,576 byte limit"
    digest = hashlib.sha256(b"the whole 20 MB frame").hexdigest()
    frame = transport.RefusedFrame(reason, head, 20_971_520, "mllp:10.0.0.9:4000", True, True, digest)
    [reply] = await intake(broker).refuse(frame)
    assert (field(reply, "MSA", 1), field(reply, "MSA", 2)) == ("AR", "BIG1")
    assert field(reply, "ERR", 8) == f"{reason}; the hub kept its first 600 bytes"
    [(_, value, key, headers)] = broker.on(DEAD_LETTER.name)
    assert (value, key) == (head, b"RXX")
    assert (issue(headers)["code"], issue(headers)["diagnostics"]) == ("too-long", field(reply, "ERR", 8))
    assert field(reply, "ERR", 3) == "104^Value too long^HL70357"
    assert kept_in_part(orjson.loads(headers[OUTCOME_HEADER])) == (20_971_520, digest)  # (--raw then refuses)


async def test_a_frame_without_a_start_block_is_answered_AR_and_kept_whole() -> None:
    broker = RecordingBroker()
    junk = b"GET / HTTP/1.1\r\nHost: hub\r\n\r\n"
    reason = "frame does not begin with the MLLP start block (0x0B)"
    [reply] = await intake(broker).refuse(
        transport.RefusedFrame(reason, junk, len(junk), "mllp:x", False, True, hashlib.sha256(junk).hexdigest())
    )
    assert (field(reply, "MSA", 1), field(reply, "ERR", 8)) == ("AR", reason)
    [(_, value, key, headers)] = broker.on(DEAD_LETTER.name)
    assert (value, key, issue(headers)["code"]) == (junk, b"unknown", "structure")


# --- files ---------------------------------------------------------------------------------------


async def test_a_file_refused_is_kept_as_the_file_holds_it_and_its_bad_byte_named_by_its_offset_there() -> None:
    # a BOM and CR LF line ends (a file saved on Windows), and a byte that is not UTF-8 in PID-5
    broker = RecordingBroker()
    message = an_adt(control_id="F1", family="SM\xffTH", encoding="latin-1", seg_end=b"\r\n")
    raw = b"\xef\xbb\xbf" + message
    bad = raw.index(b"\xff")

    [outcome] = await intake(broker).ingest(raw, "file:/in/adt.hl7")

    assert outcome.code == "AE"
    [(_, kept, _, headers)] = broker.on(DEAD_LETTER.name)
    assert kept == raw  # byte for byte: `deadletters show --raw` gives back the file
    assert f"at offset {bad} of the message" in issue(headers)["diagnostics"]


async def test_each_message_of_a_batch_file_is_kept_as_sent_envelope_aside() -> None:
    broker = RecordingBroker()
    good = an_adt(control_id="B1", seg_end=b"\r\n")
    refused = an_adt(control_id="B2", nhs_number="9434765910", mrn=None, seg_end=b"\r\n")
    raw = b"FHS|^~\\&|PAS\r\nBHS|^~\\&|PAS\r\n" + good + refused + b"BTS|2\r\nFTS|1\r\n"

    outcomes = await intake(broker).ingest(raw, "file:/in/batch.hl7")

    assert [o.code for o in outcomes] == ["AA", "AE"]
    [(_, kept, _, _)] = broker.on(DEAD_LETTER.name)
    assert kept == refused


# --- MSH-11 ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("processing_id", ["T", "D", "X"])
async def test_a_training_or_debugging_message_is_refused_ar_with_err_202_and_kept(processing_id: str) -> None:
    # a training PAS pointed at the live hub by mistake would put invented people in the record
    broker = RecordingBroker()
    raw = an_adt(control_id="TRN1").replace(b"|P|2.4|", f"|{processing_id}|2.4|".encode())

    [reply] = await intake(broker).receive(raw, "mllp:10.0.0.9:5000")

    assert field(reply, "MSA", 1) == "AR"
    assert field(reply, "ERR", 3) == "202^Unsupported processing id^HL70357"
    assert field(reply, "ERR", 2) == "MSH^1^11"
    assert broker.on(EVENTS.name) == []
    [(_, kept, _, headers)] = broker.on(DEAD_LETTER.name)
    assert kept == raw
    assert f"MSH-11 processing id {processing_id} (" in issue(headers)["diagnostics"]


async def test_a_test_hub_that_takes_training_messages_says_so_in_its_settings() -> None:
    broker = RecordingBroker()
    raw = an_adt(control_id="TRN2").replace(b"|P|2.4|", b"|T|2.4|")
    test_hub = HospitalIntake(broker, key_secret=b"intake", clock=lambda: NOW, processing_ids=("P", "T"))  # type: ignore[arg-type]

    [reply] = await test_hub.receive(raw, "mllp:10.0.0.9:5000")

    assert field(reply, "MSA", 1) == "AA"
    assert len(broker.on(EVENTS.name)) == 1
