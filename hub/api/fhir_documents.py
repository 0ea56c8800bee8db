"""The FHIR documents the API answers with that are not the record's own resources: its
CapabilityStatement, and ledger entries as AuditEvents."""

from __future__ import annotations

from typing import Any

from hub.core.ports import Json

ODS_SYSTEM = "https://fhir.nhs.uk/Id/ods-organization-code"


def capability_statement(base: str) -> Json:
    """What this server does, for clients that ask first."""

    def resource(kind: str, searches: list[tuple[str, str]], operations: tuple[str, ...] = ()) -> Json:
        entry: Json = {"type": kind, "interaction": [{"code": "read"}]}
        if searches:
            entry["interaction"].append({"code": "search-type"})
            entry["searchParam"] = [{"name": n, "type": t} for n, t in searches]
        if operations:
            entry["operation"] = [
                {"name": op, "definition": f"http://hl7.org/fhir/OperationDefinition/Patient-{op}"} for op in operations
            ]
        return entry

    consent = resource("Consent", [("patient", "reference")])
    consent["interaction"].append({"code": "create"})
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
                    "issue one with `carehub token --org ODS --role ROLE`. Every read is decided under the "
                    "information-sharing agreements and the person's consent, and recorded in the "
                    "disclosure ledger; a clinician may assert an emergency with X-Break-Glass-Reason.",
                },
                "resource": [
                    resource("Patient", [("identifier", "token")], ("everything",)),
                    resource("Encounter", [("patient", "reference")]),
                    resource("Organization", []),
                    resource("Provenance", [("patient", "reference")]),
                    consent,
                    {
                        "type": "AuditEvent",
                        "interaction": [{"code": "search-type"}],
                        "searchParam": [{"name": "patient", "type": "reference"}],
                        "documentation": "the disclosure ledger about one person; auditor role only",
                    },
                ],
            }
        ],
    }


_OUTCOME = {"permit": "0", "break-glass": "0", "deny": "4"}
_ACTION = {"read": "R", "search": "E", "everything": "E", "topic": "E", "webhook": "E", "mailbox": "E", "audit": "R"}


def audit_event(entry: Any) -> Json:
    """One ledger entry as a FHIR R4 AuditEvent (seq in the id, reasons in outcomeDesc)."""
    body = entry.body
    decision = body["decision"]
    event: Json = {
        "resourceType": "AuditEvent",
        "id": f"ledger-{entry.seq}",
        "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-event-type", "code": "rest"},
        "action": _ACTION.get(body["channel"], "E"),
        "recorded": body["at"],
        "outcome": _OUTCOME.get(decision, "4"),
        "outcomeDesc": f"{decision}: " + "; ".join(body.get("reasons") or []),
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
