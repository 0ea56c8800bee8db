"""GET /fhir/metadata says what the API serves, no more and no less: each resource type with its
interactions, search parameters and operations, held to the routes over real HTTP (each claim asked
for, and each interaction and operation it does not claim found refused), on the app with the
coordination commands and on the app without them."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from fhir.resources.R4B.capabilitystatement import CapabilityStatement

from hub.api.app import create_app
from hub.api.auth import TokenVerifier, issue_token
from hub.api.routes.coordination import CoordinationApi
from hub.bootstrap import build
from hub.settings import Settings
from schemas.envelope import Envelope
from tests.serving import served

pytestmark = pytest.mark.timeout(120)
# types no route serves, probed to find them refused (with the types the statement names)
ELSEWHERE = ("Appointment", "Bundle", "CarePlan", "Condition", "Location", "Medication", "Practitioner")
INTERACTIONS = ("read", "search-type", "create", "update")


@dataclass
class Api:
    """A served app, its CapabilityStatement and its OpenAPI document, and a coordinator's token."""

    http: httpx.Client
    statement: dict[str, Any]
    openapi: dict[str, Any]

    def resources(self) -> dict[str, dict[str, Any]]:
        return {r["type"]: r for r in self.statement["rest"][0]["resource"]}

    def probed(self) -> list[str]:
        """The types to ask for: those the statement names, those any /fhir path of the OpenAPI document
        names (or its {kind} stands for), and some no route serves."""
        named = set(ELSEWHERE) | set(self.resources())
        for path, methods in self.openapi["paths"].items():
            first = path.removeprefix("/fhir/").split("/")[0] if path.startswith("/fhir/") else ""
            named |= {first} if first[:1].isupper() else set()
            params = [p for operation in methods.values() for p in operation.get("parameters", [])]
            named |= {k for p in params if p["name"] == "kind" for k in p["schema"]["enum"]}
        return sorted(named)


@pytest.fixture(scope="module", params=["with coordination", "without coordination"])
def api(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    services = build(Settings(data_dir=tmp_path_factory.mktemp("capability")))

    async def publish(envelope: Envelope) -> None:
        return None

    commands = None
    if request.param == "with coordination":
        commands = CoordinationApi(
            services.reader, services.coordination, services.rules, services.secrets.key, publish
        )
    app = create_app(
        services.reader, TokenVerifier(services.secrets.token), services.ledger, services.policy, publish, commands
    )
    ods = services.rules.rules.service.ods
    token = issue_token(services.secrets.token, org=ods, role="coordinator", now=datetime.now(UTC))
    try:
        with served(app, "capability") as url, httpx.Client(base_url=url, timeout=10) as http:
            statement = http.get("/fhir/metadata").json()
            http.headers["Authorization"] = f"Bearer {token}"
            yield Api(http, statement, http.get("/openapi.json").json())
    finally:
        services.engine.dispose()


def refused(response: httpx.Response) -> bool:
    """The server does not serve what was asked: no such route, a method not allowed, a type it does not hold."""
    issues = response.json().get("issue") or [] if "json" in response.headers["content-type"] else []
    said = " ".join(str(i.get("diagnostics", "")) for i in issues)
    no_route = said.startswith("no such resource or operation on this server")
    return response.status_code == 405 or no_route or "not-supported" in {i.get("code") for i in issues}


def interaction_served(api: Api, kind: str, interaction: str, searches: list[str]) -> bool:
    if interaction == "read":
        return not refused(api.http.get(f"/fhir/{kind}/probe-1"))
    if interaction == "create":
        return not refused(api.http.post(f"/fhir/{kind}", json={"resourceType": kind}))
    if interaction == "update":
        return not refused(api.http.put(f"/fhir/{kind}/probe-1", json={"resourceType": kind, "id": "probe-1"}))
    return not refused(api.http.get(f"/fhir/{kind}", params={name: "probe" for name in searches or ["patient"]}))


def operation_served(api: Api, kind: str, name: str) -> bool:
    path = f"/fhir/{kind}/probe-1/${name}"
    empty = {"resourceType": "Parameters", "parameter": []}
    return not (refused(api.http.get(path)) and refused(api.http.post(path, json=empty)))


def test_the_statement_is_a_valid_fhir_r4_capability_statement(api: Api) -> None:
    CapabilityStatement.model_validate(api.statement)
    assert api.statement["fhirVersion"] == "4.0.1"


def test_each_interaction_and_search_the_statement_claims_is_served(api: Api) -> None:
    for kind, resource in api.resources().items():
        searches = [p["name"] for p in resource.get("searchParam", [])]
        for interaction in (i["code"] for i in resource["interaction"]):
            assert interaction_served(api, kind, interaction, searches), f"{kind} {interaction} is claimed, not served"


def test_each_interaction_the_statement_does_not_claim_is_refused(api: Api) -> None:
    resources = api.resources()
    for kind in api.probed():
        claimed = {i["code"] for i in resources.get(kind, {}).get("interaction", [])}
        for interaction in set(INTERACTIONS) - claimed:
            assert not interaction_served(api, kind, interaction, []), f"{kind} {interaction} is served, not claimed"


def test_each_operation_is_claimed_on_exactly_the_types_that_serve_it(api: Api) -> None:
    resources = api.resources()
    claimed = {(kind, op["name"]) for kind, r in resources.items() for op in r.get("operation", [])}
    names = {name for _, name in claimed} | {"accept", "decline", "record-contact", "close", "status", "everything"}
    for kind in api.probed():
        for name in sorted(names):
            assert operation_served(api, kind, name) == ((kind, name) in claimed), f"{kind} ${name}"


def test_every_fhir_route_of_the_openapi_document_is_in_the_statement(api: Api) -> None:
    resources = api.resources()
    for path, methods in api.openapi["paths"].items():
        if not path.startswith("/fhir/") or path == "/fhir/metadata":
            continue
        first, *rest = path.removeprefix("/fhir/").split("/")
        for method, operation in methods.items():
            params = operation.get("parameters", [])
            kinds = next((p["schema"]["enum"] for p in params if p["name"] == "kind"), [first])
            for kind in kinds:
                said = resources[kind]
                if rest and rest[-1].startswith("$"):
                    assert rest[-1][1:] in {op["name"] for op in said["operation"]}, (method, path, kind)
                    continue
                wanted = {
                    (False, "get"): "search-type",
                    (False, "post"): "create",
                    (True, "get"): "read",
                    (True, "put"): "update",
                }[(bool(rest), method)]
                assert wanted in {i["code"] for i in said["interaction"]}, (method, path, kind)
                queries = {p["name"] for p in params if p["in"] == "query"} - {"token"}  # (the huddle's, not a search)
                assert queries <= {p["name"] for p in said.get("searchParam", [])}, (method, path, kind)


def test_the_coordination_commands_are_claimed_exactly_when_served(api: Api) -> None:
    resources = api.resources()
    served = "/fhir/ServiceRequest/{id}/$accept" in api.openapi["paths"]
    ops = {(kind, op["name"]) for kind, r in resources.items() for op in r.get("operation", [])}
    commands = {
        ("ServiceRequest", "accept"),
        ("ServiceRequest", "decline"),
        ("Patient", "record-contact"),
        ("EpisodeOfCare", "close"),
        ("Task", "status"),
    }
    assert (commands <= ops) is served and (not commands & ops) is not served
    creates = {i["code"] for i in resources["ServiceRequest"]["interaction"]}
    assert ("create" in creates) is served
    assert {"read", "search-type"} <= creates
    assert ("Patient", "everything") in ops


def test_consent_is_claimed_updatable_and_nothing_else_is(api: Api) -> None:
    updatable = {kind for kind, r in api.resources().items() if "update" in {i["code"] for i in r["interaction"]}}

    assert updatable == {"Consent"}
