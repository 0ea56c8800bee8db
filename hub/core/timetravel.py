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
                    versions. Its content (its supplier, its labels) may be what changed, so a
                    different answer on it is no evidence of a change of policy: it shows as
                    "cannot tell" and is not counted, unless the person's consents that bear on it
                    differ (which no change of content explains)
    event copies    an export decided each resource on the event's own copy (its supplier the
                    event's sender), which the record does not keep: it is treated as a version
                    other than the one decided again
    people          the person's consents are looked for under the key the ledger names and under
                    the key the resource is filed under now (a merge since moves it to the survivor)
    origins         a resource that refers to a referral or an episode of care is decided, as any
                    read is, no wider than they are: as `resources` holds them (`with_origins`),
                    under the consents of their people too (a referral may have moved since)
    withheld        a resource an export withheld only because another resource of its event was not
                    covered (WITHHELD_WITH_EVENT) was itself permitted: it shows as "withheld", and
                    today's policy differs only if it would no longer permit the resource itself;
                    so does one refused only because a whole $everything read was (WITHHELD_WITH_READ),
                    and an Organization, Practitioner or Location denied (never personal data, it is
                    denied only with the rest of its read: so were the ledger's older entries)
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from hub.core.policy import SHARED_TYPES, Asker, ConsentRule, Decision, decide, origins_held, person_of
from hub.core.ports import Json

# why an export withheld a resource its agreements covered: another resource of the same event was not
WITHHELD_WITH_EVENT = "withheld with the rest of its event: not every resource in it is covered"
# why a $everything refused a resource: the read's Patient was refused, and the whole read with it
WITHHELD_WITH_READ = "refused with the whole $everything read: its Patient is not shared with the asker"
WITHHELD = (WITHHELD_WITH_EVENT, WITHHELD_WITH_READ)
# what today shows when the resource decided again is not the one disclosed and the answers differ
CANNOT_TELL = "cannot tell"


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
        return self.now != CANNOT_TELL and _shown(self.then) != _shown(self.now)


def reconsider(
    entries: Iterable[Any],
    resources: Mapping[str, Json | None],
    agreements: Sequence[Any],
    consents: Sequence[ConsentRule],
    now: datetime,
    *,
    history: Sequence[tuple[datetime, Any]],
) -> list[Reconsidered]:
    """Every resource of every entry, decided again under today's policy. `history`, every agreement
    version with the time it was loaded, tells whether the agreements in force then would decide
    the resource as it stands now otherwise than today's do (a change of agreement, on any content).
    It has no default: without it every such change on content since changed reads "cannot tell"."""
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
        if then == "deny" and list(body.get("reasons") or []) and set(body["reasons"]) <= set(WITHHELD):
            then, then_basis = "withheld", f"permitted, but {'; '.join(body['reasons'])}"
        then_consents = set(basis.get("consents") or [])
        for ref in body.get("resources") or []:
            versioned = str(ref).split("#")[0]
            kind_id = "/".join(versioned.split("/")[:2])
            row_then, row_then_basis = then, then_basis
            if then == "deny" and kind_id.split("/")[0] in SHARED_TYPES:  # (never denied itself)
                row_then, row_then_basis = "withheld", f"permitted (not personal data), but {then_basis}"
            current = resources.get(kind_id)
            if current is None:
                now_decision, now_basis = "unknown", "the record no longer holds this resource"
            else:
                origins = _origins(current, resources)
                people = {p for r in (current, *origins) if (p := person_of(r))}  # (a referral moved since)
                theirs = [rule for person in sorted(people) for rule in by_person.get(person, ())]
                decision = decide(asker, current, agreements, theirs, origins=origins)
                elsewhere = _other_content(body, versioned, current)
                moved = set(decision.consents) != then_consents  # (no change of content explains that)
                if elsewhere is not None and history:  # would the agreements then decide it otherwise?
                    at = datetime.fromisoformat(str(body["at"]))
                    earlier = decide(replace(asker, at=at), current, as_of(history, at), theirs, origins=origins)
                    if _shown(earlier.outcome) != _shown(decision.outcome):
                        moved, elsewhere = True, f"{elsewhere}; the agreements then would say {earlier.outcome}"
                now_decision, now_basis = _today(row_then, moved, decision, elsewhere)
            found.append(
                Reconsidered(
                    seq=int(entry.seq),
                    at=str(body["at"]),
                    recipient=f"{body['recipient_org']} / {body['recipient_user']}",
                    channel=str(body["channel"]),
                    resource=versioned,
                    then=row_then,
                    then_basis=row_then_basis,
                    now=now_decision,
                    now_basis=now_basis,
                )
            )
    return found


def with_origins(resources: Mapping[str, Json | None], read: Callable[[str], Json | None]) -> dict[str, Json | None]:
    """`resources` (by "Type/id") with what they refer to that they reveal (policy.origins_held), read
    with `read` each once: what `reconsider` decides them no wider than."""
    held = dict(resources)

    def look(kind: str, id_: str) -> Json | None:
        if f"{kind}/{id_}" not in held:
            held[f"{kind}/{id_}"] = read(f"{kind}/{id_}")
        return held[f"{kind}/{id_}"]

    for resource in [r for r in resources.values() if r is not None]:
        origins_held(resource, look)
    return held


def _origins(resource: Json, resources: Mapping[str, Json | None]) -> list[Json]:
    """The referrals and episodes `resource` reveals, as `resources` holds them, followed through."""
    return origins_held(resource, lambda kind, id_: resources.get(f"{kind}/{id_}"))


def _other_content(body: Any, versioned: str, current: Json) -> str | None:
    """Why the resource decided again is not the content disclosed (naming both), or None if it is."""
    now_version = str((current.get("meta") or {}).get("versionId", "?"))
    if body.get("channel") == "export":  # decided on the event's copy, its supplier the event's sender
        copy = "the export decided on the event's own copy, which the record does not keep"
        return f"decided on version {now_version}: {copy}"
    then_version = versioned.split("/_history/")[1] if "/_history/" in versioned else None
    if then_version is None:  # a delivery of an event's content the record made no version of
        return f"decided on version {now_version}: the content disclosed was no record version"
    if now_version != then_version:
        return f"decided on version {now_version}: version {then_version} was disclosed"
    return None


def _today(then: str, moved: bool, decision: Decision, elsewhere: str | None) -> tuple[str, str]:
    """Today's answer and its basis. On other content than was disclosed (`elsewhere` says which), a
    different answer is no evidence of a change of policy ("cannot tell"), unless the policy is
    seen to have `moved` (the consents it rests on differ, or the agreements then would decide the
    content as it stands otherwise than today's)."""
    basis = ", ".join([*decision.agreements, *decision.consents]) or "; ".join(decision.reasons)
    if elsewhere is None:
        return decision.outcome, basis
    if _shown(then) == _shown(decision.outcome) or moved:
        return decision.outcome, f"{basis} ({elsewhere})"
    return (
        CANNOT_TELL,
        f"today {decision.outcome} on {basis}, but {elsewhere}: the difference may be the content's, not the policy's",
    )


# the reason a break-glass read is decided again with (the ledger keeps that an emergency was asserted)
_EMERGENCY = "the emergency asserted then"


def as_of(history: Sequence[tuple[datetime, Any]], at: datetime) -> list[Any]:
    """The agreements current at `at`: each one's newest version loaded by then."""
    current: dict[str, Any] = {}
    for loaded, agreement in sorted(history, key=lambda h: (h[1].id, h[1].version)):
        if loaded <= at:
            current[agreement.id] = agreement
    return list(current.values())


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
