"""/fhir coordination commands that decide a referral, each claiming it: $accept and $decline.

    POST /fhir/ServiceRequest/{id}/$accept             allocate to a coordinator, under the caseload cap; once
    POST /fhir/ServiceRequest/{id}/$decline            the person declined, or the referral is not accepted

A referral is decided once, whichever API worker each command reaches: an accept or a decline claims
it in the database (a primary key) before it publishes, and the first to reach the database wins; the
same accept sent again is answered 200 with the episode it opened, a decline sent again with the decline
that stands, and the other decision is refused 409 naming what happened. The record lags the log, so
what it says is checked too (a referral decided before claims were kept) but never trusted alone. An
accept's claim names the person too, so an accept of another referral for them is refused while the
episode claimed is open, and counts the coordinator's caseload (the rules engine's, and the episodes
claimed that it does not have yet), so none goes past the cap. A command Kafka did not take keeps its
claim: it is answered 503 saying what is held, and the next command that meets the claim publishes it
(completes it; a claim is never released): the same command again, another coordinator's accept or a
decline of the referral (then refused 409, naming it), an accept of another referral for the person,
and an accept refused at the cap (its coordinator's accepts the record lacks); a command refused 409
anyway completes it best effort (Kafka still down: its own 409, not the claim's 503). A close Kafka did
not take is completed by an accept refused because its episode holds the person (unapplied_close). An
outcome completed later is dated no earlier than the referral the record then holds (a correction may
have come since), or the record would skip it as older. Its ids are the
referral's (accept_ids; one decline event id), so no consumer ever applies one referral's decision
twice, however often it arrives, and an event Kafka took after all, arriving late, is the same event:
the record and the hub's answers agree whichever copy comes first. A referrer's `$withdraw`
(coordination_withdraw) claims the referral the same way: an accept or a decline that meets its
claim, or the record's withdrawal, is refused 409, publishing a withdrawal Kafka did not take first.

No `from __future__ import annotations` here: FastAPI reads these annotations at runtime.
"""

import asyncio
import contextlib
from datetime import UTC, datetime
from functools import partial
from typing import Annotated

from fastapi import APIRouter, Depends, Request

from hub.api.auth import Principal, TokenVerifier
from hub.api.outcomes import FhirResponse
from hub.api.routes.coordination_close import unapplied_close
from hub.api.routes.coordination_commands import (
    CoordinationApi,
    Id,
    best_effort,
    coordinator_only,
    emit,
    mark_sent,
    referral_to_service,
)
from hub.api.routes.coordination_input import (
    accept_ids,
    at_param,
    coordinator_id,
    episode_for,
    no_earlier_than_held,
    not_before,
    opened_for,
    param,
    parameters,
    person_of,
    with_outcome,
)
from hub.api.routes.coordination_withdrawn import refuse_deciding_withdrawn, withdrawn_refusal
from hub.api.routes.fhir import bearer_caller, read_body
from hub.api.shapes import parameters_in
from hub.core.deaths import death_said
from hub.core.errors import BrokerUnavailableError, InfrastructureError, RuleRefusedError, UnfinishedError
from hub.core.fhir_read import care_manager, outcome_of
from hub.core.identity import stable_id
from hub.core.ports import CaseloadFull, Decline, Json, RecordReader, Withdrawal
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
        said = str(param(params, "coordinator", required=True))
        coordinator = coordinator_id(said, await asyncio.to_thread(api_.coordination.caseloads))
        now = datetime.now(UTC)
        at = at_param(params, now)
        referral = referral_to_service(api_, id)
        await refuse_accepting_declined(api_, who, referral, api_.coordination.declined(id))
        person = person_of(referral)
        held = claimed(api_, id, person)
        if held is not None:
            return await accepted_already(api_, who, referral, held, coordinator)
        await refuse_deciding_withdrawn(api_, referral, "accepted")  # (after: the same accept again stands)
        at = not_before(params, at, referral.get("authoredOn"), "the referral was made", referral)
        await refuse_allocation(api_, who, person)
        refuse_deceased(api_.reader.read("Patient", person))
        episode = episode_for(id, person, coordinator, rules.service.ods, at)
        # (in a thread: on SQLite the claim waits for the write lock, which a consumer in this process may
        # hold while it awaits Kafka on this event loop; waiting on the loop stalled both for the busy timeout)
        claim = partial(api_.coordination.claim_acceptance, cap=rules.caseload_cap)
        found = await asyncio.to_thread(claim, id, person, coordinator, episode, now, partial(still_open, api_.reader))
        if found is None:
            await publish_acceptance(api_, who, referral, episode)
            return FhirResponse(episode, status_code=201, headers={"Location": f"/fhir/EpisodeOfCare/{episode['id']}"})
        if isinstance(found, Decline):  # a decline of it reached the database first
            await best_effort(complete_decline(api_, who, referral, found))
            raise declined_refusal(referral, found)
        if isinstance(found, Withdrawal):  # its referrer's withdrawal did
            raise await withdrawn_refusal(api_, referral, "accepted", found)
        if isinstance(found, CaseloadFull):
            await complete_caseload(api_, who, coordinator)
            raise over_cap(found, rules.caseload_cap)
        # another accept of it claimed it first, or one of another referral for the person
        await refuse_held_person(api_, who, id, found)
        return await accepted_already(api_, who, referral, found, coordinator)

    @api.post(
        "/fhir/ServiceRequest/{id}/$decline",
        summary="Record that a referral was declined",
        openapi_extra=parameters_in("reason", "at"),
    )
    async def decline(request: Request, id: Id, who: Caller) -> FhirResponse:
        coordinator_only(api_, who)
        params = parameters(await read_body(request))
        now = datetime.now(UTC)
        at = at_param(params, now)
        referral = referral_to_service(api_, id)
        stands = api_.coordination.declined(id)
        if stands is not None:  # a retry, or a second click: the first decline stands
            return await declined_already(api_, who, referral, stands)
        if outcome_of(referral) == "declined":  # (declined before declines were claimed)
            return FhirResponse(the_decision(referral))
        await refuse_deciding_withdrawn(api_, referral, "declined")
        await refuse_declining_accepted(api_, who, referral, claimed(api_, id, person_of(referral)))
        at = not_before(params, at, referral.get("authoredOn"), "the referral was made", referral)
        declined = with_outcome(referral, "declined", "revoked")
        reason = param(params, "reason")
        if reason:
            declined["note"] = [{"text": reason}]
        claim = api_.coordination.claim_decline
        found = await asyncio.to_thread(claim, id, person_of(referral), Decline(declined, at), now)
        if isinstance(found, Decline):  # another decline of it reached the database first
            return await declined_already(api_, who, referral, found)
        if isinstance(found, Withdrawal):  # its referrer's withdrawal did
            raise await withdrawn_refusal(api_, referral, "declined", found)
        await refuse_declining_accepted(api_, who, referral, found)  # an accept did
        await publish_decline(api_, who, referral, Decline(declined, at))
        return FhirResponse(the_decision(declined))

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


async def refuse_accepting_declined(
    api_: CoordinationApi, who: Principal, referral: Json, decline: Decline | None
) -> None:
    """Refuse (409) an accept of a referral declined (claimed by a decline, or so on the record); a
    decline claimed that the record does not have yet is published first (perhaps Kafka never took it,
    answered 503), so that the record comes to say what the refusal says."""
    if decline is not None:
        await best_effort(complete_decline(api_, who, referral, decline))
    if decline is not None or outcome_of(referral) == "declined":
        raise declined_refusal(referral, decline)


async def complete_decline(api_: CoordinationApi, who: Principal, referral: Json, decline: Decline) -> None:
    """Publish the decline that claimed the referral if the record does not have it yet (perhaps Kafka
    never took it, answered 503): under its one event id, it is applied once."""
    if outcome_of(referral) != "declined" and not api_.coordination.sent(str(referral["id"])):
        await publish_decline(api_, who, referral, decline)


def declined_refusal(referral: Json, decline: Decline | None) -> RuleRefusedError:
    """Why an accept of a referral declined is refused: the KPIs count it declined in its month, and an
    accept would take that back months later; a person who comes back is referred again."""
    when = f" ({decline.at.isoformat()})" if decline is not None else ""
    return RuleRefusedError(
        f"ServiceRequest/{referral['id']} was declined{when}: a declined referral is not accepted (the KPIs "
        "count it declined); if the person is to be taken on after all, refer them again and accept that referral",
        ("ServiceRequest",),
    )


async def refuse_declining_accepted(api_: CoordinationApi, who: Principal, referral: Json, held: Json | None) -> None:
    """Refuse (409) a decline of a referral already accepted (`held`: the episode its accept claimed, or
    opened on the record): the KPIs would count it declined while its person is on a caseload; leaving
    the service is a $close. An accept claimed that the record does not have yet is published first."""
    if held is None:
        return
    rid = str(referral["id"])
    coordinator, episode = care_manager(held) or "(none named)", api_.reader.read("EpisodeOfCare", str(held["id"]))
    said = f"ServiceRequest/{rid} was accepted, onto coordinator {coordinator}'s caseload (EpisodeOfCare/{held['id']})"
    if episode is None:  # claimed, but not on the record yet (or Kafka did not take the accept: 503)
        then = f"it is not on the record yet: {await accept_completed(api_, who, held, referral)}; to end the "
        then += "person's time with the service, close the episode ($close)"
    elif not is_open(episode.get("status")):
        then = "and that episode is closed already: the referral stands as accepted"
    else:
        then = "to end the person's time with the service, close the episode ($close)"
    raise RuleRefusedError(f"{said}: it cannot be declined now; {then}", ("ServiceRequest",))


def refuse_deceased(patient: Json | None) -> None:
    """Refuse (409) an accept for a person the record says has died (deceasedDateTime, or
    deceasedBoolean true): no one is put on a caseload to be visited after their death."""
    said = death_said(patient or {})
    if said is not None:
        on = f" (on {(patient or {})[said]})" if said == "deceasedDateTime" else ""
        raise RuleRefusedError(
            f"the record says this person has died{on}: a referral for them is not accepted; if that is "
            "wrong, the record must be corrected (by the sender of their demographics) before the accept",
            ("ServiceRequest.subject",),
        )


async def refuse_held_person(api_: CoordinationApi, who: Principal, referral_id: str, held: Json) -> None:
    """Refuse (409) an accept whose claim found the person held by another referral's open episode
    (published first if the record does not have it yet, as every accept the record lacks is)."""
    if opened_for([held], referral_id) is None:  # (the episode of another referral, still open)
        await best_effort(complete_acceptance(api_, who, held))
        raise await on_caseload(api_, who, str(held["id"]), care_manager(held))


async def complete_acceptance(api_: CoordinationApi, who: Principal, held: Json, referral: Json | None = None) -> bool:
    """Publish the accept whose claim opened `held` (of `referral`; None: the one it names) if Kafka is
    not known to have taken it and the record does not have the episode: its ids are its referral's,
    so however often it is sent it is applied once. True: it was sent now."""
    named = [str(r.get("reference", "")) for r in held.get("referralRequest") or [] if isinstance(r, dict)]
    rid = str(referral["id"]) if referral is not None else named[0].removeprefix("ServiceRequest/") if named else ""
    if not rid or api_.coordination.sent(rid) or api_.reader.read("EpisodeOfCare", str(held["id"])) is not None:
        return False
    referral = referral or api_.reader.read("ServiceRequest", rid)
    if referral is not None:
        await publish_acceptance(api_, who, referral, held)
    return referral is not None


async def accept_completed(api_: CoordinationApi, who: Principal, held: Json, referral: Json | None = None) -> str:
    """complete_acceptance for a command refused (409) anyway, best effort, and what the refusal says of it."""
    try:
        sent = await complete_acceptance(api_, who, held, referral)
    except InfrastructureError:
        return (
            "Kafka did not acknowledge that $accept (it was answered 503) and is not answering now; the next command "
            "that meets the referral sends it again"
        )
    if sent:
        return "Kafka was not known to have taken that $accept (it may have been answered 503), so it is sent again now"
    return "Kafka has that $accept, and the record will have it as soon as the consumers catch up"


async def complete_caseload(api_: CoordinationApi, who: Principal, coordinator: str) -> None:
    """Publish the coordinator's accepts that the cap counted from their claims and the record does
    not have, so that the caseload the refusal names comes to be the one the record and the caseloads
    show. (Kafka or the database down: the refusal is true all the same, and the next one at the cap
    tries again.)"""
    with contextlib.suppress(InfrastructureError):
        for episode in api_.coordination.unsent_acceptances(coordinator):
            await complete_acceptance(api_, who, episode)


async def refuse_allocation(api_: CoordinationApi, who: Principal, person: str) -> None:
    """Refuse (409) an accept for a person the rules engine has on a caseload (the claim asks the
    claims, which it may not have yet, and counts the coordinator's caseload against the cap), naming
    the episode; a $close of it the record does not have yet is sent again first (unapplied_close). The
    person is who the engine says the key is now: a referral the record still files under a key an A40
    retired (the record's consumer may lag the engine's) is the survivor's, whose stay holds them."""
    episode = (api_.coordination.person_state(person) or {}).get("episode")
    if episode:
        raise await on_caseload(api_, who, str(episode.get("id")), episode.get("coordinator"))


async def on_caseload(api_: CoordinationApi, who: Principal, episode_id: str, coordinator: object) -> RuleRefusedError:
    """Why an accept for a person whose episode (another referral's) is open is refused."""
    said = (
        f"this person is already on a caseload: EpisodeOfCare/{episode_id}, coordinator {coordinator or '(none named)'}"
    )
    closing = await unapplied_close(api_, who, episode_id)
    then = closing or "close it before accepting another referral for them"
    return RuleRefusedError(f"{said}; {then}", ("ServiceRequest",))


def over_cap(full: CaseloadFull, cap: int) -> RuleRefusedError:
    """Why an accept whose claim found its coordinator at the caseload cap is refused."""
    return RuleRefusedError(
        f"coordinator {full.coordinator} already has {full.people} people on their caseload "
        f"(cap {cap}); allocate to someone else or raise the cap in the rules (a $close of theirs answered 503 "
        "holds its place until it is sent again)",
        ("Parameters.coordinator",),
    )


async def accepted_already(
    api_: CoordinationApi, who: Principal, referral: Json, held: Json, coordinator: str
) -> FhirResponse:
    """A referral accepted already: the same accept again (for the same coordinator) is answered
    200 with the episode it opened; one for anyone else is refused 409, naming who has it. Either
    publishes the accept first if Kafka is not known to have taken it and the record does not have its
    episode: a referral is never left claimed and unsent because its coordinator did not send it again."""
    current = api_.reader.read("EpisodeOfCare", str(held["id"]))
    holder = care_manager(current or held) or "(none named)"
    if current is None and not api_.coordination.sent(str(referral["id"])):  # perhaps Kafka never took it
        sending = publish_acceptance(api_, who, referral, held)  # (the same ids: applied once, however often sent)
        await (sending if holder == coordinator else best_effort(sending))  # (its 503 is its own coordinator's)
    if holder != coordinator:
        raise RuleRefusedError(
            f"ServiceRequest/{referral['id']} was accepted already, onto the caseload of coordinator {holder} "
            f"(EpisodeOfCare/{held['id']}): a referral is accepted once, by the first accept to reach the hub",
            ("ServiceRequest",),
        )
    return FhirResponse(current or held, headers={"Location": f"/fhir/EpisodeOfCare/{held['id']}"})


async def publish_acceptance(api_: CoordinationApi, who: Principal, referral: Json, episode: Json) -> None:
    """The accept's events, under the referral's ids. The claim is made already, so one Kafka does
    not take is UnfinishedError: the 503 says the referral is held, not that nothing was kept."""
    _, outcome_id, opened_id = accept_ids(str(referral["id"]))
    person, at = person_of(referral), datetime.fromisoformat(str(episode["period"]["start"]))
    accepted, decided = with_outcome(referral, "accepted", "active"), no_earlier_than_held(at, referral)
    try:
        await emit(api_, co.REFERRAL_OUTCOME.type, who, person, decided, accepted, event_id=outcome_id)
        await emit(api_, co.EPISODE_OPENED.type, who, person, at, episode, event_id=opened_id)
    except BrokerUnavailableError as lost:
        raise held_unpublished(referral, episode) from lost
    await mark_sent(api_, str(referral["id"]))


def held_unpublished(referral: Json, episode: Json) -> UnfinishedError:
    """What an accept whose claim Kafka did not take tells its caller: held for them; send it again."""
    coordinator = care_manager(episode) or "(none named)"
    return UnfinishedError(
        f"ServiceRequest/{referral['id']} is held for coordinator {coordinator} (EpisodeOfCare/{episode['id']}), "
        "but Kafka did not acknowledge all of the accept, so the episode may not be on the record, the "
        f"caseloads or the KPIs yet. Send the same $accept (coordinator {coordinator}) again to complete it; "
        "it opens nothing twice. The hold is not released: any later $accept or $decline of the referral "
        "sends this accept again, and is refused 409 unless it is the same accept."
    )


async def declined_already(api_: CoordinationApi, who: Principal, referral: Json, decline: Decline) -> FhirResponse:
    """A referral declined already: answered 200 with the decline that stands (its date and reason),
    as the record has it, or publishing it again where the record does not have it yet and Kafka is
    not known to have taken it."""
    if outcome_of(referral) == "declined":
        return FhirResponse(the_decision(referral))
    await complete_decline(api_, who, referral, decline)
    return FhirResponse(the_decision(decline.referral))


def the_decision(referral: Json) -> Json:
    """A decline's answer: the ServiceRequest as far as the decision goes (its id, status, the person's
    reference, the outcome and the note given), not what the referral said. The command names a referral
    by id alone, and the sharing policy may withhold its content from the service (a referrer with no
    agreement): read it through /fhir, where the policy decides and the ledger records it."""
    kept: Json = {k: referral[k] for k in ("resourceType", "id", "status", "intent") if k in referral}
    reference = (referral.get("subject") or {}).get("reference")
    if reference:
        kept["subject"] = {"reference": reference}
    kept["extension"] = [e for e in referral.get("extension") or [] if e.get("url") == co.OUTCOME_EXTENSION]
    if referral.get("note"):
        kept["note"] = referral["note"]
    return kept


async def publish_decline(api_: CoordinationApi, who: Principal, referral: Json, decline: Decline) -> None:
    """The decline's event, under one id for every decline of the referral (sent twice, the second is
    the duplicate every consumer drops). The claim is made already, so one Kafka does not take is
    UnfinishedError: the 503 says the referral is held declined, not that nothing was kept."""
    event_id, at = stable_id("api-decline", str(referral["id"])), no_earlier_than_held(decline.at, referral)
    try:
        await emit(api_, co.REFERRAL_OUTCOME.type, who, person_of(referral), at, decline.referral, event_id=event_id)
    except BrokerUnavailableError as lost:
        raise UnfinishedError(
            f"ServiceRequest/{referral['id']} is declined (held in the database), but Kafka did not acknowledge "
            "the decline, so the record, the rules engine and the KPIs may not have it yet. Send the same $decline "
            "again to complete it; it is applied once. The hold is not released: any later $accept of the referral "
            "sends this decline again and is refused 409."
        ) from lost
    await mark_sent(api_, str(referral["id"]))
