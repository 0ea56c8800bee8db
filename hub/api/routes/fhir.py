"""/fhir: read and search the shared care record (FHIR R4, application/fhir+json), and record
people's sharing choices (POST Consent; PUT one to end or correct it).

Every route but `metadata` needs a bearer token. Every resource that would leave is decided by the
policy decision point (hub.core.policy: agreements and consent) and every decision, permit or deny,
is written to the disclosure ledger before the response is sent.

No `from __future__ import annotations` here: FastAPI reads these annotations at runtime, and
some name closures of `router`.
"""

import logging
import re
import uuid
from collections import defaultdict
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Path, Query, Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from hub.api.auth import AuthError, Principal, TokenVerifier
from hub.api.bodies import check_shape as check_shape  # (the other routes take both from here)
from hub.api.bodies import read_body as read_body
from hub.api.fhir_documents import audit_events_of, capability_statement
from hub.api.outcomes import FhirResponse
from hub.api.routes.fhir_consent import (
    consent_event,
    enforceable,
    held_consent,
    located,
    may_record_consent,
    parse_consent,
    person_for,
    replaces,
    same_choice,
)
from hub.api.searchsets import handled, searchset
from hub.api.shapes import (
    BUNDLE,
    CAPABILITY,
    CONSENT_IN,
    CONSENT_OUT,
    CONSENT_UPDATE,
    FHIR_ID,
    PATIENT_REF,
    PERSONAL,
    READABLE,
    REASON,
    RESOURCE,
    SYSTEM_VALUE,
    created,
    errors,
    ok,
)
from hub.core.errors import ConsentDeniedError, InvalidMessageError, LedgerBrokenError, UnknownPersonError
from hub.core.identity import identities
from hub.core.ledger import Disclosure, resource_ref, unsound
from hub.core.policy import (
    UNENFORCED,
    Asker,
    Decision,
    bounded,
    covers_audit,
    decide,
    person_of,
    told_to_asker,
)
from hub.core.ports import Json, Ledger, RecordReader
from hub.core.timetravel import WITHHELD_WITH_READ
from hub.store.agreements import PolicySource
from schemas.envelope import Envelope

log = logging.getLogger(__name__)

NHS_SYSTEM = "https://fhir.nhs.uk/Id/nhs-number"
ODS_SYSTEM = "https://fhir.nhs.uk/Id/ods-organization-code"
Publish = Callable[[Envelope], Awaitable[None]]
TAG = "FHIR record"  # the OpenAPI tag of these routes

_FHIR_ID, _PATIENT_REF, _SYSTEM_VALUE, _REASON = (re.compile(p) for p in (FHIR_ID, PATIENT_REF, SYSTEM_VALUE, REASON))
BEARER = HTTPBearer(
    auto_error=False,
    scheme_name="bearer",
    bearerFormat="JWT",
    description="a token from `carehub token --org ODS --role ROLE`",
)


def bearer_caller(tokens: TokenVerifier) -> Callable[..., Principal]:
    """The FastAPI dependency that names who is asking, from the bearer token (401 without one)."""

    def caller(request: Request, bearer: Annotated[HTTPAuthorizationCredentials | None, Security(BEARER)]) -> Principal:
        if bearer is None:
            if not request.headers.get("authorization"):
                raise AuthError("this API needs a bearer token (Authorization: Bearer <token>)")
            raise AuthError("the Authorization header must be 'Bearer <token>'")
        return tokens.verify(bearer.credentials)

    return caller


def fhir_id(id: str, kind: str) -> str:
    """`id` if it is a FHIR id (1 to 64 letters, digits, '-' and '.'); otherwise a 400."""
    if not _FHIR_ID.match(id):
        raise InvalidMessageError(f"{kind} id must be 1 to 64 letters, digits, '-' or '.'", (f"{kind}.id",))
    return id


def patient_id(patient: str, kind: str) -> str:
    """The person a `patient=` search parameter names (`<id>` or `Patient/<id>`); otherwise a 400."""
    if not patient:
        raise InvalidMessageError(f"{kind} search needs patient=<id>", ("patient",), code="required")
    if not _PATIENT_REF.match(patient):
        raise InvalidMessageError("patient must be a Patient id or Patient/<id>", ("patient",))
    return patient.removeprefix("Patient/")


class Judge:
    """Decides each resource for one request, with each person's consents read once. A resource that
    refers to a referral or an episode of care is shared no further than they are, as the record
    holds them (PolicySource.origins), looked up only where that could change the decision (a permit
    to someone other than its supplier): for the whole of the request's `page` at once, the first
    time one of it needs them (those in the page taken as they are), each read once for the request."""

    def __init__(self, policy: PolicySource | None, asker: Asker) -> None:
        self.policy = policy
        self.asker = asker
        self._consents: dict[str, Any] = {}
        self._held: dict[tuple[str, str], Json | None] = {}  # (what the resources of a read refer to, read once)
        self._page: list[Json] = []

    def page(self, resources: list[Json]) -> None:
        """The resources this request decides, whose origins are read together when one needs them."""
        self._page = resources

    def __call__(self, resource: Json) -> Decision:
        if self.policy is None:
            return UNENFORCED
        agreements = self.policy.agreements()
        plain = decide(self.asker, resource, agreements, self._of([resource]))
        if not bounded(self.asker, resource, plain):
            return plain
        if self._page:
            self.policy.origins_of_page(self._page, self._held)
            self._page = []
        origins = self.policy.origins(resource, self._held)
        return decide(self.asker, resource, agreements, self._of([resource, *origins]), origins=origins)

    def _of(self, resources: list[Json]) -> list[Any]:
        """The consents of the people `resources` are about (a referral may have moved since), each read once."""
        people = {p for r in resources if (p := person_of(r)) is not None}
        for person in people - self._consents.keys():
            self._consents[person] = self.policy.consents(person) if self.policy else []
        return [rule for person in sorted(people) for rule in self._consents[person]]


def refused_whole(patient: tuple[Json, Decision], rest: list[tuple[Json, Decision]]) -> list[tuple[Json, Decision]]:
    """A $everything refused because its Patient was: each other resource with its own refusal, or,
    one permitted itself, as withheld with the read (not with the Patient's reason, which is not its)."""
    withheld = Decision("deny", (WITHHELD_WITH_READ,))
    return [patient, *((r, withheld if d.permitted else d) for r, d in rest)]


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
    api = APIRouter(prefix="/fhir", default_response_class=FhirResponse, tags=[TAG])

    Caller = Annotated[Principal, Depends(bearer_caller(tokens))]  # noqa: N806 - a type alias
    BreakGlass = Annotated[  # noqa: N806 - a type alias
        str | None,
        Header(
            alias="X-Break-Glass-Reason",
            description="a clinician's emergency, stated; always audited",
            json_schema_extra={"pattern": REASON},
        ),
    ]
    Id = Annotated[str, Path(description="a FHIR id", json_schema_extra={"pattern": FHIR_ID})]  # noqa: N806
    PatientRef = Annotated[  # noqa: N806 - a type alias
        str, Query(description="Patient id or Patient/<id>", json_schema_extra={"pattern": PATIENT_REF})
    ]

    def judge(who: Principal, break_glass: str | None) -> Judge:
        if break_glass is not None and not _REASON.match(break_glass):
            raise InvalidMessageError(
                "X-Break-Glass-Reason must be a line of text (1 to 500 characters, no control characters)",
                ("X-Break-Glass-Reason",),
            )
        return Judge(policy, Asker(who.org, who.role, datetime.now(UTC), break_glass))

    def disclose(
        request: Request, who: Principal, judge_: Judge, channel: str, found: list[Json], reads: tuple[str, ...]
    ) -> FhirResponse:
        judge_.page(found)
        judged = [(r, judge_(r)) for r in found]
        record(ledger, who, channel, judged)
        shown = [r for r, d in judged if d.permitted]
        return searchset(request, shown, sum(not d.permitted for _, d in judged), reads)

    @api.get("/metadata", summary="CapabilityStatement", responses=ok(CAPABILITY))
    def metadata(request: Request) -> FhirResponse:
        return FhirResponse(capability_statement(str(request.base_url).rstrip("/") + "/fhir", request.app.openapi()))

    @api.get("/Patient", summary="Search patients by identifier", responses=ok(BUNDLE) | errors(400, 401, 403))
    def search_patients(
        request: Request,
        who: Caller,
        identifier: Annotated[
            str, Query(description="system|value, e.g. the NHS number", json_schema_extra={"pattern": SYSTEM_VALUE})
        ],
        break_glass: BreakGlass = None,
    ) -> FhirResponse:
        handled(request, ("identifier",))
        if not identifier:
            raise InvalidMessageError("Patient search needs identifier=system|value", ("identifier",), code="required")
        system, _, value = identifier.partition("|")
        if not _SYSTEM_VALUE.match(identifier):
            raise InvalidMessageError(
                "identifier must be system|value, e.g. https://fhir.nhs.uk/Id/nhs-number|9434765919",
                ("identifier",),
            )
        found = reader.patients_by_identifier(system, value)
        return disclose(request, who, judge(who, break_glass), "search", found, ("identifier",))

    @api.get(
        "/Patient/{id}/$everything",
        summary="Everything about one patient",
        responses=ok(BUNDLE) | errors(400, 401, 403, 404),
    )
    def everything(request: Request, who: Caller, id: Id, break_glass: BreakGlass = None) -> FhirResponse:
        handled(request, ())
        judge_ = judge(who, break_glass)
        found = reader.everything(fhir_id(id, "Patient"))
        if not found:
            raise UnknownPersonError(f"Patient/{id} is not known here", ("Patient.id",))
        first = judge_(found[0])
        if not first.permitted:
            record(ledger, who, "everything", refused_whole((found[0], first), [(r, judge_(r)) for r in found[1:]]))
            raise ConsentDeniedError(told_to_asker(first), ("Patient",))
        return disclose(request, who, judge_, "everything", found, ())

    @api.get(
        "/AuditEvent",
        summary="The disclosure ledger about one patient, for auditors",
        responses=ok(BUNDLE) | errors(400, 401, 403),
    )
    def audit_events(request: Request, who: Caller, patient: PatientRef) -> FhirResponse:
        handled(request, ("patient",))
        if who.role != "auditor":
            raise ConsentDeniedError("AuditEvent is readable by the auditor role only", ("AuditEvent",))
        if policy is not None and not covers_audit(policy.agreements(), Asker(who.org, who.role, datetime.now(UTC))):
            raise ConsentDeniedError(
                f"no sharing agreement in force today names {who.org} as a party for audit, so its auditors "
                "may not read the disclosure ledger",
                ("AuditEvent",),
            )
        person = patient_id(patient, "AuditEvent")
        if ledger is None:
            return searchset(request, [], 0, ("patient",))
        entries = ledger.about(*identities(reader, person))
        broken = unsound(entries)
        if broken is not None:  # (reported as true, an edited entry would mislead the auditor)
            log.error("the disclosure ledger is broken at entry %s", broken.seq)
            raise LedgerBrokenError(
                f"the disclosure ledger is broken at entry {broken.seq}: {broken.problem}. Its entries about "
                "this person cannot be reported as true; the hub's operator should run `carehub audit verify` "
                "and report the break to the information governance lead",
                ("AuditEvent",),
            )
        events = audit_events_of(entries)  # (one per decision: a result is said on its attempt)
        audit = Decision("permit", ("the auditor role reads the disclosure ledger for audit",))
        record(ledger, who, "audit", [({"resourceType": "Patient", "id": person}, audit)])
        return searchset(request, events, 0, ("patient",))

    @api.get("/Consent", summary="Search a person's consents", responses=ok(BUNDLE) | errors(400, 401, 403))
    def search_consents(
        request: Request, who: Caller, patient: PatientRef, break_glass: BreakGlass = None
    ) -> FhirResponse:
        return search_by_patient(request, who, "Consent", patient, break_glass)

    @api.get(
        "/{kind}",
        summary="Search Encounter, Provenance or Consent by patient",
        responses=ok(BUNDLE) | errors(400, 401, 403, 404),
    )
    def search_by_patient(
        request: Request,
        who: Caller,
        kind: Annotated[str, Path(json_schema_extra={"enum": list(PERSONAL)})],
        patient: PatientRef,
        break_glass: BreakGlass = None,
    ) -> FhirResponse:
        handled(request, ("patient",))
        if kind not in PERSONAL:
            raise UnknownPersonError(
                f"searching {kind} is not supported here (see /fhir/metadata)", (kind,), code="not-supported"
            )
        judge_ = judge(who, break_glass)
        found = reader.search(kind, patient_id(patient, kind))
        return disclose(request, who, judge_, "search", found, ("patient",))

    @api.get("/{kind}/{id}", summary="Read one resource", responses=ok(RESOURCE) | errors(400, 401, 403, 404))
    def read(
        who: Caller,
        kind: Annotated[str, Path(json_schema_extra={"enum": list(READABLE)})],
        id: Id,
        break_glass: BreakGlass = None,
    ) -> FhirResponse:
        if kind not in READABLE:
            raise UnknownPersonError(
                f"{kind} is not a resource type this server holds (see /fhir/metadata)", (kind,), code="not-supported"
            )
        judge_ = judge(who, break_glass)
        found = reader.read(kind, fhir_id(id, kind))
        if found is None:
            raise UnknownPersonError(f"{kind}/{id} is not known here", (f"{kind}.id",))
        decision = judge_(found)
        record(ledger, who, "read", [(found, decision)])
        if not decision.permitted:
            raise ConsentDeniedError(told_to_asker(decision), (kind,))
        return FhirResponse(found)

    @api.post(
        "/Consent",
        status_code=201,
        summary="Record a person's permit or objection to sharing",
        responses=created(CONSENT_OUT) | ok(CONSENT_OUT) | errors(400, 401, 403, 404, 413),
        openapi_extra={"requestBody": {"required": True, "content": {"application/fhir+json": {"schema": CONSENT_IN}}}},
    )
    async def record_consent(request: Request, who: Caller) -> FhirResponse:
        if publish is None:
            raise InvalidMessageError("this server does not take Consent", ("Consent",), code="not-supported")
        may_record_consent(policy, who)
        consent = parse_consent(await read_body(request))
        enforceable(reader, consent)
        person = person_for(reader, consent)
        consent["patient"] = {"reference": f"Patient/{person}"}
        existing = same_choice(reader, person, consent)
        if existing is not None:  # (the same choice again: one Consent to end, not two)
            return FhirResponse(existing, headers={"Location": located(request, existing)})
        consent["id"] = str(uuid.uuid4())
        consent["meta"] = {"source": f"urn:ods:{who.org}"}
        await publish(consent_event(who, person, consent, datetime.now(UTC)))
        return FhirResponse(consent, status_code=201, headers={"Location": located(request, consent)})

    @api.put(
        "/Consent/{id}",
        summary="Update a recorded Consent: end it (status inactive) or mark it entered-in-error",
        responses=ok(CONSENT_OUT) | errors(400, 401, 403, 404, 412, 413),
        openapi_extra={
            "requestBody": {"required": True, "content": {"application/fhir+json": {"schema": CONSENT_UPDATE}}}
        },
    )
    async def update_consent(
        request: Request,
        who: Caller,
        id: Id,
        if_match: Annotated[str | None, Header(alias="If-Match", description='the version read, W/"N"')] = None,
    ) -> FhirResponse:
        if publish is None:
            raise InvalidMessageError("this server does not take Consent", ("Consent",), code="not-supported")
        may_record_consent(policy, who)
        consent = parse_consent(await read_body(request), update=True)
        held = held_consent(reader, fhir_id(id, "Consent"))
        person = replaces(reader, held, consent, id, if_match)
        enforceable(reader, consent)
        consent["patient"] = {"reference": f"Patient/{person}"}
        consent["meta"] = {"source": f"urn:ods:{who.org}"}
        await publish(consent_event(who, person, consent, datetime.now(UTC)))
        return FhirResponse(consent, headers={"Location": located(request, consent)})

    return api
