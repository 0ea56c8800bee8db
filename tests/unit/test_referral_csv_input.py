"""Referral and register files as spreadsheets write them: semicolon-separated CSV and Windows-1252 text
are refused whole, in one message saying where and how to save the file (adapters/referrals/README.md)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from adapters.referrals.rows import Format, detect, read_rows
from adapters.referrals.service import REJECTED, ReferralIntake
from hub.core.errors import InvalidMessageError
from schemas.topics import DEAD_LETTER, EVENTS
from tests.unit.test_referral_adapters import SECRET, FakeBroker

NOW = datetime(2026, 11, 25, tzinfo=UTC)
REGISTER = "nhs_number,practice_ods,non_elective_admissions_12m,long_term_conditions,frailty,birth_date,extracted_on"
ASC = "nhs_number,gp_practice_ods,referred_on,referrer,addressed_to,reason,referrer_name"
GOOD_ROW = "9434765919,Y90001,3,2,severe,1938-02-01,2026-11-02"
BAD_ROW = "9434765918,Y90001,1,1,mild,,2026-11-02"
SAVE_AS = 'save it as "CSV UTF-8 (Comma delimited)" in Excel and send the file again'


def intake(broker: FakeBroker) -> ReferralIntake:
    return ReferralIntake(broker, key_secret=SECRET, clock=lambda: NOW)  # type: ignore[arg-type]


def refusal(raw: bytes, fmt: Format | None) -> InvalidMessageError:
    with pytest.raises(InvalidMessageError) as refused:
        read_rows(raw, fmt or detect(raw))
    return refused.value


# --- semicolons ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", [Format.REGISTER, None])  # named, or detected
def test_a_semicolon_separated_csv_is_refused_whole_in_one_message_saying_it_needs_commas(fmt: Format | None) -> None:
    raw = f"{REGISTER}\r\n{GOOD_ROW}\r\n{BAD_ROW}\r\n".replace(",", ";").encode()
    error = refusal(raw, fmt)
    assert error.diagnostics == (
        "row 1 (the header) is separated by semicolons (7 columns split on ';'), as Excel saves CSV in some "
        f"languages; the hub reads comma-separated CSV only: {SAVE_AS}"
    )
    assert error.expression == ("row 1",)


def test_a_semicolon_header_whose_reason_holds_a_comma_is_still_called_semicolon_separated() -> None:
    raw = f"{ASC};reason, in full\n".replace(",", ";", 6).encode()
    assert "separated by semicolons (8 columns" in refusal(raw, Format.ASC_CSV).diagnostics


def test_a_comma_separated_csv_with_semicolons_in_a_column_name_or_a_value_is_read() -> None:
    raw = f"{REGISTER},notes;extra\n{GOOD_ROW},a;b;c;d;e;f;g\n".encode()
    (row,) = read_rows(raw, Format.REGISTER)
    assert row.problem is None and row.values["notes;extra"] == "a;b;c;d;e;f;g"


async def test_a_semicolon_file_is_dead_lettered_whole_once_with_the_message() -> None:
    broker = FakeBroker()
    raw = f"{REGISTER}\n{GOOD_ROW}\n".replace(",", ";").encode()
    (outcome,) = await intake(broker).ingest(raw, "file:s.csv")
    assert (outcome.row, outcome.status, outcome.dead_lettered) == (None, REJECTED, True)
    assert outcome.reason and outcome.reason.startswith("row 1 (the header) is separated by semicolons")
    ((_, value, _, _),) = broker.on(DEAD_LETTER.name)
    assert value == raw and not broker.on(EVENTS.name)


# --- encodings -----------------------------------------------------------------------------------------


def windows_1252(*rows: str, header: str = ASC, bom: bytes = b"") -> bytes:
    return bom + "\r\n".join([header, *rows, ""]).encode("cp1252")


@pytest.mark.parametrize(
    ("raw", "where", "offset", "seen"),
    [
        (
            windows_1252("9434765919,Y90001,2026-10-01,E09000008,Y0PIC,support,Renée Café"),
            "row 2 (line 2)",
            len(ASC) + 2 + len("9434765919,Y90001,2026-10-01,E09000008,Y0PIC,support,Ren"),
            "é",
        ),
        (
            windows_1252("9434765919,Y90001,2026-10-01,E09000008,Y0PIC,fares,Sam", "9990000018,Y1,x,y,z,owes £5,Jo"),
            "row 3 (line 3)",
            len(ASC)
            + 2
            + len("9434765919,Y90001,2026-10-01,E09000008,Y0PIC,fares,Sam")
            + 2
            + len("9990000018,Y1,x,y,z,owes "),
            "£",
        ),
        (  # a quoted value over two lines: row 3 of the spreadsheet is lines 3 and 4 of the file
            windows_1252('9434765919,Y1,x,y,z,"two\r\nlines",A', "9990000018,Y1,x,y,z,r,Zoë", bom=b"\xef\xbb\xbf"),
            "row 3 (line 4)",
            3 + len(ASC) + 2 + len('9434765919,Y1,x,y,z,"two\r\nlines",A') + 2 + len("9990000018,Y1,x,y,z,r,Zo"),
            "ë",
        ),
    ],
)
def test_a_windows_1252_csv_is_refused_naming_row_line_and_byte_offset_and_saying_save_as_csv_utf8(
    raw: bytes, where: str, offset: int, seen: str
) -> None:
    for fmt in (Format.ASC_CSV, None):
        error = refusal(raw, fmt)
        assert error.diagnostics == (
            f"{where}: byte 0x{raw[offset]:02X} at offset {offset} of the file (counting from 0) is not UTF-8 "
            f"(in Windows-1252 it is {seen!r}): the file is not UTF-8 text; {SAVE_AS}"
        )
        assert error.expression == (where.split(" (")[0],)


def test_the_same_names_saved_as_csv_utf8_are_read_as_written() -> None:
    raw = b"\xef\xbb\xbf" + f"{ASC}\r\n9434765919,Y90001,2026-10-01,E09000008,Y0PIC,owes £5,Renée\r\n".encode()
    (row,) = read_rows(raw, Format.ASC_CSV)
    assert (row.values["referrer_name"], row.values["reason"]) == ("Renée", "owes £5")


def test_a_utf16_file_is_refused_saying_save_as_csv_utf8() -> None:
    raw = "\ufeff" + f"{REGISTER}\r\n{GOOD_ROW}\r\n"
    assert (
        refusal(raw.encode("utf-16-le"), Format.REGISTER).diagnostics
        == f"the file is UTF-16 text, not UTF-8: {SAVE_AS}"
    )


def test_a_windows_1252_json_file_is_refused_naming_its_line_and_byte_offset() -> None:
    raw = b'[\n{"referral_id": "VCS-1"},\n{"referrer_name": "Ren\xe9e"}\n]'
    error = refusal(raw, Format.VCSE_JSON)
    offset = raw.index(b"\xe9")
    assert error.diagnostics.startswith(f"line 3: byte 0xE9 at offset {offset} of the file (counting from 0)")
    assert error.diagnostics.endswith("save it as UTF-8 and send the file again")
