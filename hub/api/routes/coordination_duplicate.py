"""/fhir $close-duplicate: close a duplicate stay an A40 merge left open, which is no discharge.

    POST /fhir/EpisodeOfCare/{id}/$close-duplicate     the stay entered-in-error; no PIC summary

When a merge joins two people who were each on a caseload, the survivor's stay stands and the
retired identity's, which the record keeps open, gets a `close-duplicate-stay` task (hub.core.merges).
`$close` is a discharge, with a PIC summary to the GP: wrong for a person still on the caseload.
This closes the stay as FHIR's EpisodeOfCare status `entered-in-error` ("should not have been part of
this patient's medical record"): an episode.closed carrying that EpisodeOfCare and no Composition, so
the rules engine sends, holds and opens nothing for it (no PIC summary, no find-gp-practice or
pic-summary task), ends that stay's own tasks and completes its close-duplicate-stay task, and the
KPIs count no stay and no discharge for it (hub.core.caseload, hub.core.kpi_facts).

Only a stay the rules engine has as left open by a merge (hub.core.caseload.left_by_merge, asked of the
engine's state of the person, their survivor's) is closed so; any other is refused 409 (the person's
own stay is left with `$close`; a merge the engine has not applied yet: send it again shortly). Like a
`$close` it claims the episode in the database before anything is published (coordination_close: the
first close of an episode stands, the same one again is answered with it, one Kafka did not take keeps
its claim and is sent by the next close that meets it), under the same event id as any close of the
episode. Parameters: `at` alone (when; not before the episode began, nor in the future).

No `from __future__ import annotations` here: FastAPI reads these annotations at runtime.
"""

import asyncio
from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Request

from hub.api.auth import Principal, TokenVerifier
from hub.api.outcomes import FhirResponse
from hub.api.routes.coordination_close import closed_already, closed_refusal, publish_closure
from hub.api.routes.coordination_commands import CoordinationApi, Id, coordinator_only
from hub.api.routes.coordination_input import at_param, not_before, param, parameters
from hub.api.routes.fhir import bearer_caller, fhir_id, read_body
from hub.api.shapes import parameters_in
from hub.core.caseload import IN_ERROR, left_by_merge
from hub.core.errors import RuleRefusedError, UnknownPersonError
from hub.core.ports import Closure, Json
from hub.core.stays import is_open


def duplicate_asked(params: Json, at: datetime) -> Json:
    """What a $close-duplicate was asked, by which the same one sent again is known (and told from a
    $close, whose parameters never say `duplicate`)."""
    return {"duplicate": True, "at": at.isoformat() if param(params, "at") else None}


def refuse_unless_left_by_merge(api_: CoordinationApi, person: str, episode: Json) -> None:
    """Refuse (409) closing as a duplicate a stay the rules engine does not have as one a merge left open."""
    rules = api_.engine.rules
    duplicate_rules = {r.id for r in rules.tasks if r.when == "duplicate-stay"} | {"close-duplicate-stay"}
    if not left_by_merge(api_.coordination.person_state(person), str(episode["id"]), duplicate_rules):
        raise RuleRefusedError(
            f"EpisodeOfCare/{episode['id']} is not a duplicate stay a merge left open, as the rules engine "
            "knows the person: only the stay of an identity merged away, while the person's own stay goes on, "
            "is closed as entered-in-error; leaving the service is $close, with the PIC summary (a merge "
            "received just now may not be applied yet: send this again shortly)",
            ("EpisodeOfCare",),
        )


def router(api_: CoordinationApi, tokens: TokenVerifier) -> APIRouter:
    """$close-duplicate of an EpisodeOfCare a merge left open."""
    api = APIRouter(default_response_class=FhirResponse)
    Caller = Annotated[Principal, Depends(bearer_caller(tokens))]  # noqa: N806 - a type alias

    @api.post(
        "/fhir/EpisodeOfCare/{id}/$close-duplicate",
        summary="Close a duplicate stay a merge left open (entered-in-error); no discharge, no PIC summary",
        openapi_extra=parameters_in("at"),
    )
    async def close_duplicate(request: Request, id: Id, who: Caller) -> FhirResponse:
        coordinator_only(api_, who)
        params = parameters(await read_body(request))
        now = datetime.now(UTC)
        at = at_param(params, now)
        episode = api_.reader.read("EpisodeOfCare", fhir_id(id, "EpisodeOfCare"))
        if episode is None:
            raise UnknownPersonError(f"no EpisodeOfCare/{id} in the shared care record", ("EpisodeOfCare",))
        asked = duplicate_asked(params, at)
        stands = api_.coordination.closure(id)
        if stands is not None:  # closed already, by this close (a retry, a double click) or another
            return await closed_already(api_, who, episode, stands, asked)
        if not is_open(episode.get("status")):  # (closed before closes were claimed)
            raise closed_refusal(episode)
        at = not_before(params, at, (episode.get("period") or {}).get("start"), "the episode began", episode)
        person = str(episode["patient"]["reference"]).removeprefix("Patient/")
        refuse_unless_left_by_merge(api_, person, episode)
        closed = {k: v for k, v in episode.items() if k != "meta"}
        closed["status"] = IN_ERROR
        closed["period"] = {**(episode.get("period") or {}), "end": at.isoformat()}
        closure = Closure(closed, {}, asked)  # (no PIC summary: it was no discharge)
        found = await asyncio.to_thread(api_.coordination.claim_closure, person, closure, now)
        if found is not None:
            return await closed_already(api_, who, episode, found, asked)
        await publish_closure(api_, who, person, closure)
        return FhirResponse(closed)

    return api
