"""Every error over HTTP is a FHIR OperationOutcome (application/fhir+json), in one place."""

from __future__ import annotations

import logging
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response
from starlette.routing import Match, Route

from hub.api.auth import AuthError
from hub.core.errors import HubError, InfrastructureError, UnfinishedError, UnknownPersonError

log = logging.getLogger(__name__)
FHIR_JSON = "application/fhir+json; charset=utf-8"
_CODES = {400: "invalid", 401: "login", 403: "forbidden", 404: "not-found", 405: "not-supported"}
_CODES |= {406: "not-supported", 413: "too-long", 415: "not-supported", 422: "invalid", 503: "transient"}


class FhirResponse(Response):
    """FHIR JSON, serialised with orjson."""

    media_type = FHIR_JSON

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


def outcome(
    status: int,
    diagnostics: str,
    *,
    code: str | None = None,
    expression: list[str] | None = None,
    headers: dict[str, str] | None = None,
) -> Response:
    """An OperationOutcome response (401s say how to authenticate)."""
    issue: dict[str, Any] = {
        "severity": "error",
        "code": code or _CODES.get(status, "processing"),
        "diagnostics": diagnostics,
    }
    if expression:
        issue["expression"] = expression
    if status == 401:
        headers = {**(headers or {}), "WWW-Authenticate": 'Bearer realm="carehub"'}
    return FhirResponse({"resourceType": "OperationOutcome", "issue": [issue]}, status_code=status, headers=headers)


def allowed(app: FastAPI, request: Request) -> str:
    """Every method some route serves at this path (Starlette's own Allow names the first route only)."""
    methods: set[str] = set()
    for route in app.router.routes:
        if isinstance(route, Route) and route.methods and route.matches(request.scope)[0] != Match.NONE:
            methods |= route.methods
    return ", ".join(sorted(methods))


def install(app: FastAPI) -> None:
    """Register the handlers that turn every failure into an OperationOutcome."""

    @app.exception_handler(AuthError)
    async def unauthenticated(_: Request, exc: AuthError) -> Response:
        return outcome(401, exc.diagnostics)

    @app.exception_handler(UnknownPersonError)
    async def not_found(_: Request, exc: UnknownPersonError) -> Response:
        return outcome(404, exc.diagnostics, code=exc.code, expression=list(exc.expression) or None)

    @app.exception_handler(InfrastructureError)
    async def unavailable(_: Request, exc: InfrastructureError) -> Response:
        log.warning("dependency unavailable during a request: %s", exc.code)
        return outcome(503, "the record is temporarily unavailable; retry shortly")

    @app.exception_handler(UnfinishedError)  # (not the generic text: that would hide what was kept)
    async def unfinished(_: Request, exc: UnfinishedError) -> Response:
        log.warning("dependency unavailable after part of a request was recorded: %s", exc.code)
        return outcome(503, exc.diagnostics, code=exc.code, expression=list(exc.expression) or None)

    @app.exception_handler(HubError)
    async def hub_error(_: Request, exc: HubError) -> Response:
        status = {"forbidden": 403, "business-rule": 409, "too-long": 413, "exception": 500}.get(exc.code, 400)
        return outcome(status, exc.diagnostics, code=exc.code, expression=list(exc.expression) or None)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        detail = exc.detail if isinstance(exc.detail, str) else "request refused"
        if exc.status_code == 404 and detail == "Not Found":
            detail = "no such resource or operation on this server (see /fhir/metadata)"
        if exc.status_code == 405:
            detail = "this API is read-only for that resource: the method is not allowed"
        headers = dict(exc.headers or {})
        if exc.status_code == 405:
            headers["Allow"] = allowed(app, request)
        return outcome(exc.status_code, detail, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def bad_request(_: Request, exc: RequestValidationError) -> Response:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p not in ("query", "path", "header", "body"))
        if first.get("type") == "missing":
            return outcome(400, f"the request needs {where}", code="required", expression=[where])
        return outcome(400, f"invalid request parameter {where}: {first.get('msg', 'invalid')}", expression=[where])

    @app.exception_handler(Exception)
    async def crashed(_: Request, exc: Exception) -> Response:
        log.exception("unhandled error serving a request")
        return outcome(500, "the server failed to handle this request; it has been logged", code="exception")
