"""What a write to the record makes of what an event says (hub.core.record's content rules): an
Encounter update overlays the stay (a class unknown keeps the one held), a referral and its outcomes
overlay each other in either order, security labels are kept as a set, a cancelled discharge reopens
the stay, a merged-away Patient stays retired (the registered practice is hub.core.record_practice's);
and whether two contents say the same."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from hub.core.ports import Json, RecordEvent, StoredResource
from schemas.events.coordination import OUTCOME_EXTENSION, REFERRAL_OUTCOME, REFERRAL_RECEIVED

MERGED = "uk.nhs.carehub.patient.merged.v1"
NHS_NUMBER_SYSTEM = "https://fhir.nhs.uk/Id/nhs-number"
# what a sender deleted (HL7 v2's explicit null `""`): a Patient element named here is removed from what
# the record holds, where one merely left out is kept (an A02 without PD1 does not unregister anyone)
REMOVED_URL = "https://carehub.invalid/StructureDefinition/removed-element"
DISCHARGE_CANCELLED = "uk.nhs.carehub.encounter.discharge-cancelled.v1"
VERIFICATION_URL = "https://fhir.hl7.org.uk/StructureDefinition/Extension-UKCore-NHSNumberVerificationStatus"
VERIFICATION_REMOVED = "identifier:nhsNumber.extension:nhsNumberVerificationStatus"  # (a REMOVED_URL code)
DISCHARGE_METHOD_URL = "https://fhir.hl7.org.uk/StructureDefinition/Extension-UKCore-DischargeMethod"
# Encounter.class is 1..1: a stay whose class no one said (HL7 v2: PV1-2 empty) is this, "unknown"
UNKNOWN_CLASS = {"system": "http://terminology.hl7.org/CodeSystem/v2-0004", "code": "U"}
# what a write returns when it says nothing new (compared by identity: `is UNCHANGED`)
UNCHANGED = StoredResource("", "", None, 0, datetime.min.replace(tzinfo=UTC), "", {})


def replaced_by(patient: Json) -> str | None:
    """The person key a merged-away Patient now points at (its replaced-by link), if any."""
    links = patient.get("link")
    for link in links if isinstance(links, list) else ():
        if isinstance(link, dict) and link.get("type") == "replaced-by":
            other = link.get("other")
            ref = other.get("reference") if isinstance(other, dict) else None
            if isinstance(ref, str) and ref.startswith("Patient/"):
                return ref.removeprefix("Patient/")
    return None


def same_content(incoming: Json, stored: Json) -> bool:
    """Equal apart from meta (but for its security labels), without copying the stored side
    (compared in C: a hot path)."""
    meta = incoming.get("meta")
    if meta is not None:
        incoming = {k: v for k, v in incoming.items() if k != "meta"}
    said, kept = (meta or {}).get("security"), (stored.get("meta") or {}).get("security")
    if said != kept and labels_of(meta) != labels_of(stored.get("meta")):
        return False  # labels compared as a set: stored ones are in a fixed order, sent ones in any
    return len(incoming) == len(stored) - ("meta" in stored) and incoming.items() <= stored.items()


def next_content(event: RecordEvent, incoming: Json, current: StoredResource | None) -> Json:
    content = dict(incoming)
    labels = labels_of(content.pop("meta", None))
    if current is None:
        if content["resourceType"] == "Patient" and "extension" in content:  # nothing held to delete from
            content["extension"] = _own_extensions(content)
            if not content["extension"]:
                del content["extension"]
        return labelled(_cancel_discharge(event, content), labels)
    before = current.content
    kind = content["resourceType"]
    outcome = kind == "ServiceRequest" and event.type == REFERRAL_OUTCOME.type
    after_outcome = kind == "ServiceRequest" and event.type == REFERRAL_RECEIVED.type and has_outcome(before)
    if kind == "Encounter" or outcome or after_outcome:
        # an overlay keeps what was said before, sensitivity labels included: an update that does
        # not repeat a label never makes a sensitive record ordinary
        labels = labels_of(before.get("meta")) | labels
    if kind == "Encounter":
        merged = {k: v for k, v in before.items() if k != "meta"}
        merged.update(content)
        if content.get("status") == "unknown" and before.get("status"):
            merged["status"] = before["status"]
        if content.get("class") == UNKNOWN_CLASS and before.get("class"):
            merged["class"] = before["class"]  # unknown is no news: an inpatient stay stays one
        if "period" in content and "period" in before:
            merged["period"] = {**before["period"], **content["period"]}
        if "hospitalization" in content and "extension" not in content:
            _drop_extension(merged, DISCHARGE_METHOD_URL)  # a discharge said again says how, or nothing
        content = merged
    elif outcome:
        # an outcome update knows the referral by id: it says what became of it, and never erases the
        # reasons, dates, addressee or referrer (an outcome row carries the referral's id, not its content)
        content = _with_outcome(before, content)
    elif after_outcome:
        # the referral after its outcome, or corrected after it: what became of it stays (in either
        # order the same ServiceRequest, as _with_outcome is the same overlay)
        content = _with_outcome(content, before)
    elif kind == "Patient":
        if (before.get("meta") or {}).get("source") == event.source:  # (another's: see _overlaid_patient)
            content = _overlaid_patient(before, content)
        else:  # another sender's replaces it whole: its deletions are done, not kept
            _death_kept(before, content)
            _drop_extension(content, REMOVED_URL)
        retired_to = replaced_by(before)
        if retired_to and event.type != MERGED:  # late news about a merged-away identity
            content["active"] = False
            content["link"] = before["link"]
        elif "link" not in content and before.get("link"):
            content["link"] = before["link"]
    return labelled(_cancel_discharge(event, content), labels)


def _overlaid_patient(before: Json, said: Json) -> Json:
    """A Patient as its sender said it again, over what the record holds from that same sender: an
    element it left out is kept (HL7 v2: an empty field is no change, and a transfer or discharge often
    carries part of PID and no PD1); one it deleted (REMOVED_URL, from `""`) is removed. Identifiers by
    system: those it gives replace those of the same system, but for numbers it retired (use `old`, an
    A40 within one person) which stay. Another sender's Patient replaces it whole, as before: what a
    Patient says is its latest sender's (meta.source), which the agreements decide on, so laying one
    sender's over another's would make the second the supplier of what the first said."""
    removed = {str(e.get("valueCode")) for e in said.get("extension") or [] if e.get("url") == REMOVED_URL}
    # (`active` is the merge rules' to say, never kept from before: a merge reversed makes its survivor
    # active; nor a deceased[x] or multipleBirth[x] beside the one said: one of each choice, FHIR says)
    chosen = tuple(p for p in ("deceased", "multipleBirth") if any(k.startswith(p) for k in said))
    dropped = {"meta", "active"} | {k for k in before if chosen and k.startswith(chosen)}
    merged = {k: v for k, v in before.items() if k not in dropped} | said
    merged["extension"] = _own_extensions(said) or _own_extensions(before)
    if not merged["extension"]:
        del merged["extension"]
    systems = {i.get("system") for i in said.get("identifier") or []}
    given = {(i.get("system"), i.get("value")) for i in said.get("identifier") or []}
    kept = [
        i
        for i in before.get("identifier") or []
        if i.get("system") not in systems or (i.get("use") == "old" and (i.get("system"), i.get("value")) not in given)
    ]
    if kept:  # (the NHS number first, as UK Core has it)
        both = [*(said.get("identifier") or []), *kept]
        merged["identifier"] = sorted(both, key=lambda i: i.get("system") != NHS_NUMBER_SYSTEM)
    if VERIFICATION_REMOVED not in removed and "identifier" in merged:
        merged["identifier"] = _verification_kept(before, merged["identifier"])
    for element in removed:
        merged.pop(element, None)
    return merged


def _verification_kept(before: Json, identifiers: list[Json]) -> list[Json]:
    """The NHS number said again without a verification status (HL7 v2: PID-32 left empty) keeps the
    status held for that same number; a status said, or another number, is the sender's word. (An
    identifier of another shape than UK Core's is left as it is, never a reason to stop.)"""
    held = {i["value"]: _verification_of(i) for i in _nhs_numbers(before.get("identifier"))}
    return [
        {**i, "extension": [*i.get("extension", []), *held[i["value"]]]}
        if i in _nhs_numbers([i]) and held.get(i["value"]) and not _verification_of(i)
        else i
        for i in identifiers
    ]


def _nhs_numbers(identifiers: Any) -> list[Json]:
    """The NHS number identifiers among these whose value is text and extension a list, if any."""
    return [
        i
        for i in (identifiers if isinstance(identifiers, list) else [])
        if isinstance(i, dict)
        and i.get("system") == NHS_NUMBER_SYSTEM
        and isinstance(i.get("value"), str)
        and isinstance(i.get("extension", []), list)
    ]


def _verification_of(identifier: Json) -> list[Json]:
    return [e for e in identifier.get("extension", []) if isinstance(e, dict) and e.get("url") == VERIFICATION_URL]


def _death_kept(before: Json, said: Json) -> None:
    """Another sender's Patient that says nothing of a death the record holds keeps it (a second
    trust's PAS may not know of it yet): a death is never undone by silence, only by a Patient saying
    the person is alive (deceasedBoolean false) or deleting it (HL7 v2 `""`). The record, the rules
    engine (hub.core.deaths) and the KPIs then agree whoever sent the silent message."""
    held = {k for k in before if k.startswith("deceased")}  # (deleting what is not held deletes nothing)
    if any(k.startswith("deceased") for k in said) or removed_elements(said) & held:
        return
    for element in ("deceasedDateTime", "deceasedBoolean"):
        if element in before:
            said[element] = before[element]


def death_carried(held: Json, said: Json) -> Json | None:
    """The Patient `held` (a survivor's) with what `said` (a Patient under a key merged into them, or
    what it held) says of a death, as a Patient of the person's own saying it would leave it: its
    deceased[x] in place of the one held (one is ever held), or the held one it deletes (HL7 v2 `""`)
    removed. None when it says nothing of a death: the rest of what it says is not the survivor's."""
    words = {k: v for k, v in said.items() if k.startswith("deceased")}
    deleted = removed_elements(said) & {k for k in held if k.startswith("deceased")}
    if not words and not deleted:
        return None
    content = {k: v for k, v in held.items() if k != "meta" and k not in deleted}
    if words:
        content = {k: v for k, v in content.items() if not k.startswith("deceased")} | words
    return labelled(content, labels_of(held.get("meta")))


def removed_elements(resource: Json) -> set[str]:
    """The elements a sender deleted (HL7 v2 `""`: REMOVED_URL extensions), extensions of odd shape aside."""
    extensions = resource.get("extension")
    return {
        str(e.get("valueCode"))
        for e in (extensions if isinstance(extensions, list) else [])
        if isinstance(e, dict) and e.get("url") == REMOVED_URL
    }


def _drop_extension(content: Json, url: str) -> None:
    extensions = content.get("extension")
    if not isinstance(extensions, list):
        return
    kept = [e for e in extensions if not (isinstance(e, dict) and e.get("url") == url)]
    if kept:
        content["extension"] = kept
    else:
        content.pop("extension", None)


def _own_extensions(patient: Json) -> list[Json]:
    """A Patient's extensions but the deletions a sender asked for (REMOVED_URL: done, not kept)."""
    return [e for e in patient.get("extension") or [] if e.get("url") != REMOVED_URL]


def has_outcome(request: Json) -> bool:
    return any(e.get("url") == OUTCOME_EXTENSION for e in request.get("extension") or [])


def _with_outcome(referral: Json, said: Json) -> Json:
    """What the referral says, with what became of it from `said` (an outcome, or a ServiceRequest an
    outcome wrote): its status, its outcome extension (else the referral's), and its notes after the
    referral's own. Applied outcome on referral or referral on outcome, the result is the same."""
    merged = {k: v for k, v in referral.items() if k != "meta"}
    if "status" in said:
        merged["status"] = said["status"]
    notes = list(referral.get("note") or [])
    notes += [n for n in said.get("note") or [] if n not in notes]
    if notes:
        merged["note"] = notes
    outcomes = [e for e in said.get("extension") or [] if e.get("url") == OUTCOME_EXTENSION]
    extensions = referral.get("extension") or []
    if outcomes:
        extensions = [*(e for e in extensions if e.get("url") != OUTCOME_EXTENSION), *outcomes]
    if extensions:
        merged["extension"] = extensions
    return merged


def labels_of(meta: Json | None) -> dict[tuple[str, str], Json]:
    """A resource's security labels (meta.security), by (system, code)."""
    found = (meta or {}).get("security") or []
    return {(str(c.get("system")), str(c.get("code"))): c for c in found if isinstance(c, dict)}


def labelled(content: Json, labels: dict[tuple[str, str], Json]) -> Json:
    """Content whose meta (stamped later, by _stamp) is to carry these security labels."""
    if labels:
        content["meta"] = {"security": [labels[k] for k in sorted(labels)]}
    return content


def _cancel_discharge(event: RecordEvent, content: Json) -> Json:
    if event.type != DISCHARGE_CANCELLED or content.get("resourceType") != "Encounter":
        return content
    content["status"] = "in-progress"
    period = {k: v for k, v in (content.get("period") or {}).items() if k != "end"}
    if period:
        content["period"] = period
    else:
        content.pop("period", None)
    ended = ("dischargeDisposition", "destination")
    stay = {k: v for k, v in (content.get("hospitalization") or {}).items() if k not in ended}
    if stay:
        content["hospitalization"] = stay
    else:
        content.pop("hospitalization", None)
    _drop_extension(content, DISCHARGE_METHOD_URL)  # (how a discharge that did not happen was made goes with it)
    return content


def stamp(
    event: RecordEvent,
    content: Json,
    kind: str,
    rid: str,
    key: str | None,
    current: StoredResource | None,
    content_time: datetime,
    when: str,
) -> StoredResource:
    version = (current.version_id if current else 0) + 1
    labels = (content.get("meta") or {}).get("security")
    content["meta"] = {"versionId": str(version), "lastUpdated": when, "source": event.source}
    if labels:
        content["meta"]["security"] = labels
    return StoredResource(kind, rid, key, version, content_time, event.id, content)


def retimed(
    current: StoredResource, event_time: datetime, content: Json, source_event_id: str | None = None
) -> StoredResource:
    # what dataclasses.replace does, without its per-call introspection (a hot path in replay)
    return StoredResource(
        current.resource_type,
        current.id,
        current.person_key,
        current.version_id,
        event_time,
        current.source_event_id if source_event_id is None else source_event_id,
        content,
    )
