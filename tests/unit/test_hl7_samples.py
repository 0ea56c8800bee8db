"""Every public HL7 v2 sample in shared/samples, through the adapter, with the outcome a hospital
should get: accepted (AA) with these facts, refused as unsupported (AR), or invalid (AE) naming the
field. Files are read in place through the `samples` fixture (some are GPL test data; none is copied)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import hl7
import pytest

from adapters.hl7v2.message import Fields, parse, read_header, split_batch
from adapters.hl7v2.replies import ack
from adapters.hl7v2.to_fhir import MappedEvent, map_message
from hub.core import nhs_number
from hub.core.errors import InvalidMessageError, UnsupportedMessageError

NHS = "https://fhir.nhs.uk/Id/nhs-number"
SECRET = b"sample-secret"
NOW = datetime(2026, 11, 25, 9, 0, tzinfo=UTC)
REAL = "9434765919"  # a valid NHS number, for the ITK examples' placeholder


@dataclass(frozen=True)
class Accepted:
    """AA: the events (short type names), who sent it, the NHS number (None: none sent), the encounter."""

    events: tuple[str, ...]
    sender: str
    control_id: str
    nhs: str | None
    status: str | None = None  # Encounter.status; None: no Encounter in the bundle
    ended: bool = False  # Encounter.period.end present


@dataclass(frozen=True)
class Refused:
    """AR (UnsupportedMessageError) or AE (InvalidMessageError) naming the field, with its FHIR code."""

    code: str
    where: str
    issue: str


ADMITTED, DISCHARGED = ("encounter.admitted",), ("encounter.discharged",)
UPDATED, MERGED = ("patient.updated",), ("patient.merged",)
UNSUPPORTED_EVENT = Refused("AR", "MSH-9.2", "not-supported")
BAD_BIRTH_DATE = Refused("AE", "PID-7", "value")
PLACEHOLDER_ONLY = Refused("AE", "PID-3", "value")  # no identifier but a placeholder NHS number

EXPECTED: dict[str, Accepted | Refused] = {
    "hapi-hl7v2/hapi-v2.4-ADT_A01.hl7": Accepted(ADMITTED, "W", "22139243", None, "in-progress"),
    "hapi-hl7v2/hapi-v2.4-ADT_A24-nonstandard-delimiters.hl7": UNSUPPORTED_EVENT,
    "hapi-hl7v2/hapi-v2.5-ADT_A03-italian-repeating-ids.hl7": Accepted(
        DISCHARGED, "SANTER", "263206", None, "finished", ended=True
    ),
    "inhealthcare/inhealthcare-v2.4-ADT_A28-nsts-status.hl7": Refused("AE", "MSH-4", "required"),
    "microsoft-fhir-converter/ms-v2.3-ADT_A01-bom-trailing-spaces.hl7": Accepted(
        ADMITTED, "1", "599102", None, "in-progress"
    ),
    "microsoft-fhir-converter/ms-v2.3-ADT_A04-no-EVN.hl7": Accepted(  # (MSH-11 T: the intake answers AR)
        ADMITTED, "RDX", "1270326314", None, "in-progress"
    ),
    "microsoft-fhir-converter/ms-v2.5.1-ADT_A01-minimal.hl7": Accepted(
        ADMITTED, "GOOD HEALTH HOSPITAL", "MSG00001", None, "in-progress"
    ),
    "microsoft-fhir-converter/ms-v2.8-ADT_A01-full.hl7": Accepted(
        ADMITTED, "GHHSFacility", "MSG00001", None, "in-progress"
    ),
    "microsoft-fhir-converter/ms-v2.8-ADT_A03.hl7": Accepted(
        DISCHARGED, "GHHSFacility", "MSG00001", None, "finished", ended=True
    ),
    "microsoft-fhir-converter/ms-v2.8-ADT_A08.hl7": Accepted(  # finished: PV1-45 is valued
        UPDATED, "GHHSFacility", "MSG00001", None, "finished", ended=True
    ),
    "microsoft-fhir-converter/ms-v2.8-ADT_A40-two-merges.hl7": Accepted(
        MERGED * 2, "Ntierprise Clinic", "8919-40", None
    ),
    # the ITK examples identify their patient by 3333333333 alone: a placeholder, no one's NHS number
    # (see ITK below for what they map to with a real one)
    "nhs-itk/itk-v2.4-ADT_A01-admit-inpatient.hl7": PLACEHOLDER_ONLY,
    "nhs-itk/itk-v2.4-ADT_A03-discharge.hl7": PLACEHOLDER_ONLY,
    "nhs-itk/itk-v2.4-ADT_A04-register-outpatient.hl7": PLACEHOLDER_ONLY,
    "nhs-itk/itk-v2.4-ADT_A05-pre-admit.hl7": UNSUPPORTED_EVENT,
    "nhs-itk/itk-v2.4-ADT_A28-new-patient.hl7": PLACEHOLDER_ONLY,
    "nhs-itk/itk-v2.4-ADT_A31-update-patient.hl7": PLACEHOLDER_ONLY,
    "python-hl7/python-hl7-v2.3-ADT_A01-cerner-quoted-nulls.hl7": Accepted(
        ADMITTED, "HNA500", "Q150084616T145947960", None, "in-progress"
    ),
    "python-hl7/python-hl7-v2.5-batch-BHS-ADT_A04.hl7": Accepted(
        ADMITTED, "ABCHS", "12334456778890", None, "in-progress"
    ),
    "uclh-emap/uclh-epic-v2.4-ADT_A01.hl7": Accepted(ADMITTED, "UCLH", "31644", None, "in-progress"),
    "uclh-emap/uclh-epic-v2.4-ADT_A03-death.hl7": Accepted(DISCHARGED, "UCLH", "eh", None, "finished", ended=True),
    "uclh-emap/uclh-epic-v2.4-ADT_A03-discharge.hl7": Accepted(DISCHARGED, "UCLH", "eh", None, "finished", ended=True),
    "uclh-emap/uclh-epic-v2.4-ADT_A08.hl7": Accepted(UPDATED, "UCLH", "31644ZZZ", None, "unknown"),
    "uclh-emap/uclh-epic-v2.4-ADT_A11-cancel-admit.hl7": Accepted(
        ("encounter.admission-cancelled",), "UCLH", "100000", None, "cancelled"
    ),
    "uclh-emap/uclh-epic-v2.4-ADT_A13-cancel-discharge.hl7": Accepted(
        ("encounter.discharge-cancelled",), "UCLH", "100000", None, "in-progress", ended=False
    ),
    "uclh-emap/uclh-epic-v2.4-ADT_A15-escape-sequence.hl7": UNSUPPORTED_EVENT,
    "uclh-emap/uclh-epic-v2.4-ADT_A40-merge.hl7": Accepted(MERGED, "RRV03", "PPPPP111111111111111", None),
}
BATCHES = {"python-hl7/python-hl7-v2.5-batch-BHS-ADT_A04.hl7"}


def messages_in(samples: Path, name: str) -> list[bytes]:
    raw = (samples / "hl7v2" / name).read_bytes()
    messages = split_batch(raw)
    assert len(messages) == 1, name  # every file holds one message (the batch file: one in a BHS/BTS)
    assert (raw.startswith((b"BHS", b"FHS"))) == (name in BATCHES)
    return messages


def short(event: MappedEvent) -> str:
    return ".".join(event.event_type.split(".")[3:5])


def entries(event: MappedEvent, kind: str) -> list[dict[str, Any]]:
    return [e["resource"] for e in event.payload["entry"] if e["resource"]["resourceType"] == kind]


def test_the_table_names_every_hl7_v2_sample_file(samples: Path) -> None:
    hl7_dir = samples / "hl7v2"
    on_disk = {str(p.relative_to(hl7_dir)) for p in hl7_dir.rglob("*") if p.is_file()}
    assert on_disk == set(EXPECTED)
    elsewhere = [
        p
        for p in samples.rglob("*")
        if p.is_file() and hl7_dir not in p.parents and p.read_bytes().lstrip(b"\xef\xbb\xbf")[:3] in (b"MSH", b"BHS")
    ]
    assert elsewhere == []


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_each_sample_gets_its_expected_outcome(samples: Path, name: str) -> None:
    expected = EXPECTED[name]
    [message] = messages_in(samples, name)
    if isinstance(expected, Refused):
        kind = UnsupportedMessageError if expected.code == "AR" else InvalidMessageError
        with pytest.raises(kind) as refused:
            map_message(message, key_secret=SECRET)
        assert (type(refused.value) is UnsupportedMessageError) == (expected.code == "AR")
        assert refused.value.expression == (expected.where,)
        assert refused.value.code == expected.issue
        return
    events = map_message(message, key_secret=SECRET)
    assert tuple(short(e) for e in events) == expected.events
    for event in events:
        assert (event.sender, event.control_id, event.source) == (
            expected.sender,
            expected.control_id,
            f"urn:ods:{expected.sender}",
        )
        survivor = entries(event, "Patient")[0]
        assert survivor["id"] == event.person_key
        nhs = [i["value"] for i in survivor["identifier"] if i["system"] == NHS]
        assert nhs == ([expected.nhs] if expected.nhs else [])
        if expected.nhs:
            assert survivor["identifier"][0]["system"] == NHS
            assert nhs_number.is_valid(expected.nhs)
            assert expected.nhs not in event.person_key
        statuses = [(r["status"], "end" in r.get("period", {})) for r in entries(event, "Encounter")]
        assert statuses == ([(expected.status, expected.ended)] if expected.status else [])


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_each_sample_gets_a_well_formed_ack_in_its_own_delimiters(samples: Path, name: str) -> None:
    expected = EXPECTED[name]
    [message] = messages_in(samples, name)
    header = read_header(message)
    assert header is not None
    error: InvalidMessageError | None = None
    try:
        map_message(message, key_secret=SECRET)
    except InvalidMessageError as exc:
        error = exc
    reply = ack(header, error, control_id="ACK1", now=NOW)
    bar = header.field_separator.encode()
    lines = reply.split(b"\r")
    assert lines[-1] == b""
    assert lines[0].startswith(b"MSH" + bar + header.encoding_characters.encode() + bar)
    msa = lines[1].split(bar)
    assert msa[:3] == [b"MSA", (expected.code if isinstance(expected, Refused) else "AA").encode(), msa[2]]
    assert msa[2].decode() == header.control_id
    err = [line for line in lines if line.startswith(b"ERR")]
    if isinstance(expected, Refused):
        [only] = err
        segment, _, field = expected.where.partition("-")
        assert only.split(bar)[2].startswith(f"{segment}{header.encoding_characters[0]}1".encode())
        assert field.split(".")[0].encode() in only.split(bar)[2]
    else:
        assert err == []


def test_the_nonstandard_delimiter_sample_is_read_by_its_own_msh_1_and_msh_2(samples: Path) -> None:
    [message] = messages_in(samples, "hapi-hl7v2/hapi-v2.4-ADT_A24-nonstandard-delimiters.hl7")
    header = read_header(message)
    assert header is not None
    assert (header.field_separator, header.encoding_characters) == ("^", "~|\\&")
    assert (header.message_type, header.trigger_event) == ("ADT", "A24")
    reply = ack(header, None, control_id="A", now=NOW)
    assert reply.startswith(b"MSH^~|\\&^")
    assert b"\rMSA^AA^" in reply


def test_the_batch_sample_splits_into_one_a04_without_the_envelope(samples: Path) -> None:
    [message] = messages_in(samples, "python-hl7/python-hl7-v2.5-batch-BHS-ADT_A04.hl7")
    assert message.startswith(b"MSH|")
    assert b"BHS" not in message and b"BTS" not in message
    header = read_header(message)
    assert header is not None
    assert (header.trigger_event, header.control_id, header.charset) == ("A04", "12334456778890", "ASCII")


def test_the_bom_sample_parses_where_strict_parsers_refuse_it(samples: Path) -> None:
    raw = (samples / "hl7v2/microsoft-fhir-converter/ms-v2.3-ADT_A01-bom-trailing-spaces.hl7").read_bytes()
    assert raw.startswith(b"\xef\xbb\xbfMSH")
    with pytest.raises(Exception):  # noqa: B017, PT011 - python-hl7 alone rejects it; the adapter must not
        hl7.parse(raw.decode("utf-8"))
    [event] = map_message(raw, key_secret=SECRET)
    [patient] = entries(event, "Patient")
    assert patient["name"][0]["family"] == "DUCK"
    assert event.event_time == datetime(2005, 1, 9, 21, 55, 2, tzinfo=UTC)  # EVN-2 with +0700


def itk(samples: Path, name: str) -> bytes:
    """An ITK example with a real NHS number where it has the placeholder 3333333333 (alone in PID-3)."""
    raw = (samples / "hl7v2/nhs-itk" / name).read_bytes()
    assert raw.count(b"|3333333333^^^NHS|") == 1
    return raw.replace(b"|3333333333^^^NHS|", f"|{REAL}^^^NHS|".encode())


def test_a_placeholder_nhs_number_alone_is_refused_naming_it_and_beside_a_local_one_is_left_out(
    samples: Path,
) -> None:
    raw = (samples / "hl7v2/nhs-itk/itk-v2.4-ADT_A01-admit-inpatient.hl7").read_bytes()
    with pytest.raises(InvalidMessageError) as refused:
        map_message(raw, key_secret=SECRET)
    assert "3333333333, which is a placeholder" in str(refused.value)
    # two different UCLH test patients sent with 9999999999 beside their hospital numbers: two people
    uclh = samples / "hl7v2/uclh-emap"
    [admitted] = map_message((uclh / "uclh-epic-v2.4-ADT_A01.hl7").read_bytes(), key_secret=SECRET)
    [merged] = map_message((uclh / "uclh-epic-v2.4-ADT_A40-merge.hl7").read_bytes(), key_secret=SECRET)
    assert admitted.person_key != merged.person_key
    for event in (admitted, merged):
        assert all(i["system"] != NHS for p in entries(event, "Patient") for i in p["identifier"])


@pytest.mark.parametrize("name", ["itk-v2.4-ADT_A28-new-patient.hl7", "itk-v2.4-ADT_A31-update-patient.hl7"])
def test_the_itk_patient_messages_with_a_real_nhs_number_are_refused_for_their_month_13_birth_date(
    samples: Path, name: str
) -> None:
    with pytest.raises(InvalidMessageError) as refused:  # PID-7 196513121515: month 13
        map_message(itk(samples, name), key_secret=SECRET)
    assert refused.value.expression == ("PID-7",)


def test_the_itk_discharge_maps_the_uk_facts(samples: Path) -> None:
    [event] = map_message(itk(samples, "itk-v2.4-ADT_A03-discharge.hl7"), key_secret=SECRET)
    [patient], [encounter] = entries(event, "Patient"), entries(event, "Encounter")
    [practice] = entries(event, "Organization")
    assert patient["identifier"][0] == {"system": NHS, "value": REAL}  # PID-32 is ED, not NSTS
    assert practice["identifier"] == [{"system": "https://fhir.nhs.uk/Id/ods-organization-code", "value": "Y06601"}]
    assert patient["generalPractitioner"] == [{"reference": f"Organization/{practice['id']}"}]
    assert encounter["period"] == {"start": "2010-03-30T11:00:00+01:00", "end": "2010-03-31T17:15:00+01:00"}
    assert encounter["hospitalization"]["dischargeDisposition"]["coding"][0]["code"] == "19"


def test_the_itk_admission_carries_the_gp_practice(samples: Path) -> None:
    [event] = map_message(itk(samples, "itk-v2.4-ADT_A01-admit-inpatient.hl7"), key_secret=SECRET)
    [practice] = entries(event, "Organization")
    assert (practice["name"], practice["identifier"][0]["value"]) == ("MALTON GP PRACTICE", "Y06601")
    [patient] = entries(event, "Patient")
    assert patient["birthDate"] == "1965-12-13"
    assert patient["gender"] == "female"  # PID-8 `2`, NHS Data Dictionary code


def test_the_same_itk_patient_has_one_person_key_across_admission_and_discharge(samples: Path) -> None:
    [admitted] = map_message(itk(samples, "itk-v2.4-ADT_A01-admit-inpatient.hl7"), key_secret=SECRET)
    [discharged] = map_message(itk(samples, "itk-v2.4-ADT_A03-discharge.hl7"), key_secret=SECRET)
    assert admitted.person_key == discharged.person_key
    assert admitted.event_id != discharged.event_id


def test_the_uclh_death_sample_marks_the_patient_deceased_with_free_text_disposition(samples: Path) -> None:
    raw = (samples / "hl7v2/uclh-emap/uclh-epic-v2.4-ADT_A03-death.hl7").read_bytes()
    [event] = map_message(raw, key_secret=SECRET)
    [patient], [encounter] = entries(event, "Patient"), entries(event, "Encounter")
    assert patient["deceasedDateTime"] == "2013-02-11T08:34:56+00:00"
    assert encounter["hospitalization"]["dischargeDisposition"] == {"text": "Home"}


def test_the_uclh_merge_retires_the_old_mrn(samples: Path) -> None:
    raw = (samples / "hl7v2/uclh-emap/uclh-epic-v2.4-ADT_A40-merge.hl7").read_bytes()
    [event] = map_message(raw, key_secret=SECRET)
    survivor, retired = entries(event, "Patient")
    assert retired["active"] is False
    assert [i["value"] for i in retired["identifier"]] == ["40800000"]
    assert survivor["link"][0] == {"other": {"reference": f"Patient/{retired['id']}"}, "type": "replaces"}
    assert retired["link"][0] == {"other": {"reference": f"Patient/{survivor['id']}"}, "type": "replaced-by"}


def test_the_two_merge_sample_gives_two_distinct_events(samples: Path) -> None:
    raw = (samples / "hl7v2/microsoft-fhir-converter/ms-v2.8-ADT_A40-two-merges.hl7").read_bytes()
    first, second = map_message(raw, key_secret=SECRET)
    assert first.event_id != second.event_id
    assert first.person_key != second.person_key


def test_the_italian_sample_keeps_every_repeated_identifier_with_a_value(samples: Path) -> None:
    raw = (samples / "hl7v2/hapi-hl7v2/hapi-v2.5-ADT_A03-italian-repeating-ids.hl7").read_bytes()
    [event] = map_message(raw, key_secret=SECRET)
    [patient] = entries(event, "Patient")
    assert [(i["system"].rsplit("/", 1)[-1], i["value"]) for i in patient["identifier"]] == [
        ("PK", "5520255"),
        ("CF", "ZZZZZZ83M64Z148R"),
        ("SSN", "ZZZZZZ83M64Z148R"),
    ]  # the fourth repeat (^^^^TEAM) has no ID value


def test_cerner_quoted_nulls_do_not_become_values(samples: Path) -> None:
    raw = (samples / "hl7v2/python-hl7/python-hl7-v2.3-ADT_A01-cerner-quoted-nulls.hl7").read_bytes()
    assert b'|""|' in raw
    [event] = map_message(raw, key_secret=SECRET)
    assert '""' not in str(event.payload)
    [encounter] = entries(event, "Encounter")
    assert encounter["period"] == {"start": "2014-02-10T22:53:00+00:00"}  # PV1-45 is "" : no end


def test_the_escape_sequence_sample_unescapes_and_is_refused_only_for_its_event(samples: Path) -> None:
    raw = (samples / "hl7v2/uclh-emap/uclh-epic-v2.4-ADT_A15-escape-sequence.hl7").read_bytes()
    f = Fields(parse(raw))
    assert f.get(f.first("PV1"), 10) == "A&E"  # sent as A\T\E
    accepted = raw.replace(b"|ADT^A15", b"|ADT^A08", 1).replace(b"EVN|A15", b"EVN|A08", 1)
    [event] = map_message(accepted, key_secret=SECRET)
    assert short(event) == "patient.updated"
    [practice] = entries(event, "Organization")
    assert practice["identifier"][0]["value"] == "E85124"  # PD1-3 with empty repeats after it
    [encounter] = entries(event, "Encounter")
    assert encounter["period"] == {"start": "2022-04-21T19:50:00+01:00"}  # BST
    assert encounter["class"]["code"] == "EMER"
