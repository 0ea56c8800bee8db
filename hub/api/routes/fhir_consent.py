"""POST and PUT /fhir/Consent's checks: the body is a valid FHIR R4 Consent the hub would enforce
exactly as written, from an organisation and role that record people's choices, about a person the
record holds (an update: the Consent it replaces, about the same person); and the event that records it."""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime

import orjson
from fastapi import HTTPException, Request
from fhir.resources.R4B.consent import Consent
from pydantic import ValidationError

from hub.api.auth import Principal
from hub.api.bodies import check_shape
from hub.api.shapes import CONSENT_STATUSES, FHIR_ID, PATIENT_REF
from hub.core.consents import ORGANISATION_SYSTEMS, consent_problems, organisation_code
from hub.core.errors import ConsentDeniedError, InvalidMessageError, UnknownPersonError
from hub.core.identity import identities
from hub.core.ports import Json, RecordReader
from hub.store.agreements import PolicySource
from schemas.envelope import Envelope
from schemas.events.consent import CONSENT_RECORDED

_FHIR_ID, _PATIENT_REF = re.compile(FHIR_ID), re.compile(PATIENT_REF)
ENDING = ("inactive", "entered-in-error")  # the statuses that end a Consent recorded (PUT), never start one


def parse_consent(body: bytes, *, update: bool = False) -> Json:
    """The body as a FHIR R4 Consent (400 otherwise): of a status FHIR R4 names, and, but for an
    `update`, not one that ends a Consent (a new Consent so would change nothing)."""
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
    status = data.get("status")
    if status not in CONSENT_STATUSES:
        raise InvalidMessageError(
            f"status must be one of FHIR R4's {', '.join(CONSENT_STATUSES)} (only an active Consent is enforced)",
            ("Consent.status",),
        )
    if status in ENDING and not update:
        raise InvalidMessageError(
            f"a new Consent that is {status} would change nothing: to end a Consent recorded, find it "
            f"(GET /fhir/Consent?patient=) and PUT it to /fhir/Consent/<id> with status {status}",
            ("Consent.status",),
        )
    provision = data.get("provision") or {}
    if provision.get("type") not in ("permit", "deny"):
        raise InvalidMessageError("provision.type must be permit or deny", ("Consent.provision.type",), code="required")
    return dict(data)


def held_consent(reader: RecordReader, id_: str) -> Json:
    """The Consent the record holds by this id (404 if none)."""
    found = reader.read("Consent", id_)
    if found is None:
        raise UnknownPersonError(f"Consent/{id_} is not known here", ("Consent.id",))
    return found


def replaces(reader: RecordReader, held: Json, consent: Json, id_: str, if_match: str | None) -> str:
    """The person an update of `held` (Consent/`id_`) is about; refused when the body's id is not the
    URL's (400), If-Match names a version other than the one held (412), or its patient is not the
    person `held` is about, under any identity the record knows them by (400)."""
    if consent.get("id") != id_:
        raise InvalidMessageError(
            f"the Consent's id ({str(consent.get('id'))[:64]!r}) must be the id in the URL ({id_})", ("Consent.id",)
        )
    version = str((held.get("meta") or {}).get("versionId", ""))
    if if_match is not None and if_match.strip().removeprefix("W/").strip('"') != version:
        raise HTTPException(
            412, f"If-Match names {if_match[:40]!r}, but version {version} of Consent/{id_} is held: read it again"
        )
    person = str((held.get("patient") or {}).get("reference", "")).removeprefix("Patient/")
    named = person_named(reader, consent)
    if named is None or named not in identities(reader, person):
        raise InvalidMessageError(
            "Consent.patient must stay the person the Consent is about: a choice about someone else is "
            "a Consent of its own (POST /fhir/Consent)",
            ("Consent.patient",),
        )
    return person


def same_choice(reader: RecordReader, person: str, consent: Json) -> Json | None:
    """An active Consent of the person's that the record holds saying all that `consent` (active)
    says, its id and meta aside: the same choice recorded already, which a POST answers with (200)."""
    if consent.get("status") != "active":
        return None
    said = _content(consent)
    return next(
        (c for c in reader.search("Consent", person) if c.get("status") == "active" and _content(c) == said), None
    )


def _content(consent: Json) -> Json:
    return {k: v for k, v in consent.items() if k not in ("id", "meta")}


def located(request: Request, consent: Json) -> str:
    """A Consent's address on this server (a Location header)."""
    return str(request.base_url).rstrip("/") + f"/fhir/Consent/{consent['id']}"


def consent_event(who: Principal, person: str, consent: Json, now: datetime) -> Envelope:
    """The event that records `consent` (new, or a new version of one: the same id) for `person`."""
    return Envelope(
        id=str(uuid.uuid4()),
        source=f"urn:ods:{who.org}",
        type=CONSENT_RECORDED.type,
        time=now,
        subject=person,
        data=orjson.dumps(consent),
    )


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
    """The person key a Consent's patient names (404 if none the record holds)."""
    person = person_named(reader, consent)
    if person is None:
        raise UnknownPersonError("Consent.patient names no person in the shared care record", ("Consent.patient",))
    return person


def person_named(reader: RecordReader, consent: Json) -> str | None:
    patient = consent.get("patient") or {}
    ref = str(patient.get("reference", ""))
    if _PATIENT_REF.match(ref) and ref.startswith("Patient/") and reader.read("Patient", ref.removeprefix("Patient/")):
        return ref.removeprefix("Patient/")
    ident = patient.get("identifier") or {}
    if ident.get("system") and ident.get("value"):
        found = reader.patients_by_identifier(str(ident["system"]), str(ident["value"]))
        if found:
            return str(found[0]["id"])
    return None
