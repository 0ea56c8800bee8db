"""What the FHIR API takes and answers, as the JSON Schema of its OpenAPI document: said once here
and checked once in the routes (the schemathesis fuzz tests hold the two to each other)."""

from __future__ import annotations

from typing import Any

from hub.api.outcomes import FHIR_JSON
from hub.core.ports import Json
from schemas.events.coordination import SOURCE_EXTENSION

COORDINATION = ("ServiceRequest", "Task", "EpisodeOfCare", "Flag", "Observation", "Communication", "Composition")
READABLE = ("Patient", "Encounter", "Organization", "Provenance", "Consent", *COORDINATION)
PERSONAL = ("Encounter", "Provenance", "Consent", *COORDINATION)  # searchable by ?patient=
# What the API takes, said once for the OpenAPI document and checked once in code (the schemathesis
# fuzz tests hold the two to each other).
FHIR_ID = r"^[A-Za-z0-9\-.]{1,64}$"
PATIENT_REF = r"^(Patient/)?[A-Za-z0-9\-.]{1,64}$"
SYSTEM_VALUE = r"^[^|\x00-\x1f\x7f]+\|[^\x00-\x1f\x7f]+$"
REASON = r"^[^\x00-\x1f\x7f]{1,500}$"
# FHIR R4 consent-state-codes; the first four start a Consent, the last two end one (PUT)
CONSENT_STATUSES = ("draft", "proposed", "active", "rejected", "inactive", "entered-in-error")

_ISSUE: Json = {
    "type": "object",
    "required": ["severity", "code"],
    "properties": {
        "severity": {"type": "string", "enum": ["fatal", "error", "warning", "information"]},
        "code": {"type": "string"},
        "diagnostics": {"type": "string"},
        "expression": {"type": "array", "items": {"type": "string"}},
    },
}
OUTCOME: Json = {
    "type": "object",
    "required": ["resourceType", "issue"],
    "properties": {
        "resourceType": {"type": "string", "enum": ["OperationOutcome"]},
        "issue": {"type": "array", "minItems": 1, "items": _ISSUE},
    },
}
RESOURCE: Json = {
    "type": "object",
    "required": ["resourceType", "id"],
    "properties": {"resourceType": {"type": "string", "enum": list(READABLE)}, "id": {"type": "string"}},
}
BUNDLE: Json = {
    "type": "object",
    "required": ["resourceType", "type", "total"],
    "properties": {
        "resourceType": {"type": "string", "enum": ["Bundle"]},
        "type": {"type": "string", "enum": ["searchset"]},
        "total": {"type": "integer", "minimum": 0},
        "entry": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["resource"],
                "properties": {
                    "resource": {"type": "object", "required": ["resourceType"]},
                    "search": {"type": "object", "properties": {"mode": {"enum": ["match", "outcome"]}}},
                },
            },
        },
    },
}
CAPABILITY: Json = {
    "type": "object",
    "required": ["resourceType", "fhirVersion", "rest"],
    "properties": {"resourceType": {"type": "string", "enum": ["CapabilityStatement"]}},
}
# The shape of what is taken; FHIR's rules for primitives (no edge whitespace, code and uri patterns) are
# checked by fhir.resources and answered with a 400 naming the element.
_TEXT: Json = {"type": "string", "minLength": 1}


def _object(properties: Json, required: tuple[str, ...] = ()) -> Json:
    """A FHIR element: only these properties, at least one of them."""
    shape: Json = {"type": "object", "properties": properties, "additionalProperties": False, "minProperties": 1}
    if required:
        shape["required"] = list(required)
    return shape


def _some(item: Json) -> Json:
    return {"type": "array", "minItems": 1, "items": item}


_CODING = _object({"system": _TEXT, "code": _TEXT}, ("system", "code"))
_CONCEPT = _object({"coding": _some(_CODING), "text": _TEXT})
_IDENTIFIER = _object({"system": _TEXT, "value": _TEXT}, ("system", "value"))
CONSENT_IN: Json = _object(
    {
        "resourceType": {"type": "string", "enum": ["Consent"]},
        "status": {"type": "string", "enum": [*CONSENT_STATUSES[:4]]},  # (not one that ends a Consent)
        "scope": _CONCEPT,
        "category": _some(_CONCEPT),
        "patient": _object({"reference": {"type": "string", "pattern": PATIENT_REF}, "identifier": _IDENTIFIER}),
        "provision": _object(
            {
                "type": {"type": "string", "enum": ["permit", "deny"]},
                "actor": _some(
                    _object(
                        {"role": _CONCEPT, "reference": _object({"identifier": _IDENTIFIER})}, ("role", "reference")
                    )
                ),
                "class": _some(_CODING),
            },
            ("type",),
        ),
    },
    ("resourceType", "status", "scope", "category", "patient", "provision"),
)
CONSENT_IN["description"] = "a FHIR R4 Consent naming the person by NHS number or Patient reference"
# an update (PUT) is the whole Consent again, its id that of the URL, any FHIR R4 status (to end one:
# inactive, or entered-in-error)
CONSENT_UPDATE: Json = {
    **CONSENT_IN,
    "properties": {
        **CONSENT_IN["properties"],
        "id": {"type": "string", "pattern": FHIR_ID},
        "status": {"type": "string", "enum": [*CONSENT_STATUSES]},
    },
    "required": ["id", *CONSENT_IN["required"]],
    "description": "the whole FHIR R4 Consent as it is to stand, its id that of the URL, about the same person",
}
CONSENT_OUT: Json = {
    "type": "object",
    "required": ["resourceType", "id", "patient"],
    "properties": {"resourceType": {"type": "string", "enum": ["Consent"]}, "id": {"type": "string"}},
}
_WHY = {
    400: "the request is not valid (OperationOutcome names the parameter)",
    401: "no bearer token, or one this server does not accept",
    403: "the sharing agreements, the person's consent or the caller's role forbid it",
    404: "no such resource, or a resource type this server does not hold",
    412: "the If-Match version is not the one the record holds: read it again",
    413: "the body is larger than this server takes",
}


def ok(schema: Json) -> dict[int | str, Any]:
    """The OpenAPI entry for a successful FHIR JSON response."""
    return {200: {"description": "FHIR R4 JSON", "content": {FHIR_JSON: {"schema": schema}}}}


def created(schema: Json) -> dict[int | str, Any]:
    """The OpenAPI entry for a resource created (201)."""
    return {201: {"description": "created", "content": {FHIR_JSON: {"schema": schema}}}}


def errors(*statuses: int) -> dict[int | str, Any]:
    """The OpenAPI entries for the OperationOutcome errors a route answers with."""
    return {s: {"description": _WHY[s], "content": {FHIR_JSON: {"schema": OUTCOME}}} for s in statuses}


def parameters_in(*names: str, required: tuple[str, ...] = ()) -> Json:
    """The OpenAPI request body of a coordination command: a FHIR Parameters resource whose
    parameters (a string, code, id or dateTime each) are `names`; `required` must be given. As open as
    the route is (other FHIR elements, other parameters are ignored), so it never refuses a body the
    route takes."""
    value = {key: _TEXT for key in ("valueString", "valueCode", "valueId", "valueDateTime")}
    parameter = {"type": "object", "required": ["name"], "properties": {"name": {"type": "string"}, **value}}
    listed: Json = {"type": "array", "items": parameter}
    if required:
        listed["minItems"] = 1
        listed["allOf"] = [{"contains": {"type": "object", "properties": {"name": {"const": n}}}} for n in required]
    shape: Json = {
        "type": "object",
        "required": ["resourceType", *(["parameter"] if required else [])],
        "properties": {"resourceType": {"type": "string", "enum": ["Parameters"]}, "parameter": listed},
        "description": "FHIR Parameters: " + ", ".join(f"{n}{' (required)' if n in required else ''}" for n in names),
    }
    return {"requestBody": {"required": bool(required), "content": {FHIR_JSON: {"schema": shape}}}}


def _service_request_in() -> Json:
    source = {"type": "object", "properties": {"url": {"const": SOURCE_EXTENSION}}, "required": ["url"]}
    shape: Json = {
        "type": "object",
        "required": ["resourceType", "status", "intent", "subject", "extension"],
        "properties": {
            "resourceType": {"type": "string", "enum": ["ServiceRequest"]},
            "status": {"type": "string", "enum": ["active"]},
            "intent": {"type": "string"},
            "subject": {
                "type": "object",
                "required": ["identifier"],
                "properties": {"identifier": {"type": "object", "required": ["system", "value"]}},
            },
            "authoredOn": {"type": "string"},
            "extension": {"type": "array", "items": {"type": "object"}, "contains": source},
        },
        "description": "a FHIR R4 ServiceRequest naming the person by NHS number and its source with the "
        "UK Core SourceOfServiceRequest extension (see README: Referrals in)",
    }
    return {"requestBody": {"required": True, "content": {FHIR_JSON: {"schema": shape}}}}


SERVICE_REQUEST_IN = _service_request_in()
