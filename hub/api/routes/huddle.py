"""/huddle/{ods}: a practice's printable weekly huddle / MDT agenda; /fhir/List?practice=: the same as FHIR.

Both need a bearer token, like the rest of the API. A browser cannot send an Authorization header from
the address bar, so the page also takes `?token=`; the page never echoes it back, and is sent with
`Referrer-Policy: no-referrer` and `Cache-Control: no-store` so that it does not leak from there.
Every person and item shown is decided by the same Judge as the FHIR reads, and every decision is
written to the disclosure ledger before the page is sent; withheld people are counted, not shown.
A GP practice sees its own practice's agenda only: another practice's is refused 403 (an HTML page, or
an OperationOutcome for the List) before anything is read, and the refusal is recorded in the ledger.

No `from __future__ import annotations` here: FastAPI reads these annotations at runtime.
"""

from datetime import UTC, date, datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Header, Query
from fastapi.responses import HTMLResponse

from hub.api.auth import AuthError, Principal, TokenVerifier
from hub.api.outcomes import FhirResponse
from hub.api.routes.fhir import Judge, record
from hub.core.errors import ConsentDeniedError
from hub.core.huddle import UK, Agenda, to_fhir_list
from hub.core.policy import Asker
from hub.core.ports import Ledger, RecordReader
from hub.store.agreements import PolicySource
from hub.web.views import decided_agenda, refused, render_page, render_refused

PAGE_HEADERS = {
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'",
}


def router(
    reader: RecordReader,
    tokens: TokenVerifier,
    ledger: Ledger | None = None,
    policy: PolicySource | None = None,
    service: str | None = None,
) -> APIRouter:
    """The agenda page and its FHIR List over a record reader (include before the /fhir router);
    `service`, the coordination service's ODS code, is never refused as another practice would be."""
    api = APIRouter()

    def caller(
        authorization: Annotated[str | None, Header()] = None,
        token: Annotated[str | None, Query(description="bearer token, for a browser's address bar")] = None,
    ) -> Principal:
        if authorization:
            scheme, _, value = authorization.partition(" ")
            if scheme.lower() != "bearer" or not value.strip():
                raise AuthError("the Authorization header must be 'Bearer <token>'")
            return tokens.verify(value.strip())
        if token and token.strip():
            return tokens.verify(token.strip())
        raise AuthError("this page needs a bearer token (Authorization: Bearer <token>, or ?token=<token>)")

    Caller = Annotated[Principal, Depends(caller)]  # noqa: N806 - a type alias

    def decided(who: Principal, practice: str, day: date | None) -> Agenda:
        now = datetime.now(UTC)
        judge = Judge(policy, Asker(who.org, who.role, now))
        meeting = day or now.astimezone(UK).date()
        ods = practice.strip().upper()

        def refuse(reason: str) -> None:  # (written before the 403 is sent, as every decision is)
            if ledger is not None:
                ledger.append([refused(who.org, who.user, who.role, ods, reason, now)])

        return decided_agenda(
            reader,
            ods,
            meeting,
            judge,
            lambda judged: record(ledger, who, "huddle", judged),
            viewer=(who.org, who.role),
            refuse=refuse,
            service=service,
        )

    @api.get("/huddle/{ods}", response_class=HTMLResponse, summary="Printable huddle / MDT agenda for a practice")
    def page(
        who: Caller,
        ods: str,
        day: Annotated[date | None, Query(alias="date", description="meeting day, YYYY-MM-DD (default today)")] = None,
    ) -> HTMLResponse:
        viewer = f"{who.user} ({who.org}, {who.role})"
        try:
            shown = decided(who, ods, day)
        except ConsentDeniedError as exc:  # (a person at a browser reads a page, not an OperationOutcome)
            html = render_refused(exc.diagnostics, generated=datetime.now(UTC), viewer=viewer)
            return HTMLResponse(html, status_code=403, headers=PAGE_HEADERS)
        html = render_page(shown, generated=datetime.now(UTC), viewer=viewer)
        return HTMLResponse(html, headers=PAGE_HEADERS)

    @api.get("/fhir/List", response_class=FhirResponse, summary="The huddle agenda as a FHIR List")
    def agenda_list(
        who: Caller,
        practice: Annotated[str, Query(description="the practice's ODS code")],
        day: Annotated[date | None, Query(alias="date", description="meeting day, YYYY-MM-DD (default today)")] = None,
    ) -> FhirResponse:
        return FhirResponse(to_fhir_list(decided(who, practice, day)))

    return api
