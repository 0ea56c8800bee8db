"""The one error tree. Each edge translates it in exactly one place (ACK, OperationOutcome, CLI).

HubError(code, diagnostics, expression)          FHIR IssueType code + a message a person can act on
├── InvalidMessageError        invalid           content is wrong: bad NHS number, missing field (ACK AE)
│   ├── UnsupportedMessageError not-supported    a message type or frame we do not take (ACK AR)
│   └── MessageTooLargeError    too-long         too large for one Kafka record: sent again it still is (AE, 413)
├── UnknownPersonError         not-found         no such person or resource
├── ConsentDeniedError         forbidden         sharing agreement or consent forbids it
├── DuplicateEventError        duplicate         already applied: acknowledge, never dead-letter
├── RuleRefusedError           business-rule     a service rule refuses it: a full caseload, a closed task (409)
└── InfrastructureError        transient         a dependency failed; retry, never dead-letter
    ├── StoreUnavailableError  transient         the database did not answer
    ├── ConcurrentWriteError   conflict          another worker wrote the same rows first; retry
    └── BrokerUnavailableError transient         Kafka did not acknowledge
        └── UnfinishedError    transient         ... after part of a command was kept (an accept's claim)
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(eq=False)
class HubError(Exception):
    """Base of every error CareHub raises on purpose."""

    diagnostics: str
    expression: tuple[str, ...] = field(default_factory=tuple)
    code: str = "processing"

    def __post_init__(self) -> None:
        super().__init__(self.diagnostics)

    def __str__(self) -> str:
        where = f" [{', '.join(self.expression)}]" if self.expression else ""
        return f"{self.diagnostics}{where}"


@dataclass(eq=False)
class InvalidMessageError(HubError):
    """The content is wrong; the sender must correct it."""

    code: str = "invalid"


@dataclass(eq=False)
class UnsupportedMessageError(InvalidMessageError):
    """A message type, event or frame this hub does not accept."""

    code: str = "not-supported"


@dataclass(eq=False)
class MessageTooLargeError(InvalidMessageError):
    """Larger than Kafka takes in one record: never an outage, as sending it again cannot succeed."""

    code: str = "too-long"


@dataclass(eq=False)
class UnknownPersonError(HubError):
    """No such person or resource."""

    code: str = "not-found"


@dataclass(eq=False)
class ConsentDeniedError(HubError):
    """A sharing agreement or the person's consent forbids this disclosure."""

    code: str = "forbidden"


@dataclass(eq=False)
class DuplicateEventError(HubError):
    """Already applied; acknowledge and do nothing."""

    code: str = "duplicate"


@dataclass(eq=False)
class RuleRefusedError(HubError):
    """A coordination rule refuses the request as asked (a coordinator at their caseload cap)."""

    code: str = "business-rule"


@dataclass(eq=False)
class InfrastructureError(HubError):
    """A dependency failed; the work must be retried, never dead-lettered."""

    code: str = "transient"


@dataclass(eq=False)
class StoreUnavailableError(InfrastructureError):
    """The database did not answer."""


@dataclass(eq=False)
class ConcurrentWriteError(InfrastructureError):
    """Another worker committed some of the same events first (a rebalance); retrying skips them."""

    code: str = "conflict"


@dataclass(eq=False)
class BrokerUnavailableError(InfrastructureError):
    """Kafka did not acknowledge in time."""


@dataclass(eq=False)
class UnfinishedError(BrokerUnavailableError):
    """Kafka did not acknowledge a command that had kept something already (an accept's claim): the
    diagnostics, written for the caller, say what is kept and how to finish it (the API shows them)."""


@dataclass(eq=False)
class LedgerBrokenError(HubError):
    """The disclosure ledger fails its own checks: what it says cannot be reported as true."""

    code: str = "exception"


KEPT_IN_PART = "https://carehub.invalid/StructureDefinition/kept-in-part"  # on a dead letter's reason


def operation_outcome(error: HubError, *, whole: tuple[int, str] | None = None) -> dict[str, object]:
    """The error as a FHIR OperationOutcome (JSON), for every edge that must explain itself; `whole`,
    the size and SHA-256 of an input of which only the head is kept with it (extension KEPT_IN_PART)."""
    issue: dict[str, object] = {
        "severity": "error",
        "code": error.code,
        "diagnostics": error.diagnostics,
    }
    if error.expression:
        issue["expression"] = list(error.expression)
    outcome: dict[str, object] = {"resourceType": "OperationOutcome", "issue": [issue]}
    if whole is not None:
        said = [{"url": "size", "valueInteger": whole[0]}, {"url": "sha256", "valueString": whole[1]}]
        outcome["extension"] = [{"url": KEPT_IN_PART, "extension": said}]
    return outcome


def kept_in_part(outcome: object) -> tuple[int, str] | None:
    """The size and SHA-256 of the input an OperationOutcome says is kept only in part, or None (whole)."""
    found = [e for e in _listed(outcome, "extension") if e.get("url") == KEPT_IN_PART]
    said = {str(e.get("url")): e for e in _listed(found[0] if found else None, "extension")}
    size, digest = said.get("size", {}).get("valueInteger"), said.get("sha256", {}).get("valueString")
    if isinstance(size, int) and isinstance(digest, str) and len(digest) == 64:
        return size, digest
    return None


def _listed(element: object, name: str) -> list[dict[str, object]]:
    found = element.get(name) if isinstance(element, dict) else None
    return [e for e in found if isinstance(e, dict)] if isinstance(found, list) else []
