"""HubError -> HL7 v2 ACK: AA, AE or AR with an ERR segment naming the place (original mode), or
the accept acknowledgment CA, CE or CR (enhanced mode, where the hub's operator turns it on).

The one place the hospital adapter translates errors. ERR carries both the v2.4 ERR-1 (ELD) and
the v2.5 ERR-2/3/4/8 fields, so either generation of receiver can read where and why.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import datetime

from adapters.hl7v2.message import Header
from hub.core.errors import HubError, UnsupportedMessageError

_TABLE_0357 = {
    "required": ("101", "Required field missing"),
    "value": ("102", "Data type error"),
    "invalid": ("102", "Data type error"),
    "code-invalid": ("103", "Table value not found"),
    "structure": ("100", "Segment sequence error"),
    "duplicate": ("205", "Duplicate key identifier"),
    # too large (an MLLP frame over mllp.max_message_bytes, a message too large for Kafka): the sender's to
    # fix, never 207 (Application internal error), which blames the hub; 104 is 0357's from v2.6 ("a value
    # exceeded ... the length that the application is able to safely handle"), its text read by any version
    "too-long": ("104", "Value too long"),
}
_UNSUPPORTED = {
    "MSH-9.2": ("201", "Unsupported event code"),
    "MSH-12": ("203", "Unsupported version id"),
    "MSH-11": ("202", "Unsupported processing id"),
}
_INTERNAL = ("207", "Application internal error")
# where an error lies, as errors name it: SEG, SEG-F, SEG-F.C, with the segment's occurrence and the
# field's repetition in brackets where not the first (MRG[2]-1 in a second PID-MRG pair, PID-3[2])
_PLACE = re.compile(r"^([A-Z][A-Z0-9]{2})(?:\[(\d+)\])?(?:-(\d+))?(?:\[(\d+)\])?(?:\.(\d+))?$")
_CODECS = {"8859/1": "latin-1", "ASCII": "ascii"}


def ack(
    header: Header | None, error: HubError | None, *, control_id: str, now: datetime, code: str | None = None
) -> bytes:
    """The ACK for a message (header None: the frame could not be read at all), with its original-mode
    code (AA, AE, AR) unless `code` gives another (an enhanced-mode accept acknowledgment: CA, CE, CR)."""
    sep, enc = _delimiters(header)

    def esc(text: str) -> str:
        for char, code in ((enc[2], "E"), (sep, "F"), (enc[0], "S"), (enc[1], "R"), (enc[3], "T")):
            text = text.replace(char, f"{enc[2]}{code}{enc[2]}")
        return text.replace("\r", " ").replace("\n", " ")

    code = code or _ack_code(header, error)
    h = header
    msh = [
        "MSH",
        enc,
        esc(h.receiving_application if h else "CAREHUB"),
        esc(h.receiving_facility if h else ""),
        esc(h.sending_application if h else ""),
        esc(h.sending_facility if h else ""),
        now.strftime("%Y%m%d%H%M%S%z"),
        "",
        f"ACK{enc[0]}{esc(h.trigger_event if h else '')}{enc[0]}ACK",
        control_id,
        esc(h.processing_id if h and h.processing_id else "P"),
        esc(h.version if h and h.version else "2.4"),
    ]
    if h and h.charset:
        msh += ["", "", "", "", "", esc(h.charset)]
    text = "accepted" if error is None else error.diagnostics
    segments = [sep.join(msh), sep.join(["MSA", code, esc(h.control_id if h else ""), esc(text[:80])])]
    if error is not None:
        segments.append(_err(error, sep, enc, esc))
    codec = _CODECS.get(h.charset.upper() if h else "", "utf-8")
    return ("\r".join(segments) + "\r").encode(codec, errors="replace")


def _delimiters(header: Header | None) -> tuple[str, str]:
    """The sender's own delimiters when they are five distinct printable ASCII symbols, else the defaults."""
    if header and len(header.encoding_characters) >= 4:
        sep, enc = header.field_separator, header.encoding_characters[:4]
        usable = all(" " < c < "\x7f" and not c.isalnum() for c in sep + enc)
        if usable and len(set(sep + enc)) == 5:
            return sep, enc
    return "|", "^~\\&"


def _ack_code(header: Header | None, error: HubError | None) -> str:
    if error is None:
        return "AA"
    if header is None or isinstance(error, UnsupportedMessageError):
        return "AR"
    return "AE"


def _condition(error: HubError) -> tuple[str, str]:
    where = error.expression[0] if error.expression else ""
    if isinstance(error, UnsupportedMessageError) and error.code == "not-supported":
        return _UNSUPPORTED.get(where, ("200", "Unsupported message type"))
    return _TABLE_0357.get(error.code, _INTERNAL)


def _err(error: HubError, sep: str, enc: str, esc: Callable[[str], str]) -> str:
    """ERR-1 (v2.4 ELD), ERR-2 (ERL: where), ERR-3 (table 0357), ERR-4 (severity: E, error), ERR-8 (the
    diagnostics, for a person)."""
    comp, sub = enc[0], enc[3]
    number, meaning = _condition(error)
    place = _PLACE.match(error.expression[0]) if error.expression else None
    segment, sequence, field, repetition, component = place.groups() if place else ("", None, None, None, None)
    sequence = (sequence or "1") if segment else ""
    eld = comp.join([segment or "", sequence, field or "", f"{number}{sub}{esc(meaning)}"])
    repeat = repetition or ("1" if component else "")
    erl = comp.join([segment or "", sequence, field or "", repeat, component or ""]).rstrip(comp)
    code = comp.join([number, esc(meaning), "HL70357"])
    return sep.join(["ERR", eld, erl, code, "E", "", "", "", esc(error.diagnostics)])
