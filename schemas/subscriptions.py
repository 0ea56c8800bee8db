"""Subscriptions: which events an organisation receives, for which people, in how much detail.

Content levels follow FHIR R4B Subscription payload content: `empty` (that something happened),
`id-only` (references to the resources), `full-resource` (the resources the policy permits).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, HttpUrl, model_validator


class Webhook(BaseModel):
    """Where to POST deliveries; the HMAC secret is read from an environment variable, never stored."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    url: HttpUrl
    secret_env: str = Field(pattern=r"^[A-Z][A-Z0-9_]{2,63}$", description="environment variable holding the secret")


class Subscription(BaseModel):
    """One organisation's subscription."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str = Field(pattern=r"^[a-z0-9][a-z0-9-]{1,63}$")
    org: str = Field(pattern=r"^[A-Z0-9]{3,10}$", description="the subscribing organisation (ODS code)")
    purpose: Literal["direct-care", "care-coordination"] = "direct-care"
    events: tuple[str, ...] = Field(min_length=1, description="event types (uk.nhs.carehub.<family>.<event>.vN)")
    scope: Literal["registered", "addressed", "requested", "all-permitted"] = Field(
        default="registered",
        description="registered: only people registered with `org` (a GP practice's list); "
        "addressed: referrals addressed to `org` (ServiceRequest.performer), as social care subscribes; "
        "requested: referrals `org` made (ServiceRequest.requester): what became of them; "
        "all-permitted: everyone the agreements and consent allow",
    )
    content: Literal["empty", "id-only", "full-resource"] = "full-resource"
    webhook: Webhook | None = None
    mailbox: str | None = Field(
        default=None,
        min_length=1,
        description="a folder the hub writes each delivery into (one JSON file per event), for practices "
        "without an endpoint; instead of a webhook",
    )
    max_attempts: int = Field(default=6, ge=1, le=50)

    @model_validator(mode="after")
    def _one_way_out(self) -> Subscription:
        if self.webhook is not None and self.mailbox is not None:
            raise ValueError("a subscription has a webhook or a mailbox, not both")
        return self
