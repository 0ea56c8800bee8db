"""Coordination rules: case finding, coordinator tasks and their deadlines, caseload limits.

Rules are versioned data (YAML validated against this schema), not code: a commissioner's change of
target (say, first visit within 3 weeks instead of 4) is a new version of the file. Every task and
flag the hub creates names the rule set and version that made it.

Event names in rules are short (`referral.received`), the middle of the full type string
`uk.nhs.carehub.<family>.<event>.v1`.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

EventName = str
Condition = Literal[
    "always",
    "on-caseload-or-case-list",
    "addressed-to-service",
    "duplicate-stay",  # a merge (patient.merged) left the retired identity's stay open beside the survivor's
]
DUPLICATE_STAY_TRIGGER = "patient.merged"  # the only event a `duplicate-stay` rule may name


class Fulfilment(BaseModel):
    """An event that completes a task: its name, and optionally the contact kind or referral outcome it
    must carry; `not_before` keeps a later review from being closed by an early contact."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    event: EventName
    contact: tuple[str, ...] = ()
    outcome: tuple[str, ...] = ()
    not_before: timedelta = timedelta(0)


class TaskRule(BaseModel):
    """When to open a task, when it is due, what completes it and what cancels it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str = Field(pattern=r"^[a-z0-9][a-z0-9-]{1,63}$")
    title: str
    trigger: EventName
    when: Condition = "always"
    due: timedelta = Field(description="ISO 8601 duration after the triggering event's time, e.g. P28D, PT48H")
    done_by: tuple[Fulfilment, ...] = Field(min_length=1)
    cancelled_by: tuple[Fulfilment, ...] = ()
    owner: Literal["coordinator", "team"] = "coordinator"


class RegisterCriterion(BaseModel):
    """Case finding from the at-risk register: every listed measure at least its minimum."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str
    description: str
    at_least: dict[str, int] = Field(default_factory=dict, description="register measure -> minimum")
    referral_sources: tuple[str, ...] = Field(
        default=(), description="or: a referral from one of these sources (GP, huddle member) makes the person eligible"
    )


class Service(BaseModel):
    """The coordination service the rules are for."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    ods: str = Field(pattern=r"^[A-Z0-9]{3,10}$")
    name: str
    team_lead: str = Field(description="coordinator id escalations go to")


class CoordinationRules(BaseModel):
    """One version of a locality's coordination rules."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str = Field(pattern=r"^[a-z0-9][a-z0-9-]{1,63}$")
    version: int = Field(ge=1)
    service: Service
    caseload_cap: int = Field(default=28, ge=1)
    long_stay: timedelta = Field(default=timedelta(weeks=12), description="flag people on a caseload this long")
    case_finding: tuple[RegisterCriterion, ...] = ()
    tasks: tuple[TaskRule, ...] = ()

    @model_validator(mode="after")
    def _one_duplicate_stay_rule(self) -> CoordinationRules:
        """A `duplicate-stay` rule is triggered by a merge, and a rule set has at most one (the engine
        opens one task a stay)."""
        duplicate = [r for r in self.tasks if r.when == "duplicate-stay"]
        wrong = [r.id for r in duplicate if r.trigger != DUPLICATE_STAY_TRIGGER]
        if wrong:
            raise ValueError(f"rules {wrong}: `when: duplicate-stay` needs `trigger: {DUPLICATE_STAY_TRIGGER}`")
        if len(duplicate) > 1:
            raise ValueError(f"rules {[r.id for r in duplicate]}: at most one rule may be `when: duplicate-stay`")
        return self
