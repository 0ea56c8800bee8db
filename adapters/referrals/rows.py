"""Files -> rows: CSV (a header, then one row per record) or JSON (one document or an array of them).

Each row keeps its own bytes, so a rejected row can be kept whole on the dead-letter topic: a CSV
row as the header line plus its own line(s), a JSON document as sent (an array element re-encoded).
Row numbers are what a person sees: in CSV the header is row 1 and each record is one row, as a
spreadsheet numbers them (the line number too, unless a quoted value spans lines); in a JSON array
the first document is row 1. Files are UTF-8 and CSV is comma-separated: a file in another encoding
or separated by semicolons is refused whole, saying where and how to save it (README, "Input files").
"""

from __future__ import annotations

import csv
import difflib
import io
import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import orjson

from adapters.referrals.fields import is_gss, is_ods
from adapters.referrals.person_details import FIELDS as PERSON_DETAILS
from hub.core.errors import InvalidMessageError, UnsupportedMessageError

BOM = b"\xef\xbb\xbf"
UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")
SAVE_AS = 'save it as "CSV UTF-8 (Comma delimited)" in Excel and send the file again'
_LINE_END = re.compile(r"\r\n|\r|\n")


class Format(StrEnum):
    """The input layouts this adapter reads."""

    REGISTER = "register"
    ASC_JSON = "asc-json"
    ASC_CSV = "asc-csv"
    VCSE_JSON = "vcse-json"
    VCSE_OUTCOME = "vcse-outcome"
    ASC_OUTCOME_CSV = "asc-outcome-csv"
    ASC_OUTCOME_JSON = "asc-outcome-json"

    @property
    def is_csv(self) -> bool:
        return self in (Format.REGISTER, Format.ASC_CSV, Format.ASC_OUTCOME_CSV)

    @property
    def is_outcome(self) -> bool:
        return self in (Format.VCSE_OUTCOME, Format.ASC_OUTCOME_CSV, Format.ASC_OUTCOME_JSON)

    @property
    def content_type(self) -> str:
        return "text/csv" if self.is_csv else "application/json"


REQUIRED_COLUMNS = {
    Format.REGISTER: ("nhs_number", "practice_ods", "non_elective_admissions_12m", "long_term_conditions", "frailty"),
    Format.ASC_CSV: ("nhs_number", "gp_practice_ods", "referred_on", "referrer", "addressed_to", "reason"),
    Format.ASC_OUTCOME_CSV: ("referral_id", "referrer", "nhs_number", "outcome", "on"),
}
_OUTCOME = frozenset({"referral_id", "referrer", "nhs_number", "outcome", "on", "reason"})
_REFERRAL = (
    "referral_id", "nhs_number", "birth_date", "gp_practice_ods", "referred_on", "referrer", "referrer_name",
    *PERSON_DETAILS,
)  # fmt: skip
FIELDS = {  # every column or field each layout reads (adapters/referrals/README.md); others are ignored
    Format.REGISTER: frozenset(REQUIRED_COLUMNS[Format.REGISTER]) | {"birth_date", "extracted_on"},
    Format.ASC_CSV: frozenset(_REFERRAL) | {"addressed_to", "reason", "care_act_assessment_outcome"},
    Format.ASC_JSON: frozenset(_REFERRAL) | {"addressed_to", "reason", "care_act_assessment_outcome"},
    Format.VCSE_JSON: frozenset(_REFERRAL) | {"addressed_to", "needs", "reason"},
    Format.VCSE_OUTCOME: _OUTCOME,
    Format.ASC_OUTCOME_CSV: _OUTCOME,
    Format.ASC_OUTCOME_JSON: _OUTCOME,
}
_NOT_A_NAME = re.compile(r"[^a-z0-9]+")


@dataclass(frozen=True)
class Row:
    """One record of a file: its number, its values, its own bytes, and why it could not be read."""

    number: int
    values: dict[str, Any] = field(repr=False)
    raw: bytes = field(repr=False)
    problem: InvalidMessageError | None = None


def unread(names: Iterable[str], fmt: Format) -> list[str]:
    """The names, in order and once each, that the layout does not read (ignored, so never applied)."""
    return list(dict.fromkeys(n for n in names if n.strip() and n not in FIELDS[fmt]))


def meant(name: str, names: Iterable[str], fmt: Format) -> list[str]:
    """The names the layout does not read that are probably `name` misspelt ("NHS Number" for nhs_number)."""
    spelt = {n: _NOT_A_NAME.sub("_", n.strip().lower()).strip("_") for n in unread(names, fmt)}
    close = set(difflib.get_close_matches(name, list(spelt.values()), n=3, cutoff=0.75))
    return [n for n, s in spelt.items() if s == name or s in close]


def not_read(name: str, names: Iterable[str], fmt: Format, where: str = "the row") -> str:
    """'the row has "NHS Number", which the hub does not read: ...' for a missing `name`, or ''."""
    found = meant(name, names, fmt)
    if not found:
        return ""
    quoted = ", ".join(json.dumps(n, ensure_ascii=False) for n in found)
    kind = "column" if fmt.is_csv else "field"
    return f"{where} has {quoted}, which the hub does not read: the {kind} is spelt {name}"


def read_rows(raw: bytes, fmt: Format) -> list[Row]:
    """Every row of a file; InvalidMessageError when the file as a whole cannot be read."""
    return _csv_rows(raw, fmt) if fmt.is_csv else _json_rows(raw)


def detect(raw: bytes) -> Format:
    """The format from the content: the CSV header's columns, or the first JSON document's fields."""
    head = raw.removeprefix(BOM).lstrip()[:1]
    if head in (b"{", b"["):
        first = next((r.values for r in _json_rows(raw) if r.values), {})
        referrer = first.get("referrer")
        referrer = referrer.strip().upper() if isinstance(referrer, str) else ""
        if "outcome" in first:
            return Format.ASC_OUTCOME_JSON if is_gss(referrer) else Format.VCSE_OUTCOME
        if is_gss(referrer) or "care_act_assessment_outcome" in first:
            return Format.ASC_JSON
        if is_ods(referrer):
            return Format.VCSE_JSON
        raise UnsupportedMessageError(
            "cannot tell which referral document this is (referrer is neither a local-authority nor an ODS "
            "code, and there is no outcome); name the format",
            ("file",),
        )
    names = set(_header(_decode(raw)))
    if {"practice_ods", "frailty"} <= names:
        return Format.REGISTER
    if "referred_on" in names:
        return Format.ASC_CSV
    if "outcome" in names:
        return Format.ASC_OUTCOME_CSV
    raise UnsupportedMessageError(
        "cannot tell which CSV this is: a register has practice_ods and frailty columns, adult social care "
        "referrals a referred_on column, their outcomes (a withdrawal) an outcome column; name the format",
        ("file",),
    )


def _decode(raw: bytes, *, csv_file: bool = True) -> str:
    """The file as text. A file that is not UTF-8 is refused naming its first byte that is not (row
    and line, or in JSON the line), never decoded by a guess: a wrong guess would alter people's names."""
    save = SAVE_AS if csv_file else "save it as UTF-8 and send the file again"
    if raw.startswith(UTF16_BOMS):
        raise InvalidMessageError(f"the file is UTF-16 text, not UTF-8: {save}", ("file",))
    body = raw.removeprefix(BOM)
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError as exc:
        before = body[: exc.start].decode("utf-8")
        offset = len(raw) - len(body) + exc.start
        raise _not_utf8(raw[offset : offset + 1], offset, before, save, csv_file=csv_file) from exc


def _not_utf8(byte: bytes, offset: int, before: str, save: str, *, csv_file: bool) -> InvalidMessageError:
    line = len(_LINE_END.findall(before)) + 1
    row = f"row {_row_at(before) or line}" if csv_file else f"line {line}"
    where = f"{row} (line {line})" if csv_file else row
    try:
        seen = f" (in Windows-1252 it is {byte.decode('cp1252')!r})"
    except UnicodeDecodeError:  # (one of the five bytes Windows-1252 leaves undefined)
        seen = ""
    return InvalidMessageError(
        f"{where}: byte 0x{byte.hex().upper()} at offset {offset} of the file (counting from 0) is not UTF-8"
        f"{seen}: the file is not UTF-8 text; {save}",
        (row,),
    )


def _row_at(before: str) -> int | None:
    """The CSV row (the header is row 1) in which the text following `before` lies."""
    try:
        return sum(1 for _ in csv.reader(io.StringIO(before + "?", newline="")))  # (? ends a row or starts one)
    except csv.Error:
        return None


class _Tape:
    """The file's lines, remembering which ones the CSV reader has taken since the last `cut`."""

    def __init__(self, text: str) -> None:
        self._lines = iter(io.StringIO(text, newline=""))
        self._taken: list[str] = []

    def __iter__(self) -> Iterator[str]:
        return self

    def __next__(self) -> str:
        line = next(self._lines)
        self._taken.append(line)
        return line

    def cut(self) -> str:
        taken, self._taken = "".join(self._taken), []
        return taken


def _header(text: str) -> list[str]:
    try:
        header = next(csv.reader(io.StringIO(text, newline="")), [])
    except csv.Error as exc:
        raise InvalidMessageError(f"row 1 (the header) cannot be read as CSV: {exc}", ("row 1",)) from exc
    names = [h.strip().lower() for h in header]
    if not any(names):
        raise InvalidMessageError("the file is empty: row 1 must name the columns", ("row 1",), code="required")
    _refuse_semicolons(text, names)
    duplicated = sorted({n for n in names if n and names.count(n) > 1})
    if duplicated:
        raise InvalidMessageError(f"row 1 (the header) names {', '.join(duplicated)} twice", ("row 1",))
    return names


def _refuse_semicolons(text: str, names: list[str]) -> None:
    """A header without nhs_number that splits into more columns on semicolons than on commas (as Excel
    writes "CSV" where the decimal separator is a comma) is refused: the hub reads comma-separated
    files, and does not guess."""
    try:
        split = [h.strip().lower() for h in next(csv.reader(io.StringIO(text, newline=""), delimiter=";"), [])]
    except csv.Error:
        return
    if "nhs_number" in names or len(split) <= len(names):
        return
    raise InvalidMessageError(
        f"row 1 (the header) is separated by semicolons ({len(split)} columns split on ';'), as Excel saves CSV "
        f"in some languages; the hub reads comma-separated CSV only: {SAVE_AS}",
        ("row 1",),
    )


def _csv_rows(raw: bytes, fmt: Format) -> list[Row]:
    text = _decode(raw)
    names = _header(text)
    missing = [c for c in REQUIRED_COLUMNS[fmt] if c not in names]
    if missing:
        hints = [hint for c in missing if (hint := not_read(c, names, fmt, "the header"))]
        said = f" ({'; '.join(hints)})" if hints else ""
        raise InvalidMessageError(
            f"row 1 (the header) lacks the column(s) {', '.join(missing)}{said}", ("row 1", *missing), code="required"
        )
    tape = _Tape(text)
    reader = csv.reader(tape)
    next(reader)
    header_line = tape.cut()
    rows: list[Row] = []
    number = 1
    while True:
        number += 1
        try:
            cells = next(reader)
        except StopIteration:
            return rows
        except csv.Error as exc:
            unread = InvalidMessageError(f"row {number}: cannot be read as CSV: {exc}", (f"row {number}",))
            rows.append(Row(number, {}, (header_line + tape.cut()).encode(), unread))
            continue
        chunk = (header_line + tape.cut()).encode()
        if not any(c.strip() for c in cells):
            continue  # blank lines and spreadsheets' empty trailing rows
        problem: InvalidMessageError | None = None
        if len(cells) != len(names):
            where = f"row {number}"
            problem = InvalidMessageError(f"{where}: has {len(cells)} values, the header names {len(names)}", (where,))
        rows.append(Row(number, dict(zip(names, cells, strict=False)), chunk, problem))


def _json_rows(raw: bytes) -> list[Row]:
    body = raw.removeprefix(BOM)
    if not body.strip():
        raise InvalidMessageError("the file is empty", ("file",), code="required")
    _decode(raw, csv_file=False)  # (orjson's own message for bytes that are not UTF-8 names no place)
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidMessageError(f"the file is not JSON: {exc}", ("file",)) from exc
    if isinstance(document, dict):
        return [Row(1, document, raw)]
    if not isinstance(document, list):
        kind = type(document).__name__
        raise InvalidMessageError(f"the file holds a JSON {kind}, not a document or an array of documents", ("file",))
    return [_json_item(number, item) for number, item in enumerate(document, start=1)]


def _json_item(number: int, item: Any) -> Row:
    try:
        raw = orjson.dumps(item)
    except orjson.JSONEncodeError:  # text orjson will not write back (a lone surrogate): escape it
        raw = json.dumps(item, ensure_ascii=True).encode()
    if not isinstance(item, dict):
        problem = InvalidMessageError(f"row {number}: is not a JSON object", (f"row {number}",))
        return Row(number, {}, raw, problem)
    return Row(number, item, raw)
