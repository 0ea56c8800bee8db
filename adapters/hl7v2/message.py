"""Raw HL7 v2 bytes -> python-hl7 Message: batches, BOM, line endings, MSH-18 character sets.

Parsing itself is python-hl7's; this module only prepares the text (real feeds send LF or CRLF,
a UTF-8 BOM, trailing spaces) and gives one flat accessor over python-hl7's nesting (a field is
a string, or repetitions of components of subcomponents). Anything unreadable becomes an
InvalidMessageError (or UnsupportedMessageError), never another exception.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import hl7

from hub.core.errors import InvalidMessageError, UnsupportedMessageError

BOM = b"\xef\xbb\xbf"
_SEGMENT_END = re.compile(rb"\r\n|\n|\r")
_ENVELOPE = (b"FHS", b"BHS", b"BTS", b"FTS")
_HEX = re.compile(r"(?:[0-9A-Fa-f]{2})+")
_CHARSETS = {
    "": "utf-8",
    "UNICODE": "utf-8",
    "UNICODE UTF-8": "utf-8",
    "UTF-8": "utf-8",
    "8859/1": "latin-1",
    "ISO-8859-1": "latin-1",
    "ASCII": "ascii",
}


@dataclass(frozen=True)
class Header:
    """What MSH says, read leniently enough to answer even a message that will not parse."""

    field_separator: str
    encoding_characters: str
    sending_application: str
    sending_facility: str
    receiving_application: str
    receiving_facility: str
    message_type: str
    trigger_event: str
    structure: str
    control_id: str
    processing_id: str
    version: str
    charset: str
    accept_ack: str = ""  # MSH-15 and MSH-16 (HL7 table 0155: AL, NE, ER, SU); either valued: enhanced mode
    application_ack: str = ""


def _segments(raw: bytes) -> list[bytes]:
    raw = raw.removeprefix(BOM)
    return [s.rstrip() for s in _SEGMENT_END.split(raw) if s.strip()]


def split_batch(raw: bytes) -> list[bytes]:
    """One message, several, or an FHS/BHS batch -> each message (MSH first), CR-terminated."""
    messages: list[list[bytes]] = []
    for segment in _segments(raw):
        if segment.startswith(_ENVELOPE):
            continue
        if segment.startswith(b"MSH") or not messages:
            messages.append([])
        messages[-1].append(segment)
    return [b"\r".join(m) + b"\r" for m in messages]


def split_as_sent(raw: bytes) -> list[bytes]:
    """As split_batch, but each message as the bytes it was sent as (its line endings, trailing
    spaces, a BOM or blank lines before the first), for what is kept of it (a dead letter) and the
    offsets an error names: the same messages, each from its first line to the next message's, less
    the batch envelope lines and blank lines it ends with (the first from the start of the file,
    unless an envelope line comes before it)."""
    spans = list(_spans(raw))
    ends = [start for start, _ in spans[1:]] + [len(raw)]  # where each line ends, its line ending included
    messages: list[list[tuple[int, bytes, int]]] = []
    enveloped = False
    for (start, line), end in zip(spans, ends, strict=True):
        segment = line.rstrip()  # (as _segments reads it)
        if not line.strip():
            if messages:
                messages[-1].append((start, b"", end))
            continue
        if segment.startswith(_ENVELOPE):
            enveloped = True
            if messages:
                messages[-1].append((start, b"FHS", end))  # (an envelope line: trimmed from the end below)
            continue
        if segment.startswith(b"MSH") or not messages:
            messages.append([(0 if not messages and not enveloped else start, segment, end)])
        else:
            messages[-1].append((start, segment, end))
    cut = []
    for lines in messages:
        while lines and (not lines[-1][1] or lines[-1][1].startswith(_ENVELOPE)):
            lines.pop()
        cut.append(raw[lines[0][0] : lines[-1][2]])
    return cut


def read_header(raw: bytes) -> Header | None:
    """MSH of the first message, or None when there is no readable MSH at all."""
    first = next((s for s in _segments(raw) if s.startswith(b"MSH")), None)
    if first is None or len(first) < 8:
        return None
    text = first.decode("latin-1")
    sep, encoding = text[3], text[4:8].split(text[3])[0]
    if not encoding or sep.isalnum():
        return None
    component = encoding[0]
    fields = text.split(sep)

    def msh(n: int, part: int = 0) -> str:
        value = fields[n - 1] if n - 1 < len(fields) else ""
        parts = value.split(component)
        return parts[part].strip() if part < len(parts) else ""

    return Header(
        field_separator=sep,
        encoding_characters=encoding,
        sending_application=msh(3),
        sending_facility=msh(4),
        receiving_application=msh(5),
        receiving_facility=msh(6),
        message_type=msh(9, 0),
        trigger_event=msh(9, 1),
        structure=msh(9, 2),
        control_id=msh(10),
        processing_id=msh(11),
        version=msh(12),
        charset=msh(18),
        accept_ack=msh(15).upper(),
        application_ack=msh(16).upper(),
    )


def fingerprint(raw: bytes) -> str:
    """What makes a resend the same message: its segments as read here (line endings, trailing spaces,
    a BOM and a batch envelope aside) without MSH-7, which some engines stamp afresh when they resend."""
    digest = hashlib.sha256()
    for segment in _segments(raw):
        if segment.startswith(_ENVELOPE):
            continue
        if segment.startswith(b"MSH") and len(segment) > 3:
            fields = segment.split(segment[3:4])
            segment = segment[3:4].join([*fields[:6], b"", *fields[7:]]) if len(fields) > 6 else segment
        digest.update(segment + b"\r")
    return digest.hexdigest()[:32]


def decode(raw: bytes, *, sent: bytes | None = None) -> str:
    """The message as text in the character set MSH-18 declares, segments ending in CR. A byte that
    is not in that character set is located in `sent`, the bytes as the sender sent them (default `raw`)."""
    header = read_header(raw)
    if header is None:
        raise UnsupportedMessageError(
            "not an HL7 v2 message: no MSH segment with delimiters", ("MSH",), code="structure"
        )
    declared = header.charset.split(header.encoding_characters[1:2] or "~")[0].strip().upper()
    codec = _CHARSETS.get(declared)
    if codec is None:
        raise UnsupportedMessageError(
            f"character set {declared!r} is not supported (use UNICODE UTF-8 or 8859/1)",
            ("MSH-18",),
        )
    try:
        segments = [s.decode(codec) for s in _segments(raw)]
    except UnicodeDecodeError as exc:
        where = _undecodable(raw if sent is None else sent, codec, header.field_separator)
        raise InvalidMessageError(f"{where} is not valid {codec.upper()} as MSH-18 declares", ("MSH-18",)) from exc
    return "\r".join(segments) + "\r"


def _undecodable(sent: bytes, codec: str, separator: str) -> str:
    """The first byte of `sent` that `codec` cannot decode: its offset in the message, then its
    segment (counted from 1, as a sender's tools show them), field and offset within the segment."""
    number = 0
    for position, segment in _spans(sent):
        if not segment.strip() or segment.startswith(_ENVELOPE):
            continue
        number += 1
        try:
            segment.decode(codec)
        except UnicodeDecodeError as exc:
            name = segment[:3].decode("latin-1")
            field = segment[: exc.start].count(separator.encode("latin-1")) + (1 if name == "MSH" else 0)  # MSH-1 is |
            return (
                f"byte 0x{segment[exc.start]:02X} at offset {position + exc.start} of the message (counting from 0),"
                f" in segment {number} ({name}), field {name}-{field}, offset {exc.start} within that segment,"
            )
    return "a byte of the message"  # not reached: decode failed on one of these segments


def _spans(raw: bytes) -> Iterator[tuple[int, bytes]]:
    """Each line of `raw` (BOM aside) with its offset in `raw`."""
    start = len(BOM) if raw.startswith(BOM) else 0
    for end in _SEGMENT_END.finditer(raw, start):
        yield start, raw[start : end.start()]
        start = end.end()
    yield start, raw[start:]


def parse(raw: bytes) -> hl7.Message:
    """Decode and parse one message with python-hl7 (a batch envelope around one message is fine)."""
    messages = split_batch(raw)
    if len(messages) > 1:
        raise InvalidMessageError(
            f"this holds {len(messages)} messages; send one message per frame", ("MSH",), code="structure"
        )
    text = decode(messages[0] if messages else raw, sent=raw)
    if not text.startswith("MSH"):
        raise InvalidMessageError("a message must begin with MSH", ("MSH",), code="structure")
    try:
        return hl7.parse(text)
    except Exception as exc:  # python-hl7 raises several types for malformed input
        raise InvalidMessageError(f"cannot parse: {exc}", ("MSH",), code="structure") from exc


class Fields:
    """Flat, unescaped access to a python-hl7 message: repetitions of component strings."""

    def __init__(self, message: hl7.Message) -> None:
        self.message = message
        self._escape = str(message.esc) if getattr(message, "esc", None) else "\\"
        self._codec = _codec_of(message)  # a \Xhh\ escape's bytes are in the message's character set

    def segments(self, name: str) -> list[Any]:
        return [s for s in self.message if str(s[0]) == name]

    def first(self, name: str) -> Any | None:
        found = self.segments(name)
        return found[0] if found else None

    def reps(self, segment: Any | None, n: int) -> list[list[str]]:
        """Field n's repetitions, each a list of component texts ("" for absent or "" nulls)."""
        return [rep for _, rep in self.numbered_reps(segment, n)]

    def numbered_reps(self, segment: Any | None, n: int) -> list[tuple[int, list[str]]]:
        """As reps, each with its repetition number as sent (counting from 1, empty ones too)."""
        if segment is None or n >= len(segment):
            return []
        field = segment[n]
        items = [field] if isinstance(field, str) else list(field)
        out = []
        for number, rep in enumerate(items, start=1):
            comps = [rep] if isinstance(rep, str) else [_flat(c) for c in rep]
            out.append((number, [self._clean(c) for c in comps]))
        return [(number, rep) for number, rep in out if any(rep)]

    def nulled(self, segment: Any | None, n: int) -> bool:
        """Whether field n is HL7's explicit null `""` (delete what the receiver holds), as opposed to
        empty (no change): reps and get give "" for both."""
        return segment is not None and n < len(segment) and str(segment[n]).strip() == '""'

    def get(self, segment: Any | None, n: int, component: int = 1) -> str:
        """Component `component` (1-based) of the first repetition of field n, or ""."""
        reps = self.reps(segment, n)
        if not reps or component > len(reps[0]):
            return ""
        return reps[0][component - 1]

    def _clean(self, text: str) -> str:
        text = text.strip()
        if text == '""':
            return ""
        if self._escape in text:
            return self._unescape(text)
        return text

    def _unescape(self, text: str) -> str:
        """HL7 escape sequences (v2.5 section 2.7). Our own, not python-hl7's `unescape`, which raises
        ValueError on `\\.spX\\` and logs the whole field (patient data) on a sequence it cannot read."""
        pieces = text.split(self._escape)
        literals, codes = pieces[0::2], pieces[1::2]
        if len(pieces) % 2 == 0:
            codes = codes[:-1]  # an unterminated sequence at the end is dropped
        out = [literals[0]]
        for code, after in zip(codes, literals[1:], strict=True):
            out += [self._sequence(code), after]
        return "".join(out)

    def _sequence(self, code: str) -> str:
        seps = str(self.message.separators)
        named = {"F": seps[1], "R": seps[2], "S": seps[3], "T": seps[4], "E": self._escape, ".br": "\r"}
        if code in named:
            return named[code]
        if code[:1] == "X" and _HEX.fullmatch(code[1:]):
            return bytes.fromhex(code[1:]).decode(self._codec, errors="replace")
        return ""  # highlighting, character-set switches and local (Z) sequences carry no text


def _codec_of(message: hl7.Message) -> str:
    """The codec of the character set MSH-18 declares (as `decode` read the message in), else Latin-1."""
    try:
        declared = str(message.segment("MSH")[18]).split(str(message.separators)[2])[0].strip().upper()
    except (KeyError, IndexError):
        declared = ""
    codec = _CHARSETS.get(declared) or "latin-1"
    return "latin-1" if codec == "ascii" else codec


def _flat(value: Any) -> str:
    while not isinstance(value, str):
        value = value[0] if len(value) else ""
    return value
