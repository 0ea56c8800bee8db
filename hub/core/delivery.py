"""Which subscription gets what of an event: scope, per-resource policy decisions, content level,
and each decision as the disclosure ledger names it (the record versions the event wrote); and
whom each person is registered with, as the events say in log order, for the `registered` scope.

Pure: the caller supplies the decision function (hub.core.policy.decide with the current agreements
and the person's consents) so the same rules hold on the Kafka topic and at every webhook attempt.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from hub.core.fhir_read import requester_of
from hub.core.huddle import agenda_refusal
from hub.core.identity import MAX_HOPS
from hub.core.ledger import Disclosure, resource_ref
from hub.core.pic_summary import delivered_document
from hub.core.policy import Decision, person_of
from hub.core.record_content import MERGED, REMOVED_URL, replaced_by
from schemas.events.coordination import PATIENT_STUB_EVENTS, PIC_SUMMARY_SENT, REGISTER_ROW
from schemas.subscriptions import Subscription

Json = dict[str, Any]
ODS_SYSTEM = "https://fhir.nhs.uk/Id/ods-organization-code"
EVENT_TAG = "https://carehub.invalid/CodeSystem/event-type"


@dataclass(frozen=True)
class Plan:
    """What to deliver (None when nothing may go) and every decision taken on the way."""

    body: Json | None
    permitted: list[Json]
    judged: list[tuple[Json, Decision]]


def registered_practices(resources: Sequence[Json]) -> set[str]:
    """ODS codes of the GP practices the event's Patients are registered with (PD1-3, by reference to
    an Organization in the event or by ODS identifier)."""
    organisations = _ods_codes(resources)
    codes: set[str] = set()
    for patient in (r for r in resources if r.get("resourceType") == "Patient"):
        codes |= _practices_of(patient, organisations)
    return codes


def _ods_codes(resources: Sequence[Json]) -> dict[str, set[str]]:
    return {
        f"Organization/{r['id']}": {
            str(i["value"]) for i in _dicts(r.get("identifier")) if i.get("system") == ODS_SYSTEM and i.get("value")
        }
        for r in resources
        if r.get("resourceType") == "Organization"
    }


def _practices_of(patient: Json, organisations: Mapping[str, set[str]]) -> set[str]:
    """The ODS codes a Patient's generalPractitioner gives (entries of another shape give none)."""
    codes: set[str] = set()
    for gp in _dicts(patient.get("generalPractitioner")):
        codes |= {c for c in organisations.get(str(gp.get("reference")), set()) if c}
        ident = gp.get("identifier")
        if isinstance(ident, dict) and ident.get("system") == ODS_SYSTEM and ident.get("value"):
            codes.add(str(ident["value"]))
    return codes


def _dicts(items: Any) -> list[Json]:
    """The objects of a JSON list (none of anything else): the record keeps what senders said."""
    return [i for i in items if isinstance(i, dict)] if isinstance(items, list) else []


@dataclass(frozen=True)
class Registration:
    """Whom a person is registered with, as the latest event to name their practice said it (PD1-3;
    none: their registration deleted, `""`), or (`merged_into`) that they were merged into someone
    (A40), whose registration is theirs from then on: never their own, as it stood before."""

    practices: frozenset[str]
    event_time: datetime
    event_id: str
    merged_into: str | None = None
    # said by a practice's register row (registrations_in; not kept by the store: what one event said)
    row: bool = dataclasses.field(default=False, compare=False)


def registrations_in(
    event_type: str, event_time: datetime, event_id: str, resources: Sequence[Json]
) -> dict[str, Registration]:
    """What an event says of each person's GP registration, by person key: a Patient that names its
    practice, or says it was deleted, a hospital's or a practice's register row's (its word that the
    person is registered there, as the record takes it: hub.core.record, "practice"; the newer by
    event time wins, note_registrations). A Patient that says neither (an A03 without PD1) says
    nothing of it, nor does one merged away, nor one a referral or PIC summary carries: those only
    introduce a person to the record, and the practice a referrer typed never decides where a
    hospital's discharges go."""
    if event_type in PATIENT_STUB_EVENTS and event_type != REGISTER_ROW.type:
        return {}
    organisations = _ods_codes(resources)
    said: dict[str, Registration] = {}
    for patient in (r for r in resources if r.get("resourceType") == "Patient"):
        if replaced_by(patient):
            continue
        codes = _practices_of(patient, organisations)
        deleted = any(
            e.get("url") == REMOVED_URL and e.get("valueCode") == "generalPractitioner"
            for e in _dicts(patient.get("extension"))
        )
        if codes or deleted:
            row = event_type == REGISTER_ROW.type
            said[str(patient.get("id"))] = Registration(frozenset(codes), event_time, event_id, row=row)
    return said


def merges_in(event_type: str, resources: Sequence[Json]) -> dict[str, str]:
    """A merge's retired person keys and the person each now is (their replaced-by link)."""
    if event_type != MERGED:
        return {}
    return {str(r.get("id")): to for r in resources if r.get("resourceType") == "Patient" and (to := replaced_by(r))}


def note_registrations(
    held: dict[str, Registration],
    said: Mapping[str, Registration],
    merged: Mapping[str, str] | None = None,
    merge: tuple[datetime, str] | None = None,
    *,
    versions: Mapping[str, str] | None = None,
) -> set[str]:
    """Take what an event says into `held`, in log order (`said`: registrations_in; `merged`: a
    merge's retired people and their survivors, merges_in, with `merge`, its time and id); the people
    whose registration changed. The newer word wins by event time, as the record dates it (an update
    sent late that is older than what is held changes nothing): a hospital naming the practices held
    again is dated by the Patient version it wrote (`versions`: versions_written of the event, once
    the record has applied it), so, where that is not known, it leaves the date held, as the record
    does for a Patient said again as it holds it; of two register rows of one event time the greater
    ODS code stands. A register row for someone merged away is about their survivor (hub.core.record,
    "practice"). A person merged away is held as merged into their survivor, whatever is said of them
    later; the survivor is active again if they had been merged away themselves (a merge reversed)."""
    changed: set[str] = set()
    for person, new in said.items():
        if new.row:
            person = _survivor(held, person)
        old = held.get(person)
        if old is None or _newer(old, new, person, versions, merged=bool(merged)):
            new = dataclasses.replace(new, merged_into=old.merged_into if old else None)
            if old != new:
                held[person] = new
                changed.add(person)
    if merged:
        if merge is None:
            raise ValueError("a merge's time and event id are needed with the people it merged")
        at, event_id = merge
        for retired, survivor in merged.items():
            # (dated no earlier than what it replaces: the newer row wins where two workers meet)
            old = held.get(retired)
            when = max(at, old.event_time) if old else at
            new = Registration(old.practices if old else frozenset(), when, event_id, merged_into=survivor)
            if old != new:
                held[retired] = new
                changed.add(retired)
            kept = held.get(survivor)
            if kept is not None and kept.merged_into is not None:
                held[survivor] = Registration(kept.practices, max(at, kept.event_time), event_id)
                changed.add(survivor)
    return changed


def _newer(
    old: Registration, new: Registration, person: str, versions: Mapping[str, str] | None, *, merged: bool = False
) -> bool:
    """Whether `new` is the newer word on a person's practice than `old`, as the record takes it (a
    merge's survivor's Patient is a version on the record: the merge changes who they are)."""
    if new.event_time < old.event_time:
        return False
    if new.row:  # (two rows of one time: the greater ODS code, whichever was read first)
        return new.event_time > old.event_time or min(new.practices, default="") >= min(old.practices, default="")
    if new.practices and new.practices == old.practices and old.merged_into is None and not (old.row or merged):
        return versions is not None and f"Patient/{person}" in versions  # said again: only a version re-dates it
    return True


def _survivor(held: Mapping[str, Registration], person: str) -> str:
    """Whom a register row for `person` is about: them, or, merged away, their survivor (the end of
    the chain of merges held; themselves where merges go round)."""
    chain = merged_chain(held, person)
    return chain[-1] if len(chain) <= MAX_HOPS and chain[-1] not in chain[:-1] else person


def merged_chain(held: Mapping[str, Registration], person: str) -> list[str]:
    """`person`, then each person they were merged into, as far as `held` says (through merges of
    merges, at most MAX_HOPS; a merge that goes round ends the chain at the first repeat)."""
    chain = [person]
    for _ in range(MAX_HOPS):
        found = held.get(chain[-1])
        if found is None or found.merged_into is None:
            break
        chain.append(found.merged_into)
        if chain[-1] in chain[:-1]:
            break
    return chain


def registered_as(held: Mapping[str, Registration], person: str) -> Registration | None:
    """A person's registration as it stands: their own, or, for someone merged away, their survivor's
    (through merges of merges; None where a survivor has none held, or merges go round)."""
    chain = merged_chain(held, person)
    found = held.get(chain[-1]) if len(chain) <= MAX_HOPS else None
    return found if found is not None and found.merged_into is None else None


def addressed_to(resources: Sequence[Json]) -> set[str]:
    """Organisation codes the event's referrals are addressed to (ServiceRequest.performer identifiers)."""
    return {
        str((p.get("identifier") or {}).get("value"))
        for r in resources
        if r.get("resourceType") == "ServiceRequest"
        for p in r.get("performer") or []
        if (p.get("identifier") or {}).get("value")
    }


def requested_by(resources: Sequence[Json]) -> set[str]:
    """Organisation codes that made the event's referrals (ServiceRequest.requester identifiers)."""
    return {requester_of(r) for r in resources if r.get("resourceType") == "ServiceRequest"} - {""}


def in_scope(scope: str, org: str, resources: Sequence[Json], registered: Collection[str] = ()) -> bool:
    """registered: only people registered with `org`, as the event says (PD1-3), or for a person it
    names no practice for, as their registration stands (`registered`: an A03 without PD1 still
    reaches their practice); addressed: referrals addressed to `org`; requested: referrals `org`
    made (their acceptance, decline, withdrawal, outcome); all-permitted: anyone (the policy still
    decides, in every case)."""
    if scope == "addressed":
        return org in addressed_to(resources)
    if scope == "requested":
        return org.upper() in requested_by(resources)
    return scope == "all-permitted" or org in registered or org in registered_practices(resources)


def huddle_bounded(
    org: str, decide: Callable[[Json], Decision], service: str | None = None
) -> Callable[[Json], Decision]:
    """`decide` for subscriber `org`, but a published huddle agenda (huddle.agenda's List) for a practice
    other than `org`, where `org` is a GP practice (hub.core.huddle.agenda_refusal; `service`, the
    coordination service's code, is none), is denied whatever the policy: it lists that practice's
    people, as a read of it is refused (hub.web.views.decided_agenda)."""

    def decided(resource: Json) -> Decision:
        reason = agenda_refusal(org, resource, service)
        return decide(resource) if reason is None else Decision("deny", (reason,))

    return decided


def plan(
    *,
    subscription_id: str,
    content: str,
    event: Json,
    resources: Sequence[Json],
    decide: Callable[[Json], Decision],
) -> Plan:
    """Decide each resource and build the delivery body at the subscription's content level."""
    judged = [(r, decide(r)) for r in resources]
    permitted = [r for r, d in judged if d.permitted]
    if not any(r.get("resourceType") != "Organization" for r in permitted):
        return Plan(None, [], judged)
    return Plan(body(subscription_id, content, event, permitted), permitted, judged)


def versions_written(provenance: Json | None) -> dict[str, str]:
    """The record version, by "Type/id", of each resource an event wrote, from the Provenance the
    record leaves for the event (hub.core.record: it has the event's id and names every version the
    event wrote; a later merge moves it to the survivor, never changes what it names), so the same
    whenever it is read. A resource the event carried but the record did not write from it (the
    record held that already, or newer) has none: what was delivered of it is no record version."""
    found: dict[str, str] = {}
    for target in (provenance or {}).get("target") or []:
        named, _, version = str((target or {}).get("reference", "")).partition("/_history/")
        if version:
            found[named] = version
    return found


def body(subscription_id: str, content: str, event: Json, permitted: Sequence[Json]) -> Json:
    """A FHIR `collection` Bundle tagged with the event; entries per the content level. A PIC summary
    at `full-resource` is a `document` Bundle instead (hub.core.pic_summary.delivered_document) where
    the Composition and its Patient were both permitted."""
    bundle: Json = {
        "resourceType": "Bundle",
        "id": event["id"],
        "type": "collection",
        "timestamp": event["time"],
        "meta": {
            "tag": [{"system": EVENT_TAG, "code": event["type"]}],
            "source": f"urn:carehub:subscription:{subscription_id}",
        },
    }
    if content == "id-only":
        bundle["entry"] = [{"fullUrl": f"{r['resourceType']}/{r['id']}"} for r in permitted]
    elif content == "full-resource" and event["type"] == PIC_SUMMARY_SENT.type:
        # the PIC summary: a FHIR document where the Composition and its Patient went, else as any other
        document = delivered_document(bundle, permitted)
        bundle = document or bundle | {
            "entry": [{"fullUrl": f"{r['resourceType']}/{r['id']}", "resource": r} for r in permitted]
        }
    elif content == "full-resource":
        bundle["entry"] = [{"fullUrl": f"{r['resourceType']}/{r['id']}", "resource": r} for r in permitted]
    return bundle


def ledger_entries(
    sub: Subscription,
    channel: str,
    judged: Sequence[tuple[Json, Decision]],
    at: datetime,
    *,
    event: str,
    versions: Mapping[str, str],
    attempt: str | None = None,
) -> list[Disclosure]:
    """One entry per person and decision for a delivery attempt of `event`'s content; each resource
    named by the record version the event wrote of it (`versions`, by "Type/id"), if any. `attempt`
    names a try to send (webhook, mailbox), whose result_entries follow once it is known."""
    groups: dict[tuple[str | None, Decision], list[str]] = {}
    for resource, decision in judged:
        if resource.get("resourceType") == "Organization":
            continue
        version = versions.get(f"{resource.get('resourceType')}/{resource.get('id')}")
        groups.setdefault((person_of(resource), decision), []).append(resource_ref(resource, version))
    return [
        Disclosure(
            at=at,
            recipient_org=sub.org,
            recipient_user=f"subscription:{sub.id}",
            channel=channel,
            person_key=person,
            resources=tuple(refs),
            decision=decision.outcome,
            reasons=decision.reasons,
            basis={
                "purpose": sub.purpose,
                "agreements": list(decision.agreements),
                "consents": list(decision.consents),
            },
            event=event,
            attempt=attempt,
        )
        for (person, decision), refs in groups.items()
    ]


def result_entries(attempted: Sequence[Disclosure], outcome: str, detail: str, at: datetime) -> list[Disclosure]:
    """What an attempt to send came to (hub.core.ledger's DISCLOSED, POSSIBLY_DISCLOSED or
    NOT_DISCLOSED, and why): one entry per person its permits were about, so a subject-access
    request finds it beside the attempt. It names no resources (the attempt's entries do), so the
    ledger's counts of resources decided are unchanged by it."""
    seen: dict[str | None, Disclosure] = {}
    for entry in attempted:
        if entry.attempt is not None and entry.decision in ("permit", "break-glass"):
            seen.setdefault(entry.person_key, entry)
    return [
        Disclosure(
            at=at,
            recipient_org=entry.recipient_org,
            recipient_user=entry.recipient_user,
            channel=entry.channel,
            person_key=entry.person_key,
            resources=(),
            decision=entry.decision,
            reasons=(detail,) if detail else (),
            event=entry.event,
            attempt=entry.attempt,
            outcome=outcome,
        )
        for entry in seen.values()
    ]
