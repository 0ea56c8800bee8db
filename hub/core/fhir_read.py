"""What the coordination rules and the KPIs read out of FHIR resources held as plain dicts: lookups
that never raise on a missing or empty element."""

from __future__ import annotations

from typing import Any

from hub.core.ports import Json
from schemas.events import coordination as co

ODS_SYSTEM = "https://fhir.nhs.uk/Id/ods-organization-code"


def of_kind(resources: list[Json], kind: str) -> list[Json]:
    """The resources of one type, in order."""
    return [r for r in resources if r.get("resourceType") == kind]


def extension(resource: Json, url: str, value: str) -> Any:
    """The `value` element (valueCode, ...) of the resource's first extension with this url, if any."""
    for ext in resource.get("extension") or []:
        if ext.get("url") == url:
            return ext.get(value)
    return None


def contact_kind(encounter: Json) -> str | None:
    """The coordination contact kind an Encounter records (first-contact, face-to-face, ...), if any."""
    for concept in encounter.get("type") or []:
        for coding in concept.get("coding") or []:
            if coding.get("system") == co.CONTACT_SYSTEM:
                return str(coding.get("code"))
    return None


def referral_source(request: Json) -> str | None:
    """A referral's source (UK Core SourceOfServiceRequest, CareHub's code system), if it says one."""
    concept = extension(request, co.SOURCE_EXTENSION, "valueCodeableConcept")
    if isinstance(concept, dict):
        for coding in concept.get("coding") or []:
            if coding.get("system") == co.REFERRAL_SOURCE_SYSTEM:
                return str(coding.get("code"))
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
