"""The HTTP application: FHIR routes under /fhir, errors as OperationOutcome, /healthz (liveness) and
/readyz (readiness: the database and Kafka answer) for probes, /metrics (Prometheus) for monitoring."""

from __future__ import annotations

from collections.abc import Mapping

from fastapi import FastAPI

from hub.api import health, metrics, outcomes
from hub.api.auth import TokenVerifier
from hub.api.routes import coordination, coordination_worklist, discharge, huddle
from hub.api.routes.fhir import Publish, router
from hub.core.ports import Ledger, RecordReader
from hub.store.agreements import PolicySource
from hub.store.sql import SqlRecordReader


def create_app(
    reader: RecordReader,
    tokens: TokenVerifier,
    ledger: Ledger | None = None,
    policy: PolicySource | None = None,
    publish: Publish | None = None,
    commands: coordination.CoordinationApi | None = None,
    checks: Mapping[str, health.Check] | None = None,
    meters: metrics.Metrics | None = None,
    refused: discharge.Refused | None = None,
) -> FastAPI:
    """The API over a record reader: tokens checked by `tokens`, every read decided by `policy`
    (None: not enforced) and recorded in `ledger`; Consents published with `publish`. /readyz runs
    `checks` (hub.api.health; None: the reader's database, where it has one); /metrics shows `meters`
    (hub.api.metrics; None: no MLLP counts, nor dead letters). A discharge summary refused as bad
    input is handed to `refused` (hub.api.routes.discharge: the dead-letter topic; None: not kept)."""
    app = FastAPI(
        title="CareHub FHIR API",
        version="0.1.0",
        description="The shared care record, read over FHIR R4. Bearer tokens from `carehub token`.",
        default_response_class=outcomes.FhirResponse,
    )
    outcomes.install(app)
    service = commands.engine.rules.service.ods if commands is not None else None  # (never a practice: huddle)
    app.include_router(huddle.router(reader, tokens, ledger, policy, service))  # before /fhir/{kind}: /fhir/List
    if commands is not None:
        app.include_router(coordination.router(commands, tokens))
        app.include_router(coordination_worklist.router(commands, tokens, ledger, policy))
        app.include_router(discharge.router(commands, tokens, refused))  # POST /fhir/Bundle: discharge summaries
    app.include_router(router(reader, tokens, ledger, policy, publish))
    if checks is None:
        checks = {"database": health.database_answers(reader.engine)} if isinstance(reader, SqlRecordReader) else {}
    app.include_router(health.router(health.Readiness(checks)))
    app.include_router(metrics.router(meters or metrics.Metrics()))
    return app
