"""/fhir: read and search the shared care record (FHIR R4, application/fhir+json).

Every route but `metadata` needs a bearer token. What a caller may see goes through `allowed`, the
seam where the information-sharing policy decides each disclosure.

No `from __future__ import annotations` here: FastAPI reads these annotations at runtime, and
some name closures of `router`.
"""

import uuid
from collections import defaultdict
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Query, Request

from hub.api.auth import AuthError, Principal, TokenVerifier
from hub.api.outcomes import FhirResponse
from hub.core.errors import InvalidMessageError, UnknownPersonError
from hub.core.ledger import Disclosure, resource_ref
from hub.core.ports import Json, Ledger, RecordReader

READABLE = ("Patient", "Encounter", "Organization", "Provenance")
PERSONAL = ("Encounter", "Provenance")  # searchable by ?patient=


def allowed(principal: Principal, resource: Json) -> bool:
    """May `principal` see `resource`? Every authenticated role may, until the information-sharing
    policy (agreements and consent) takes this decision; every read already passes through here."""

    return bool(principal.org) and bool(resource)


def person_of(resource: Json) -> str | None:
    """The person key a resource is about (Patient id or its subject), None if shared."""
    if resource.get("resourceType") == "Patient":
        return str(resource.get("id"))
    for field in ("subject", "patient"):
        ref = str((resource.get(field) or {}).get("reference", ""))
        if ref.startswith("Patient/"):
            return ref.removeprefix("Patient/")
    return None


def disclose(ledger: Ledger | None, who: Principal, channel: str, resources: list[Json]) -> None:
    """Record what is about to leave, one ledger entry per person, before it leaves: if the ledger
    cannot be written the request fails (503) rather than disclosing unrecorded."""
    if ledger is None or not resources:
        return
    by_person: dict[str | None, list[str]] = defaultdict(list)
    for resource in resources:
        by_person[person_of(resource)].append(resource_ref(resource))
    now = datetime.now(UTC)
    ledger.append(
        [
            Disclosure(
                at=now,
                recipient_org=who.org,
                recipient_user=who.user,
                channel=channel,
                person_key=person,
                resources=tuple(refs),
                decision="permit",
                reasons=("authenticated user; information-sharing policy not yet enforced",),
                basis={"role": who.role},
            )
            for person, refs in by_person.items()
        ]
    )


def router(reader: RecordReader, tokens: TokenVerifier, ledger: Ledger | None = None) -> APIRouter:
    """The /fhir routes over a record reader; every disclosure is recorded in `ledger`."""
    api = APIRouter(prefix="/fhir", default_response_class=FhirResponse)

    def caller(authorization: Annotated[str | None, Header()] = None) -> Principal:
        if not authorization:
            raise AuthError("this API needs a bearer token (Authorization: Bearer <token>)")
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise AuthError("the Authorization header must be 'Bearer <token>'")
        return tokens.verify(token.strip())

    Caller = Annotated[Principal, Depends(caller)]  # noqa: N806 - a type alias

    @api.get("/metadata", summary="CapabilityStatement")
    def metadata(request: Request) -> FhirResponse:
        return FhirResponse(capability_statement(str(request.base_url).rstrip("/") + "/fhir"))

    @api.get("/Patient", summary="Search patients by identifier")
    def search_patients(
        request: Request,
        who: Caller,
        identifier: Annotated[str | None, Query(description="system|value, e.g. the NHS number")] = None,
    ) -> FhirResponse:
        if not identifier:
            raise InvalidMessageError("Patient search needs identifier=system|value", ("identifier",), code="required")
        system, bar, value = identifier.partition("|")
        if not bar or not system or not value:
            raise InvalidMessageError(
                "identifier must be system|value, e.g. https://fhir.nhs.uk/Id/nhs-number|9434765919",
                ("identifier",),
            )
        return searchset(request, who, reader.patients_by_identifier(system, value), ledger, "search")

    @api.get("/Patient/{id}/$everything", summary="Everything about one patient")
    def everything(request: Request, who: Caller, id: str) -> FhirResponse:
        found = reader.everything(id)
        if not found or not allowed(who, found[0]):
            raise UnknownPersonError(f"Patient/{id} is not known here", ("Patient.id",))
        return searchset(request, who, found, ledger, "everything")

    @api.get("/{kind}", summary="Search Encounter or Provenance by patient")
    def search_by_patient(
        request: Request,
        who: Caller,
        kind: str,
        patient: Annotated[str | None, Query(description="Patient id or Patient/<id>")] = None,
    ) -> FhirResponse:
        if kind not in PERSONAL:
            raise UnknownPersonError(f"searching {kind} is not supported here (see /fhir/metadata)", (kind,))
        if not patient:
            raise InvalidMessageError(f"{kind} search needs patient=<id>", ("patient",), code="required")
        return searchset(request, who, reader.search(kind, patient.removeprefix("Patient/")), ledger, "search")

    @api.get("/{kind}/{id}", summary="Read one resource")
    def read(who: Caller, kind: str, id: str) -> FhirResponse:
        if kind not in READABLE:
            raise UnknownPersonError(f"{kind} is not a resource type this server holds", (kind,))
        found = reader.read(kind, id)
        if found is None or not allowed(who, found):
            raise UnknownPersonError(f"{kind}/{id} is not known here", (f"{kind}.id",))
        disclose(ledger, who, "read", [found])
        return FhirResponse(found)

    return api


def searchset(
    request: Request, who: Principal, resources: list[Json], ledger: Ledger | None, channel: str
) -> FhirResponse:
    """A searchset Bundle of what `who` may see, recorded in the ledger before it is sent."""
    base = str(request.base_url).rstrip("/") + "/fhir"
    shown = [r for r in resources if allowed(who, r)]
    disclose(ledger, who, channel, shown)
    bundle: dict[str, Any] = {
        "resourceType": "Bundle",
        "id": str(uuid.uuid4()),
        "meta": {"lastUpdated": datetime.now(UTC).isoformat()},
        "type": "searchset",
        "total": len(shown),
        "link": [{"relation": "self", "url": str(request.url)}],
        "entry": [
            {"fullUrl": f"{base}/{r['resourceType']}/{r['id']}", "resource": r, "search": {"mode": "match"}}
            for r in shown
        ],
    }
    return FhirResponse(bundle)


def capability_statement(base: str) -> Json:
    """What this server does, for clients that ask first."""

    def resource(kind: str, searches: list[tuple[str, str]], operations: list[str] = ()) -> Json:  # type: ignore[assignment]
        entry: Json = {"type": kind, "interaction": [{"code": "read"}]}
        if searches:
            entry["interaction"].append({"code": "search-type"})
            entry["searchParam"] = [{"name": n, "type": t} for n, t in searches]
        if operations:
            entry["operation"] = [
                {"name": op, "definition": f"http://hl7.org/fhir/OperationDefinition/Patient-{op}"} for op in operations
            ]
        return entry

    return {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": "2026-11-25",
        "kind": "instance",
        "software": {"name": "CareHub", "version": "0.1.0"},
        "implementation": {"description": "CareHub shared care record", "url": base},
        "fhirVersion": "4.0.1",
        "format": ["application/fhir+json", "json"],
        "rest": [
            {
                "mode": "server",
                "security": {
                    "service": [
                        {"coding": [{"system": "http://hl7.org/fhir/restful-security-service", "code": "OAuth"}]}
                    ],
                    "description": "Bearer token (JWT) naming the caller's organisation (ODS code) and role; "
                    "issue one with `carehub token --org ODS --role ROLE`.",
                },
                "resource": [
                    resource("Patient", [("identifier", "token")], ["everything"]),
                    resource("Encounter", [("patient", "reference")]),
                    resource("Organization", []),
                    resource("Provenance", [("patient", "reference")]),
                ],
            }
        ],
    }
