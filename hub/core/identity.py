"""Person keys: stable, non-identifying keys for Kafka and the record, derived from identifiers.

The key is an HMAC of the person's NHS number (or, without one, of the sender-scoped local
number) under the hub's secret, so it cannot be reversed to the NHS number without the secret.
"""

from __future__ import annotations

import hashlib
import hmac
import uuid

_NAMESPACE = uuid.UUID("6f1c1c3e-3b0e-4d55-9a55-3c0a7c1e2b10")


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
