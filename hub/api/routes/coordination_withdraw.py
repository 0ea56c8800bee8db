"""/fhir $withdraw: a referrer takes back a referral it sent (the person moved away, the need was met,
it was sent in error), as a referrals file does with outcome `withdrawn` (adapters/referrals/README.md).

    POST /fhir/ServiceRequest/{id}/$withdraw           the referral's own requester withdraws it

Only the organisation that sent the referral (its requester, as the token's organisation) withdraws it:
anyone else is refused 403 naming ServiceRequest.requester (as an accept or decline of a referral
addressed to another organisation is refused 403), and an unknown referral is 404. It becomes a
referral.outcome `withdrawn` with status revoked (and the reason, if given, as a note), which cancels
the referral's open triage and first-visit tasks (hub/rules). Once the service has answered the
referral, its referrer no longer withdraws it: one accepted (the person is on a caseload: the referrer
contacts the service, which closes the stay) or declined is refused 409, as is one ended otherwise
(completed). A withdrawal is a decision claimed as an accept and a decline are
(coordination_acceptance): whichever of the three reaches the database first wins, the record (which
lags the log) being checked too but never trusted alone; a withdrawal Kafka did not take keeps its
claim (503), and the next command that meets it publishes it. One withdrawn already is answered 200
with the withdrawal that stands, and nothing is sent again. `at` is never in the future nor before the
referral was made. Its event id is the referral's, so however often it reaches the log it is applied once.

No `from __future__ import annotations` here: FastAPI reads these annotations at runtime.
"""

import asyncio
from dataclasses import replace
from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Request

from hub.api.auth import Principal, TokenVerifier
from hub.api.outcomes import FhirResponse
from hub.api.routes.coordination_acceptance import claimed, complete_acceptance, complete_decline
from hub.api.routes.coordination_commands import REFERRER_ROLES, CoordinationApi, Id, best_effort, referral_of
from hub.api.routes.coordination_input import at_param, not_before, param, parameters, person_of, with_outcome
from hub.api.routes.coordination_withdrawn import complete_withdrawal, publish_withdrawal
from hub.api.routes.fhir import bearer_caller, read_body
from hub.api.shapes import parameters_in
from hub.core.errors import ConsentDeniedError, RuleRefusedError
from hub.core.fhir_read import REQUEST_ENDED, care_manager, outcome_of, requester_of
from hub.core.ports import Decline, Json, Withdrawal
from schemas.events import coordination as co


def router(api_: CoordinationApi, tokens: TokenVerifier) -> APIRouter:
    """$withdraw of a referral by its referrer."""
    api = APIRouter(default_response_class=FhirResponse)
    Caller = Annotated[Principal, Depends(bearer_caller(tokens))]  # noqa: N806 - a type alias

    @api.post(
        "/fhir/ServiceRequest/{id}/$withdraw",
        summary="Withdraw a referral the caller's organisation sent",
        openapi_extra=parameters_in("reason", "at"),
    )
    async def withdraw(request: Request, id: Id, who: Caller) -> FhirResponse:
        refuse_non_referrer(who)
        params = parameters(await read_body(request))
        now = datetime.now(UTC)
        at = at_param(params, now)
        referral = referral_of(api_, id)
        refuse_unless_requester(referral, who)
        stands = api_.coordination.withdrawn(id)
        if stands is not None:  # a retry, or a second click: the first withdrawal stands
            return await withdrawn_already(api_, referral, stands)
        if outcome_of(referral) == co.WITHDRAWN:  # (withdrawn before withdrawals were claimed)
            return FhirResponse(referral)
        await refuse_answered(
            api_, who, referral, api_.coordination.declined(id) or claimed(api_, id, person_of(referral))
        )
        at = not_before(params, at, referral.get("authoredOn"), "the referral was made", referral)
        withdrawn = with_outcome(referral, co.WITHDRAWN, "revoked")
        reason = param(params, "reason")
        if reason:
            withdrawn["note"] = [*(referral.get("note") or []), {"text": reason}]
        claim = api_.coordination.claim_withdrawal
        found = await asyncio.to_thread(claim, id, person_of(referral), Withdrawal(withdrawn, at), now)
        if isinstance(found, Withdrawal):  # another withdrawal of it reached the database first
            return await withdrawn_already(api_, referral, found)
        await refuse_answered(api_, who, referral, found)  # an accept or a decline did
        await publish_withdrawal(api_, referral, Withdrawal(withdrawn, at))
        return FhirResponse(withdrawn)

    return api


def refuse_non_referrer(who: Principal) -> None:
    """Refuse (403) a role that refers nobody (an auditor reads; it does not refer)."""
    if who.role not in REFERRER_ROLES:
        raise ConsentDeniedError(
            f"the {who.role} role does not refer people, so withdraws no referral (roles that do: "
            f"{', '.join(REFERRER_ROLES)})",
            ("Authorization",),
        )


def refuse_unless_requester(referral: Json, who: Principal) -> None:
    """Refuse (403) anyone but the referral's requester; who that is is not said (it is the record's)."""
    if requester_of(referral) != who.org.upper():
        raise ConsentDeniedError(
            f"ServiceRequest/{referral['id']} was not sent by {who.org}: a referral is withdrawn only by the "
            "organisation that sent it (its requester). Nothing was withdrawn",
            ("ServiceRequest.requester",),
        )


async def refuse_answered(api_: CoordinationApi, who: Principal, referral: Json, claim: Json | Decline | None) -> None:
    """Refuse (409) withdrawing a referral the service has answered (`claim`: the decline, or the episode
    of the accept, that claimed it; or so on the record) or that has ended otherwise (completed). A
    decision claimed that the record does not have yet is published first, best effort, from the service."""
    service = replace(who, org=api_.engine.rules.service.ods)  # (the decision's source, whoever completes it)
    if isinstance(claim, Decline):
        await best_effort(complete_decline(api_, service, referral, claim))
    elif claim is not None:
        await best_effort(complete_acceptance(api_, service, claim, referral))
    said = outcome_of(referral)
    if isinstance(claim, dict) or (said == "accepted" and claim is None):
        raise accepted_refusal(referral, claim)
    status = "revoked" if isinstance(claim, Decline) else referral.get("status")
    if isinstance(claim, Decline) or status in REQUEST_ENDED:
        ended = "was declined" if isinstance(claim, Decline) else f"was {said}" if said else f"is {status}"
        raise RuleRefusedError(
            f"ServiceRequest/{referral['id']} {ended} already (status {status}): it has ended, so there is "
            "nothing to withdraw. Nothing was withdrawn",
            ("ServiceRequest.status",),
        )


def accepted_refusal(referral: Json, episode: Json | None) -> RuleRefusedError:
    """Why a referral the service accepted is not withdrawn: the person is on its caseload, and only
    the service ends their stay."""
    onto = ""
    if episode is not None:
        onto = (
            f", onto coordinator {care_manager(episode) or '(none named)'}'s caseload (EpisodeOfCare/{episode['id']})"
        )
    return RuleRefusedError(
        f"ServiceRequest/{referral['id']} was accepted by the service{onto}: once the service "
        "has accepted or declined a referral, its referrer no longer withdraws it; contact the service, which "
        "closes the person's stay with it ($close). Nothing was withdrawn",
        ("ServiceRequest.status",),
    )


async def withdrawn_already(api_: CoordinationApi, referral: Json, withdrawal: Withdrawal) -> FhirResponse:
    """A referral withdrawn already: answered 200 with the withdrawal that stands, as the record has it,
    or publishing it again where the record does not have it yet and Kafka is not known to have taken it."""
    if outcome_of(referral) == co.WITHDRAWN:
        return FhirResponse(referral)
    await complete_withdrawal(api_, referral, withdrawal)
    return FhirResponse(withdrawal.referral)
