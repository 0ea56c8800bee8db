"""Raw HL7 v2 bytes -> python-hl7 message: line endings, BOM, MSH-18 character sets, escapes, batches."""

from __future__ import annotations

import logging

import pytest

from adapters.hl7v2.message import BOM, Fields, decode, parse, read_header, split_batch
from hub.core.errors import HubError, InvalidMessageError, UnsupportedMessageError
from tests.builders import an_adt


def pid_field(raw: bytes, n: int, component: int = 1) -> str:
    f = Fields(parse(raw))
    return f.get(f.first("PID"), n, component)


@pytest.mark.parametrize("seg_end", [b"\r", b"\n", b"\r\n"], ids=["CR", "LF", "CRLF"])
def test_cr_lf_and_crlf_segment_endings_give_the_same_segments(seg_end: bytes) -> None:
    message = parse(an_adt(seg_end=seg_end))
    assert [str(s[0]) for s in message] == ["MSH", "EVN", "PID", "PD1", "PV1"]
    assert pid_field(an_adt(seg_end=seg_end), 5) == "SMITH"


def test_mixed_segment_endings_and_blank_lines_are_normalised_to_cr() -> None:
    raw = an_adt(seg_end=b"\r\n").replace(b"\r\nPID", b"\n\n\rPID", 1)
    text = decode(raw)
    assert "\n" not in text
    assert text.count("\r") == 5
    assert text.endswith("\r")


def test_trailing_spaces_after_segments_are_dropped() -> None:
    raw = an_adt().replace(b"\r", b"   \r")
    assert pid_field(raw, 5, 2) == "JANE"
    assert " \r" not in decode(raw)


def test_utf_8_declared_in_msh_18_decodes_multibyte_names() -> None:
    raw = an_adt(family="JOSÉ", given="ZOË", charset="UNICODE UTF-8")
    assert "É".encode() in raw
    assert pid_field(raw, 5) == "JOSÉ"
    assert pid_field(raw, 5, 2) == "ZOË"


def test_8859_1_declared_in_msh_18_decodes_a_latin_1_e_acute() -> None:
    raw = an_adt(family="JOSÉ", charset="8859/1", encoding="latin-1")
    assert b"JOS\xc9" in raw  # one latin-1 byte, which is not valid UTF-8 on its own
    assert pid_field(raw, 5) == "JOSÉ"


def test_latin_1_bytes_under_a_utf_8_declaration_are_invalid_at_msh_18() -> None:
    raw = an_adt(family="JOSÉ", charset="UNICODE UTF-8", encoding="latin-1")
    with pytest.raises(InvalidMessageError) as refused:
        parse(raw)
    assert refused.value.expression == ("MSH-18",)


@pytest.mark.parametrize("seg_end", [b"\r", b"\r\n"], ids=["CR", "CRLF"])
def test_a_byte_not_in_the_declared_charset_is_located_in_the_message_then_its_segment_and_field(
    seg_end: bytes,
) -> None:
    raw = an_adt(family="JOSÉ", charset="UNICODE UTF-8", encoding="latin-1", seg_end=seg_end)
    at, pid = raw.index(b"\xc9"), raw.index(b"PID|")
    with pytest.raises(InvalidMessageError) as refused:
        parse(raw)
    assert refused.value.diagnostics == (
        f"byte 0xC9 at offset {at} of the message (counting from 0), in segment 3 (PID), field PID-5,"
        f" offset {at - pid} within that segment, is not valid UTF-8 as MSH-18 declares"
    )


def test_a_bad_byte_in_msh_or_in_a_batch_is_located_in_the_bytes_as_sent() -> None:
    raw = an_adt(charset="UNICODE UTF-8").replace(b"|PAS|", b"|P\xe9S|")
    with pytest.raises(InvalidMessageError) as refused:
        parse(raw)
    assert "offset 10 of the message (counting from 0), in segment 1 (MSH), field MSH-3," in refused.value.diagnostics
    envelope = b"FHS|^~\\&|PAS\r\nBHS|^~\\&|PAS\r\n"
    batch = envelope + an_adt(family="JOSÉ", encoding="latin-1", seg_end=b"\r\n") + b"BTS|1\r\nFTS|1\r\n"
    with pytest.raises(InvalidMessageError) as refused:
        parse(batch)
    at = batch.index(b"\xc9")
    assert f"at offset {at} of the message (counting from 0), in segment 3 (PID), field PID-5," in str(refused.value)


def test_an_empty_msh_18_defaults_to_utf_8() -> None:
    raw = an_adt(family="JOSÉ", charset="")
    assert pid_field(raw, 5) == "JOSÉ"


def test_an_unknown_character_set_is_unsupported_at_msh_18() -> None:
    with pytest.raises(UnsupportedMessageError) as refused:
        parse(an_adt(charset="EBCDIC"))
    assert refused.value.expression == ("MSH-18",)
    assert "EBCDIC" in refused.value.diagnostics


def test_a_utf_8_bom_before_msh_is_ignored() -> None:
    raw = BOM + an_adt(family="JOSÉ")
    assert decode(raw).startswith("MSH|^~\\&|PAS|RXX|")
    assert pid_field(raw, 5) == "JOSÉ"
    header = read_header(raw)
    assert header is not None
    assert header.control_id == "MSG0001"


@pytest.mark.parametrize(
    ("escaped", "plain"),
    [
        ("O\\F\\B", "O|B"),
        ("O\\S\\B", "O^B"),
        ("O\\T\\B", "O&B"),
        ("O\\R\\B", "O~B"),
        ("O\\E\\B", "O\\B"),
        ("A\\F\\B\\S\\C\\T\\D\\R\\E\\E\\F", "A|B^C&D~E\\F"),
    ],
    ids=["F", "S", "T", "R", "E", "all"],
)
def test_escape_sequences_are_unescaped_inside_a_component(escaped: str, plain: str) -> None:
    raw = an_adt(family=escaped)
    assert pid_field(raw, 5) == plain
    assert pid_field(raw, 5, 2) == "JANE"  # the escaped delimiter did not split the field


@pytest.mark.parametrize(
    ("escaped", "plain"),
    [
        ("A\\X41\\B", "AAB"),  # hex data
        ("A\\X4\\B", "AB"),  # odd-length hex: dropped
        ("A\\Xzz\\B", "AB"),
        ("A\\.br\\B", "A\rB"),  # line break
        ("A\\H\\B\\N\\", "AB"),  # highlighting carries no text
        ("A\\Zlocal\\B", "AB"),
        ("A\\C2842\\B", "AB"),  # character-set switches are not text either
        ("A\\.spX\\B", "AB"),  # python-hl7's unescape raises ValueError on this
        ("A\\\\B", "AB"),  # empty sequence
        ("A\\F", "A"),  # unterminated sequence at the end
        ("\\F\\\\S\\", "|^"),
    ],
)
def test_other_escape_sequences_never_raise_and_carry_only_text(escaped: str, plain: str) -> None:
    assert pid_field(an_adt(family=escaped), 5) == plain


def test_unreadable_escape_sequences_are_not_logged_with_the_field(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG):
        assert pid_field(an_adt(family="SECRETNAME\\Xzz\\\\Zq\\\\C2842\\\\\\"), 5) == "SECRETNAME"
    assert "SECRETNAME" not in caplog.text


def test_a_quoted_empty_string_is_an_explicit_null_not_a_value() -> None:
    raw = an_adt(given='""')
    f = Fields(parse(raw))
    pid = f.first("PID")
    assert f.get(pid, 5, 2) == ""
    assert f.get(pid, 5, 1) == "SMITH"


def test_a_field_that_is_only_a_null_has_no_repetitions() -> None:
    raw = an_adt().replace(b"|F|||1 HIGH", b'|""|||1 HIGH')
    f = Fields(parse(raw))
    assert f.get(f.first("PID"), 8) == ""
    assert f.reps(f.first("PID"), 8) == []


def test_z_segments_are_parsed_but_ignored_by_the_flat_accessor() -> None:
    raw = an_adt(extra_segments=("ZU1|secret|stuff", "ZPD|1|X"))
    f = Fields(parse(raw))
    assert [str(s[0]) for s in f.segments("ZU1")] == ["ZU1"]
    assert f.get(f.first("PID"), 5) == "SMITH"
    assert f.first("ZZZ") is None


def test_repeated_pid_3_identifiers_are_kept_in_order() -> None:
    raw = an_adt(mrn="M100")
    f = Fields(parse(raw))
    reps = f.reps(f.first("PID"), 3)
    assert [r[0] for r in reps] == ["9434765919", "M100"]
    assert [r[3] for r in reps] == ["NHS", "RXX"]
    assert [r[4] for r in reps] == ["NH", "MR"]


def test_repetitions_with_no_value_are_skipped() -> None:
    raw = an_adt().replace(b"|9434765919^^^NHS^NH~", b"|~9434765919^^^NHS^NH~~")
    f = Fields(parse(raw))
    assert [r[0] for r in f.reps(f.first("PID"), 3)] == ["9434765919", "M100"]


def test_field_beyond_the_segment_is_empty() -> None:
    f = Fields(parse(an_adt()))
    evn = f.first("EVN")
    assert f.get(evn, 40) == ""
    assert f.reps(evn, 40) == []
    assert f.get(None, 1) == ""


def test_an_fhs_bhs_batch_splits_into_its_messages_without_the_envelope() -> None:
    one, two, three = (an_adt(control_id=c) for c in ("B1", "B2", "B3"))
    batch = b"FHS|^~\\&|PAS\rBHS|^~\\&|PAS\r" + one + two + three + b"BTS|3\rFTS|1\r"
    messages = split_batch(batch)
    assert len(messages) == 3
    assert [read_header(m).control_id for m in messages] == ["B1", "B2", "B3"]  # type: ignore[union-attr]
    for message in messages:
        assert message.startswith(b"MSH|")
        assert message.endswith(b"\r")
        assert b"BHS" not in message and b"BTS" not in message and b"FHS" not in message


def test_a_batch_with_lf_endings_splits_too() -> None:
    batch = b"BHS|^~\\&|PAS\n" + an_adt(control_id="L1", seg_end=b"\n") + an_adt(control_id="L2", seg_end=b"\n")
    assert [m.split(b"|")[9] for m in split_batch(batch + b"BTS|2\n")] == [b"L1", b"L2"]


def test_split_batch_of_one_message_returns_it_cr_terminated() -> None:
    raw = an_adt(seg_end=b"\r\n")
    [only] = split_batch(raw)
    assert only == an_adt(seg_end=b"\r")


def test_parse_refuses_several_messages_in_one_frame() -> None:
    with pytest.raises(InvalidMessageError) as refused:
        parse(an_adt(control_id="1") + an_adt(control_id="2"))
    assert "2 messages" in refused.value.diagnostics


def test_parse_accepts_a_batch_envelope_around_one_message() -> None:
    raw = b"BHS|^~\\&|PAS\r" + an_adt(control_id="ONE") + b"BTS|1\r"
    f = Fields(parse(raw))
    assert f.get(f.first("MSH"), 10) == "ONE"


def test_read_header_gives_msh_fields() -> None:
    header = read_header(an_adt(trigger="A01", control_id="C42", charset="8859/1", sender="RAB"))
    assert header is not None
    assert (header.field_separator, header.encoding_characters) == ("|", "^~\\&")
    assert (header.sending_application, header.sending_facility) == ("PAS", "RAB")
    assert (header.receiving_application, header.receiving_facility) == ("CAREHUB", "CAREHUB")
    assert (header.message_type, header.trigger_event, header.structure) == ("ADT", "A01", "ADT_A01")
    assert (header.control_id, header.processing_id, header.version) == ("C42", "P", "2.4")
    assert header.charset == "8859/1"


def test_read_header_reads_nonstandard_delimiters_from_msh() -> None:
    raw = b"MSH^~|\\&^PAS^RXX^HUB^HUB^20260101^^ADT~A24~ADT_A24^C9^P^2.4\rEVN^A24\r"
    header = read_header(raw)
    assert header is not None
    assert header.field_separator == "^"
    assert header.encoding_characters == "~|\\&"
    assert (header.message_type, header.trigger_event, header.control_id) == ("ADT", "A24", "C9")


@pytest.mark.parametrize(
    "raw",
    [b"", b"\r\n", b"PID|1||X\r", b"MSH", b"MSH|", b"MSHA^~\\&|X", b"hello world"],
    ids=["empty", "blank", "no-msh", "msh-only", "msh-bar", "alnum-separator", "text"],
)
def test_read_header_is_none_without_a_readable_msh(raw: bytes) -> None:
    assert read_header(raw) is None


@pytest.mark.parametrize("raw", [b"", b"hello world", b"PID|1||X\r", b"\xff\xfe\x00"])
def test_parse_of_non_hl7_is_a_hub_error_naming_msh(raw: bytes) -> None:
    with pytest.raises(HubError) as refused:
        parse(raw)
    assert refused.value.expression == ("MSH",)


def test_a_message_whose_first_segment_is_not_msh_is_invalid() -> None:
    with pytest.raises(InvalidMessageError) as refused:
        parse(b"EVN|A01\r" + an_adt())
    assert refused.value.expression == ("MSH",)


@pytest.mark.parametrize(
    ("charset", "escaped", "encoding"),
    [("UNICODE UTF-8", "D\\XC3A9\\SIR", "utf-8"), ("8859/1", "D\\XE9\\SIR", "latin-1")],
)
def test_hex_escapes_are_bytes_in_the_messages_own_character_set(charset: str, escaped: str, encoding: str) -> None:
    # (review: \XC3A9\ in a UTF-8 message read as Latin-1 gave "DÃ©SIR")
    assert pid_field(an_adt(family=escaped, charset=charset, encoding=encoding), 5) == "DéSIR"
