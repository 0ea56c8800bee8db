"""The HTTP API against its own OpenAPI document, by schemathesis (generated valid and invalid requests).

Every operation the document lists, on SQLite and on PostgreSQL, with a valid bearer token: no request
gets a server error, and every error is a FHIR OperationOutcome with a 4xx status. The FHIR record routes
(hub/api/routes/fhir.py, tag "FHIR record") are also held to every schemathesis check: documented status
codes, content types and schemas, 405 with Allow, 401 when the token is taken away. And every operation
refuses a request without a token, over a real socket.

Budget: EXAMPLES per operation (CAREHUB_FUZZ_EXAMPLES, default 25); the file runs in about a minute.
A deeper run: `CAREHUB_FUZZ_EXAMPLES=500 .venv/bin/pytest tests/fuzz/test_api_schemathesis.py`.
"""

from __future__ import annotations

import os
import re

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error, positive_data_acceptance

from hub.api.app import create_app
from hub.api.auth import TokenVerifier
from hub.api.outcomes import FHIR_JSON
from hub.api.routes.coordination import CoordinationApi
from hub.api.routes.fhir import TAG
from hub.core.tasks import Engine
from hub.rules import load_rules
from hub.store.memory import MemoryRecordStore
from tests.fuzz.conftest import LiveApi, token

EXAMPLES = int(os.environ.get("CAREHUB_FUZZ_EXAMPLES", "25"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,  # the same requests on every run: CI is repeatable, a deeper run is a bigger number
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.function_scoped_fixture],
)


# The document is the app's own: create_app over an empty record, only to be asked for /openapi.json.
# Requests go to the live app of the `live_api` fixture (real record, agreements, ledger and tokens).
class NoCoordination:
    """The coordination read side of an empty service (the document app is only asked for its document)."""

    def caseloads(self) -> dict[str, int]:
        return {}

    def state(self, person_key: str) -> dict[str, object] | None:
        return None

    def acceptance(self, referral_id: str) -> dict[str, object] | None:
        return None

    def claim_acceptance(
        self,
        referral_id: str,
        person_key: str,
        coordinator: str,
        episode: dict[str, object],
        at: object,
        is_open: object,
    ) -> dict[str, object] | None:
        return None


async def _nowhere(envelope: object) -> None:
    return None


DOCUMENT_APP = create_app(
    MemoryRecordStore().reader(),
    TokenVerifier(b"only-serves-the-openapi-document"),
    commands=CoordinationApi(
        reader=MemoryRecordStore().reader(),
        coordination=NoCoordination(),
        engine=Engine(load_rules()),
        key_secret=b"only-serves-the-openapi-document",
        publish=_nowhere,
    ),
)
# FHIR servers ignore search parameters they do not know (R4 3.1.1.4.1), so unknown ones are not "invalid".
CONFIG = schemathesis.Config.from_dict({"generation": {"allow-extra-parameters": False}})
schema = schemathesis.openapi.from_asgi("/openapi.json", DOCUMENT_APP, config=CONFIG)
OPERATIONS = [(op.method.upper(), op.path) for op in (r.ok() for r in schema.get_all_operations())]
OPEN = {("GET", "/fhir/metadata")}  # the one operation anyone may call


@schema.auth(refresh_interval=None)
class Bearer:
    """A valid token on every generated request (schemathesis takes it away to check the 401): an
    auditor's for the ledger, otherwise a clinician's of a party to the sharing agreement."""

    def get(self, case: schemathesis.Case, ctx: schemathesis.AuthContext) -> str:
        if "$" in case.path or case.path.startswith("/coordination"):
            return token(org="Y0PIC", role="coordinator")  # the coordination service's own commands
        return token(role="auditor" if "AuditEvent" in case.path else "clinician")

    def set(self, case: schemathesis.Case, data: str, ctx: schemathesis.AuthContext) -> None:
        case.headers = {**(case.headers or {}), "Authorization": f"Bearer {data}"}


def assert_error_is_an_operation_outcome(response: schemathesis.Response) -> None:
    if response.status_code < 400:
        return
    assert 400 <= response.status_code < 500, f"{response.status_code}: {response.text[:500]}"
    assert response.headers["content-type"][0] == FHIR_JSON, response.headers
    body = response.json()
    assert body["resourceType"] == "OperationOutcome", body
    assert body["issue"] and all(i["severity"] == "error" and i["code"] for i in body["issue"]), body


def test_the_document_lists_every_fhir_record_operation() -> None:
    tagged = {(op.method.upper(), op.path) for op in (r.ok() for r in schema.include(tag=TAG).get_all_operations())}

    assert {("GET", "/fhir/Patient"), ("GET", "/fhir/{kind}/{id}"), ("POST", "/fhir/Consent")} <= tagged
    assert ("PUT", "/fhir/Consent/{id}") in tagged
    assert len(tagged) == 9


def test_every_coordination_command_documents_what_it_takes() -> None:
    # integrators read the document: a command whose body it does not describe cannot be called from it
    document = DOCUMENT_APP.openapi()
    commands = {path: ops["post"] for path, ops in document["paths"].items() if "$" in path and "post" in ops}
    assert set(commands) == {
        "/fhir/EpisodeOfCare/{id}/$close",
        "/fhir/EpisodeOfCare/{id}/$close-duplicate",
        "/fhir/Patient/{id}/$record-contact",
        "/fhir/ServiceRequest/{id}/$accept",
        "/fhir/ServiceRequest/{id}/$decline",
        "/fhir/ServiceRequest/{id}/$withdraw",
        "/fhir/Task/{id}/$status",
    }
    for path, op in [*commands.items(), ("/fhir/ServiceRequest", document["paths"]["/fhir/ServiceRequest"]["post"])]:
        schema_ = op["requestBody"]["content"][FHIR_JSON]["schema"]
        assert schema_["properties"]["resourceType"]["enum"] in (["Parameters"], ["ServiceRequest"]), path
    named = commands["/fhir/Task/{id}/$status"]["requestBody"]["content"][FHIR_JSON]["schema"]
    assert named["description"] == "FHIR Parameters: status (required), practice"
    assert named["properties"]["parameter"]["allOf"] == [
        {"contains": {"type": "object", "properties": {"name": {"const": "status"}}}}
    ]


@schema.exclude(tag=TAG, method="POST").parametrize()  # POST /fhir/Consent: in the next test, which is slower
@FUZZ
def test_no_request_gets_a_server_error(case: schemathesis.Case, live_api: LiveApi) -> None:
    response = case.call(app=live_api.app)

    case.validate_response(response, checks=[not_a_server_error])
    if case.path == "/huddle/{ods}" and response.status_code == 403:
        # the printable page refuses another practice's agenda as a page, for the person at the browser
        # (hub.api.routes.huddle): a fuzzed practice code other than the token's (Y00001) is refused so
        assert response.headers["content-type"][0] == "text/html; charset=utf-8", response.headers
        return
    assert_error_is_an_operation_outcome(response)


@schema.include(tag=TAG).parametrize()
@FUZZ
def test_fhir_record_routes_conform_to_their_document(case: schemathesis.Case, live_api: LiveApi) -> None:
    # A Consent that fits its JSON Schema can still break FHIR's rules for primitives (a code with a
    # double space): 400 for such, so "schema-valid means accepted" is not asked of the operations
    # taking one (an update also names a Consent, and a person, that the record may not hold).
    lenient = [positive_data_acceptance] if case.method in ("POST", "PUT") else []
    response = case.call_and_validate(app=live_api.app, excluded_checks=lenient)

    assert_error_is_an_operation_outcome(response)


@pytest.mark.parametrize(("method", "path"), [op for op in OPERATIONS if op not in OPEN])
def test_every_operation_refuses_a_request_without_a_token(base_url: str, method: str, path: str) -> None:
    concrete = re.sub(r"\{[^}]+\}", "x1", path)
    body = b'{"resourceType": "Consent"}' if method == "POST" else None

    response = httpx.request(method, base_url + concrete, content=body, timeout=10)

    assert response.status_code == 401, response.text
    assert response.headers["www-authenticate"].startswith("Bearer")
    assert response.json()["resourceType"] == "OperationOutcome"


def test_the_open_operation_answers_without_a_token(base_url: str) -> None:
    assert {op for op in OPERATIONS if op[1] == "/fhir/metadata"} == OPEN
    assert httpx.get(base_url + "/fhir/metadata", timeout=10).status_code == 200
