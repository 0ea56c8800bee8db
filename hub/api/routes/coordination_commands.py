"""What every coordination command shares: the services it needs (CoordinationApi), the coordinator
check, the referral it names, putting its event on the log, and noting that Kafka took a claimed
decision's events (mark_sent), or completing one best effort."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated

import orjson
from fastapi import Path

from hub.api.auth import Principal
from hub.api.routes.fhir import fhir_id
from hub.api.shapes import FHIR_ID
from hub.core.errors import ConsentDeniedError, InfrastructureError, RuleRefusedError, UnknownPersonError
from hub.core.fhir_read import addressed_to
from hub.core.ports import CoordinationStore, Json, RecordReader
from hub.core.tasks import Engine
from schemas.agreements import Agreement
from schemas.envelope import Envelope
from schemas.subscriptions import Subscription

Publish = Callable[[Envelope], Awaitable[None]]
ODS_SYSTEM = "https://fhir.nhs.uk/Id/ods-organization-code"
COMMAND_ROLES = ("coordinator", "admin")
REFERRER_ROLES = ("clinician", "coordinator", "admin", "system")  # an auditor reads; it does not refer
Id = Annotated[str, Path(description="a FHIR id", json_schema_extra={"pattern": FHIR_ID})]


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


def coordinator_only(api_: CoordinationApi, who: Principal) -> None:
    """Refuse (403) anyone but a coordinator (or an admin) of the service the rules are for."""
    service = api_.engine.rules.service
    if who.role not in COMMAND_ROLES or who.org != service.ods:
        raise ConsentDeniedError(f"only coordinators of {service.ods} ({service.name}) may do this", ("Authorization",))


async def emit(
    api_: CoordinationApi,
    type_: str,
    who: Principal,
    person: str,
    at: datetime,
    *resources: Json,
    event_id: str | None = None,
) -> None:
    """Publish the resources as one event (a collection Bundle) about the person, from the caller's
    organisation; BrokerUnavailableError if Kafka does not acknowledge it."""
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


def referral_of(api_: CoordinationApi, id: str) -> Json:
    """The referral (ServiceRequest) on the record, or 404."""
    found = api_.reader.read("ServiceRequest", fhir_id(id, "ServiceRequest"))
    if found is None:
        raise UnknownPersonError(f"no referral ServiceRequest/{id} in the shared care record", ("ServiceRequest",))
    return found


def refuse_unless_sender(who: Principal, doing: str) -> None:
    """403 unless the caller's role sends clinical data (REFERRER_ROLES): an auditor reads, it does not
    `doing` (refer people, send clinical documents)."""
    if who.role not in REFERRER_ROLES:
        raise ConsentDeniedError(
            f"the {who.role} role does not {doing} (roles that do: {', '.join(REFERRER_ROLES)})", ("Authorization",)
        )


def referral_to_service(api_: CoordinationApi, id: str) -> Json:
    """The referral on the record (or 404) if it is addressed to the service (or to nobody in
    particular); else 403: a referral to another organisation (adult social care, say) is theirs to
    accept or decline, and its content is not the service's to be handed."""
    found = referral_of(api_, id)
    service = api_.engine.rules.service
    if not addressed_to(found, service.ods):
        raise ConsentDeniedError(
            f"ServiceRequest/{id} is not addressed to {service.ods} ({service.name}): only the organisation "
            "a referral is addressed to accepts or declines it",
            ("ServiceRequest.performer",),
        )
    if not found.get("authoredOn"):  # the record's stand-in for an outcome that came before its referral
        raise RuleRefusedError(
            f"ServiceRequest/{id} stands for an outcome that came before its referral: the referral itself is "
            "not on the record yet (nor whom it is addressed to); accept or decline it once it comes",
            ("ServiceRequest.authoredOn",),
        )
    return found


async def best_effort(completion: Awaitable[object]) -> None:
    """Await a completion that a command refused (409) anyway makes on its way: Kafka or the database not
    answering, the claim waits for the next command that meets it, and this caller is answered their
    own refusal, not the 503 of a command they never sent."""
    with contextlib.suppress(InfrastructureError):
        await completion


async def mark_sent(api_: CoordinationApi, referral_id: str) -> None:
    """Record that Kafka took the decision's events, so that no later command sends them again while
    the record catches up. (In a thread: on SQLite it waits for the write lock. A database that does not
    answer is no failure of the command: the claim is then sent again by the next one to meet it.)"""
    with contextlib.suppress(InfrastructureError):
        await asyncio.to_thread(api_.coordination.mark_sent, referral_id, datetime.now(UTC))
