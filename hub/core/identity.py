"""Person keys: stable, non-identifying keys for Kafka and the record, derived from identifiers.

The key is an HMAC of the person's NHS number (or, without one, of the sender-scoped local
number) under the hub's secret, so it cannot be reversed to the NHS number without the secret.
"""

from __future__ import annotations

import hashlib
import hmac
import uuid
from collections.abc import Callable, Collection, Mapping

from hub.core.ports import RecordReader

_NAMESPACE = uuid.UUID("6f1c1c3e-3b0e-4d55-9a55-3c0a7c1e2b10")
MAX_HOPS = 16  # merges followed from one identity (here and by the record: hub.core.record.survivor)


def person_key(secret: bytes, nhs_number: str | None, local: tuple[str, str] | None) -> str:
    """The person key from an NHS number, else from (assigning authority, local id)."""
    if nhs_number:
        material = f"nhs|{nhs_number}"
    elif local:
        material = f"local|{local[0]}|{local[1]}"
    else:
        raise ValueError("a person key needs an NHS number or a local identifier")
    return hmac.new(secret, material.encode(), hashlib.sha256).hexdigest()[:32]


def stable_id(*parts: str) -> str:
    """A deterministic UUID (v5) for a resource or event from its natural key."""
    return str(uuid.uuid5(_NAMESPACE, "|".join(parts)))


def survivors(filed_under: Callable[[Collection[str]], Mapping[str, str]], keys: Collection[str]) -> dict[str, str]:
    """Each person key as the person the record now knows them as: a key merged away (A40) gives
    the person it was merged into, through merges of merges; any other key, itself. `filed_under`
    is RecordReader.filed_under: the person key the record files each Patient under."""
    now = {k: k for k in keys}
    for _ in range(MAX_HOPS):
        moved = {k: v for k, v in filed_under(set(now.values())).items() if v != k}
        if not moved:
            break
        now = {k: moved.get(v, v) for k, v in now.items()}
    return now


def identities(reader: RecordReader, key: str) -> set[str]:
    """Every person key the record knows this person by: `key`, the person they now are (`key` merged
    away: the person it joined) and every key merged into them, through merges of merges (what a
    subject-access request asks about: a disclosure names the identity it was made under)."""
    survivor = survivors(reader.filed_under, [key])[key]
    found, frontier = {key, survivor}, {survivor}
    for _ in range(MAX_HOPS):
        frontier = {str(p.get("id")) for p in reader.search_many("Patient", sorted(frontier))} - found
        if not frontier:
            break
        found |= frontier
    return found
