"""An NHS number that fails its check beside a hospital number: the message is accepted on the hospital
number (AA), the bad number is dropped, never stored as an NHS number, and the ACK carries an ERR of
severity W naming PID-3. Alone, or beside another NHS number, or in a merge, it is still refused AE."""

from __future__ import annotations

from datetime import UTC, datetime

import orjson
import pytest

from adapters.hl7v2.message import read_header
from adapters.hl7v2.replies import ack
from adapters.hl7v2.service import HospitalIntake
from adapters.hl7v2.to_fhir import map_message, map_with_warnings
from hub.core.errors import InvalidMessageError
from schemas.topics import DEAD_LETTER, EVENTS
from tests.builders import an_adt
from tests.fakes import RecordingBroker

SECRET = b"bad-nhs"
NOW = datetime(2026, 11, 25, 9, 30, tzinfo=UTC)
NHS = "https://fhir.nhs.uk/Id/nhs-number"
BAD = "9434760012"  # fails the Modulus 11 check


def the_walkthrough_message(control_id: str = "W1") -> bytes:
    """PID-3 as the trust's engineer sent it: `9434760012^^^NHS^NH~MRN005^^^RCB^MR`."""
    return an_adt(nhs_number=BAD, mrn="MRN005", sender="RCB", control_id=control_id)


def segments(reply: bytes) -> list[list[str]]:
    return [line.split("|") for line in reply.decode().split("\r") if line]


def test_the_bad_nhs_number_is_dropped_and_the_person_is_known_by_the_hospital_number() -> None:
    mapped = map_with_warnings(the_walkthrough_message(), key_secret=SECRET)
    [event] = mapped.events
    [patient] = [e["resource"] for e in event.payload["entry"] if e["resource"]["resourceType"] == "Patient"]
    assert [i["value"] for i in patient["identifier"]] == ["MRN005"]
    assert all(i["system"] != NHS for i in patient["identifier"])
    assert BAD not in orjson.dumps(event.payload).decode()
    [hospital_number_only] = map_message(an_adt(nhs_number=None, mrn="MRN005", sender="RCB"), key_secret=SECRET)
    assert event.person_key == hospital_number_only.person_key  # keyed as if the number had not been sent
    [warning] = mapped.warnings
    assert warning.expression == ("PID-3",)
    assert "Modulus 11" in warning.diagnostics and "dropped" in warning.diagnostics


def test_the_ack_is_aa_with_an_err_of_severity_w_naming_pid_3() -> None:
    raw = the_walkthrough_message()
    header = read_header(raw)
    warnings = map_with_warnings(raw, key_secret=SECRET).warnings
    reply = ack(header, None, control_id="ACK1", now=NOW, warnings=warnings)
    [_, msa, err] = segments(reply)
    assert msa[1:3] == ["AA", "W1"]
    assert err[2] == "PID^1^3"  # ERR-2
    assert err[3] == "102^Data type error^HL70357"  # ERR-3
    assert err[4] == "W"  # ERR-4 severity: a warning, the message accepted
    assert "dropped" in err[8] and BAD not in err[8]


async def test_the_hub_accepts_it_publishes_it_and_keeps_no_dead_letter() -> None:
    broker = RecordingBroker()
    hub = HospitalIntake(broker, key_secret=SECRET, clock=lambda: NOW)  # type: ignore[arg-type]
    outcome, reply = await hub.accept(the_walkthrough_message(), "mllp:test")
    assert (outcome.code, outcome.events) == ("AA", 1)
    assert [s[4] for s in segments(reply) if s[0] == "ERR"] == ["W"]
    assert len(broker.on(EVENTS.name)) == 1
    assert broker.on(DEAD_LETTER.name) == []
    [outcomes] = await hub.ingest(the_walkthrough_message("W2"), "file:x")  # a file says so too
    assert outcomes.code == "AA" and "dropped" in (outcomes.reason or "")


@pytest.mark.parametrize(
    "raw",
    [
        an_adt(nhs_number=BAD, mrn=None),  # nothing else to know the person by
        an_adt(nhs_number=f"9434765919^^^NHS^NH~{BAD}", mrn="M1"),  # beside a good NHS number: which is theirs?
        an_adt(trigger="A40", nhs_number=BAD, mrn="M1", merged_mrn="M0"),  # a merge is decided on trusted ids
    ],
    ids=["alone", "beside-another-nhs-number", "in-a-merge"],
)
async def test_otherwise_a_bad_nhs_number_is_still_refused_ae_naming_pid_3(raw: bytes) -> None:
    with pytest.raises(InvalidMessageError) as refused:
        map_message(raw, key_secret=SECRET)
    assert refused.value.expression[0].startswith("PID-3")
    broker = RecordingBroker()
    outcome, _ = await HospitalIntake(broker, key_secret=SECRET, clock=lambda: NOW).accept(raw, "mllp:t")  # type: ignore[arg-type]
    assert (outcome.code, outcome.dead_lettered) == ("AE", True)
