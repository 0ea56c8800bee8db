"""Request bodies as the API reads them: bounded in size before they are read whole, and refused in
shapes no database or validator should meet (NUL characters, nesting that would crash a recursive
validator)."""

from __future__ import annotations

from typing import Any

from fastapi import HTTPException, Request

from hub.core.errors import InvalidMessageError

MAX_BODY = 1 << 20  # a Consent is a few kilobytes; a megabyte is already hostile
MAX_DEPTH = 32  # a Consent nests about 7 levels deep


async def read_body(request: Request) -> bytes:
    """The request body, refused (413) past MAX_BODY without reading the rest."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_BODY:
        raise HTTPException(413, f"the body is larger than this server takes ({MAX_BODY} bytes)")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY:
            raise HTTPException(413, f"the body is larger than this server takes ({MAX_BODY} bytes)")
        chunks.append(chunk)
    return b"".join(chunks)


def check_shape(data: Any, what: str = "Consent") -> None:
    """Refuse what no database or validator should meet: NUL (U+0000) in any string, key or value,
    and nesting deeper than MAX_DEPTH (fhir.resources recurses, so a deep enough body would crash it).
    A loop, not recursion: the nesting is the sender's to choose."""
    pending: list[tuple[Any, int]] = [(data, 1)]
    while pending:
        item, depth = pending.pop()
        if depth > MAX_DEPTH:
            raise InvalidMessageError(f"the body nests deeper than {MAX_DEPTH} levels", (what,))
        if isinstance(item, str) and "\x00" in item:
            raise InvalidMessageError("FHIR strings may not contain the NUL character (\\u0000)", (what,))
        if isinstance(item, dict):
            pending += [(k, depth) for k in item] + [(v, depth + 1) for v in item.values()]
        elif isinstance(item, list):
            pending += [(v, depth + 1) for v in item]
