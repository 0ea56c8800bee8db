"""Every public HL7 v2 sample in ../shared/samples, through the adapter, with the outcome a hospital
should get: accepted (AA) with these event types, refused as unsupported (AR), or invalid (AE)
naming the field. Files are read in place (some are GPL test data; none is copied into the code)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from adapters.hl7v2.message import read_header, split_batch
from adapters.hl7v2.replies import ack
from adapters.hl7v2.to_fhir import map_message
from hub.core.errors import InvalidMessageError, UnsupportedMessageError

SAMPLES = Path(__file__).resolve().parents[3] / "shared" / "samples" / "hl7v2"
EXPECTED: dict[str, tuple[str, object]] = {
    "hapi-hl7v2/hapi-v2.4-ADT_A01.hl7": ("AA", ["encounter.admitted"]),
    "hapi-hl7v2/hapi-v2.4-ADT_A24-nonstandard-delimiters.hl7": ("AR", ("MSH-9.2",)),
    "hapi-hl7v2/hapi-v2.5-ADT_A03-italian-repeating-ids.hl7": ("AA", ["encounter.discharged"]),
    "inhealthcare/inhealthcare-v2.4-ADT_A28-nsts-status.hl7": ("AE", ("MSH-4",)),
    "microsoft-fhir-converter/ms-v2.3-ADT_A01-bom-trailing-spaces.hl7": ("AA", ["encounter.admitted"]),
    "microsoft-fhir-converter/ms-v2.3-ADT_A04-no-EVN.hl7": ("AR", ("MSH-9.2",)),
    "microsoft-fhir-converter/ms-v2.5.1-ADT_A01-minimal.hl7": ("AA", ["encounter.admitted"]),
    "microsoft-fhir-converter/ms-v2.8-ADT_A01-full.hl7": ("AA", ["encounter.admitted"]),
    "microsoft-fhir-converter/ms-v2.8-ADT_A03.hl7": ("AA", ["encounter.discharged"]),
    "microsoft-fhir-converter/ms-v2.8-ADT_A08.hl7": ("AA", ["patient.updated"]),
    "microsoft-fhir-converter/ms-v2.8-ADT_A40-two-merges.hl7": ("AA", ["patient.merged", "patient.merged"]),
    "nhs-itk/itk-v2.4-ADT_A01-admit-inpatient.hl7": ("AA", ["encounter.admitted"]),
    "nhs-itk/itk-v2.4-ADT_A03-discharge.hl7": ("AA", ["encounter.discharged"]),
    "nhs-itk/itk-v2.4-ADT_A04-register-outpatient.hl7": ("AR", ("MSH-9.2",)),
    "nhs-itk/itk-v2.4-ADT_A05-pre-admit.hl7": ("AR", ("MSH-9.2",)),
    "nhs-itk/itk-v2.4-ADT_A28-new-patient.hl7": ("AE", ("PID-7",)),
    "nhs-itk/itk-v2.4-ADT_A31-update-patient.hl7": ("AE", ("PID-7",)),
    "python-hl7/python-hl7-v2.3-ADT_A01-cerner-quoted-nulls.hl7": ("AA", ["encounter.admitted"]),
    "python-hl7/python-hl7-v2.5-batch-BHS-ADT_A04.hl7": ("AR", ("MSH-9.2",)),
    "uclh-emap/uclh-epic-v2.4-ADT_A01.hl7": ("AA", ["encounter.admitted"]),
    "uclh-emap/uclh-epic-v2.4-ADT_A03-death.hl7": ("AA", ["encounter.discharged"]),
    "uclh-emap/uclh-epic-v2.4-ADT_A03-discharge.hl7": ("AA", ["encounter.discharged"]),
    "uclh-emap/uclh-epic-v2.4-ADT_A08.hl7": ("AA", ["patient.updated"]),
    "uclh-emap/uclh-epic-v2.4-ADT_A11-cancel-admit.hl7": ("AA", ["encounter.admission-cancelled"]),
    "uclh-emap/uclh-epic-v2.4-ADT_A13-cancel-discharge.hl7": ("AA", ["encounter.discharge-cancelled"]),
    "uclh-emap/uclh-epic-v2.4-ADT_A15-escape-sequence.hl7": ("AR", ("MSH-9.2",)),
    "uclh-emap/uclh-epic-v2.4-ADT_A40-merge.hl7": ("AA", ["patient.merged"]),
}
NOW = datetime(2026, 11, 25, 9, 0, tzinfo=UTC)
pytestmark = pytest.mark.skipif(not SAMPLES.is_dir(), reason=f"no samples folder at {SAMPLES}")


def outcome(message: bytes) -> tuple[str, object]:
    try:
        events = map_message(message, key_secret=b"sample-secret")
    except UnsupportedMessageError as refused:
        return "AR", refused.expression
    except InvalidMessageError as invalid:
        return "AE", invalid.expression
    return "AA", [".".join(e.event_type.split(".")[3:5]) for e in events]


def test_the_table_names_every_sample_file() -> None:
    on_disk = {str(p.relative_to(SAMPLES)) for p in SAMPLES.rglob("*.hl7")}
    assert on_disk == set(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_each_sample_gets_its_expected_outcome_and_a_well_formed_ack(name: str) -> None:
    messages = split_batch((SAMPLES / name).read_bytes())
    assert messages, name
    for message in messages:
        code, detail = outcome(message)
        assert (code, detail) == EXPECTED[name]
        header = read_header(message)
        error = None
        if code != "AA":
            try:
                map_message(message, key_secret=b"sample-secret")
            except InvalidMessageError as exc:
                error = exc
        reply = ack(header, error, control_id="ACK1", now=NOW)
        segments = reply.split(b"\r")
        bar = (header.field_separator if header else "|").encode()  # the sender's own delimiters
        assert segments[0].startswith(b"MSH" + bar)
        msa = next(s for s in segments if s.startswith(b"MSA")).split(bar)
        assert msa[1].decode() == code
        assert (next((s for s in segments if s.startswith(b"ERR")), None) is not None) == (code != "AA")


def test_accepted_samples_carry_valid_uk_core_patients() -> None:
    nhs = "https://fhir.nhs.uk/Id/nhs-number"
    for name, (code, _) in EXPECTED.items():
        if code != "AA":
            continue
        for message in split_batch((SAMPLES / name).read_bytes()):
            for event in map_message(message, key_secret=b"sample-secret"):
                patients = [e["resource"] for e in event.payload["entry"] if e["resource"]["resourceType"] == "Patient"]
                assert patients, name
                for patient in patients:
                    assert patient["id"] == event.person_key or patient.get("active") is False
                    for identifier in patient["identifier"]:
                        if identifier["system"] == nhs:
                            assert identifier["value"] not in event.person_key
                            assert len(identifier["value"]) == 10


def test_the_italian_sample_keeps_every_repeated_identifier() -> None:
    [event] = map_message(
        (SAMPLES / "hapi-hl7v2/hapi-v2.5-ADT_A03-italian-repeating-ids.hl7").read_bytes(), key_secret=b"s"
    )
    patient = event.payload["entry"][0]["resource"]
    assert len(patient["identifier"]) >= 2


def test_cerner_quoted_nulls_do_not_become_values() -> None:
    [event] = map_message(
        (SAMPLES / "python-hl7/python-hl7-v2.3-ADT_A01-cerner-quoted-nulls.hl7").read_bytes(), key_secret=b"s"
    )
    text = str(event.payload)
    assert "'\"\"'" not in text
