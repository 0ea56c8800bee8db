"""HL7 v2 PID-3 or MRG-1 -> the person it names (adapters.hl7v2.to_fhir maps the rest of an ADT): their
identifiers in UK Core systems (the NHS number first, each hospital number scoped by its authority), the
NHS number's checks (Modulus 11, placeholders), and the person key the hub knows them by."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from adapters.hl7v2 import fields as dt
from adapters.hl7v2.message import Fields
from hub.core import nhs_number
from hub.core.errors import InvalidMessageError
from hub.core.identity import person_key

Json = dict[str, Any]
NHS_SYSTEM = nhs_number.NHS_NUMBER_SYSTEM
MRN_SYSTEM = dt.MRN_SYSTEM


@dataclass(frozen=True)
class Person:
    """Whom a PID-3 or MRG-1 names: their person key and identifiers."""

    key: str
    identifiers: list[Json]


def person_in(f: Fields, segment: Any, name: str, sender: str, secret: bytes) -> Person:
    """The person a PID-3 or MRG-1 names (an error in a repetition after the first names it: PID-3[2]).

    An NHS number that fails its check is refused, whether or not a hospital number stands beside it: were
    it dropped and the person keyed by the hospital number instead, their key would change under them (the
    stay filed under a person no case list holds, the discharge follow-up never opened). The sender
    corrects it and sends it again (README, "An NHS number that fails its check is refused")."""
    field = 3 if name == "PID" else 1
    where = f"{name}-{field}"
    nhs: str | None = None
    identifiers: list[Json] = []
    local: tuple[str, str] | None = None
    placeholder = ""
    for repetition, cx in f.numbered_reps(segment, field):
        value, authority = cx[0], (cx[3] if len(cx) > 3 else "")
        if not value:
            continue
        if is_nhs_number(cx) and nhs_number.is_placeholder(value):
            placeholder = nhs_number.normalise(value)  # "not known": no one's identity (see is_placeholder)
            continue
        if is_nhs_number(cx):
            why = nhs_number.why_invalid(value)
            here = f"{where}[{repetition}]" if repetition > 1 else where
            if why:
                raise InvalidMessageError(why, (here,), code="value")
            if nhs is not None and nhs != nhs_number.normalise(value):
                raise InvalidMessageError(f"{where} carries two different NHS numbers", (where,), code="value")
            if nhs is None:  # UK Core allows one NHS number; a repeated identical one is dropped
                nhs = nhs_number.normalise(value)
                identifiers.insert(0, {"system": NHS_SYSTEM, "value": nhs})
        else:
            scope = re.sub(r"[^A-Za-z0-9._-]", "_", authority or sender)
            identifiers.append({"system": MRN_SYSTEM + scope, "value": value})
            local = local or (scope, value)
    if nhs is None and local is None:
        if placeholder:
            raise InvalidMessageError(
                f"{where} has no patient identifier but the NHS number {placeholder}, which is a placeholder (all "
                "ten digits the same), not anyone's NHS number: send the person's own, or a local identifier",
                (where,),
                code="value",
            )
        raise InvalidMessageError(f"{where} has no patient identifier with a value", (where,), code="required")
    return Person(person_key(secret, nhs, local), identifiers)


def is_nhs_number(cx: list[str]) -> bool:
    """A CX (PID-3, MRG-1 repeat) is the NHS number when its assigning authority (CX-4) is `NHS` or its
    identifier type (CX-5) is `NH`, whatever authority it names: PAS send the NHS number's OID
    (2.16.840.1.113883.2.1.4.1), their own code or none there. Checked as one (Modulus 11, placeholders),
    never filed as a hospital number no search by NHS number would find."""
    authority, kind = (cx[i].strip().upper() if len(cx) > i else "" for i in (3, 4))
    return authority == "NHS" or kind == "NH"
