"""/coordination/worklist: what waits for the coordination service, for its coordinators.

    GET /coordination/worklist/referrals        referrals addressed to the service (or to no one in
                                                particular) that wait for its decision, oldest first,
                                                each followed by its open tasks (triage, first visit)
    GET /coordination/worklist/tasks[?owner=X]  open tasks, soonest due first; `owner` a coordinator's id
                                                (the team lead's among them) or the service's ODS code

Whatever the person's practice, none included: the per-practice huddle cannot show a referral for
someone no practice knows, and the FHIR searches are by person. Only coordinators (and admins) of the
service may ask (hub.api.routes.coordination_commands.coordinator_only); anyone else is refused 403,
the refusal written to the disclosure ledger first (about no one: nothing was read). Each answer is a
FHIR searchset Bundle: the record's resources as they stand (a referral a `match`, its tasks `include`),
each Task's entry saying whether it is overdue (hub.core.worklist.OVERDUE_EXTENSION). Every resource is
decided by the same Judge as the FHIR reads, and every decision is in the ledger (channel `worklist`)
before the answer is sent; what is withheld is counted in the Bundle's OperationOutcome, never shown.
A referral a decision has claimed (an `$accept`, `$decline` or `$withdraw` answered) leaves the list at
once, before the record has it. A parameter these do not take, or one given twice, is a 400.

No `from __future__ import annotations` here: FastAPI reads these annotations at runtime.
"""

import copy
import re
import uuid
from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request

from hub.api.auth import Principal, TokenVerifier
from hub.api.outcomes import FhirResponse
from hub.api.routes.coordination_commands import CoordinationApi, coordinator_only
from hub.api.routes.fhir import Judge, bearer_caller, record
from hub.api.shapes import BUNDLE, errors, ok
from hub.core.errors import ConsentDeniedError, InvalidMessageError
from hub.core.ledger import Disclosure
from hub.core.policy import Asker, Decision
from hub.core.ports import Json, Ledger, RecordReader
from hub.core.worklist import (
    OVERDUE_EXTENSION,
    by_due,
    is_open,
    oldest_first,
    overdue,
    owned_by,
    still_asked,
    tasks_of,
    waiting,
)
from hub.store.agreements import PolicySource

CHANNEL = "worklist"  # the ledger's channel for these reads
OWNER = r"^[^\x00-\x1f\x7f]{1,100}$"  # a coordinator's id as $accept takes it, or an ODS code
_OWNER = re.compile(OWNER.removeprefix("^").removesuffix("$"))
TAG = "Coordination worklist"
WORKLIST: Json = copy.deepcopy(BUNDLE)  # a searchset whose entries may be `include`d (a referral's tasks)
WORKLIST["properties"]["entry"]["items"]["properties"]["search"]["properties"]["mode"]["enum"] = [
    "match",
    "include",
    "outcome",
]


def router(
    api_: CoordinationApi,
    tokens: TokenVerifier,
    ledger: Ledger | None = None,
    policy: PolicySource | None = None,
) -> APIRouter:
    """The worklist routes, deciding every resource under `policy` (None: not enforced) and recording
    each decision in `ledger`."""
    api = APIRouter(default_response_class=FhirResponse, tags=[TAG])
    service = api_.engine.rules.service.ods

    Caller = Annotated[Principal, Depends(bearer_caller(tokens))]  # noqa: N806 - a type alias
    Owner = Annotated[  # noqa: N806 - a type alias
        str | None,
        Query(
            description="a coordinator's id (c-amara), the team lead's (team-lead) or the service's ODS code",
            json_schema_extra={"pattern": OWNER},
        ),
    ]

    def allowed(request: Request, who: Principal, takes: tuple[str, ...]) -> Judge:
        """The Judge for this request, once the caller may ask (403, ledgered) and asks it rightly (400)."""
        try:
            coordinator_only(api_, who)
        except ConsentDeniedError as exc:
            if ledger is not None:  # (written before the 403 is sent, as every decision is)
                ledger.append([refusal(who, request.url.path, exc.diagnostics)])
            raise
        only(request, takes)
        return Judge(policy, Asker(who.org, who.role, datetime.now(UTC)))

    @api.get(
        "/coordination/worklist/referrals",
        summary="Referrals waiting for the service's decision, oldest first, with their open tasks",
        responses=ok(WORKLIST) | errors(400, 401, 403),
    )
    def referrals(request: Request, who: Caller) -> FhirResponse:
        judge = allowed(request, who, ())
        held = undecided(api_, [r for r in api_.reader.search("ServiceRequest", None) if waiting(r, service)])
        asked = tasks_about(api_.reader, held)  # (read to decide what is listed: shown only as the policy lets)
        found = oldest_first(r for r in held if still_asked(str(r["id"]), asked))
        judge.page(found)
        judged = [(r, judge(r)) for r in found]
        shown = [r for r, d in judged if d.permitted]
        theirs = [(r, tasks_of(str(r["id"]), asked)) for r in shown]
        judge.page([t for _, tasks in theirs for t in tasks])
        with_tasks = [(r, [(t, judge(t)) for t in tasks]) for r, tasks in theirs]
        every_task = [pair for _, pairs in with_tasks for pair in pairs]
        record(ledger, who, CHANNEL, judged + every_task)
        at = judge.asker.at
        entries = [
            entry
            for r, pairs in with_tasks
            for entry in (
                _entry(request, r, "match", at),
                *(_entry(request, t, "include", at) for t, d in pairs if d.permitted),
            )
        ]
        withheld = {"referral": _withheld(judged), "task": _withheld(every_task)}
        return worklist_bundle(request, entries, len(shown), withheld)

    @api.get(
        "/coordination/worklist/tasks",
        summary="Open tasks, soonest due first; by owner",
        responses=ok(WORKLIST) | errors(400, 401, 403),
    )
    def tasks(request: Request, who: Caller, owner: Owner = None) -> FhirResponse:
        judge = allowed(request, who, ("owner",))
        if owner is not None and not (_OWNER.fullmatch(owner) and owner.strip()):
            raise InvalidMessageError(
                "owner must be a coordinator's id (as $accept names them: c-amara), the team lead's (team-lead) "
                f"or the service's ODS code ({service}): 1 to 100 characters, not blank, no control characters",
                ("owner",),
            )
        found = by_due(
            t for t in api_.reader.search("Task", None) if is_open(t) and (owner is None or owned_by(t, owner))
        )
        judge.page(found)
        judged = [(t, judge(t)) for t in found]
        record(ledger, who, CHANNEL, judged)
        shown = [_entry(request, t, "match", judge.asker.at) for t, d in judged if d.permitted]
        return worklist_bundle(request, shown, len(shown), {"task": _withheld(judged)})

    return api


def only(request: Request, takes: tuple[str, ...]) -> None:
    """Refuse (400) a query parameter the worklist does not take, or one given more than once: a
    misspelt filter carried out without it would list everyone's work as if it were one person's."""
    params = request.query_params
    unknown = sorted({name for name in params if name not in takes})
    if unknown:
        raise InvalidMessageError(
            f"this worklist does not take {', '.join(unknown)} (it takes: {', '.join(takes) or 'no parameters'})",
            tuple(unknown),
            code="not-supported",
        )
    repeated = [name for name in takes if len(params.getlist(name)) > 1]
    if repeated:
        raise InvalidMessageError(f"{', '.join(repeated)} given more than once: give it once", tuple(repeated))


def undecided(api_: CoordinationApi, referrals: list[Json]) -> list[Json]:
    """Those of `referrals` that no accept, decline or withdrawal has claimed: one answered by the API is
    decided, though the record (which lags the log by a second or so) may not say so yet."""
    store = api_.coordination
    return [
        r
        for r in referrals
        if store.acceptance(str(r["id"])) is None
        and store.declined(str(r["id"])) is None
        and store.withdrawn(str(r["id"])) is None
    ]


def tasks_about(reader: RecordReader, referrals: list[Json]) -> list[Json]:
    """The Tasks of the referrals' people, filed under them or under whom they were merged into (the
    rules engine hands a merged person's tasks to the survivor); tasks_of picks each referral's."""
    people = {str((r.get("subject") or {}).get("reference", "")).removeprefix("Patient/") for r in referrals}
    if not people:
        return []
    people |= set(reader.filed_under(people).values())
    return reader.search_many("Task", sorted(people))


def _withheld(judged: list[tuple[Json, Decision]]) -> int:
    return sum(not decision.permitted for _, decision in judged)


def _entry(request: Request, resource: Json, mode: str, now: datetime) -> Json:
    base = str(request.base_url).rstrip("/") + "/fhir"
    entry: Json = {"fullUrl": f"{base}/{resource['resourceType']}/{resource['id']}", "resource": resource}
    if resource.get("resourceType") == "Task":
        entry["extension"] = [{"url": OVERDUE_EXTENSION, "valueBoolean": overdue(resource, now)}]
    entry["search"] = {"mode": mode}
    return entry


def worklist_bundle(request: Request, entries: list[Json], total: int, withheld: dict[str, int]) -> FhirResponse:
    """A searchset Bundle of `entries` (`total` of them matches), saying how many of each kind were withheld."""
    counted = [f"{n} {kind}(s)" for kind, n in withheld.items() if n]
    if counted:
        issue = {
            "severity": "information",
            "code": "suppressed",
            "diagnostics": f"{' and '.join(counted)} withheld under the information-sharing policy (each "
            "decision is in the disclosure ledger)",
        }
        outcome = {"resourceType": "OperationOutcome", "issue": [issue]}
        entries = [*entries, {"resource": outcome, "search": {"mode": "outcome"}}]
    return FhirResponse(
        {
            "resourceType": "Bundle",
            "id": str(uuid.uuid4()),
            "meta": {"lastUpdated": datetime.now(UTC).isoformat()},
            "type": "searchset",
            "total": total,
            "link": [{"relation": "self", "url": str(request.url)}],
            "entry": entries,
        }
    )


def refusal(who: Principal, asked: str, reason: str) -> Disclosure:
    """The ledger entry for a worklist refused whole: about no one (nothing was read), naming who asked."""
    return Disclosure(
        at=datetime.now(UTC),
        recipient_org=who.org,
        recipient_user=who.user,
        channel=CHANNEL,
        person_key=None,
        resources=(),
        decision="deny",
        reasons=(reason,),
        basis={"role": who.role, "agreements": [], "consents": [], "asked": asked},
    )
