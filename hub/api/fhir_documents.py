"""The FHIR documents the API answers with that are not the record's own resources: its
CapabilityStatement, and ledger entries as AuditEvents."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from hub.core.ledger import ATTEMPTED, DISCLOSED, NOT_DISCLOSED, POSSIBLY_DISCLOSED, Result, results
from hub.core.ports import Json

ODS_SYSTEM = "https://fhir.nhs.uk/Id/ods-organization-code"


# What the statement says that the routes' OpenAPI document does not: each search parameter's FHIR
# type, the operations FHIR itself defines, and notes for a reader.
SEARCH_TYPES = {"identifier": "token", "patient": "reference", "practice": "token", "date": "date"}
NOT_SEARCHES = frozenset({"token"})  # the huddle agenda's bearer token, for a browser's address bar
DEFINED_OPERATIONS = {"everything": "http://hl7.org/fhir/OperationDefinition/Patient-everything"}
OWN_OPERATIONS = "https://carehub.invalid/OperationDefinition/"  # CareHub's, named <type>-<operation>
DOCUMENTATION = {
    "AuditEvent": "the disclosure ledger about one person; auditor role only",
    "List": "a practice's huddle / MDT agenda (?practice=ODS&date=YYYY-MM-DD), as the huddle page shows it",
}
INTERACTIONS = {  # (method, path depth)
    ("get", 2): "read",
    ("put", 2): "update",
    ("get", 1): "search-type",
    ("post", 1): "create",
}


@dataclass
class Served:
    """What the routes serve of one resource type: FHIR interactions, search parameters, operations."""

    interactions: set[str] = field(default_factory=set)
    searches: dict[str, str] = field(default_factory=dict)  # name -> FHIR search type
    operations: dict[str, str] = field(default_factory=dict)  # name -> what it does (the route's summary)


def capability_statement(base: str, api: Json) -> Json:
    """What this server does, for clients that ask first: read off `api`, the app's OpenAPI document
    (FastAPI's, made from its routes), so it says no less and no more than the routes serve."""
    served = served_resources(api)
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
                "documentation": "Searches ignore a parameter they do not take, or take once only, and "
                "name it in the Bundle's OperationOutcome; with `Prefer: handling=strict` such a search "
                "is refused (400, not-supported) before anything is read.",
                "security": {
                    "service": [
                        {"coding": [{"system": "http://hl7.org/fhir/restful-security-service", "code": "OAuth"}]}
                    ],
                    "description": "Bearer token (JWT) naming the caller's organisation (ODS code) and role; "
                    "issue one with `carehub token --org ODS --role ROLE`. Every read is decided under the "
                    "information-sharing agreements and the person's consent, and recorded in the "
                    "disclosure ledger; a clinician may assert an emergency with X-Break-Glass-Reason.",
                },
                "resource": [_resource(kind, served[kind]) for kind in sorted(served)],
            }
        ],
    }


def served_resources(api: Json) -> dict[str, Served]:
    """Each resource type the /fhir paths of an OpenAPI document serve: /fhir/T (search, create),
    /fhir/T/{id} (read, update) and /fhir/T/{id}/$op (an operation); {kind} stands for each type its enum names."""
    served: dict[str, Served] = {}
    for path, methods in (api.get("paths") or {}).items():
        if not path.startswith("/fhir/"):
            continue
        parts = path.removeprefix("/fhir/").split("/")
        for method, operation in methods.items():
            params = operation.get("parameters") or []
            for kind in _kinds(parts[0], params):
                _serve(served.setdefault(kind, Served()), method, parts, operation.get("summary") or "", params)
    return served


def _kinds(first: str, params: list[Json]) -> list[str]:
    if first != "{kind}":
        return [first] if first[:1].isupper() else []  # (not /fhir/metadata)
    enum = next((p.get("schema", {}).get("enum") for p in params if p.get("name") == "kind"), None)
    return [str(k) for k in enum or []]


def _serve(served: Served, method: str, parts: list[str], summary: str, params: list[Json]) -> None:
    if len(parts) == 3 and parts[1] == "{id}" and parts[2].startswith("$"):
        served.operations[parts[2][1:]] = summary
        return
    interaction = INTERACTIONS.get((method, len(parts))) if len(parts) == 1 or parts[1] == "{id}" else None
    if interaction is not None:
        served.interactions.add(interaction)
    if interaction == "search-type":
        names = [str(p["name"]) for p in params if p.get("in") == "query" and p.get("name") not in NOT_SEARCHES]
        served.searches |= {name: SEARCH_TYPES.get(name, "string") for name in names}


def _resource(kind: str, served: Served) -> Json:
    entry: Json = {
        "type": kind,
        "interaction": [{"code": c} for c in INTERACTIONS.values() if c in served.interactions],
    }
    if served.searches:
        entry["searchParam"] = [{"name": n, "type": t} for n, t in served.searches.items()]
    if served.operations:
        entry["operation"] = [
            {
                "name": name,
                "definition": DEFINED_OPERATIONS.get(name, f"{OWN_OPERATIONS}{kind}-{name}"),
                "documentation": summary,
            }
            for name, summary in sorted(served.operations.items())
        ]
    if kind in DOCUMENTATION:
        entry["documentation"] = DOCUMENTATION[kind]
    return entry


_OUTCOME = {"permit": "0", "break-glass": "0", "deny": "4"}
_ACTION = {"read": "R", "search": "E", "everything": "E", "topic": "E", "webhook": "E", "mailbox": "E", "audit": "R"}


# what a webhook or mailbox attempt came to (its result entry, hub.core.ledger.results): success only
# where it arrived, a minor failure where it may have, a serious one where nothing was sent
_SENT = {DISCLOSED: "0", POSSIBLY_DISCLOSED: "4", NOT_DISCLOSED: "8"}


def _outcome(body: Json, came: Result) -> tuple[str, str]:
    """The AuditEvent's outcome and outcomeDesc: the decision's, and for a webhook or mailbox
    attempt what it came to (its result entry's outcome, or possibly disclosed where none says)."""
    decision, reasons = body["decision"], "; ".join(body.get("reasons") or [])
    said = f"{decision}: {reasons}"
    if body.get("channel") not in ATTEMPTED or decision not in ("permit", "break-glass"):
        return _OUTCOME.get(decision, "4"), said
    result = f"{came.outcome}: {came.detail}" if came.detail else came.outcome
    entry = f", result entry {came.seq}" if came.seq is not None else ""
    return _SENT.get(came.outcome, "4"), f"{result} ({said}; attempt {body.get('attempt')}{entry})"


def audit_events_of(entries: Iterable[Any]) -> list[Json]:
    """Ledger entries as FHIR R4 AuditEvents, one per decision: an attempt's result entry is no
    decision, and is said on its attempt's AuditEvent (as `carehub audit disclosures` says it)."""
    listed = list(entries)
    came = results(listed)
    return [audit_event(entry, came[entry.seq]) for entry in listed if entry.seq in came]


def audit_event(entry: Any, came: Result) -> Json:
    """One ledger decision as a FHIR R4 AuditEvent (seq in the id, reasons in outcomeDesc), with
    what it came to (`came`: hub.core.ledger.results)."""
    body = entry.body
    decision = body["decision"]
    outcome, described = _outcome(body, came)
    event: Json = {
        "resourceType": "AuditEvent",
        "id": f"ledger-{entry.seq}",
        "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-event-type", "code": "rest"},
        "action": _ACTION.get(body["channel"], "E"),
        "recorded": body["at"],
        "outcome": outcome,
        "outcomeDesc": described,
        "agent": [
            {
                "who": {"identifier": {"system": ODS_SYSTEM, "value": body["recipient_org"]}},
                "altId": body["recipient_user"],
                "requestor": True,
            }
        ],
        "source": {"observer": {"display": "CareHub disclosure ledger"}},
        "entity": [
            {"what": {"reference": ref.split("#", 1)[0]}, "description": f"sha256:{ref.split('#', 1)[-1]}"}
            for ref in body.get("resources") or []
        ],
    }
    if body.get("person_key"):
        event["entity"].insert(0, {"what": {"reference": f"Patient/{body['person_key']}"}, "role": {"code": "1"}})
    if decision == "break-glass":
        reason = {"system": "http://terminology.hl7.org/CodeSystem/v3-ActReason", "code": "ETREAT"}
        event["purposeOfEvent"] = [{"coding": [reason]}]
    return event
