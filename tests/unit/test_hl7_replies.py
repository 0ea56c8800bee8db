"""HubError -> HL7 v2 ACK: MSA-1 AA/AE/AR, MSA-2 echoes MSH-10, ERR names the place and the reason."""

from __future__ import annotations

from datetime import UTC, datetime

import hl7
import pytest

from adapters.hl7v2.message import Header, read_header
from adapters.hl7v2.replies import ack
from adapters.hl7v2.to_fhir import map_message
from hub.core.errors import (
    BrokerUnavailableError,
    DuplicateEventError,
    HubError,
    InvalidMessageError,
    UnsupportedMessageError,
)
from tests.builders import an_adt

NOW = datetime(2026, 11, 25, 9, 30, 15, tzinfo=UTC)


def segments(reply: bytes, sep: str = "|") -> dict[str, list[str]]:
    """Each segment of an ACK by name, split on the field separator (MSH-1 is index 1)."""
    assert reply.endswith(b"\r")
    out = {}
    for line in reply.decode("utf-8").split("\r")[:-1]:
        name = line[:3]
        out[name] = [name, sep, *line[4:].split(sep)] if name == "MSH" else line.split(sep)
    return out


def error_of(raw: bytes) -> HubError:
    with pytest.raises(HubError) as refused:
        map_message(raw, key_secret=b"replies")
    return refused.value


def header(raw: bytes) -> Header:
    found = read_header(raw)
    assert found is not None
    return found


def test_aa_echoes_the_control_id_and_carries_no_err() -> None:
    raw = an_adt(trigger="A03", control_id="CTRL-77")
    reply = ack(header(raw), None, control_id="ACK-1", now=NOW)
    seg = segments(reply)
    assert list(seg) == ["MSH", "MSA"]
    assert seg["MSA"][1:3] == ["AA", "CTRL-77"]


def test_the_ack_header_swaps_sender_and_receiver_and_names_ack_for_the_trigger() -> None:
    raw = an_adt(trigger="A03", sender="RAB", control_id="C1")
    msh = segments(ack(header(raw), None, control_id="ACK-9", now=NOW))["MSH"]
    assert msh[2] == "^~\\&"
    assert msh[3:7] == ["CAREHUB", "CAREHUB", "PAS", "RAB"]
    assert msh[7] == "20261125093015+0000"
    assert msh[9] == "ACK^A03^ACK"
    assert msh[10] == "ACK-9"
    assert msh[11:13] == ["P", "2.4"]
    assert msh[18] == "UNICODE UTF-8"


def test_the_ack_is_itself_parseable_hl7() -> None:
    raw = an_adt(nhs_number="9434765910", mrn=None)
    reply = ack(header(raw), error_of(raw), control_id="ACK-2", now=NOW)
    message = hl7.parse(reply.decode())
    assert str(message.segment("MSA")[1]) == "AE"
    assert str(message.segment("MSA")[2]) == "MSG0001"
    back = read_header(reply)
    assert back is not None
    assert (back.message_type, back.trigger_event, back.control_id) == ("ACK", "A03", "ACK-2")


def test_ae_for_a_bad_nhs_number_names_pid_3_without_the_number() -> None:
    raw = an_adt(nhs_number="9434765910", mrn=None, control_id="C-NHS")
    reply = ack(header(raw), error_of(raw), control_id="ACK-3", now=NOW)
    seg = segments(reply)
    assert seg["MSA"][1:3] == ["AE", "C-NHS"]
    err = seg["ERR"]
    assert err[1].split("^")[:3] == ["PID", "1", "3"]  # v2.4 ERR-1 (ELD)
    assert err[2] == "PID^1^3"  # v2.5 ERR-2 (ERL): segment^sequence^field
    assert err[3] == "102^Data type error^HL70357"
    assert err[4] == "E"
    assert "Modulus 11" in err[8]
    assert b"9434765910" not in reply


def test_ae_for_a_missing_control_id_is_required_field_missing_at_msh_10() -> None:
    raw = an_adt(control_id="")
    seg = segments(ack(header(raw), error_of(raw), control_id="ACK-4", now=NOW))
    assert seg["MSA"][1:3] == ["AE", ""]
    assert seg["ERR"][2] == "MSH^1^10"
    assert seg["ERR"][3] == "101^Required field missing^HL70357"
    assert seg["ERR"][8] == "MSH-10 (message control ID) is required"


def test_ae_for_an_impossible_birth_date_names_pid_7() -> None:
    raw = an_adt().replace(b"|19400312|", b"|19401312|")
    seg = segments(ack(header(raw), error_of(raw), control_id="ACK-5", now=NOW))
    assert seg["MSA"][1] == "AE"
    assert seg["ERR"][2] == "PID^1^7"
    assert "19401312" in seg["ERR"][8]
    assert "not a real date" in seg["ERR"][8]


def test_ar_for_an_unsupported_event_names_msh_9_component_2() -> None:
    raw = an_adt(trigger="A24", control_id="C-24")
    reply = ack(header(raw), error_of(raw), control_id="ACK-6", now=NOW)
    seg = segments(reply)
    assert seg["MSA"][1:3] == ["AR", "C-24"]
    assert seg["ERR"][2] == "MSH^1^9^1^2"  # segment^sequence^field^repetition^component
    assert seg["ERR"][3] == "201^Unsupported event code^HL70357"
    assert seg["ERR"][8].startswith("ADT\\S\\A24 is not supported")


def test_ar_for_an_unsupported_version_is_condition_203() -> None:
    raw = an_adt(version="3.0")
    seg = segments(ack(header(raw), error_of(raw), control_id="ACK-7", now=NOW))
    assert seg["MSA"][1] == "AR"
    assert seg["ERR"][2] == "MSH^1^12"
    assert seg["ERR"][3] == "203^Unsupported version id^HL70357"


def test_ar_for_another_message_type_is_condition_200() -> None:
    raw = an_adt().replace(b"|ADT^A03^ADT_A03|", b"|ORU^R01^ORU_R01|")
    seg = segments(ack(header(raw), error_of(raw), control_id="ACK-8", now=NOW))
    assert seg["MSA"][1] == "AR"
    assert seg["ERR"][2] == "MSH^1^9"
    assert seg["ERR"][3] == "200^Unsupported message type^HL70357"


@pytest.mark.parametrize(
    ("error", "condition"),
    [
        (InvalidMessageError("x", ("PV1",), code="required"), "101^Required field missing"),
        (InvalidMessageError("x", ("MSH",), code="structure"), "100^Segment sequence error"),
        (InvalidMessageError("x", ("PID-8",), code="code-invalid"), "103^Table value not found"),
        (DuplicateEventError("x", ("MSH-10",)), "205^Duplicate key identifier"),
        (BrokerUnavailableError("Kafka down, send again"), "207^Application internal error"),
    ],
)
def test_error_codes_map_to_hl7_table_0357(error: HubError, condition: str) -> None:
    seg = segments(ack(header(an_adt()), error, control_id="A", now=NOW))
    assert seg["MSA"][1] == "AE"
    assert seg["ERR"][3] == condition + "^HL70357"


def test_an_error_without_a_place_still_gives_a_readable_err() -> None:
    error = BrokerUnavailableError("Kafka did not acknowledge; send it again")
    seg = segments(ack(header(an_adt()), error, control_id="A", now=NOW))
    assert seg["ERR"][2] == ""
    assert seg["ERR"][8] == "Kafka did not acknowledge; send it again"


def test_delimiters_in_the_diagnostic_are_escaped_so_the_err_stays_one_segment() -> None:
    error = InvalidMessageError("bad | and ^ and ~ and & and \\ here\rand a line", ("PV1-3.2",))
    reply = ack(header(an_adt()), error, control_id="A", now=NOW)
    assert reply.count(b"\r") == 3
    seg = segments(reply)
    assert len(seg["ERR"]) == 9
    assert seg["ERR"][8] == "bad \\F\\ and \\S\\ and \\R\\ and \\T\\ and \\E\\ here and a line"
    assert seg["ERR"][2] == "PV1^1^3^1^2"
    message = hl7.parse(reply.decode())
    assert message.unescape(str(message.segment("ERR")[8])) == "bad | and ^ and ~ and & and \\ here and a line"


def test_msa_3_text_is_short_and_err_keeps_the_whole_diagnostic() -> None:
    error = InvalidMessageError("x" * 300, ("PID-5",))
    seg = segments(ack(header(an_adt()), error, control_id="A", now=NOW))
    assert len(seg["MSA"][3]) == 80
    assert seg["ERR"][8] == "x" * 300


def test_an_ack_for_an_unparseable_frame_is_a_well_formed_ar() -> None:
    error = UnsupportedMessageError("not an HL7 v2 message", ("MSH",), code="structure")
    reply = ack(read_header(b"\x00\x01garbage"), error, control_id="ACK-X", now=NOW)
    assert reply.startswith(b"MSH|^~\\&|CAREHUB|")
    seg = segments(reply)
    assert seg["MSH"][9] == "ACK^^ACK"
    assert seg["MSH"][10] == "ACK-X"
    assert seg["MSH"][11:13] == ["P", "2.4"]
    assert seg["MSA"][1:3] == ["AR", ""]
    assert seg["ERR"][2] == "MSH^1"
    assert seg["ERR"][3] == "100^Segment sequence error^HL70357"
    parsed = hl7.parse(reply.decode())
    assert str(parsed.segment("MSA")[1]) == "AR"


def test_the_ack_uses_the_senders_own_delimiters() -> None:
    raw = b"MSH^~|\\&^PAS^RXX^HUB^HUB^20260101^^ADT~A24~ADT_A24^C9^P^2.4\rEVN^A24\r"
    error = UnsupportedMessageError("ADT~A24 | not supported", ("MSH-9.2",))
    reply = ack(read_header(raw), error, control_id="ACK-D", now=NOW)
    assert reply.startswith(b"MSH^~|\\&^HUB^HUB^PAS^RXX^")
    seg = segments(reply, sep="^")
    assert seg["MSH"][9] == "ACK~A24~ACK"
    assert seg["MSA"][1:3] == ["AR", "C9"]
    assert seg["ERR"][2] == "MSH~1~9~1~2"
    assert seg["ERR"][8] == "ADT\\S\\A24 \\R\\ not supported"  # here ~ is a component, | a repetition


def test_an_8859_1_sender_gets_a_latin_1_ack() -> None:
    raw = an_adt(family="JOSÉ", charset="8859/1", encoding="latin-1")
    error = InvalidMessageError("surname JOSÉ is on record twice", ("PID-5",))
    reply = ack(header(raw), error, control_id="A", now=NOW)
    assert b"JOS\xc9" in reply
    assert reply.decode("latin-1").split("\r")[0].endswith("|8859/1")


@pytest.mark.parametrize(
    "raw",
    [
        b"MSH^~\\&^^^^",  # field separator repeated as a component separator
        b"MSH\x80\x00\x01\x02\x03PAS\x80RXX",  # not printable ASCII
        b"MSH|^~\\|PAS|RXX|||20260101||ADT^A01|C1|P|2.3",  # three encoding characters
        b"MSH|ABCD|PAS|RXX",  # letters cannot be delimiters
    ],
    ids=["clash", "non-ascii", "three-chars", "letters"],
)
def test_unusable_sender_delimiters_fall_back_to_the_standard_ones(raw: bytes) -> None:
    error = InvalidMessageError("cannot read it", ("MSH",), code="structure")
    reply = ack(read_header(raw), error, control_id="ACK-F", now=NOW)
    assert reply.startswith(b"MSH|^~\\&|")
    back = read_header(reply)
    assert back is not None
    assert (back.field_separator, back.encoding_characters, back.control_id) == ("|", "^~\\&", "ACK-F")
    assert segments(reply)["ERR"][2] == "MSH^1"


def test_an_ack_without_an_error_for_a_headerless_frame_is_still_well_formed() -> None:
    seg = segments(ack(None, None, control_id="ACK-N", now=NOW))
    assert seg["MSH"][3] == "CAREHUB"
    assert seg["MSA"][1:4] == ["AA", "", "accepted"]


def test_the_err_names_the_repetition_and_the_segment_occurrence_where_the_bad_nhs_number_is() -> None:
    raw = an_adt(nhs_number=None, mrn="M100").replace(b"M100^^^RXX^MR", b"M100^^^RXX^MR~9434765910^^^NHS^NH")
    reply = segments(ack(header(raw), error_of(raw), control_id="ACK-R", now=NOW))  # (refused beside it too)
    err = reply["ERR"]
    assert reply["MSA"][1] == "AE"
    assert err[1].split("^")[:3] == ["PID", "1", "3"]  # (v2.4 ELD has no repetition)
    assert (err[2], err[4]) == ("PID^1^3^2", "E")  # ERL: the second repetition of PID-3
    pairs = (
        "PID|1||9434765919^^^NHS^NH||SMITH^ANN",
        "MRG|OLD1^^^RXX^MR",
        "PID|2||9434765919^^^NHS^NH||SMITH^ANN",
        "MRG|9434765910^^^NHS^NH",  # the second pair's MRG-1 fails the check
    )
    merge = an_adt(trigger="A40").split(b"\rPID|")[0] + b"\r" + "\r".join(pairs).encode() + b"\r"
    err = segments(ack(header(merge), error_of(merge), control_id="ACK-M", now=NOW))["ERR"]
    assert err[1].split("^")[:3] == ["MRG", "2", "1"]
    assert err[2] == "MRG^2^1"


@pytest.mark.parametrize(
    ("second", "erl"),
    [
        (("PID|2||9434765919^^^NHS^NH||SMITH^ANN||19401341", "MRG|OLD2^^^RXX^MR"), "PID^2^7"),  # month 13
        (("PID|2||9434765919^^^NHS^NH||SMITH^ANN", "MRG|9434765919^^^NHS^NH"), "MRG^2^1"),  # the survivor itself
    ],
    ids=["PID-7", "MRG-1"],
)
def test_every_error_in_an_a40s_second_pair_names_that_pair(second: tuple[str, str], erl: str) -> None:
    first = ("PID|1||9434765919^^^NHS^NH||SMITH^ANN", "MRG|OLD1^^^RXX^MR")
    merge = an_adt(trigger="A40").split(b"\rPID|")[0] + b"\r" + "\r".join((*first, *second)).encode() + b"\r"
    assert segments(ack(header(merge), error_of(merge), control_id="ACK-P", now=NOW))["ERR"][2] == erl


def test_an_empty_first_repetition_still_counts_in_the_erl() -> None:
    raw = an_adt(nhs_number=None, mrn=None).replace(b"PID|1||", b"PID|1||~9434765910^^^NHS^NH")
    assert segments(ack(header(raw), error_of(raw), control_id="ACK-E", now=NOW))["ERR"][2] == "PID^1^3^2"
