"""/fhir coordination commands: referrals in, and what a coordinator does with them.

    POST /fhir/ServiceRequest                          a GP (or any partner) refers a person
    POST /fhir/ServiceRequest/{id}/$accept             allocate to a coordinator, under the caseload cap; once
    POST /fhir/ServiceRequest/{id}/$decline            the person declined, or the referral is not accepted
    POST /fhir/ServiceRequest/{id}/$withdraw           its referrer takes a referral back (coordination_withdraw)
    POST /fhir/Patient/{id}/$record-contact            a call or visit (first-contact, face-to-face, ...)
    POST /fhir/EpisodeOfCare/{id}/$close               discharge from the service, with the PIC summary content
    POST /fhir/EpisodeOfCare/{id}/$close-duplicate     a duplicate stay a merge left open: entered-in-error,
                                                       no discharge, no PIC summary (coordination_duplicate)
    POST /fhir/Task/{id}/$status                       move a task through the FHIR Task statuses (completing
                                                       a find-gp-practice task, `practice` names the practice)
    GET  /coordination/caseloads                       people per coordinator against the cap

Commands take FHIR Parameters and answer with the resource they recorded; each becomes an event on
the log (the record, the rules engine and subscribers take it from there), so a command answered
201 is on the log, acknowledged by Kafka. Reads of what they made go through /fhir like any other
read, under the sharing policy. Refusals are OperationOutcomes: 400 for bad input, 404 for an
unknown referral or person, 409 when a rule refuses (a coordinator at the caseload cap, a referral
accepted already for someone else, a person on a caseload). A command's `at` (when it happened) is
never in the future, nor before what it acts on began (coordination_input.not_before): an episode's
start, a referral's authoredOn. $accept and $decline, and how one decision
of a referral wins, are in coordination_acceptance; what every command shares (CoordinationApi,
the coordinator check, publishing) in coordination_commands. A $close claims its episode in the
database before it publishes (the record lags the log, so its status alone let two closes through):
the first to reach the database stands, the same close again is answered with it until the record
has it, and a close Kafka did not take keeps its claim (503: send the same close again; any other close
of the episode sends it, and is refused 409, as does an accept refused because the episode holds its person).

No `from __future__ import annotations` here: FastAPI reads these annotations at runtime.
"""

import asyncio
import hashlib
import re
import uuid
from collections.abc import Collection
from datetime import UTC, datetime
from typing import Annotated

import orjson
from fastapi import APIRouter, Depends, Request
from fhir.resources.R4B.servicerequest import ServiceRequest

from hub.api.auth import Principal, TokenVerifier
from hub.api.outcomes import FhirResponse
from hub.api.routes import coordination_acceptance, coordination_duplicate, coordination_withdraw
from hub.api.routes.coordination_close import (
    closed_already,
    closed_refusal,
    closing_asked,
    publish_closure,
    refuse_blank_summary,
)
from hub.api.routes.coordination_commands import (
    ODS_SYSTEM,
    CoordinationApi,
    Id,
    coordinator_only,
    emit,
    refuse_unless_sender,
)
from hub.api.routes.coordination_input import (
    at_param,
    at_time,
    business_identifier,
    found_practice,
    json_body,
    nhs_number_of,
    not_before,
    param,
    parameters,
    refuse_unless_shared,
    source_of,
    validate,
    with_source,
)
from hub.api.routes.fhir import bearer_caller, fhir_id, read_body
from hub.api.shapes import FHIR_ID, SERVICE_REQUEST_IN, parameters_in
from hub.core import nhs_number
from hub.core.errors import (
    ConsentDeniedError,
    InvalidMessageError,
    RuleRefusedError,
    UnknownPersonError,
)
from hub.core.fhir_read import addressed_to, requester_of
from hub.core.huddle import is_gp_practice
from hub.core.identity import identities, person_key, stable_id
from hub.core.pic_summary import composition, practice_output
from hub.core.ports import Closure, Json
from hub.core.task_status import MOVES, STATUSES, may_move
from schemas.events import coordination as co

__all__ = ["CoordinationApi", "router"]


def refuse_answering(referral: Json, patient: Collection[str], service: str, name: str) -> None:
    """Refuse a contact naming a referral it cannot answer, before anything of the referral is said: one
    addressed to another organisation (403: theirs to answer, its content not the service's), or one
    about another person than `patient` (400; any identity the record knows them by)."""
    if not addressed_to(referral, service):
        raise ConsentDeniedError(
            f"ServiceRequest/{referral['id']} is not addressed to {service} ({name}): a contact of the "
            "service answers only its own referrals",
            ("Parameters.referral",),
        )
    if str((referral.get("subject") or {}).get("reference", "")).removeprefix("Patient/") not in patient:
        raise InvalidMessageError(
            f"ServiceRequest/{referral['id']} is about another person than the Patient the contact is with",
            ("Parameters.referral",),
        )


def router(api_: CoordinationApi, tokens: TokenVerifier) -> APIRouter:
    """The coordination commands."""
    api = APIRouter(default_response_class=FhirResponse)
    rules = api_.engine.rules

    Caller = Annotated[Principal, Depends(bearer_caller(tokens))]  # noqa: N806 - a type alias

    @api.post(
        "/fhir/ServiceRequest",
        status_code=201,
        summary="Refer a person (GP, social care, VCSE, ...)",
        openapi_extra=SERVICE_REQUEST_IN,
    )
    async def refer(request: Request, who: Caller) -> FhirResponse:
        refuse_unless_sender(who, "refer people")
        body = json_body(await read_body(request), "ServiceRequest")
        if body.get("resourceType") != "ServiceRequest":
            raise InvalidMessageError("the body must be a FHIR ServiceRequest", ("ServiceRequest.resourceType",))
        validate(ServiceRequest, body, "ServiceRequest")
        nhs = nhs_number_of(body)
        if body.get("status") != "active":  # (it was made active whatever it said)
            raise InvalidMessageError(
                f"status {body.get('status')!r}: a referral is made active (the hub keeps no drafts; it says when "
                "it is revoked or completed)",
                ("ServiceRequest.status",),
                code="code-invalid",
            )
        now = datetime.now(UTC)
        authored = at_time(body["authoredOn"], now, "ServiceRequest.authoredOn") if "authoredOn" in body else now
        person = person_key(api_.key_secret, nhs, None)
        request_ = {k: v for k, v in body.items() if k != "meta"}
        request_["id"] = str(uuid.uuid4())
        said = business_identifier(request_)
        event_id = None
        if said is not None:  # the referrer's own id for it, for this person: made once, however often sent
            request_["id"] = stable_id("api-referral", who.org, *said, person)
            # the event is the same only for the same body: a retry is applied once, anything else is news
            sent = hashlib.sha256(orjson.dumps(body, option=orjson.OPT_SORT_KEYS)).hexdigest()
            event_id = stable_id("api-referral-event", who.org, *said, person, sent)
            if api_.reader.read("ServiceRequest", request_["id"]) is not None:
                return made_already(f"ServiceRequest/{request_['id']}")
        request_["status"] = "active"
        request_["subject"] = {
            "reference": f"Patient/{person}",
            "identifier": {"system": nhs_number.NHS_NUMBER_SYSTEM, "value": nhs},
        }
        request_.setdefault("authoredOn", now.isoformat())
        request_["requester"] = requester_is_sender(request_.get("requester"), who.org)
        request_.setdefault("performer", [{"identifier": {"system": ODS_SYSTEM, "value": rules.service.ods}}])
        source = source_of(request_)
        request_ = with_source(request_, source)
        stub = patient_stub(person, nhs, source, who.org, rules.service.ods)
        await emit(api_, co.REFERRAL_RECEIVED.type, who, person, authored, request_, stub, event_id=event_id)
        return FhirResponse(request_, status_code=201, headers={"Location": f"/fhir/ServiceRequest/{request_['id']}"})

    api.include_router(coordination_acceptance.router(api_, tokens))  # $accept, $decline
    api.include_router(coordination_withdraw.router(api_, tokens))  # $withdraw, by the referrer
    api.include_router(coordination_duplicate.router(api_, tokens))  # $close-duplicate, after a merge

    @api.post(
        "/fhir/Patient/{id}/$record-contact",
        status_code=201,
        summary="Record a call or visit",
        openapi_extra=parameters_in("kind", "at", "referral", required=("kind",)),
    )
    async def record_contact(request: Request, id: Id, who: Caller) -> FhirResponse:
        coordinator_only(api_, who)
        params = parameters(await read_body(request))
        kind = str(param(params, "kind", required=True))
        if kind not in co.CONTACT_KINDS:
            raise InvalidMessageError(
                f"kind must be one of {', '.join(co.CONTACT_KINDS)}", ("Parameters.kind",), code="code-invalid"
            )
        at = at_param(params, datetime.now(UTC))
        if api_.reader.read("Patient", fhir_id(id, "Patient")) is None:
            raise UnknownPersonError(f"no Patient/{id} in the shared care record", ("Patient",))
        referral = param(params, "referral")
        named = referral is not None and re.fullmatch(FHIR_ID, referral) is not None
        answered = api_.reader.read("ServiceRequest", str(referral)) if named else None
        if answered is not None:
            refuse_answering(answered, identities(api_.reader, id), rules.service.ods, rules.service.name)
            # no contact answers a referral before it was made
            at = not_before(params, at, answered.get("authoredOn"), f"ServiceRequest/{referral} was made")
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
        if referral:
            encounter["basedOn"] = [{"reference": f"ServiceRequest/{referral}"}]
        await emit(api_, co.CONTACT_RECORDED.type, who, id, at, encounter)
        return FhirResponse(encounter, status_code=201)

    @api.post(
        "/fhir/EpisodeOfCare/{id}/$close",
        summary="Discharge from the service; the PIC summary goes to the GP",
        openapi_extra=parameters_in("goals", "interventions", "onward-referrals", "follow-up", "at"),
    )
    async def close(request: Request, id: Id, who: Caller) -> FhirResponse:
        coordinator_only(api_, who)
        params = parameters(await read_body(request))
        now = datetime.now(UTC)
        at = at_param(params, now)
        episode = api_.reader.read("EpisodeOfCare", fhir_id(id, "EpisodeOfCare"))
        if episode is None:
            raise UnknownPersonError(f"no EpisodeOfCare/{id} in the shared care record", ("EpisodeOfCare",))
        asked = closing_asked(params, at)
        stands = api_.coordination.closure(id)
        if stands is not None:  # closed already, by this close (a retry, a double click) or another
            return await closed_already(api_, who, episode, stands, asked)
        if episode.get("status") == "finished":  # (closed before closes were claimed)
            raise closed_refusal(episode)
        at = not_before(params, at, (episode.get("period") or {}).get("start"), "the episode began", episode)
        refuse_blank_summary(asked)
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
                "goals": param(params, "goals") or "",
                "interventions": param(params, "interventions") or "",
                "onward": param(params, "onward-referrals") or "",
                "follow-up": param(params, "follow-up") or "",
            },
        )
        # the claim first (in a thread, as the accept's: on SQLite it waits for the write lock), so that
        # of two closes the first to reach the database is the one the GP is sent and the record keeps
        closure = Closure(closed, summary, asked)
        found = await asyncio.to_thread(api_.coordination.claim_closure, person, closure, now)
        if found is not None:
            return await closed_already(api_, who, episode, found, asked)
        await publish_closure(api_, who, person, closure)
        return FhirResponse(closed)

    @api.post(
        "/fhir/Task/{id}/$status",
        summary="Move a task through the FHIR Task statuses",
        openapi_extra=parameters_in("status", "practice", required=("status",)),
    )
    async def task_status(request: Request, id: Id, who: Caller) -> FhirResponse:
        coordinator_only(api_, who)
        params = parameters(await read_body(request))
        status = str(param(params, "status", required=True))
        if status not in STATUSES:
            raise InvalidMessageError(
                f"status must be a FHIR Task status: {', '.join(sorted(STATUSES))}",
                ("Parameters.status",),
                code="code-invalid",
            )
        task = api_.reader.read("Task", fhir_id(id, "Task"))
        if task is None:
            raise UnknownPersonError(f"no Task/{id} in the shared care record", ("Task",))
        practice = found_practice(params, task, status)  # (bad input first, then the rules)
        if practice is not None:
            refuse_unless_shared(practice, rules.service.ods, api_.agreements, api_.subscriptions)
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
        # the owner as the rules engine has it: it gives the team's tasks to the accepting coordinator a
        # moment before the record hears it, and a status moved from the record's copy in between named
        # the team again, for good (the engine's own update then came after it, a move back, refused)
        engine_state = await asyncio.to_thread(api_.coordination.person_state, person)
        owner = ((engine_state or {}).get("tasks") or {}).get(str(task["id"]), {}).get("owner")
        if owner and owner != rules.service.ods:
            moved["owner"] = {"identifier": {"system": co.COORDINATOR_SYSTEM, "value": owner}}
        await emit(api_, co.TASK_UPDATED.type, who, person, at, moved)
        return FhirResponse(moved)

    @api.get("/coordination/caseloads", summary="People on each coordinator's caseload, against the cap")
    def caseloads(who: Caller) -> FhirResponse:
        coordinator_only(api_, who)
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


def made_already(made: str) -> FhirResponse:
    """As FHIR's conditional create answers a match: 200, nothing made; and nothing of the referral as
    it now stands (what others added to it is theirs to disclose, by a read)."""
    issue = {
        "severity": "information",
        "code": "duplicate",
        "diagnostics": f"{made} was made from this identifier for this person already: not made again",
        "expression": ["ServiceRequest.identifier"],
    }
    return FhirResponse({"resourceType": "OperationOutcome", "issue": [issue]}, headers={"Location": f"/fhir/{made}"})


def patient_stub(person: str, nhs: str, source: str, caller_org: str, service: str | None = None) -> Json:
    """The Patient a referral names; only a GP practice's own referral (source `gp` from an organisation
    whose code is a practice's: hub.core.huddle.is_gp_practice) says the caller is the person's practice.
    A hospital or PCN saying `gp` (the GP identified them) is not their practice: the PIC summary would
    go to it; with no practice named, the letter is held and the coordinator asked to find the practice."""
    stub: Json = {
        "resourceType": "Patient",
        "id": person,
        "identifier": [{"system": nhs_number.NHS_NUMBER_SYSTEM, "value": nhs}],
    }
    if source == "gp" and is_gp_practice(caller_org, service):
        stub["generalPractitioner"] = [{"identifier": {"system": ODS_SYSTEM, "value": caller_org}}]
    return stub


def requester_is_sender(requester: object, org: str) -> Json:
    """The referral's requester: the organisation sending it (the token's), whatever else it says of
    them (a display, a contained worker). Naming another organisation is refused: the requester may
    read the referral and hear what became of it (hub.core.policy, "own referral"), so a referral
    naming someone else would hand them it, and take it from its real referrer."""
    if requester is None:
        return {"identifier": {"system": ODS_SYSTEM, "value": org}}
    if not isinstance(requester, dict):
        raise InvalidMessageError("ServiceRequest.requester is not a Reference", ("ServiceRequest.requester",))
    said = requester_of({"requester": requester})
    if said and said != org.upper():
        raise InvalidMessageError(
            f"ServiceRequest.requester names {said[:20]}, but this referral is sent by {org}: a referral's "
            f"requester is the organisation sending it. Leave requester out (the hub names {org}), or send it "
            "as that organisation",
            ("ServiceRequest.requester",),
        )
    return requester if said else {**requester, "identifier": {"system": ODS_SYSTEM, "value": org}}
