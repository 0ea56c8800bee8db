"""What the coordination rules and the KPIs read out of FHIR resources held as plain dicts: lookups
that never raise on a missing or empty element."""

from __future__ import annotations

import re
from typing import Any

from hub.core.ports import Json
from schemas.events import coordination as co

ODS_SYSTEM = "https://fhir.nhs.uk/Id/ods-organization-code"
REQUEST_ENDED = frozenset({"revoked", "completed", "entered-in-error"})  # FHIR request-status: over, one way or another


def bundle_resources(payload: Json) -> list[Json]:
    """The resources of an event payload: a Bundle's entries, or the one resource it is (never raises)."""
    if payload.get("resourceType") == "Bundle":
        entries = payload.get("entry")
        return [
            e["resource"]
            for e in (entries if isinstance(entries, list) else [])
            if isinstance(e, dict) and isinstance(e.get("resource"), dict)
        ]
    return [payload]


def of_kind(resources: list[Json], kind: str) -> list[Json]:
    """The resources of one type, in order."""
    return [r for r in resources if r.get("resourceType") == kind]


def extension(resource: Json, url: str, value: str) -> Any:
    """The `value` element (valueCode, ...) of the resource's first extension with this url, if any."""
    for ext in resource.get("extension") or []:
        if ext.get("url") == url:
            return ext.get(value)
    return None


def outcome_of(request: Json) -> str | None:
    """What a referral's ServiceRequest says became of it (its outcome extension), if anything."""
    said = extension(request, co.OUTCOME_EXTENSION, "valueCode")
    return str(said) if said else None


def contact_kind(encounter: Json) -> str | None:
    """The coordination contact kind an Encounter records (first-contact, face-to-face, ...), if any."""
    for concept in encounter.get("type") or []:
        for coding in concept.get("coding") or []:
            if coding.get("system") == co.CONTACT_SYSTEM:
                return str(coding.get("code"))
    return None


ODS_CODE = re.compile(r"[A-Z0-9]{3,10}")  # an ODS code as CareHub accepts one (tokens, the API, the engine)


def referral_source(request: Json) -> str | None:
    """A referral's source (UK Core SourceOfServiceRequest, CareHub's code system), if it says one."""
    concept = extension(request, co.SOURCE_EXTENSION, "valueCodeableConcept")
    if isinstance(concept, dict):
        for coding in concept.get("coding") or []:
            if coding.get("system") == co.REFERRAL_SOURCE_SYSTEM and isinstance(coding.get("code"), str):
                return str(coding["code"])
    return None


def ods(identifiers: Any) -> str | None:
    """The ODS code among these identifiers, if any."""
    for ident in identifiers or []:
        if isinstance(ident, dict) and ident.get("system") == ODS_SYSTEM and ident.get("value"):
            return str(ident["value"])
    return None


def identifier_value(reference: Any) -> Any:
    """The identifier value a logical Reference carries (a practice, a coordinator), if any."""
    return ((reference or {}).get("identifier") or {}).get("value")


def register_measures(resources: list[Json]) -> dict[str, int]:
    """An at-risk register row's measures (MEASURE_SYSTEM code -> valueInteger)."""
    found: dict[str, int] = {}
    for obs in of_kind(resources, "Observation"):
        for coding in (obs.get("code") or {}).get("coding") or []:
            if coding.get("system") == co.MEASURE_SYSTEM and isinstance(obs.get("valueInteger"), int):
                found[str(coding.get("code"))] = int(obs["valueInteger"])
    return found


def addressed_to(request: Json, org: str) -> bool:
    """Whether a referral is addressed to this organisation (or, naming no performer, to anyone)."""
    performers = request.get("performer") or []
    if not performers:
        return True  # a referral addressed to nobody in particular comes to the coordination service
    return any((p.get("identifier") or {}).get("value") == org for p in performers)


def requester_of(referral: Json) -> str:
    """The code of the organisation that sent the referral (ODS or local-authority), upper-cased."""
    identifier = (referral.get("requester") or {}).get("identifier") or {}
    return str(identifier.get("value") or "").strip().upper()


def care_manager(episode: Json) -> str | None:
    """The coordinator an EpisodeOfCare names as its care manager, if any."""
    value = identifier_value(episode.get("careManager"))
    return str(value) if value else None


def referrals_of(episode: Json) -> set[str]:
    """The referrals (`ServiceRequest/<id>`) an EpisodeOfCare says it was opened for."""
    named = episode.get("referralRequest")
    if not isinstance(named, list):
        return set()
    return {str(r["reference"]) for r in named if isinstance(r, dict) and r.get("reference")}


def focus_of(resources: list[Json]) -> str | None:
    """What a task opened by these resources is about: the first referral, episode or encounter."""
    for kind in ("ServiceRequest", "EpisodeOfCare", "Encounter"):
        for resource in of_kind(resources, kind):
            return f"{kind}/{resource['id']}"
    return None
