"""A referral its referrer withdrew, as the decisions on it see it: the withdrawal's event, published
under its claim (and by the next command that meets a claim Kafka did not take), and the refusal (409)
of an accept or a decline of it, whether the record has the withdrawal yet or only its claim."""

from __future__ import annotations

from hub.api.auth import Principal
from hub.api.routes.coordination_commands import CoordinationApi, best_effort, emit, mark_sent
from hub.api.routes.coordination_input import no_earlier_than_held, person_of
from hub.core.errors import BrokerUnavailableError, RuleRefusedError, UnfinishedError
from hub.core.fhir_read import outcome_of, requester_of
from hub.core.identity import stable_id
from hub.core.ports import Json, Withdrawal
from schemas.events import coordination as co


async def publish_withdrawal(api_: CoordinationApi, referral: Json, withdrawal: Withdrawal) -> None:
    """The withdrawal's event, from its referrer (whoever's command sends it), under one id for every
    withdrawal of the referral. The claim is made already, so one Kafka does not take is
    UnfinishedError: the 503 says the referral is held withdrawn, not that nothing was kept."""
    event_id, at = stable_id("api-withdrawal", str(referral["id"])), no_earlier_than_held(withdrawal.at, referral)
    referrer = Principal(requester_of(withdrawal.referral), "system", "")
    try:
        await emit(
            api_, co.REFERRAL_OUTCOME.type, referrer, person_of(referral), at, withdrawal.referral, event_id=event_id
        )
    except BrokerUnavailableError as lost:
        raise UnfinishedError(
            f"ServiceRequest/{referral['id']} is withdrawn (held in the database), but Kafka did not acknowledge "
            "the withdrawal, so the record, the rules engine and the KPIs may not have it yet. Send the same "
            "$withdraw again to complete it; it is applied once. The hold is not released: any later $accept or "
            "$decline of the referral sends this withdrawal again and is refused 409."
        ) from lost
    await mark_sent(api_, str(referral["id"]))


async def complete_withdrawal(api_: CoordinationApi, referral: Json, withdrawal: Withdrawal) -> None:
    """Publish the withdrawal that claimed the referral if the record does not have it yet and Kafka is
    not known to have taken it (perhaps answered 503): under its one event id, it is applied once."""
    if outcome_of(referral) != co.WITHDRAWN and not api_.coordination.sent(str(referral["id"])):
        await publish_withdrawal(api_, referral, withdrawal)


async def refuse_deciding_withdrawn(api_: CoordinationApi, referral: Json, decision: str) -> None:
    """Refuse (409) an accept or a decline of a referral its referrer withdrew: claimed (the claim
    published first, best effort, where the record lacks it) or so on the record."""
    withdrawal = api_.coordination.withdrawn(str(referral["id"]))
    if withdrawal is not None or outcome_of(referral) == co.WITHDRAWN:
        raise await withdrawn_refusal(api_, referral, decision, withdrawal)


async def withdrawn_refusal(
    api_: CoordinationApi, referral: Json, decision: str, withdrawal: Withdrawal | None
) -> RuleRefusedError:
    """Why an accept or a decline of a withdrawn referral is refused: the decision would overwrite the
    withdrawal, and the person is not waiting for the service on it. The withdrawal's claim (if any) is
    published first, best effort, where the record lacks it."""
    if withdrawal is not None:
        await best_effort(complete_withdrawal(api_, referral, withdrawal))
    return RuleRefusedError(
        f"ServiceRequest/{referral['id']} was withdrawn by its referrer: it is not {decision} now; if the "
        "person is to be taken on after all, they are referred again",
        ("ServiceRequest.status",),
    )
