"""Information sharing agreements (for example Dorset's PISA) as data: one YAML document per version.

Published as JSON Schema in schemas/generated/agreement.schema.json (`make schemas`).
"""

from __future__ import annotations

import re
from datetime import date
from enum import StrEnum
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class Purpose(StrEnum):
    """Why data may be shared; a user's role names the purpose of their request."""

    DIRECT_CARE = "direct-care"
    CARE_COORDINATION = "care-coordination"
    AUDIT = "audit"
    COMMISSIONING = "commissioning-aggregate"


class Category(StrEnum):
    """Kinds of data an agreement covers (hub.core.policy maps resources to these)."""

    DEMOGRAPHICS = "demographics"
    ENCOUNTERS = "encounters"
    REFERRALS = "referrals"
    TASKS = "tasks"
    CARE_PLANS = "care-plans"
    PROVENANCE = "provenance"
    CONSENTS = "consents"


class Sensitive(StrEnum):
    """Special categories that must be named explicitly to be shared (from FHIR security labels)."""

    MENTAL_HEALTH = "mental-health"
    SEXUAL_HEALTH = "sexual-health"
    SAFEGUARDING = "safeguarding"
    SUBSTANCE_MISUSE = "substance-misuse"


class Party(BaseModel):
    """An organisation party to the agreement: an ODS code or a local-authority (ONS) code."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    code: str = Field(pattern=r"^[A-Z0-9]{3,10}$")
    kind: Literal["ods", "local-authority"] = "ods"
    name: str = ""


class LawfulBasis(BaseModel):
    """UK GDPR Article 6 and (for health data) Article 9 conditions."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    article6: str = Field(description='e.g. "6(1)(e) public task"')
    article9: str = Field(description='e.g. "9(2)(h) health or social care"')


class Agreement(BaseModel):
    """One version of an information sharing agreement."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str = Field(pattern=r"^[a-z0-9][a-z0-9-]{1,63}$")
    version: int = Field(ge=1)
    title: str
    parties: tuple[Party, ...] = Field(min_length=2)
    purposes: tuple[Purpose, ...] = Field(min_length=1)
    categories: tuple[Category, ...] = Field(min_length=1)
    sensitive: tuple[Sensitive, ...] = ()
    lawful_basis: LawfulBasis
    valid_from: date
    valid_to: date | None = None
    national_data_opt_out: bool = Field(
        default=False, description="true: people who registered a national data opt-out are excluded"
    )

    @model_validator(mode="after")
    def _dates_in_order(self) -> Agreement:
        if self.valid_to is not None and self.valid_to < self.valid_from:
            raise ValueError("valid_to is before valid_from")
        return self

    def in_force(self, day: date) -> bool:
        """Whether this version applies on `day`."""
        return self.valid_from <= day and (self.valid_to is None or day <= self.valid_to)

    @property
    def party_codes(self) -> frozenset[str]:
        """The parties' codes."""
        return frozenset(p.code for p in self.parties)


def slug(text: str) -> str:
    """An agreement id from a title."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:64]
