"""`make schemas`: regenerate schemas/generated/ (the envelope's JSON Schema and the AsyncAPI
document FastStream generates from the real consumers and publishers). CI fails on a diff."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from faststream.specification import AsyncAPI

from schemas.agreements import Agreement
from schemas.coordination_rules import CoordinationRules
from schemas.envelope import Envelope
from schemas.events.rejected import OUTCOME_HEADER
from schemas.registry import REGISTRY
from schemas.subscriptions import Subscription
from schemas.topics import DEAD_LETTER, EVENTS

GENERATED = Path(__file__).resolve().parents[1] / "schemas" / "generated"


def envelope_schema() -> dict[str, Any]:
    """The envelope's JSON Schema, with the event types it may carry."""
    schema = Envelope.model_json_schema()
    schema["$id"] = "https://carehub.invalid/schemas/envelope.schema.json"
    schema["properties"]["type"]["enum"] = sorted(REGISTRY)
    schema["description"] = (
        Envelope.__doc__ or ""
    ).strip() + " Kafka binary mode: attributes travel as ce_* headers, data as the record value, subject as the key."
    return schema


def agreement_schema() -> dict[str, Any]:
    """The JSON Schema that sharing agreement documents (YAML) are validated against."""
    schema = Agreement.model_json_schema()
    schema["$id"] = "https://carehub.invalid/schemas/agreement.schema.json"
    return schema


def subscription_schema() -> dict[str, Any]:
    """The JSON Schema of subscription documents (YAML)."""
    schema = Subscription.model_json_schema()
    schema["$id"] = "https://carehub.invalid/schemas/subscription.schema.json"
    return schema


def coordination_rules_schema() -> dict[str, Any]:
    """The JSON Schema coordination rule files (hub/rules/*.yaml) are validated against."""
    schema = CoordinationRules.model_json_schema()
    schema["$id"] = "https://carehub.invalid/schemas/coordination-rules.schema.json"
    return schema


def asyncapi() -> dict[str, Any]:
    """The AsyncAPI 3.0 document of the hub's channels, from the real routers."""
    from consumers.app import build_broker, include_consumers
    from hub.store.memory import MemoryDeadLetters, MemoryRecordStore

    broker = build_broker("kafka:9092")
    store = MemoryRecordStore()
    include_consumers(broker, uow_factory=store.unit_of_work, dead_letters=MemoryDeadLetters())
    broker.publisher(
        EVENTS.name,
        title="hospital-intake:events",
        description="FHIR R4 Bundles from HL7 v2 ADT, CloudEvents binary mode, key = person key",
    )
    broker.publisher(
        DEAD_LETTER.name,
        title="hospital-intake:rejected",
        description=f"Rejected HL7 v2 bytes, whole; header {OUTCOME_HEADER} = OperationOutcome",
    )
    spec = AsyncAPI(broker, title="CareHub", version="0.1.0", description=__doc__)
    document: dict[str, Any] = spec.to_specification().to_jsonable()
    return document


def documents() -> dict[str, str]:
    """File name -> content, as written."""
    return {
        "envelope.schema.json": json.dumps(envelope_schema(), indent=2, sort_keys=True) + "\n",
        "asyncapi.json": json.dumps(asyncapi(), indent=2, sort_keys=True) + "\n",
        "agreement.schema.json": json.dumps(agreement_schema(), indent=2, sort_keys=True) + "\n",
        "subscription.schema.json": json.dumps(subscription_schema(), indent=2, sort_keys=True) + "\n",
        "coordination-rules.schema.json": json.dumps(coordination_rules_schema(), indent=2, sort_keys=True) + "\n",
    }


def main() -> int:
    """Write the documents; with --check, only report whether they are current."""
    check = "--check" in sys.argv
    stale = []
    GENERATED.mkdir(parents=True, exist_ok=True)
    for name, content in documents().items():
        path = GENERATED / name
        if not path.exists() or path.read_text() != content:
            stale.append(name)
            if not check:
                path.write_text(content)
    if check and stale:
        print(f"stale: {', '.join(stale)}; run make schemas")  # noqa: T201
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
