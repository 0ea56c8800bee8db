"""/fhir coordination commands that decide a referral: $accept, which claims it, and $decline.

    POST /fhir/ServiceRequest/{id}/$accept             allocate to a coordinator, under the caseload cap; once
    POST /fhir/ServiceRequest/{id}/$decline            the person declined, or the referral is not accepted

One accept of a referral wins, whichever API worker each reaches: it claims the referral in the
database (a primary key) before it publishes, and the same accept sent again is answered 200 with
the episode it opened; the claim names the person too, so an accept of another referral for them is
refused while the episode claimed is open. An accept Kafka did not take keeps its claim: it is
answered 503 saying the referral is held for its coordinator, and the same accept again publishes it.
Its ids are the referral's (accept_ids), so no consumer ever makes two EpisodeOfCare of one
referral's accept events, however often they arrive.

No `from __future__ import annotations` here: FastAPI reads these annotations at runtime.
"""

import asyncio
from datetime import UTC, datetime
from functools import partial
from typing import Annotated

from fastapi import APIRouter, Depends, Request

from hub.api.auth import Principal, TokenVerifier
from hub.api.outcomes import FhirResponse
from hub.api.routes.coordination_commands import CoordinationApi, Id, coordinator_only, emit, referral_to_service
from hub.api.routes.coordination_input import (
    accept_ids,
    at_param,
    episode_for,
    not_before,
    opened_for,
    param,
    parameters,
    person_of,
    with_outcome,
)
from hub.api.routes.fhir import bearer_caller, read_body
from hub.api.shapes import parameters_in
from hub.core.errors import BrokerUnavailableError, RuleRefusedError, UnfinishedError
from hub.core.fhir_read import care_manager
from hub.core.identity import stable_id
from hub.core.ports import Json, RecordReader
from hub.core.stays import is_open
from schemas.events import coordination as co


def router(api_: CoordinationApi, tokens: TokenVerifier) -> APIRouter:
    """$accept and $decline of a referral."""
    api = APIRouter(default_response_class=FhirResponse)
    rules = api_.engine.rules

    Caller = Annotated[Principal, Depends(bearer_caller(tokens))]  # noqa: N806 - a type alias

    @api.post(
        "/fhir/ServiceRequest/{id}/$accept",
        status_code=201,
        summary="Allocate a referral to a coordinator",
        openapi_extra=parameters_in("coordinator", "at", required=("coordinator",)),
    )
    async def accept(request: Request, id: Id, who: Caller) -> FhirResponse:
        coordinator_only(api_, who)
        params = parameters(await read_body(request))
        coordinator = str(param(params, "coordinator", required=True))
        now = datetime.now(UTC)
        at = at_param(params, now)
        referral = referral_to_service(api_, id)
        refuse_accepting_declined(referral)
        person = person_of(referral)
        held = claimed(api_, id, person)
        if held is not None:
            return await accepted_already(api_, who, referral, held, coordinator)
        at = not_before(params, at, referral.get("authoredOn"), "the referral was made", referral)
        refuse_allocation(api_, person, coordinator)
        episode = episode_for(id, person, coordinator, rules.service.ods, at)
        # (in a thread: on SQLite the claim waits for the write lock, which a consumer in this process may
        # hold while it awaits Kafka on this event loop; waiting on the loop stalled both for the busy timeout)
        claim = api_.coordination.claim_acceptance
        held = await asyncio.to_thread(claim, id, person, coordinator, episode, now, partial(still_open, api_.reader))
        if held is not None:  # another accept of it claimed it first, or one of another referral the person
            refuse_held_person(id, held)
            return await accepted_already(api_, who, referral, held, coordinator)
        await publish_acceptance(api_, who, referral, episode)
        return FhirResponse(episode, status_code=201, headers={"Location": f"/fhir/EpisodeOfCare/{episode['id']}"})

    @api.post(
        "/fhir/ServiceRequest/{id}/$decline",
        summary="Record that a referral was declined",
        openapi_extra=parameters_in("reason", "at"),
    )
    async def decline(request: Request, id: Id, who: Caller) -> FhirResponse:
        coordinator_only(api_, who)
        params = parameters(await read_body(request))
        at = at_param(params, datetime.now(UTC))
        referral = referral_to_service(api_, id)
        if outcome_of(referral) == "declined":  # a retry, or a second click: the first decline stands
            return FhirResponse(referral)
        refuse_declining_accepted(api_, referral)
        at = not_before(params, at, referral.get("authoredOn"), "the referral was made", referral)
        declined = with_outcome(referral, "declined", "revoked")
        reason = param(params, "reason")
        if reason:
            declined["note"] = [{"text": reason}]
        # one id for every decline of it: sent twice before the record has the first, the second is the
        # duplicate every consumer drops, and the first (its date, its reason) stands in the KPIs
        event_id = stable_id("api-decline", str(referral["id"]))
        await emit(api_, co.REFERRAL_OUTCOME.type, who, person_of(referral), at, declined, event_id=event_id)
        return FhirResponse(declined)

    return api


def still_open(reader: RecordReader, claimed: Json) -> bool:
    """A claimed episode holds its person until the record has it ended (not there yet: it holds)."""
    current = reader.read("EpisodeOfCare", str(claimed["id"]))
    return current is None or is_open(current.get("status"))


def claimed(api_: CoordinationApi, referral_id: str, person: str) -> Json | None:
    """The episode of the accept that claimed the referral, or (a log from before accepts were
    claimed) the episode on the record opened for it; None: nobody has accepted it."""
    return api_.coordination.acceptance(referral_id) or opened_for(
        api_.reader.search("EpisodeOfCare", person), referral_id
    )


def outcome_of(referral: Json) -> str | None:
    """What the record says became of a referral (its outcome extension), if anything."""
    return next(
        (str(e.get("valueCode")) for e in referral.get("extension") or [] if e.get("url") == co.OUTCOME_EXTENSION), None
    )


def refuse_accepting_declined(referral: Json) -> None:
    """Refuse (409) an accept of a referral declined: the KPIs have counted it declined in its month,
    and an accept would take that back months later; a person who comes back is referred again."""
    if outcome_of(referral) == "declined":
        raise RuleRefusedError(
            f"ServiceRequest/{referral['id']} was declined: a declined referral is not accepted (the KPIs count "
            "it declined); if the person is to be taken on after all, refer them again and accept that referral",
            ("ServiceRequest",),
        )


def refuse_declining_accepted(api_: CoordinationApi, referral: Json) -> None:
    """Refuse (409) a decline of a referral already accepted (or claimed by an accept): the KPIs would
    count it declined while its person is on a caseload; leaving the service is a $close."""
    rid = str(referral["id"])
    held = claimed(api_, rid, person_of(referral))
    if held is None:
        return
    coordinator, episode = care_manager(held) or "(none named)", api_.reader.read("EpisodeOfCare", str(held["id"]))
    said = f"ServiceRequest/{rid} was accepted, onto coordinator {coordinator}'s caseload (EpisodeOfCare/{held['id']})"
    if episode is None:  # claimed, but Kafka did not take the accept (it was answered 503)
        then = f"send that $accept (coordinator {coordinator}) again to complete it, then close the episode ($close)"
    elif not is_open(episode.get("status")):
        then = "and that episode is closed already: the referral stands as accepted"
    else:
        then = "to end the person's time with the service, close the episode ($close)"
    raise RuleRefusedError(f"{said}: it cannot be declined now; {then}", ("ServiceRequest",))


def refuse_held_person(referral_id: str, held: Json) -> None:
    """Refuse (409) an accept whose claim found the person held by another referral's open episode."""
    if opened_for([held], referral_id) is None:  # (the episode of another referral, still open)
        raise RuleRefusedError(
            f"this person is already on a caseload: EpisodeOfCare/{held['id']}, coordinator "
            f"{care_manager(held) or '(none named)'}; close it before accepting another referral for them",
            ("ServiceRequest",),
        )


def refuse_allocation(api_: CoordinationApi, person: str, coordinator: str) -> None:
    """Refuse (409) an accept for a person on a caseload, or for a coordinator at the cap."""
    rules = api_.engine.rules
    if (api_.coordination.state(person) or {}).get("episode"):
        raise RuleRefusedError("this person is already on a caseload", ("ServiceRequest",))
    load = api_.coordination.caseloads().get(coordinator, 0)
    if load >= rules.caseload_cap:
        raise RuleRefusedError(
            f"coordinator {coordinator} already has {load} people on their caseload "
            f"(cap {rules.caseload_cap}); allocate to someone else or raise the cap in the rules",
            ("Parameters.coordinator",),
        )


async def accepted_already(
    api_: CoordinationApi, who: Principal, referral: Json, held: Json, coordinator: str
) -> FhirResponse:
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
        await publish_acceptance(api_, who, referral, held)  # (the same ids: applied once, however often sent)
    return FhirResponse(current or held, headers={"Location": f"/fhir/EpisodeOfCare/{held['id']}"})


async def publish_acceptance(api_: CoordinationApi, who: Principal, referral: Json, episode: Json) -> None:
    """The accept's events, under the referral's ids. The claim is made already, so one Kafka does
    not take is UnfinishedError: the 503 says the referral is held, not that nothing was kept."""
    _, outcome_id, opened_id = accept_ids(str(referral["id"]))
    person, at = person_of(referral), datetime.fromisoformat(str(episode["period"]["start"]))
    accepted = with_outcome(referral, "accepted", "active")
    try:
        await emit(api_, co.REFERRAL_OUTCOME.type, who, person, at, accepted, event_id=outcome_id)
        await emit(api_, co.EPISODE_OPENED.type, who, person, at, episode, event_id=opened_id)
    except BrokerUnavailableError as lost:
        raise held_unpublished(referral, episode) from lost


def held_unpublished(referral: Json, episode: Json) -> UnfinishedError:
    """What an accept whose claim Kafka did not take tells its caller: held for them; send it again."""
    coordinator = care_manager(episode) or "(none named)"
    return UnfinishedError(
        f"ServiceRequest/{referral['id']} is held for coordinator {coordinator} (EpisodeOfCare/{episode['id']}), "
        "but Kafka did not acknowledge all of the accept, so the episode may not be on the record, the "
        f"caseloads or the KPIs yet. Send the same $accept (coordinator {coordinator}) again to complete it; "
        "it opens nothing twice. Until then an accept for another coordinator is refused 409."
    )
