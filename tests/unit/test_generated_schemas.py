"""schemas/generated/ is current: regenerating it changes nothing (else run `make schemas`)."""

from __future__ import annotations

import json

from hub.specs import GENERATED, documents


def test_generated_documents_match_the_code() -> None:
    for name, content in documents().items():
        path = GENERATED / name
        assert path.exists(), f"{name} missing: run make schemas"
        assert path.read_text() == content, f"{name} is stale: run make schemas"


def test_asyncapi_names_the_event_and_dead_letter_channels() -> None:
    text = json.dumps(json.loads((GENERATED / "asyncapi.json").read_text()))
    assert "carehub.events.v1" in text and "carehub.deadletter.v1" in text
