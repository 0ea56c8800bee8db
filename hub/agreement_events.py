"""An agreement version as an event on the log: a FHIR Contract carrying the document."""

from __future__ import annotations

import base64
from datetime import datetime

import orjson

from hub.core.identity import stable_id
from schemas.agreements import Agreement
from schemas.envelope import Envelope
from schemas.events.agreement import AGREEMENT_LOADED

SOURCE = "urn:carehub:agreements"


def contract(agreement: Agreement, loaded_at: datetime) -> dict[str, object]:
    """The agreement version as a FHIR R4 Contract."""
    document = orjson.dumps(agreement.model_dump(mode="json"), option=orjson.OPT_SORT_KEYS)
    applies = {"start": agreement.valid_from.isoformat()}
    if agreement.valid_to:
        applies["end"] = agreement.valid_to.isoformat()
    return {
        "resourceType": "Contract",
        "id": f"{agreement.id}-v{agreement.version}",
        "identifier": [{"system": "https://carehub.invalid/Id/sharing-agreement", "value": agreement.id}],
        "version": str(agreement.version),
        "status": "executed",
        "issued": loaded_at.isoformat(),
        "applies": applies,
        "title": agreement.title,
        "legallyBindingAttachment": {
            "contentType": "application/json",
            "data": base64.b64encode(document).decode(),
            "title": f"{agreement.id} version {agreement.version}",
        },
    }


def envelope(agreement: Agreement, loaded_at: datetime) -> Envelope:
    """The AGREEMENT_LOADED event for one version (the same version loaded twice is one event)."""
    return Envelope(
        id=stable_id("agreement-loaded", agreement.id, str(agreement.version)),
        source=SOURCE,
        type=AGREEMENT_LOADED.type,
        time=loaded_at,
        subject=f"agreement-{agreement.id}",
        data=orjson.dumps(contract(agreement, loaded_at)),
    )


def agreement_of(contract_resource: dict[str, object]) -> Agreement | None:
    """The agreement a Contract on the log carries, or None if it carries none."""
    attachment = contract_resource.get("legallyBindingAttachment")
    if not isinstance(attachment, dict) or not isinstance(attachment.get("data"), str):
        return None
    return Agreement.model_validate(orjson.loads(base64.b64decode(attachment["data"])))
