"""/fhir $withdraw: a referrer takes back a referral it sent (the person moved away, the need was met,
it was sent in error), as a referrals file does with outcome `withdrawn` (adapters/referrals/README.md).

    POST /fhir/ServiceRequest/{id}/$withdraw           the referral's own requester withdraws it

Only the organisation that sent the referral (its requester, as the token's organisation) withdraws it:
anyone else is refused 403 naming ServiceRequest.requester, and an unknown referral is 404. It becomes
a referral.outcome `withdrawn` with status revoked (and the reason, if given, as a note), which cancels
the referral's open triage and first-visit tasks (hub/rules). A referral ended already (declined,
completed) is refused 409; one withdrawn already is answered 200 with the withdrawal that stands, and
nothing is sent again. A referral already accepted onto a caseload is withdrawn all the same: the
record and the coordinator see it revoked, and the stay stays open (only the service closes it).
`at` is never in the future nor before the referral was made. Its event id is the referral's, so
however often it reaches the log it is applied once. An accept or a decline of a withdrawn referral is
refused 409 (refuse_deciding_withdrawn).

No `from __future__ import annotations` here: FastAPI reads these annotations at runtime.
"""

from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Request

from hub.api.auth import Principal, TokenVerifier
from hub.api.outcomes import FhirResponse
from hub.api.routes.coordination_commands import REFERRER_ROLES, CoordinationApi, Id, emit, referral_of
from hub.api.routes.coordination_input import (
    at_param,
    not_before,
    param,
    parameters,
    person_of,
    with_outcome,
)
from hub.api.routes.fhir import bearer_caller, read_body
from hub.api.shapes import parameters_in
from hub.core.errors import ConsentDeniedError, RuleRefusedError
from hub.core.identity import stable_id
from hub.core.ports import Json
from schemas.events import coordination as co

ENDED = ("revoked", "completed", "entered-in-error")  # FHIR request-status: over, one way or another


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
        if who.role not in REFERRER_ROLES:
            raise ConsentDeniedError(
                f"the {who.role} role does not refer people, so withdraws no referral (roles that do: "
                f"{', '.join(REFERRER_ROLES)})",
                ("Authorization",),
            )
        params = parameters(await read_body(request))
        at = at_param(params, datetime.now(UTC))
        referral = referral_of(api_, id)
        refuse_unless_requester(referral, who)
        if outcome_of(referral) == co.WITHDRAWN:  # a retry, or a second click: the withdrawal stands
            return FhirResponse(referral)
        refuse_ended(referral)
        at = not_before(params, at, referral.get("authoredOn"), "the referral was made", referral)
        withdrawn = with_outcome(referral, co.WITHDRAWN, "revoked")
        reason = param(params, "reason")
        if reason:
            withdrawn["note"] = [*(referral.get("note") or []), {"text": reason}]
        event_id = stable_id("api-withdrawal", str(referral["id"]))
        await emit(api_, co.REFERRAL_OUTCOME.type, who, person_of(referral), at, withdrawn, event_id=event_id)
        return FhirResponse(withdrawn)

    return api


def outcome_of(referral: Json) -> str | None:
    """What the record says became of a referral (its outcome extension), if anything."""
    said = [e.get("valueCode") for e in referral.get("extension") or [] if e.get("url") == co.OUTCOME_EXTENSION]
    return str(said[0]) if said and said[0] else None


def requester_of(referral: Json) -> str:
    """The code of the organisation that sent the referral (ODS or local-authority), upper-cased."""
    identifier = (referral.get("requester") or {}).get("identifier") or {}
    return str(identifier.get("value") or "").strip().upper()


def refuse_unless_requester(referral: Json, who: Principal) -> None:
    """Refuse (403) anyone but the referral's requester; who that is is not said (it is the record's)."""
    if requester_of(referral) != who.org.upper():
        raise ConsentDeniedError(
            f"ServiceRequest/{referral['id']} was not sent by {who.org}: a referral is withdrawn only by the "
            "organisation that sent it (its requester). Nothing was withdrawn",
            ("ServiceRequest.requester",),
        )


def refuse_ended(referral: Json) -> None:
    """Refuse (409) withdrawing a referral that has ended already (declined, completed)."""
    status = referral.get("status")
    if status in ENDED:
        said = outcome_of(referral)
        ended = f"was {said}" if said else f"is {status}"
        raise RuleRefusedError(
            f"ServiceRequest/{referral['id']} {ended} already (status {status}): it has ended, so there is "
            "nothing to withdraw. Nothing was withdrawn",
            ("ServiceRequest.status",),
        )


def refuse_deciding_withdrawn(referral: Json, decision: str) -> None:
    """Refuse (409) an accept or a decline of a referral its referrer withdrew: the decision would
    overwrite the withdrawal, and the person is not waiting for the service on that referral."""
    if outcome_of(referral) == co.WITHDRAWN:
        raise RuleRefusedError(
            f"ServiceRequest/{referral['id']} was withdrawn by its referrer: it is not {decision} now; if the "
            "person is to be taken on after all, they are referred again",
            ("ServiceRequest.status",),
        )
