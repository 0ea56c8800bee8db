"""FHIR searchset Bundles as the /fhir searches answer: what may be shown, how many were withheld,
and which query parameters were not used (or, with Prefer: handling=strict, a refusal instead)."""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime
from typing import Any

from fastapi import Request

from hub.api.outcomes import FhirResponse
from hub.core.errors import InvalidMessageError
from hub.core.ports import Json


def ignored(request: Request, reads: tuple[str, ...]) -> list[str]:
    """The query parameters a search did not use: those it does not know, and those given more than
    once (one value is taken: the last)."""
    params = request.query_params
    return sorted({n for n in params if n not in reads} | {n for n in reads if len(params.getlist(n)) > 1})


def handled(request: Request, reads: tuple[str, ...]) -> None:
    """FHIR's Prefer: handling=strict: a search with a parameter it would not use is refused (400,
    before anything is read or disclosed), rather than carried out without it, as it is by default
    (handling=lenient: the Bundle then says which it ignored)."""
    unused = ignored(request, reads)
    if unused and _handling(request) == "strict":
        raise InvalidMessageError(
            f"this search does not take {', '.join(unused)} (once each of: {', '.join(reads) or 'none'}), and "
            "Prefer: handling=strict asks for that to be refused rather than ignored",
            tuple(unused),
            code="not-supported",
        )


def _handling(request: Request) -> str:
    """The `handling` preference (RFC 7240): every Prefer header taken as one list of preferences
    (split at commas outside quotes), each preference its token[=value] before any `;` parameters,
    whitespace around `=` and a quoted value allowed, the first `handling` the one that counts;
    lenient by default."""
    for preference in _PREFERENCES.split(",".join(request.headers.getlist("prefer"))):
        name, _, value = preference.split(";", 1)[0].partition("=")
        if name.strip().lower() == "handling":
            return value.strip().strip('"').strip().lower()
    return "lenient"


_PREFERENCES = re.compile(r',(?=(?:[^"]*"[^"]*")*[^"]*$)')  # a comma outside double quotes


def _self_link(request: Request, reads: tuple[str, ...]) -> str:
    """The search as it was carried out (FHIR: the self link shows the parameters used): the known
    parameters only, each once, with the value taken (the last, where one was repeated)."""
    used = {name: request.query_params[name] for name in reads if name in request.query_params}
    return str(request.url.replace_query_params(**used))


def searchset(request: Request, shown: list[Json], withheld: int, reads: tuple[str, ...]) -> FhirResponse:
    """A searchset Bundle of what may be shown, saying how many were withheld and which of the
    parameters given (`reads`: those the search takes) were not used."""
    base = str(request.base_url).rstrip("/") + "/fhir"
    entries: list[Json] = [
        {"fullUrl": f"{base}/{r['resourceType']}/{r['id']}", "resource": r, "search": {"mode": "match"}} for r in shown
    ]
    issues: list[Json] = []
    if withheld:
        issues.append(
            {
                "severity": "information",
                "code": "suppressed",
                "diagnostics": f"{withheld} resource(s) withheld under the information-sharing policy",
            }
        )
    unused = ignored(request, reads)
    if unused:
        issues.append(
            {
                "severity": "warning",
                "code": "not-supported",
                "diagnostics": f"parameter(s) not used: {', '.join(unused)} (this search takes, once each: "
                f"{', '.join(reads) or 'none'}); Prefer: handling=strict refuses such a search instead",
            }
        )
    if issues:
        entries.append(
            {"resource": {"resourceType": "OperationOutcome", "issue": issues}, "search": {"mode": "outcome"}}
        )
    bundle: dict[str, Any] = {
        "resourceType": "Bundle",
        "id": str(uuid.uuid4()),
        "meta": {"lastUpdated": datetime.now(UTC).isoformat()},
        "type": "searchset",
        "total": len(shown),
        "link": [{"relation": "self", "url": _self_link(request, reads)}],
        "entry": entries,
    }
    return FhirResponse(bundle)
