"""/fhir: read and search the shared care record (FHIR R4, application/fhir+json), and record
people's sharing choices (POST Consent).

Every route but `metadata` needs a bearer token. Every resource that would leave is decided by the
policy decision point (hub.core.policy: agreements and consent) and every decision, permit or deny,
is written to the disclosure ledger before the response is sent.

No `from __future__ import annotations` here: FastAPI reads these annotations at runtime, and
some name closures of `router`.
"""

import uuid
from collections import defaultdict
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, Header, Query, Request
from fhir.resources.R4B.consent import Consent
from pydantic import ValidationError

from hub.api.auth import AuthError, Principal, TokenVerifier
from hub.api.outcomes import FhirResponse
from hub.core.errors import ConsentDeniedError, InvalidMessageError, UnknownPersonError
from hub.core.ledger import Disclosure, resource_ref
from hub.core.policy import UNENFORCED, Asker, Decision, decide, person_of
from hub.core.ports import Json, Ledger, RecordReader
from hub.store.agreements import PolicySource
from schemas.envelope import Envelope
from schemas.events.consent import CONSENT_RECORDED

READABLE = ("Patient", "Encounter", "Organization", "Provenance", "Consent")
PERSONAL = ("Encounter", "Provenance", "Consent")  # searchable by ?patient=
NHS_SYSTEM = "https://fhir.nhs.uk/Id/nhs-number"
ODS_SYSTEM = "https://fhir.nhs.uk/Id/ods-organization-code"
Publish = Callable[[Envelope], Awaitable[None]]


class Judge:
    """Decides each resource for one request, with each person's consents read once."""

    def __init__(self, policy: PolicySource | None, asker: Asker) -> None:
        self.policy = policy
        self.asker = asker
        self._consents: dict[str, Any] = {}

    def __call__(self, resource: Json) -> Decision:
        if self.policy is None:
            return UNENFORCED
        person = person_of(resource)
        if person is not None and person not in self._consents:
            self._consents[person] = self.policy.consents(person)
        consents = self._consents.get(person, []) if person else []
        return decide(self.asker, resource, self.policy.agreements(), consents)


def record(ledger: Ledger | None, who: Principal, channel: str, judged: list[tuple[Json, Decision]]) -> None:
    """One ledger entry per person and decision, written before anything leaves: if the ledger
    cannot be written the request fails (503) rather than disclosing unrecorded."""
    if ledger is None or not judged:
        return
    groups: dict[tuple[str | None, Decision], list[str]] = defaultdict(list)
    for resource, decision in judged:
        groups[(person_of(resource), decision)].append(resource_ref(resource))
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
                decision=decision.outcome,
                reasons=decision.reasons,
                basis={"role": who.role, "agreements": list(decision.agreements), "consents": list(decision.consents)},
            )
            for (person, decision), refs in groups.items()
        ]
    )


def router(
    reader: RecordReader,
    tokens: TokenVerifier,
    ledger: Ledger | None = None,
    policy: PolicySource | None = None,
    publish: Publish | None = None,
) -> APIRouter:
    """The /fhir routes over a record reader."""
    api = APIRouter(prefix="/fhir", default_response_class=FhirResponse)

    def caller(authorization: Annotated[str | None, Header()] = None) -> Principal:
        if not authorization:
            raise AuthError("this API needs a bearer token (Authorization: Bearer <token>)")
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise AuthError("the Authorization header must be 'Bearer <token>'")
        return tokens.verify(token.strip())

    Caller = Annotated[Principal, Depends(caller)]  # noqa: N806 - a type alias
    BreakGlass = Annotated[  # noqa: N806 - a type alias
        str | None,
        Header(alias="X-Break-Glass-Reason", description="a clinician's emergency, stated; always audited"),
    ]

    def judge(who: Principal, break_glass: str | None) -> Judge:
        return Judge(policy, Asker(who.org, who.role, datetime.now(UTC), break_glass))

    def disclose(request: Request, who: Principal, judge_: Judge, channel: str, found: list[Json]) -> FhirResponse:
        judged = [(r, judge_(r)) for r in found]
        record(ledger, who, channel, judged)
        return searchset(request, [r for r, d in judged if d.permitted], sum(not d.permitted for _, d in judged))

    @api.get("/metadata", summary="CapabilityStatement")
    def metadata(request: Request) -> FhirResponse:
        return FhirResponse(capability_statement(str(request.base_url).rstrip("/") + "/fhir"))

    @api.get("/Patient", summary="Search patients by identifier")
    def search_patients(
        request: Request,
        who: Caller,
        break_glass: BreakGlass = None,
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
        found = reader.patients_by_identifier(system, value)
        return disclose(request, who, judge(who, break_glass), "search", found)

    @api.get("/Patient/{id}/$everything", summary="Everything about one patient")
    def everything(request: Request, who: Caller, id: str, break_glass: BreakGlass = None) -> FhirResponse:
        found = reader.everything(id)
        if not found:
            raise UnknownPersonError(f"Patient/{id} is not known here", ("Patient.id",))
        judge_ = judge(who, break_glass)
        first = judge_(found[0])
        if not first.permitted:
            record(ledger, who, "everything", [(r, first) for r in found])
            raise ConsentDeniedError("; ".join(first.reasons), ("Patient",))
        return disclose(request, who, judge_, "everything", found)

    @api.get("/AuditEvent", summary="The disclosure ledger about one patient, for auditors")
    def audit_events(
        request: Request,
        who: Caller,
        patient: Annotated[str | None, Query(description="Patient id or Patient/<id>")] = None,
    ) -> FhirResponse:
        if who.role != "auditor":
            raise ConsentDeniedError("AuditEvent is readable by the auditor role only", ("AuditEvent",))
        if not patient:
            raise InvalidMessageError("AuditEvent search needs patient=<id>", ("patient",), code="required")
        if ledger is None:
            return searchset(request, [], 0)
        person = patient.removeprefix("Patient/")
        events = [audit_event(entry) for entry in ledger.about(person)]
        audit = Decision("permit", ("the auditor role reads the disclosure ledger for audit",))
        record(ledger, who, "audit", [({"resourceType": "Patient", "id": person}, audit)])
        return searchset(request, events, 0)

    @api.get("/{kind}", summary="Search Encounter, Provenance or Consent by patient")
    def search_by_patient(
        request: Request,
        who: Caller,
        kind: str,
        break_glass: BreakGlass = None,
        patient: Annotated[str | None, Query(description="Patient id or Patient/<id>")] = None,
    ) -> FhirResponse:
        if kind not in PERSONAL:
            raise UnknownPersonError(
                f"searching {kind} is not supported here (see /fhir/metadata)", (kind,), code="not-supported"
            )
        if not patient:
            raise InvalidMessageError(f"{kind} search needs patient=<id>", ("patient",), code="required")
        found = reader.search(kind, patient.removeprefix("Patient/"))
        return disclose(request, who, judge(who, break_glass), "search", found)

    @api.get("/{kind}/{id}", summary="Read one resource")
    def read(who: Caller, kind: str, id: str, break_glass: BreakGlass = None) -> FhirResponse:
        if kind not in READABLE:
            raise UnknownPersonError(
                f"{kind} is not a resource type this server holds (see /fhir/metadata)", (kind,), code="not-supported"
            )
        found = reader.read(kind, id)
        if found is None:
            raise UnknownPersonError(f"{kind}/{id} is not known here", (f"{kind}.id",))
        decision = judge(who, break_glass)(found)
        record(ledger, who, "read", [(found, decision)])
        if not decision.permitted:
            raise ConsentDeniedError("; ".join(decision.reasons), (kind,))
        return FhirResponse(found)

    @api.post("/Consent", status_code=201, summary="Record a person's permit or objection to sharing")
    async def record_consent(request: Request, who: Caller) -> FhirResponse:
        if publish is None:
            raise InvalidMessageError("this server does not take Consent", ("Consent",), code="not-supported")
        consent = _parse_consent(await request.body())
        person = _person_for(reader, consent)
        consent["id"] = str(uuid.uuid4())
        consent["patient"] = {"reference": f"Patient/{person}"}
        consent["meta"] = {"source": f"urn:ods:{who.org}"}
        now = datetime.now(UTC)
        await publish(
            Envelope(
                id=str(uuid.uuid4()),
                source=f"urn:ods:{who.org}",
                type=CONSENT_RECORDED.type,
                time=now,
                subject=person,
                data=orjson.dumps(consent),
            )
        )
        location = str(request.base_url).rstrip("/") + f"/fhir/Consent/{consent['id']}"
        return FhirResponse(consent, status_code=201, headers={"Location": location})

    return api


def _parse_consent(body: bytes) -> Json:
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidMessageError(f"the body is not JSON: {exc}", ("Consent",)) from exc
    if not isinstance(data, dict) or data.get("resourceType") != "Consent":
        raise InvalidMessageError("the body must be a FHIR Consent resource", ("Consent.resourceType",))
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


def _person_for(reader: RecordReader, consent: Json) -> str:
    patient = consent.get("patient") or {}
    ref = str(patient.get("reference", ""))
    if ref.startswith("Patient/") and reader.read("Patient", ref.removeprefix("Patient/")):
        return ref.removeprefix("Patient/")
    ident = patient.get("identifier") or {}
    if ident.get("system") and ident.get("value"):
        found = reader.patients_by_identifier(str(ident["system"]), str(ident["value"]))
        if found:
            return str(found[0]["id"])
    raise UnknownPersonError("Consent.patient names no person in the shared care record", ("Consent.patient",))


def searchset(request: Request, shown: list[Json], withheld: int) -> FhirResponse:
    """A searchset Bundle of what may be shown, saying how many were withheld."""
    base = str(request.base_url).rstrip("/") + "/fhir"
    entries: list[Json] = [
        {"fullUrl": f"{base}/{r['resourceType']}/{r['id']}", "resource": r, "search": {"mode": "match"}} for r in shown
    ]
    if withheld:
        note = {
            "resourceType": "OperationOutcome",
            "issue": [
                {
                    "severity": "information",
                    "code": "suppressed",
                    "diagnostics": f"{withheld} resource(s) withheld under the information-sharing policy",
                }
            ],
        }
        entries.append({"resource": note, "search": {"mode": "outcome"}})
    bundle: dict[str, Any] = {
        "resourceType": "Bundle",
        "id": str(uuid.uuid4()),
        "meta": {"lastUpdated": datetime.now(UTC).isoformat()},
        "type": "searchset",
        "total": len(shown),
        "link": [{"relation": "self", "url": str(request.url)}],
        "entry": entries,
    }
    return FhirResponse(bundle)


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
_ACTION = {"read": "R", "search": "E", "everything": "E", "topic": "E", "webhook": "E", "audit": "R"}


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
