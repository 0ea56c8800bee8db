"""The disclosure ledger's rules: a hash chain over every decision to disclose (or not).

Each entry's hash covers its own fields and the previous entry's hash, in canonical JSON, so an
entry altered, removed or moved breaks the chain from that point; `verify` names the first
entry where it breaks. Pure: no I/O, no clock (the caller supplies `at`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

GENESIS = "0" * 64


@dataclass(frozen=True)
class Disclosure:
    """One decision: who was given (or refused) what about whom, when, and on what basis."""

    at: datetime
    recipient_org: str
    recipient_user: str
    channel: str  # "read", "search", "everything", "export", "topic", "webhook", "mailbox"
    person_key: str | None
    resources: tuple[str, ...]  # "Type/id/_history/n#sha256", or "Type/id#sha256" (resource_ref)
    decision: str  # "permit", "deny", "break-glass"
    reasons: tuple[str, ...] = ()
    basis: dict[str, Any] = field(default_factory=dict)
    event: str | None = None  # a delivery: the event whose content it is (its resources hash that content)
    # a webhook or mailbox delivery: each try to send is an attempt, its entries made before anything
    # is sent; its result is a later entry naming the same attempt, with the `outcome` (no resources)
    attempt: str | None = None
    outcome: str | None = None  # a result entry: DISCLOSED, POSSIBLY_DISCLOSED or NOT_DISCLOSED

    def body(self) -> dict[str, Any]:
        """The fields the hash covers, as plain JSON (`event`, `attempt` and `outcome` only where
        there is one, so an entry made before they existed hashes as it did)."""
        body: dict[str, Any] = {
            "at": self.at.isoformat(),
            "recipient_org": self.recipient_org,
            "recipient_user": self.recipient_user,
            "channel": self.channel,
            "person_key": self.person_key,
            "resources": list(self.resources),
            "decision": self.decision,
            "reasons": list(self.reasons),
            "basis": self.basis,
        }
        if self.event is not None:
            body["event"] = self.event
        if self.attempt is not None:
            body["attempt"] = self.attempt
        if self.outcome is not None:
            body["outcome"] = self.outcome
        return body


@dataclass(frozen=True)
class Entry:
    """A stored ledger entry: its place in the chain, body, and hashes."""

    seq: int
    body: dict[str, Any]
    prev_hash: str
    hash: str
    # the person a store files it under, for a subject-access request to find it (outside the hash,
    # so `verify` checks it against the body's); None where the store does not say
    filed_under: tuple[str | None] | None = None


def canonical(value: Any) -> bytes:
    """Canonical JSON: sorted keys, no spaces, UTF-8."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def chain_hash(prev_hash: str, body: dict[str, Any]) -> str:
    """The hash of an entry that follows `prev_hash`."""
    return hashlib.sha256(prev_hash.encode() + canonical(body)).hexdigest()


def resource_ref(resource: dict[str, Any], version: str | None = None) -> str:
    """How a disclosed resource is named in the ledger: "Type/id/_history/N#sha256", the record
    version and a hash of exactly the content disclosed.

    A record read carries its version (meta.versionId). An event's content carries none: `version`
    is then the record version the event wrote (a delivery names it so). Content that is no record
    version at all (the record kept what it held already, or newer content) is "Type/id#sha256"."""
    version = version or (resource.get("meta") or {}).get("versionId")
    digest = hashlib.sha256(canonical(resource)).hexdigest()
    named = f"{resource.get('resourceType')}/{resource.get('id')}"
    return f"{named}/_history/{version}#{digest}" if version else f"{named}#{digest}"


@dataclass(frozen=True)
class Break:
    """Where the chain first fails, and how."""

    seq: int
    problem: str


def verify(entries: Iterable[Entry], head: tuple[int, str] | None = None) -> tuple[int, Break | None]:
    """Walk the chain in order: (entries checked, first break or None).

    A chain cut short at its end still verifies on its own; `head`, an entry's (seq, hash) recorded
    earlier (printed by `carehub audit verify`, or a signed export checkpoint), proves it was not.
    """
    prev, expected_seq, checked = GENESIS, 1, 0
    for entry in entries:
        checked += 1
        if entry.seq != expected_seq:
            gap = "removed" if entry.seq > expected_seq else "out of order"
            return checked, Break(expected_seq, f"entry {expected_seq} is missing ({gap}); found {entry.seq}")
        if entry.prev_hash != prev:
            return checked, Break(
                entry.seq, f"entry {entry.seq} does not follow entry {entry.seq - 1} (reordered or removed)"
            )
        if chain_hash(prev, entry.body) != entry.hash:
            return checked, Break(entry.seq, f"entry {entry.seq} was altered (its content no longer matches its hash)")
        if entry.filed_under is not None and entry.filed_under[0] != entry.body.get("person_key"):
            return checked, Break(
                entry.seq,
                f"entry {entry.seq} is filed under another person than it names (its person column was altered, "
                "which hides it from a subject-access request)",
            )
        if head is not None and entry.seq == head[0] and entry.hash != head[1]:
            return checked, Break(entry.seq, f"entry {entry.seq} is not the entry recorded earlier as the head")
        prev, expected_seq = entry.hash, expected_seq + 1
    if head is not None and head[0] >= expected_seq:
        return checked, Break(expected_seq, f"the ledger ends at entry {expected_seq - 1}, before the head {head[0]}")
    return checked, None


def unsound(entries: Iterable[Entry]) -> Break | None:
    """The first of these entries (some of the chain, such as one person's) whose content no longer
    matches its own hash, or that is filed under another person than it names. Without the rest of
    the chain this cannot show an entry removed, or one altered with every hash after it recomputed
    (`verify` over the whole ledger, with a head kept, does); it catches an entry edited in place,
    which would otherwise be reported as true."""
    for entry in entries:
        if chain_hash(entry.prev_hash, entry.body) != entry.hash:
            return Break(entry.seq, f"entry {entry.seq} was altered (its content no longer matches its hash)")
        if entry.filed_under is not None and entry.filed_under[0] != entry.body.get("person_key"):
            return Break(entry.seq, f"entry {entry.seq} is filed under another person than it names")
    return None


def seal(previous: Sequence[str], bodies: Sequence[dict[str, Any]]) -> list[tuple[str, str]]:
    """(prev_hash, hash) for bodies appended after the chain whose last hash is previous[-1]."""
    prev = previous[-1] if previous else GENESIS
    out = []
    for body in bodies:
        digest = chain_hash(prev, body)
        out.append((prev, digest))
        prev = digest
    return out


# What a decision came to. A read's, a topic's or an export's permit disclosed what it names (the
# answer is the decision carried out); a webhook or mailbox permit is an attempt to send, and what it
# came to is the result entry recorded after it: a 2xx (a mailbox file in place) disclosed it; a
# timeout or an error answer after the request was sent possibly did (the receiver may have kept
# it); a connection never made (refused, no such host) did not.
DISCLOSED, POSSIBLY_DISCLOSED, NOT_DISCLOSED, REFUSED = "disclosed", "possibly disclosed", "not disclosed", "refused"
ATTEMPTED = ("webhook", "mailbox")  # channels whose permits are attempts, their results recorded after
NO_RESULT = "no result recorded: the hub stopped between sending and recording what came of it (or is sending it now)"
BEFORE_RESULTS = "recorded before the hub kept each attempt's result: it was sent, or only tried"


@dataclass(frozen=True)
class Result:
    """What one decision entry disclosed, and why the ledger says so (`seq`: its result entry)."""

    outcome: str  # DISCLOSED, POSSIBLY_DISCLOSED, NOT_DISCLOSED or REFUSED
    detail: str = ""
    seq: int | None = None


def is_result(body: dict[str, Any]) -> bool:
    """Whether an entry records the result of an attempt (not a decision of its own)."""
    return body.get("outcome") is not None


def results(entries: Iterable[Any]) -> dict[int, Result]:
    """What each decision among `entries` disclosed, by seq; result entries are not decisions and are
    left out (the first result of an attempt counts: there is one per person it was about). Give the
    result entries with their attempts: a person's entries (`Ledger.about`) hold both."""
    listed = list(entries)
    came: dict[str, Result] = {}
    for entry in listed:
        body = entry.body
        if is_result(body) and body.get("attempt"):
            said = Result(str(body["outcome"]), "; ".join(body.get("reasons") or []), int(entry.seq))
            came.setdefault(str(body["attempt"]), said)
    return {int(e.seq): _came_to(e.body, came) for e in listed if not is_result(e.body)}


def _came_to(body: dict[str, Any], came: dict[str, Result]) -> Result:
    if body.get("decision") not in ("permit", "break-glass"):
        return Result(REFUSED)
    if body.get("channel") not in ATTEMPTED:
        return Result(DISCLOSED)
    if not body.get("attempt"):
        return Result(POSSIBLY_DISCLOSED, BEFORE_RESULTS)
    return came.get(str(body["attempt"]), Result(POSSIBLY_DISCLOSED, NO_RESULT))
