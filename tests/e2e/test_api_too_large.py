"""An API request whose event Kafka will not take as one record is answered 413 with an OperationOutcome
(too-long), never 503 "send it again" (which could never succeed): real HTTP and MLLP sockets, the real
broker (Tansu, with the producer's max_request_size of 1 MiB), consumers and SQLite."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from pathlib import Path

import httpx
import orjson
import pytest

from adapters.hl7v2.transport import MllpClient
from hub.api.auth import issue_token
from hub.bootstrap import build, running
from hub.settings import HttpSettings, KafkaSettings, MllpSettings, Settings
from tests.builders import an_adt, an_agreement, an_objection

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(180)]


async def test_a_consent_whose_event_is_too_large_for_kafka_is_answered_413_not_503(tmp_path: Path) -> None:
    settings = Settings(
        data_dir=tmp_path,
        kafka=KafkaSettings(group_id=f"t{uuid.uuid4().hex[:8]}-record"),
        mllp=MllpSettings(port=0),
        http=HttpSettings(port=0),
    )
    services = build(settings)
    services.agreements.load(an_agreement("RXX", "Y00001"), at=datetime.now(UTC))
    async with running(settings, services=services) as run:
        client = await MllpClient.connect("127.0.0.1", run.mllp_port or 0)
        await client.send(an_adt(control_id="S1"))
        await client.close()
        assert await run.caught_up(1, timeout=60)
        token = issue_token(run.services.secrets.token, org="RXX", role="coordinator", now=datetime.now(UTC))
        headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/fhir+json"}
        consent = an_objection("9434765919", "Y00001")
        small = len(orjson.dumps(consent | {"text": {"status": "generated", "div": ""}}))
        div = '<div xmlns="http://www.w3.org/1999/xhtml">' + "x" * (1_048_500 - small - 48) + "</div>"
        body = orjson.dumps(consent | {"text": {"status": "generated", "div": div}})
        assert len(body) <= 1 << 20  # (the API takes the body; Kafka, with the hub's additions, will not)

        base = f"http://127.0.0.1:{run.http_port}/fhir"
        async with httpx.AsyncClient(base_url=base, timeout=30) as http:
            refused = await http.post("/Consent", content=body, headers=headers)
            assert refused.status_code == 413, refused.text
            assert refused.headers["content-type"].startswith("application/fhir+json")
            (issue,) = refused.json()["issue"]
            assert refused.json()["resourceType"] == "OperationOutcome" and issue["code"] == "too-long"
            assert "cannot succeed" in issue["diagnostics"] and "send it again" not in issue["diagnostics"]

            recorded = await http.post("/Consent", content=orjson.dumps(consent), headers=headers)
            assert recorded.status_code == 201, recorded.text  # (Kafka was up all along)
