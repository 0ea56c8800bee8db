"""POST /fhir/Consent's checks: the body is a valid FHIR R4 Consent the hub would enforce exactly as
written, from an organisation and role that record people's choices, about a person the record holds."""

from __future__ import annotations

import re
from datetime import UTC, datetime

import orjson
from fhir.resources.R4B.consent import Consent
from pydantic import ValidationError

from hub.api.auth import Principal
from hub.api.bodies import check_shape
from hub.api.shapes import FHIR_ID, PATIENT_REF
from hub.core.consents import ORGANISATION_SYSTEMS, consent_problems, organisation_code
from hub.core.errors import ConsentDeniedError, InvalidMessageError, UnknownPersonError
from hub.core.ports import Json, RecordReader
from hub.store.agreements import PolicySource

_FHIR_ID, _PATIENT_REF = re.compile(FHIR_ID), re.compile(PATIENT_REF)


def parse_consent(body: bytes) -> Json:
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidMessageError(f"the body is not JSON: {exc}", ("Consent",)) from exc
    if not isinstance(data, dict) or data.get("resourceType") != "Consent":
        raise InvalidMessageError("the body must be a FHIR Consent resource", ("Consent.resourceType",))
    check_shape(data)
    try:
        Consent.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise InvalidMessageError(
            f"not a valid FHIR R4 Consent: {where}: {first['msg']}", (f"Consent.{where}",)
        ) from exc
    provision = data.get("provision") or {}
    if provision.get("type") not in ("permit", "deny"):
        raise InvalidMessageError("provision.type must be permit or deny", ("Consent.provision.type",), code="required")
    return dict(data)


def enforceable(reader: RecordReader, consent: Json) -> None:
    """Refuse (400) a Consent the hub would not enforce exactly as written (hub.core.consents
    consent_problems: the rule the record's reading of it follows), naming each element and what to
    send instead. An actor given as a reference Organization/<id> is resolved here to the code of the
    organisation the record holds, and the Consent keeps both; one the hub does not know is refused."""
    provision = consent.get("provision") or {}
    nested = [(f"Consent.provision.provision[{n}]", p) for n, p in enumerate(provision.get("provision") or [])]
    found: dict[str, str] = {}
    for where, outer in [("Consent.provision", provision), *nested]:
        for n, actor in enumerate(outer.get("actor") or [] if isinstance(outer, dict) else []):
            problem = resolve_actor(reader, actor.get("reference") or {})
            if problem:
                found[f"{where}.actor[{n}]"] = problem
    for where, what in consent_problems(consent):
        found.setdefault(where, what)  # (what resolving an actor found says more)
    if found:
        raise InvalidMessageError(
            "this Consent says what the hub would not enforce as written, so it is not recorded: "
            + "; ".join(f"{where} {what}" for where, what in found.items()),
            tuple(found),
        )


def resolve_actor(reader: RecordReader, reference: Json) -> str | None:
    """Give a literal Organization/<id> reference the identifier of the organisation it names (its
    ODS code, or a council's local-authority code); why not, if it names none the record holds, it
    holds it by more than one (which is meant: name it by identifier), or its identifier names
    another. An identifier's code is kept as tokens name organisations (upper case)."""
    given = reference.get("identifier")
    if isinstance(given, dict) and given.get("system") in ORGANISATION_SYSTEMS and given.get("value"):
        given["value"] = organisation_code(given["value"]) or given["value"]  # (consent_problems names a bad one)
    literal = str(reference.get("reference", ""))
    kind, _, id_ = literal.partition("/")
    if not literal:
        return None
    if kind != "Organization" or not _FHIR_ID.match(id_):
        return f"reference {literal[:80]!r} is not an Organization/<id> reference"
    identifiers = (reader.read("Organization", id_) or {}).get("identifier") or []
    codes = {
        (str(i.get("system")), code)
        for i in identifiers
        if i.get("system") in ORGANISATION_SYSTEMS and (code := organisation_code(i.get("value")))
    }
    if not codes:
        return (
            f"{literal} is not an organisation this hub knows by an ODS or local-authority code: name it by identifier"
        )
    if given and (given.get("system"), given.get("value")) not in codes:
        return f"{literal} and its identifier name different organisations: send one of them"
    if not given and len(codes) > 1:
        named = ", ".join(f"{system}|{code}" for system, code in sorted(codes))
        return f"{literal} is known here by more than one code ({named}): give the one meant as its identifier"
    if not given:
        [(system, code)] = codes
        reference["identifier"] = {"system": system, "value": code}
    return None


CONSENT_ROLES = ("clinician", "coordinator", "admin")  # who records a person's choice: those who care for them


def may_record_consent(policy: PolicySource | None, who: Principal) -> None:
    """Refuse (403) a Consent from a role that does not care for people, or from an organisation no
    sharing agreement in force names as a party: a person's choice is recorded by those caring for
    them, and the answer (201, or 404 for no such person) must not tell anyone else who is known here."""
    if who.role not in CONSENT_ROLES:
        raise ConsentDeniedError(
            f"the {who.role} role does not record a person's consent (roles that do: {', '.join(CONSENT_ROLES)})",
            ("Authorization",),
        )
    if policy is None:
        return
    today = datetime.now(UTC).date()
    if not any(who.org in a.party_codes and a.in_force(today) for a in policy.agreements()):
        raise ConsentDeniedError(
            f"no sharing agreement in force today names {who.org} as a party, so it does not record consent "
            "for anyone here: a person's choice is recorded by an organisation that shares their care",
            ("Authorization",),
        )


def person_for(reader: RecordReader, consent: Json) -> str:
    patient = consent.get("patient") or {}
    ref = str(patient.get("reference", ""))
    if _PATIENT_REF.match(ref) and ref.startswith("Patient/") and reader.read("Patient", ref.removeprefix("Patient/")):
        return ref.removeprefix("Patient/")
    ident = patient.get("identifier") or {}
    if ident.get("system") and ident.get("value"):
        found = reader.patients_by_identifier(str(ident["system"]), str(ident["value"]))
        if found:
            return str(found[0]["id"])
    raise UnknownPersonError("Consent.patient names no person in the shared care record", ("Consent.patient",))
