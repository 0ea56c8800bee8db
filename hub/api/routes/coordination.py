"""/fhir coordination commands: referrals in, and what a coordinator does with them.

    POST /fhir/ServiceRequest                          a GP (or any partner) refers a person
    POST /fhir/ServiceRequest/{id}/$accept             allocate to a coordinator, under the caseload cap
    POST /fhir/ServiceRequest/{id}/$decline            the person declined, or the referral is not accepted
    POST /fhir/Patient/{id}/$record-contact            a call or visit (first-contact, face-to-face, ...)
    POST /fhir/EpisodeOfCare/{id}/$close               discharge from the service, with the PIC summary content
    POST /fhir/Task/{id}/$status                       move a task through the FHIR Task statuses (completing
                                                       a find-gp-practice task, `practice` names the practice)
    GET  /coordination/caseloads                       people per coordinator against the cap

Commands take FHIR Parameters and answer with the resource they recorded; each becomes an event on
the log (the record, the rules engine and subscribers take it from there), so a command answered
201 is on the log, acknowledged by Kafka. Reads of what they made go through /fhir like any other
read, under the sharing policy. Refusals are OperationOutcomes: 400 for bad input, 404 for an
unknown referral or person, 409 when a rule refuses (a coordinator at the caseload cap).

No `from __future__ import annotations` here: FastAPI reads these annotations at runtime.
"""

import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, Path, Request
from fhir.resources.R4B.servicerequest import ServiceRequest
from pydantic import ValidationError

from hub.api.auth import Principal, TokenVerifier
from hub.api.outcomes import FhirResponse
from hub.api.routes.fhir import bearer_caller, check_shape, fhir_id, read_body
from hub.api.shapes import FHIR_ID
from hub.core import nhs_number
from hub.core.errors import ConsentDeniedError, InvalidMessageError, RuleRefusedError, UnknownPersonError
from hub.core.fhir_read import ODS_CODE, referral_source
from hub.core.identity import person_key
from hub.core.pic_summary import composition, practice_output
from hub.core.ports import CoordinationReader, Json, RecordReader
from hub.core.task_status import MOVES, STATUSES, may_move
from hub.core.tasks import FIND_PRACTICE, Engine
from schemas.agreements import Agreement
from schemas.envelope import Envelope
from schemas.events import coordination as co

Publish = Callable[[Envelope], Awaitable[None]]
ODS_SYSTEM = "https://fhir.nhs.uk/Id/ods-organization-code"
COMMAND_ROLES = ("coordinator", "admin")


@dataclass(frozen=True)
class CoordinationApi:
    """What the commands need: the record, the coordination read side, the rules, the person-key secret."""

    reader: RecordReader
    coordination: CoordinationReader
    engine: Engine
    key_secret: bytes
    publish: Publish
    # the agreements in force (hub.store.agreements), where sharing is enforced: a practice a
    # coordinator names must be party to one with the service, or the PIC summary could not go to it
    agreements: Callable[[], Sequence[Agreement]] | None = None


def router(api_: CoordinationApi, tokens: TokenVerifier) -> APIRouter:
    """The coordination commands."""
    api = APIRouter(default_response_class=FhirResponse)
    rules = api_.engine.rules

    Caller = Annotated[Principal, Depends(bearer_caller(tokens))]  # noqa: N806 - a type alias
    Id = Annotated[str, Path(description="a FHIR id", json_schema_extra={"pattern": FHIR_ID})]  # noqa: N806

    def coordinator_only(who: Principal) -> None:
        if who.role not in COMMAND_ROLES or who.org != rules.service.ods:
            raise ConsentDeniedError(
                f"only coordinators of {rules.service.ods} ({rules.service.name}) may do this", ("Authorization",)
            )

    async def emit(type_: str, who: Principal, person: str, at: datetime, *resources: Json) -> None:
        payload = {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": r} for r in resources]}
        await api_.publish(
            Envelope(
                id=str(uuid.uuid4()),
                source=f"urn:ods:{who.org}",
                type=type_,
                time=at,
                subject=person,
                data=orjson.dumps(payload),
            )
        )

    def referral_of(id: str) -> Json:
        found = api_.reader.read("ServiceRequest", fhir_id(id, "ServiceRequest"))
        if found is None:
            raise UnknownPersonError(f"no referral ServiceRequest/{id} in the shared care record", ("ServiceRequest",))
        return found

    @api.post("/fhir/ServiceRequest", status_code=201, summary="Refer a person (GP, social care, VCSE, ...)")
    async def refer(request: Request, who: Caller) -> FhirResponse:
        body = _json(await read_body(request), "ServiceRequest")
        if body.get("resourceType") != "ServiceRequest":
            raise InvalidMessageError("the body must be a FHIR ServiceRequest", ("ServiceRequest.resourceType",))
        _validate(ServiceRequest, body, "ServiceRequest")
        nhs = _nhs_number_of(body)
        if body.get("status") != "active":  # (it was made active whatever it said)
            raise InvalidMessageError(
                f"status {body.get('status')!r}: a referral is made active (the hub keeps no drafts; it says when "
                "it is revoked or completed)",
                ("ServiceRequest.status",),
                code="code-invalid",
            )
        person = person_key(api_.key_secret, nhs, None)
        now = datetime.now(UTC)
        request_ = {k: v for k, v in body.items() if k != "meta"}
        request_["id"] = str(uuid.uuid4())
        request_["status"] = "active"
        request_["subject"] = {
            "reference": f"Patient/{person}",
            "identifier": {"system": nhs_number.NHS_NUMBER_SYSTEM, "value": nhs},
        }
        request_.setdefault("authoredOn", now.isoformat())
        request_.setdefault("requester", {"identifier": {"system": ODS_SYSTEM, "value": who.org}})
        request_.setdefault("performer", [{"identifier": {"system": ODS_SYSTEM, "value": rules.service.ods}}])
        _source_of(request_)
        stub: Json = {
            "resourceType": "Patient",
            "id": person,
            "identifier": [{"system": nhs_number.NHS_NUMBER_SYSTEM, "value": nhs}],
        }
        if referral_source(request_) == "gp":  # only a GP's own referral says the caller is the person's practice
            stub["generalPractitioner"] = [{"identifier": {"system": ODS_SYSTEM, "value": who.org}}]
        await emit(co.REFERRAL_RECEIVED.type, who, person, _at(request_["authoredOn"]), request_, stub)
        return FhirResponse(request_, status_code=201, headers={"Location": f"/fhir/ServiceRequest/{request_['id']}"})

    @api.post("/fhir/ServiceRequest/{id}/$accept", status_code=201, summary="Allocate a referral to a coordinator")
    async def accept(request: Request, id: Id, who: Caller) -> FhirResponse:
        coordinator_only(who)
        params = _parameters(await read_body(request))
        coordinator = str(_param(params, "coordinator", required=True))
        at = _at(_param(params, "at")) if _param(params, "at") else datetime.now(UTC)
        referral = referral_of(id)
        person = _person(referral)
        if (api_.coordination.state(person) or {}).get("episode"):
            raise RuleRefusedError("this person is already on a caseload", ("ServiceRequest",))
        load = api_.coordination.caseloads().get(coordinator, 0)
        if load >= rules.caseload_cap:
            raise RuleRefusedError(
                f"coordinator {coordinator} already has {load} people on their caseload "
                f"(cap {rules.caseload_cap}); allocate to someone else or raise the cap in the rules",
                ("Parameters.coordinator",),
            )
        accepted = _with_outcome(referral, "accepted", "active")
        episode: Json = {
            "resourceType": "EpisodeOfCare",
            "id": str(uuid.uuid4()),
            "status": "active",
            "patient": {"reference": f"Patient/{person}"},
            "managingOrganization": {"identifier": {"system": ODS_SYSTEM, "value": rules.service.ods}},
            "careManager": {"identifier": {"system": co.COORDINATOR_SYSTEM, "value": coordinator}},
            "referralRequest": [{"reference": f"ServiceRequest/{id}"}],
            "period": {"start": at.isoformat()},
        }
        await emit(co.REFERRAL_OUTCOME.type, who, person, at, accepted)
        await emit(co.EPISODE_OPENED.type, who, person, at, episode)
        return FhirResponse(episode, status_code=201, headers={"Location": f"/fhir/EpisodeOfCare/{episode['id']}"})

    @api.post("/fhir/ServiceRequest/{id}/$decline", summary="Record that a referral was declined")
    async def decline(request: Request, id: Id, who: Caller) -> FhirResponse:
        coordinator_only(who)
        params = _parameters(await read_body(request))
        at = _at(_param(params, "at")) if _param(params, "at") else datetime.now(UTC)
        referral = referral_of(id)
        declined = _with_outcome(referral, "declined", "revoked")
        reason = _param(params, "reason")
        if reason:
            declined["note"] = [{"text": reason}]
        await emit(co.REFERRAL_OUTCOME.type, who, _person(referral), at, declined)
        return FhirResponse(declined)

    @api.post("/fhir/Patient/{id}/$record-contact", status_code=201, summary="Record a call or visit")
    async def record_contact(request: Request, id: Id, who: Caller) -> FhirResponse:
        coordinator_only(who)
        params = _parameters(await read_body(request))
        kind = str(_param(params, "kind", required=True))
        if kind not in co.CONTACT_KINDS:
            raise InvalidMessageError(
                f"kind must be one of {', '.join(co.CONTACT_KINDS)}", ("Parameters.kind",), code="code-invalid"
            )
        if api_.reader.read("Patient", fhir_id(id, "Patient")) is None:
            raise UnknownPersonError(f"no Patient/{id} in the shared care record", ("Patient",))
        at = _at(_param(params, "at")) if _param(params, "at") else datetime.now(UTC)
        encounter: Json = {
            "resourceType": "Encounter",
            "id": str(uuid.uuid4()),
            "status": "finished",
            "class": {
                "system": "http://terminology.hl7.org/CodeSystem/v3-ActCode",
                "code": "VR" if kind == "non-face-to-face" else "HH",
            },
            "type": [{"coding": [{"system": co.CONTACT_SYSTEM, "code": kind}]}],
            "subject": {"reference": f"Patient/{id}"},
            "period": {"start": at.isoformat(), "end": at.isoformat()},
            "serviceProvider": {"identifier": {"system": ODS_SYSTEM, "value": rules.service.ods}},
            "participant": [{"individual": {"display": who.user}}],
        }
        referral = _param(params, "referral")
        if referral:
            encounter["basedOn"] = [{"reference": f"ServiceRequest/{referral}"}]
        await emit(co.CONTACT_RECORDED.type, who, id, at, encounter)
        return FhirResponse(encounter, status_code=201)

    @api.post("/fhir/EpisodeOfCare/{id}/$close", summary="Discharge from the service; the PIC summary goes to the GP")
    async def close(request: Request, id: Id, who: Caller) -> FhirResponse:
        coordinator_only(who)
        params = _parameters(await read_body(request))
        episode = api_.reader.read("EpisodeOfCare", fhir_id(id, "EpisodeOfCare"))
        if episode is None:
            raise UnknownPersonError(f"no EpisodeOfCare/{id} in the shared care record", ("EpisodeOfCare",))
        if episode.get("status") == "finished":
            raise RuleRefusedError("this episode is already closed", ("EpisodeOfCare.status",))
        at = _at(_param(params, "at")) if _param(params, "at") else datetime.now(UTC)
        person = str(episode["patient"]["reference"]).removeprefix("Patient/")
        closed = {k: v for k, v in episode.items() if k != "meta"}
        closed["status"] = "finished"
        closed["period"] = {**(episode.get("period") or {}), "end": at.isoformat()}
        referrals = [
            str(r.get("reference", "")).removeprefix("ServiceRequest/") for r in episode.get("referralRequest") or []
        ]
        reasons = [
            str(c.get("text"))
            for r in referrals
            for c in (api_.reader.read("ServiceRequest", r) or {}).get("reasonCode") or []
            if c.get("text")
        ]
        summary = composition(
            episode=closed,
            person=person,
            at=at,
            author=rules.service.ods,
            author_name=rules.service.name,
            sections={
                "reason": "; ".join(reasons) or "not recorded",
                "goals": _param(params, "goals") or "",
                "interventions": _param(params, "interventions") or "",
                "onward": _param(params, "onward-referrals") or "",
                "follow-up": _param(params, "follow-up") or "",
            },
        )
        await emit(co.EPISODE_CLOSED.type, who, person, at, closed, summary)
        return FhirResponse(closed)

    @api.post("/fhir/Task/{id}/$status", summary="Move a task through the FHIR Task statuses")
    async def task_status(request: Request, id: Id, who: Caller) -> FhirResponse:
        coordinator_only(who)
        params = _parameters(await read_body(request))
        status = str(_param(params, "status", required=True))
        if status not in STATUSES:
            raise InvalidMessageError(
                f"status must be a FHIR Task status: {', '.join(sorted(STATUSES))}",
                ("Parameters.status",),
                code="code-invalid",
            )
        task = api_.reader.read("Task", fhir_id(id, "Task"))
        if task is None:
            raise UnknownPersonError(f"no Task/{id} in the shared care record", ("Task",))
        practice = _found_practice(params, task, status)  # (bad input first, then the rules)
        if practice is not None:
            _refuse_unless_shared(practice, rules.service.ods, api_.agreements)
        current = str(task.get("status"))
        if not may_move(current, status):
            allowed = ", ".join(sorted(MOVES.get(current, ()))) or "none (it is finished)"
            raise RuleRefusedError(
                f"a task that is {current} cannot become {status}; allowed: {allowed}", ("Parameters.status",)
            )
        at = datetime.now(UTC)
        moved = {k: v for k, v in task.items() if k != "meta"}
        moved["status"] = status
        moved["lastModified"] = at.isoformat()
        if practice:  # the held PIC summary goes to it (hub.core.tasks)
            moved["output"] = [practice_output(practice)]
        person = str(task["for"]["reference"]).removeprefix("Patient/")
        await emit(co.TASK_UPDATED.type, who, person, at, moved)
        return FhirResponse(moved)

    @api.get("/coordination/caseloads", summary="People on each coordinator's caseload, against the cap")
    def caseloads(who: Caller) -> FhirResponse:
        coordinator_only(who)
        loads = api_.coordination.caseloads()
        return FhirResponse(
            {
                "cap": rules.caseload_cap,
                "rules": f"{rules.id} v{rules.version}",
                "caseloads": [
                    {"coordinator": c, "people": n, "over_cap": n > rules.caseload_cap}
                    for c, n in sorted(loads.items())
                ],
            }
        )

    return api


def _source_of(request: Json) -> str:
    """Who refers, as the referral says it; refused where it does not (a source taken for granted
    would count in the commissioner's KPIs under the wrong one, and a partner taken for a GP would
    become the person's practice, where the PIC summary goes)."""
    codes = ", ".join(co.REFERRAL_SOURCES)
    said = any(isinstance(e, dict) and e.get("url") == co.SOURCE_EXTENSION for e in request.get("extension") or [])
    if not said:
        raise InvalidMessageError(
            f"the referral must say who refers: an extension {co.SOURCE_EXTENSION} whose valueCodeableConcept "
            f"is coded in {co.REFERRAL_SOURCE_SYSTEM} ({codes})",
            ("ServiceRequest.extension",),
            code="required",
        )
    source = referral_source(request)
    if source not in co.REFERRAL_SOURCES:
        shown = f"{source!r} is not" if source is not None else f"no coding in {co.REFERRAL_SOURCE_SYSTEM} is"
        raise InvalidMessageError(
            f"the referral's source: {shown} one of {codes}",
            (f"ServiceRequest.extension('{co.SOURCE_EXTENSION}').valueCodeableConcept",),
            code="code-invalid",
        )
    return str(source)


def _found_practice(params: Json, task: Json, status: str) -> str | None:
    """The GP practice a coordinator names on completing a find-the-practice task (or None); refused
    with a reason anywhere else, so that a practice named is never silently dropped, and required
    there: completed with none, the summary would stay held with no task left to chase it."""
    practice = _param(params, "practice")
    kind = ((task.get("code") or {}).get("coding") or [{}])[0].get("code")
    if practice is None:
        if kind == FIND_PRACTICE and status == "completed":
            raise InvalidMessageError(
                "completing a find-gp-practice task names the practice found (parameter practice, its ODS "
                "code), so that the held PIC summary goes to it; a practice that cannot be found: status cancelled",
                ("Parameters.parameter[practice]",),
                code="required",
            )
        return None
    code = practice.upper()
    if kind != FIND_PRACTICE:
        raise InvalidMessageError(
            f"practice is given only on completing a {FIND_PRACTICE} task; this one is {kind}",
            ("Parameters.parameter[practice]",),
        )
    if status != "completed":
        raise InvalidMessageError(
            "practice is given only with status completed: the practice found completes the task",
            ("Parameters.parameter[practice]",),
        )
    if not ODS_CODE.fullmatch(code):
        raise InvalidMessageError(
            f"practice {practice!r} is not an ODS code (3 to 10 letters and digits)",
            ("Parameters.parameter[practice]",),
            code="code-invalid",
        )
    return code


def _refuse_unless_shared(practice: str, service: str, agreements: Callable[[], Sequence[Agreement]] | None) -> None:
    """A practice the PIC summary can go to: not the service itself, and (where sharing is enforced)
    party to an agreement in force with the service. A code mistyped, or another organisation's, is
    refused here, before the summary goes: once sent, a letter cannot be called back."""
    if practice == service:
        raise InvalidMessageError(
            f"practice {practice} is the coordination service itself: name the person's GP practice",
            ("Parameters.parameter[practice]",),
            code="business-rule",
        )
    if agreements is None:
        return
    today = datetime.now(UTC).date()
    if not any(
        {practice, service} <= a.party_codes and a.valid_from <= today and (a.valid_to is None or today <= a.valid_to)
        for a in agreements()
    ):
        raise InvalidMessageError(
            f"practice {practice}: no sharing agreement in force names both {practice} and {service}, so the PIC "
            "summary could not be shared with it: check the code, or load the practice's agreement first",
            ("Parameters.parameter[practice]",),
            code="business-rule",
        )


def _json(body: bytes, what: str) -> Json:
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidMessageError(f"the body is not JSON: {exc}", (what,)) from exc
    if not isinstance(data, dict):
        raise InvalidMessageError(f"the body must be a FHIR {what}", (what,))
    check_shape(data, what)
    return data


def _validate(model: Any, body: Json, what: str) -> None:
    try:
        model.model_validate(body)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise InvalidMessageError(f"not a valid FHIR R4 {what}: {where}: {first['msg']}", (f"{what}.{where}",)) from exc


def _parameters(body: bytes) -> Json:
    data = _json(body or b"{}", "Parameters") if body else {"resourceType": "Parameters"}
    if data.get("resourceType") != "Parameters":
        raise InvalidMessageError("the body must be a FHIR Parameters resource", ("Parameters.resourceType",))
    return data


def _param(params: Json, name: str, *, required: bool = False) -> str | None:
    for p in params.get("parameter") or []:
        if isinstance(p, dict) and p.get("name") == name:
            for key in ("valueString", "valueCode", "valueDateTime", "valueId"):
                if isinstance(p.get(key), str) and p[key].strip():
                    return str(p[key]).strip()
    if required:
        raise InvalidMessageError(f"parameter {name} is required", (f"Parameters.parameter[{name}]",), code="required")
    return None


def _at(value: str | None) -> datetime:
    try:
        parsed = datetime.fromisoformat(str(value))
        if parsed.tzinfo is not None:
            parsed = parsed.astimezone(UTC)
    except (ValueError, OverflowError) as exc:
        raise InvalidMessageError(f"{value!r} is not an ISO 8601 date and time", ("Parameters.at",)) from exc
    if parsed.tzinfo is None:
        raise InvalidMessageError(
            "a date and time needs its UTC offset (e.g. 2026-11-25T10:00:00Z)", ("Parameters.at",)
        )
    return parsed


def _nhs_number_of(body: Json) -> str:
    subject = body.get("subject") or {}
    ident = subject.get("identifier") or {}
    value = str(ident.get("value") or "").replace(" ", "")
    if ident.get("system") != nhs_number.NHS_NUMBER_SYSTEM or not value:
        raise InvalidMessageError(
            "subject.identifier must carry the person's NHS number (system https://fhir.nhs.uk/Id/nhs-number)",
            ("ServiceRequest.subject.identifier",),
            code="required",
        )
    why = nhs_number.why_invalid(value)
    if why is not None:  # (it never echoes the number)
        raise InvalidMessageError(f"subject.identifier: {why}", ("ServiceRequest.subject.identifier",))
    return value


def _person(resource: Json) -> str:
    return str((resource.get("subject") or {}).get("reference", "")).removeprefix("Patient/")


def _with_outcome(referral: Json, outcome: str, status: str) -> Json:
    updated = {k: v for k, v in referral.items() if k != "meta"}
    updated["status"] = status
    others = [e for e in updated.get("extension") or [] if e.get("url") != co.OUTCOME_EXTENSION]
    updated["extension"] = [*others, {"url": co.OUTCOME_EXTENSION, "valueCode": outcome}]
    return updated
