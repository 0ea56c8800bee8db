"""`carehub optouts load`: the national data opt-out, as each person's Consent on the log.

The file is a list of NHS numbers of people who have registered a national data opt-out (one per
line, or a CSV with an `nhs_number` column), as an organisation's check against the national
service returns them. Each becomes a FHIR Consent (provision deny, policyRule national-data-opt-out)
published like any other Consent, so the record keeps it, replay reproduces it and the policy
applies it through every agreement that says the opt-out applies (never to direct care by itself).
A line that is not a valid NHS number is refused with its line number and kept in the dead-letter
store; the other lines still go through.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from datetime import UTC, datetime

import orjson

from hub.core import nhs_number
from hub.core.errors import InvalidMessageError, operation_outcome
from hub.core.identity import person_key, stable_id
from hub.core.policy import CONSENT_POLICY_SYSTEM, NATIONAL_OPT_OUT
from hub.core.ports import DeadLetters
from schemas.envelope import Envelope
from schemas.events.consent import CONSENT_RECORDED

ODS_SYSTEM = "https://fhir.nhs.uk/Id/ods-organization-code"


@dataclass(frozen=True)
class Line:
    """One line of the file: its number, and the envelope to publish or the reason it was refused."""

    number: int
    envelope: Envelope | None
    reason: str | None = None


def read(raw: bytes, *, key_secret: bytes, source: str, as_of: datetime) -> list[Line]:
    """Each line of an opt-out list as an envelope to publish, or a refusal naming the line."""
    text = raw.decode("utf-8-sig", errors="replace")
    rows = list(csv.reader(io.StringIO(text)))
    header = [c.strip().lower() for c in rows[0]] if rows else []
    column = header.index("nhs_number") if "nhs_number" in header else 0
    start = 1 if "nhs_number" in header else 0
    lines: list[Line] = []
    for number, row in enumerate(rows[start:], start=start + 1):
        if not row or not "".join(row).strip():
            continue
        value = (row[column] if column < len(row) else "").replace(" ", "").strip()
        problem = nhs_number.why_invalid(value)
        if problem:
            lines.append(Line(number, None, f"line {number}, field nhs_number: {problem}"))
            continue
        lines.append(Line(number, _envelope(value, key_secret=key_secret, source=source, as_of=as_of)))
    return lines


def _envelope(nhs: str, *, key_secret: bytes, source: str, as_of: datetime) -> Envelope:
    person = person_key(key_secret, nhs, None)
    consent = {
        "resourceType": "Consent",
        "id": stable_id("national-data-opt-out", person),
        "status": "active",
        "scope": {
            "coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "patient-privacy"}]
        },
        "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
        "patient": {"reference": f"Patient/{person}"},
        "dateTime": as_of.isoformat(),
        "organization": [{"identifier": {"system": ODS_SYSTEM, "value": source}}],
        "policyRule": {"coding": [{"system": CONSENT_POLICY_SYSTEM, "code": NATIONAL_OPT_OUT}]},
        "provision": {"type": "deny", "period": {"start": as_of.date().isoformat()}},
    }
    return Envelope(
        id=stable_id("national-data-opt-out-event", person, as_of.date().isoformat()),
        source=f"urn:ods:{source}",
        type=CONSENT_RECORDED.type,
        time=as_of,
        subject=person,
        data=orjson.dumps(consent),
    )


def keep_refused(dead_letters: DeadLetters, line: Line, raw: bytes, *, source: str, origin: str) -> None:
    """Keep the whole file in the dead-letter store, with the refused line's reason as an OperationOutcome."""
    error = InvalidMessageError(line.reason or "refused", (f"line {line.number}",))
    dead_letters.keep(
        received_at=datetime.now(UTC),
        source=f"urn:ods:{source}",
        origin=f"{origin}:{line.number}",
        reason=operation_outcome(error),
        payload=raw,
    )
