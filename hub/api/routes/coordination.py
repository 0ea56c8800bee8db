"""/fhir coordination commands: referrals in, and what a coordinator does with them.

    POST /fhir/ServiceRequest                          a GP (or any partner) refers a person
    POST /fhir/ServiceRequest/{id}/$accept             allocate to a coordinator, under the caseload cap; once
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
unknown referral or person, 409 when a rule refuses (a coordinator at the caseload cap, a referral
accepted already for someone else, a person on a caseload). One accept of a referral wins, whichever
API worker each reaches: it claims the referral in the database (a primary key) before it publishes,
and the same accept sent again is answered 200 with the episode it opened; the claim names the
person too, so an accept of another referral for them is refused while the episode claimed is open.
Its ids are the referral's (accept_ids), so no consumer ever makes two EpisodeOfCare of one
referral's accept events, however often they arrive.

No `from __future__ import annotations` here: FastAPI reads these annotations at runtime.
"""

import asyncio
import hashlib
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Protocol

import orjson
from fastapi import APIRouter, Depends, Path, Request
from fhir.resources.R4B.servicerequest import ServiceRequest

from hub.api.auth import Principal, TokenVerifier
from hub.api.outcomes import FhirResponse
from hub.api.routes.coordination_input import (
    accept_ids,
    at_param,
    at_time,
    business_identifier,
    episode_for,
    found_practice,
    json_body,
    nhs_number_of,
    opened_for,
    param,
    parameters,
    person_of,
    refuse_unless_shared,
    source_of,
    validate,
    with_outcome,
    with_source,
)
from hub.api.routes.fhir import bearer_caller, fhir_id, read_body
from hub.api.shapes import FHIR_ID, SERVICE_REQUEST_IN, parameters_in
from hub.core import nhs_number
from hub.core.errors import ConsentDeniedError, InvalidMessageError, RuleRefusedError, UnknownPersonError
from hub.core.fhir_read import care_manager
from hub.core.identity import person_key, stable_id
from hub.core.pic_summary import composition, practice_output
from hub.core.ports import CoordinationReader, Json, RecordReader
from hub.core.task_status import MOVES, STATUSES, may_move
from hub.core.tasks import Engine
from schemas.agreements import Agreement
from schemas.envelope import Envelope
from schemas.events import coordination as co
from schemas.subscriptions import Subscription

Publish = Callable[[Envelope], Awaitable[None]]
ODS_SYSTEM = "https://fhir.nhs.uk/Id/ods-organization-code"
COMMAND_ROLES = ("coordinator", "admin")


class CoordinationStore(CoordinationReader, Protocol):
    """The coordination read side, and the one write the API makes itself: the claim that lets
    exactly one accept of a referral win, whichever worker each reaches (hub.store.coordination)."""

    def acceptance(self, referral_id: str) -> Json | None:
        """The EpisodeOfCare of the accept that claimed the referral, if one has."""
        ...

    def claim_acceptance(
        self,
        referral_id: str,
        person_key: str,
        coordinator: str,
        episode: Json,
        at: datetime,
        is_open: Callable[[Json], bool],
    ) -> Json | None:
        """None if this call claimed the referral for `episode`; else the episode of the accept that
        did, or of another referral's accept for the person whose episode `is_open`."""
        ...


@dataclass(frozen=True)
class CoordinationApi:
    """What the commands need: the record, the coordination read side, the rules, the person-key secret."""

    reader: RecordReader
    coordination: CoordinationStore
    engine: Engine
    key_secret: bytes
    publish: Publish
    # the agreements in force (hub.store.agreements), where sharing is enforced: a practice a
    # coordinator names must be party to one with the service, or the PIC summary could not go to it
    agreements: Callable[[], Sequence[Agreement]] | None = None
    # the active subscriptions (hub.store.subscriptions): a practice named must take PIC summaries
    subscriptions: Callable[[], Sequence[Subscription]] | None = None


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

    async def emit(
        type_: str, who: Principal, person: str, at: datetime, *resources: Json, event_id: str | None = None
    ) -> None:
        payload = {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": r} for r in resources]}
        await api_.publish(
            Envelope(
                id=event_id or str(uuid.uuid4()),
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

    @api.post(
        "/fhir/ServiceRequest",
        status_code=201,
        summary="Refer a person (GP, social care, VCSE, ...)",
        openapi_extra=SERVICE_REQUEST_IN,
    )
    async def refer(request: Request, who: Caller) -> FhirResponse:
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
                # as FHIR's conditional create answers a match: 200, nothing made; and nothing of the
                # referral as it now stands (what others added to it is theirs to disclose, by a read)
                made = f"ServiceRequest/{request_['id']}"
                outcome = {
                    "resourceType": "OperationOutcome",
                    "issue": [
                        {
                            "severity": "information",
                            "code": "duplicate",
                            "diagnostics": f"{made} was made from this identifier for this person already: "
                            "not made again",
                            "expression": ["ServiceRequest.identifier"],
                        }
                    ],
                }
                return FhirResponse(outcome, headers={"Location": f"/fhir/{made}"})
        request_["status"] = "active"
        request_["subject"] = {
            "reference": f"Patient/{person}",
            "identifier": {"system": nhs_number.NHS_NUMBER_SYSTEM, "value": nhs},
        }
        request_.setdefault("authoredOn", now.isoformat())
        request_.setdefault("requester", {"identifier": {"system": ODS_SYSTEM, "value": who.org}})
        request_.setdefault("performer", [{"identifier": {"system": ODS_SYSTEM, "value": rules.service.ods}}])
        source = source_of(request_)
        request_ = with_source(request_, source)
        stub: Json = {
            "resourceType": "Patient",
            "id": person,
            "identifier": [{"system": nhs_number.NHS_NUMBER_SYSTEM, "value": nhs}],
        }
        if source == "gp":  # only a GP's own referral says the caller is the person's practice
            stub["generalPractitioner"] = [{"identifier": {"system": ODS_SYSTEM, "value": who.org}}]
        await emit(co.REFERRAL_RECEIVED.type, who, person, authored, request_, stub, event_id=event_id)
        return FhirResponse(request_, status_code=201, headers={"Location": f"/fhir/ServiceRequest/{request_['id']}"})

    @api.post(
        "/fhir/ServiceRequest/{id}/$accept",
        status_code=201,
        summary="Allocate a referral to a coordinator",
        openapi_extra=parameters_in("coordinator", "at", required=("coordinator",)),
    )
    async def accept(request: Request, id: Id, who: Caller) -> FhirResponse:
        coordinator_only(who)
        params = parameters(await read_body(request))
        coordinator = str(param(params, "coordinator", required=True))
        now = datetime.now(UTC)
        at = at_param(params, now)
        referral = referral_of(id)
        person = person_of(referral)
        held = api_.coordination.acceptance(id) or opened_for(api_.reader.search("EpisodeOfCare", person), id)
        if held is not None:
            return await accepted_already(who, referral, held, coordinator)
        refuse_allocation(person, coordinator)
        episode = episode_for(id, person, coordinator, rules.service.ods, at)
        # (in a thread: on SQLite the claim waits for the write lock, which a consumer in this process may
        # hold while it awaits Kafka on this event loop; waiting on the loop stalled both for the busy timeout)
        claim = api_.coordination.claim_acceptance
        held = await asyncio.to_thread(claim, id, person, coordinator, episode, now, still_open)
        if held is not None:  # another accept of it claimed it first, or one of another referral the person
            refuse_held_person(id, held)
            return await accepted_already(who, referral, held, coordinator)
        await publish_acceptance(who, referral, episode)
        return FhirResponse(episode, status_code=201, headers={"Location": f"/fhir/EpisodeOfCare/{episode['id']}"})

    def still_open(claimed: Json) -> bool:
        """A claimed episode holds its person until the record has it ended (not there yet: it holds)."""
        current = api_.reader.read("EpisodeOfCare", str(claimed["id"]))
        return current is None or current.get("status") not in ("finished", "cancelled", "entered-in-error")

    def refuse_held_person(referral_id: str, held: Json) -> None:
        if opened_for([held], referral_id) is None:  # (the episode of another referral, still open)
            raise RuleRefusedError(
                f"this person is already on a caseload: EpisodeOfCare/{held['id']}, coordinator "
                f"{care_manager(held) or '(none named)'}; close it before accepting another referral for them",
                ("ServiceRequest",),
            )

    def refuse_allocation(person: str, coordinator: str) -> None:
        if (api_.coordination.state(person) or {}).get("episode"):
            raise RuleRefusedError("this person is already on a caseload", ("ServiceRequest",))
        load = api_.coordination.caseloads().get(coordinator, 0)
        if load >= rules.caseload_cap:
            raise RuleRefusedError(
                f"coordinator {coordinator} already has {load} people on their caseload "
                f"(cap {rules.caseload_cap}); allocate to someone else or raise the cap in the rules",
                ("Parameters.coordinator",),
            )

    async def accepted_already(who: Principal, referral: Json, held: Json, coordinator: str) -> FhirResponse:
        """A referral accepted already: the same accept again (for the same coordinator) is answered
        200 with the episode it opened; one for anyone else is refused 409, naming who has it."""
        current = api_.reader.read("EpisodeOfCare", str(held["id"]))
        holder = care_manager(current or held) or "(none named)"
        if holder != coordinator:
            raise RuleRefusedError(
                f"ServiceRequest/{referral['id']} was accepted already, onto the caseload of coordinator {holder} "
                f"(EpisodeOfCare/{held['id']}): a referral is accepted once, by the first accept to reach the hub",
                ("ServiceRequest",),
            )
        if current is None:  # claimed but not on the record yet: perhaps Kafka never took its events
            await publish_acceptance(who, referral, held)  # (the same ids: applied once, however often sent)
        return FhirResponse(current or held, headers={"Location": f"/fhir/EpisodeOfCare/{held['id']}"})

    async def publish_acceptance(who: Principal, referral: Json, episode: Json) -> None:
        _, outcome_id, opened_id = accept_ids(str(referral["id"]))
        person, at = person_of(referral), datetime.fromisoformat(str(episode["period"]["start"]))
        accepted = with_outcome(referral, "accepted", "active")
        await emit(co.REFERRAL_OUTCOME.type, who, person, at, accepted, event_id=outcome_id)
        await emit(co.EPISODE_OPENED.type, who, person, at, episode, event_id=opened_id)

    @api.post(
        "/fhir/ServiceRequest/{id}/$decline",
        summary="Record that a referral was declined",
        openapi_extra=parameters_in("reason", "at"),
    )
    async def decline(request: Request, id: Id, who: Caller) -> FhirResponse:
        coordinator_only(who)
        params = parameters(await read_body(request))
        at = at_param(params, datetime.now(UTC))
        referral = referral_of(id)
        declined = with_outcome(referral, "declined", "revoked")
        reason = param(params, "reason")
        if reason:
            declined["note"] = [{"text": reason}]
        await emit(co.REFERRAL_OUTCOME.type, who, person_of(referral), at, declined)
        return FhirResponse(declined)

    @api.post(
        "/fhir/Patient/{id}/$record-contact",
        status_code=201,
        summary="Record a call or visit",
        openapi_extra=parameters_in("kind", "at", "referral", required=("kind",)),
    )
    async def record_contact(request: Request, id: Id, who: Caller) -> FhirResponse:
        coordinator_only(who)
        params = parameters(await read_body(request))
        kind = str(param(params, "kind", required=True))
        if kind not in co.CONTACT_KINDS:
            raise InvalidMessageError(
                f"kind must be one of {', '.join(co.CONTACT_KINDS)}", ("Parameters.kind",), code="code-invalid"
            )
        at = at_param(params, datetime.now(UTC))
        if api_.reader.read("Patient", fhir_id(id, "Patient")) is None:
            raise UnknownPersonError(f"no Patient/{id} in the shared care record", ("Patient",))
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
        referral = param(params, "referral")
        if referral:
            encounter["basedOn"] = [{"reference": f"ServiceRequest/{referral}"}]
        await emit(co.CONTACT_RECORDED.type, who, id, at, encounter)
        return FhirResponse(encounter, status_code=201)

    @api.post(
        "/fhir/EpisodeOfCare/{id}/$close",
        summary="Discharge from the service; the PIC summary goes to the GP",
        openapi_extra=parameters_in("goals", "interventions", "onward-referrals", "follow-up", "at"),
    )
    async def close(request: Request, id: Id, who: Caller) -> FhirResponse:
        coordinator_only(who)
        params = parameters(await read_body(request))
        at = at_param(params, datetime.now(UTC))
        episode = api_.reader.read("EpisodeOfCare", fhir_id(id, "EpisodeOfCare"))
        if episode is None:
            raise UnknownPersonError(f"no EpisodeOfCare/{id} in the shared care record", ("EpisodeOfCare",))
        if episode.get("status") == "finished":
            raise RuleRefusedError("this episode is already closed", ("EpisodeOfCare.status",))
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
        await emit(co.EPISODE_CLOSED.type, who, person, at, closed, summary)
        return FhirResponse(closed)

    @api.post(
        "/fhir/Task/{id}/$status",
        summary="Move a task through the FHIR Task statuses",
        openapi_extra=parameters_in("status", "practice", required=("status",)),
    )
    async def task_status(request: Request, id: Id, who: Caller) -> FhirResponse:
        coordinator_only(who)
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
