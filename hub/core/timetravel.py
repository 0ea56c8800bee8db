"""The policy time-travel report: what was disclosed then, on what basis, and what today's policy
would decide instead.

Pure. The ledger says, for each decision, who asked (organisation, user, role or subscription
purpose), when, which resource versions, the decision and the agreement and consent versions it
rested on. Each resource is decided again with today's agreements and the person's consents as they
stand now, for the same organisation and purpose. A resource the record no longer holds cannot be
decided again and says so.

What "today" means, so that only a change of policy shows as one:
    emergencies     a break-glass read is decided again with the same emergency asserted (the
                    ledger keeps that one was, not why): today's policy differs only if it would no
                    longer let that emergency through
    versions        the record keeps current versions only, so a resource changed since it was
                    disclosed is decided again as it stands now; the basis says so, naming both
                    versions, since its content (its supplier, its labels) may be what changed
    people          the person's consents are looked for under the key the ledger names and under
                    the key the resource is filed under now (a merge since moves it to the survivor)
    withheld        a resource an export withheld only because another resource of its event was not
                    covered (WITHHELD_WITH_EVENT) was itself permitted: it shows as "withheld", and
                    today's policy differs only if it would no longer permit the resource itself
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from hub.core.policy import Asker, ConsentRule, decide, person_of
from hub.core.ports import Json

# why an export withheld a resource its agreements covered: another resource of the same event was not
WITHHELD_WITH_EVENT = "withheld with the rest of its event: not every resource in it is covered"


@dataclass(frozen=True)
class Reconsidered:
    """One resource of one ledger entry, then and now."""

    seq: int
    at: str
    recipient: str
    channel: str
    resource: str
    then: str
    then_basis: str
    now: str
    now_basis: str

    @property
    def changed(self) -> bool:
        return _shown(self.then) != _shown(self.now)


def reconsider(
    entries: Iterable[Any],
    resources: Mapping[str, Json | None],
    agreements: Sequence[Any],
    consents: Sequence[ConsentRule],
    now: datetime,
) -> list[Reconsidered]:
    """Every resource of every entry, decided again under today's policy."""
    found: list[Reconsidered] = []
    by_person: defaultdict[str, list[ConsentRule]] = defaultdict(list)  # (decide reads only the resource's person's)
    for rule in consents:
        by_person[rule.person_key].append(rule)
    for entry in entries:
        body = entry.body
        basis = body.get("basis") or {}
        role = str(basis.get("role") or "system")
        purpose = basis.get("purpose")
        emergency = _EMERGENCY if body.get("decision") == "break-glass" else None
        asker = Asker(str(body["recipient_org"]), role, now, emergency, purpose=str(purpose) if purpose else None)
        then_basis = ", ".join([*basis.get("agreements", []), *basis.get("consents", [])]) or "; ".join(
            body.get("reasons") or []
        )
        then = str(body["decision"])
        if then == "deny" and list(body.get("reasons") or []) == [WITHHELD_WITH_EVENT]:
            then, then_basis = "withheld", f"permitted, but {WITHHELD_WITH_EVENT}"
        for ref in body.get("resources") or []:
            versioned = str(ref).split("#")[0]
            kind_id = "/".join(versioned.split("/")[:2])
            current = resources.get(kind_id)
            if current is None:
                now_decision, now_basis = "unknown", "the record no longer holds this resource"
            else:
                decision = decide(asker, current, agreements, by_person.get(person_of(current) or "", ()))
                now_decision = decision.outcome
                now_basis = ", ".join([*decision.agreements, *decision.consents]) or "; ".join(decision.reasons)
                then_version = versioned.split("/_history/")[1] if "/_history/" in versioned else None
                now_version = str((current.get("meta") or {}).get("versionId", "?"))
                if then_version is None:  # a delivery of an event's content the record made no version of
                    now_basis = (
                        f"{now_basis} (decided on version {now_version}: the content disclosed was no record version)"
                    )
                elif now_version != then_version:
                    now_basis = f"{now_basis} (decided on version {now_version}: version {then_version} was disclosed)"
            found.append(
                Reconsidered(
                    seq=int(entry.seq),
                    at=str(body["at"]),
                    recipient=f"{body['recipient_org']} / {body['recipient_user']}",
                    channel=str(body["channel"]),
                    resource=versioned,
                    then=then,
                    then_basis=then_basis,
                    now=now_decision,
                    now_basis=now_basis,
                )
            )
    return found


# the reason a break-glass read is decided again with (the ledger keeps that an emergency was asserted)
_EMERGENCY = "the emergency asserted then"


def people_of(entries: Iterable[Any], resources: Mapping[str, Json | None]) -> set[str]:
    """Everyone whose consents bear on the report: the people the ledger names and those the
    resources are filed under now."""
    people = {str(e.body["person_key"]) for e in entries if e.body.get("person_key")}
    return people | {p for r in resources.values() if r is not None and (p := person_of(r))}


def in_period(entries: Iterable[Any], since: datetime | None, until: datetime | None) -> list[Any]:
    """Ledger entries decided within [since, until]."""
    kept = []
    for entry in entries:
        at = datetime.fromisoformat(str(entry.body["at"]))
        if (since is None or at >= since) and (until is None or at <= until):
            kept.append(entry)
    return kept


def _shown(outcome: str) -> bool:
    """Whether the resource itself was (or would be) let through: a resource withheld only with its
    event was."""
    return outcome in ("permit", "break-glass", "withheld")
