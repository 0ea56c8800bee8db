"""The FHIR API over a real socket: uvicorn on 127.0.0.1, httpx as the client, a fake record behind it."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from datetime import UTC, datetime

import httpx
import pytest

from hub.api.app import create_app
from hub.api.auth import TokenVerifier, issue_token
from hub.core.ports import Json
from tests.serving import served

pytestmark = pytest.mark.timeout(60)

SECRET = b"integration-test-signing-secret-32b"
NHS = "https://fhir.nhs.uk/Id/nhs-number"
NHS_NUMBER = "9434765919"
FHIR_JSON = "application/fhir+json"
PATIENT: Json = {
    "resourceType": "Patient",
    "id": "p1",
    "identifier": [{"system": NHS, "value": NHS_NUMBER}],
    "name": [{"family": "Smith", "given": ["Jane"]}],
}
ENCOUNTER: Json = {
    "resourceType": "Encounter",
    "id": "e1",
    "status": "finished",
    "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "IMP"},
    "subject": {"reference": "Patient/p1"},
}
PROVENANCE: Json = {
    "resourceType": "Provenance",
    "id": "pv1",
    "target": [{"reference": "Encounter/e1"}],
    "patient": {"reference": "Patient/p1"},
    "recorded": "2026-03-01T09:30:00+00:00",
    "agent": [{"who": {"identifier": {"value": "RX1"}}}],
}
ORGANIZATION: Json = {"resourceType": "Organization", "id": "RX1", "name": "A hospital"}
CRASH_ID = "crash"


class FakeRecordReader:
    """The RecordReader port over four resources; reading Organization/crash fails like a broken store."""

    def __init__(self) -> None:
        self.resources = {(r["resourceType"], r["id"]): r for r in (PATIENT, ENCOUNTER, PROVENANCE, ORGANIZATION)}

    def read(self, resource_type: str, id: str) -> Json | None:
        if id == CRASH_ID:
            raise RuntimeError(f"driver exploded holding NHS number {NHS_NUMBER}")
        return self.resources.get((resource_type, id))

    def patients_by_identifier(self, system: str, value: str) -> list[Json]:
        return [
            r
            for (kind, _), r in self.resources.items()
            if kind == "Patient" and {"system": system, "value": value} in r.get("identifier", [])
        ]

    def search(self, resource_type: str, patient_id: str | None) -> list[Json]:
        return [r for r in self.resources.values() if r["resourceType"] == resource_type and _about(r, patient_id)]

    def search_many(self, resource_type: str, patient_ids: Sequence[str]) -> list[Json]:
        return [r for p in patient_ids for r in self.search(resource_type, p)]

    def everything(self, patient_id: str) -> list[Json]:
        patient = self.resources.get(("Patient", patient_id))
        if patient is None:
            return []
        return [patient, *(r for r in self.resources.values() if r is not patient and _about(r, patient_id))]

    def counts(self) -> dict[str, int]:
        kinds = [kind for kind, _ in self.resources]
        return {kind: kinds.count(kind) for kind in set(kinds)}


def _about(resource: Json, patient_id: str | None) -> bool:
    if patient_id is None:
        return True
    ref = (resource.get("subject") or resource.get("patient") or {}).get("reference")
    return bool(ref == f"Patient/{patient_id}")


@pytest.fixture(scope="module")
def base_url() -> Iterator[str]:
    """The API served by uvicorn in a background thread on a free 127.0.0.1 port."""
    with served(create_app(FakeRecordReader(), TokenVerifier(SECRET)), "api-under-test") as url:
        yield url


@pytest.fixture
def http(base_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=base_url, timeout=5) as client:
        yield client


@pytest.fixture
def token() -> str:
    return issue_token(SECRET, org="Y00001", role="clinician", now=datetime.now(UTC))


def get(http: httpx.Client, path: str, token: str | None = None, **params: str) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return http.get(path, params=params, headers=headers)


def fhir(response: httpx.Response, status: int) -> Json:
    """The body of a FHIR response with that status; every response must be application/fhir+json."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].split(";")[0] == FHIR_JSON
    body = response.json()
    assert isinstance(body, dict)
    return body


def outcome(response: httpx.Response, status: int, code: str) -> str:
    """The diagnostics of an error OperationOutcome with that status and issue code."""
    body = fhir(response, status)
    assert body["resourceType"] == "OperationOutcome"
    [issue] = body["issue"]
    assert issue["severity"] == "error"
    assert issue["code"] == code
    return str(issue["diagnostics"])


def kinds(bundle: Json) -> list[str]:
    return sorted(entry["resource"]["resourceType"] for entry in bundle.get("entry", []))


PROTECTED = [
    "/fhir/Patient?identifier=https://fhir.nhs.uk/Id/nhs-number|9434765919",
    "/fhir/Patient/p1",
    "/fhir/Patient/p1/$everything",
    "/fhir/Encounter?patient=p1",
    "/fhir/Encounter/e1",
    "/fhir/Provenance?patient=p1",
    "/fhir/Provenance/pv1",
    "/fhir/Organization/RX1",
]


def test_metadata_needs_no_token_and_is_an_r4_capability_statement(http: httpx.Client) -> None:
    body = fhir(get(http, "/fhir/metadata"), 200)

    assert body["resourceType"] == "CapabilityStatement"
    assert (body["status"], body["kind"], body["fhirVersion"]) == ("active", "instance", "4.0.1")
    assert "json" in body["format"]
    [rest] = body["rest"]
    assert rest["mode"] == "server"
    assert "Bearer" in rest["security"]["description"]
    resources = {r["type"]: r for r in rest["resource"]}
    assert {"Patient", "Encounter", "Organization", "Provenance"} <= set(resources)
    assert [p["name"] for p in resources["Patient"]["searchParam"]] == ["identifier"]
    assert [op["name"] for op in resources["Patient"]["operation"]] == ["everything"]
    assert [p["name"] for p in resources["Encounter"]["searchParam"]] == ["patient"]
    assert {i["code"] for i in resources["Organization"]["interaction"]} == {"read"}


def test_healthz_needs_no_token(http: httpx.Client) -> None:
    assert fhir(get(http, "/healthz"), 200) == {"status": "ok"}


@pytest.mark.parametrize("path", PROTECTED)
def test_every_other_route_without_a_token_is_401_asking_for_a_bearer_token(http: httpx.Client, path: str) -> None:
    response = http.get(path)

    assert "bearer token" in outcome(response, 401, "login")
    assert response.headers["www-authenticate"].startswith("Bearer")


@pytest.mark.parametrize("path", PROTECTED)
def test_every_other_route_with_a_forged_token_is_401(http: httpx.Client, path: str) -> None:
    forged = issue_token(b"not-the-hub-secret-not-the-hub-secret", org="Y00001", role="admin", now=datetime.now(UTC))

    response = http.get(path, headers={"Authorization": f"Bearer {forged}"})

    diagnostics = outcome(response, 401, "login")
    assert forged not in diagnostics
    assert response.headers["www-authenticate"].startswith("Bearer")


@pytest.mark.parametrize("header", ["Basic dXNlcjpwYXNz", "Bearer", "Bearer not.a.jwt"])
def test_malformed_authorization_is_401(http: httpx.Client, header: str) -> None:
    response = http.get("/fhir/Patient/p1", headers={"Authorization": header})

    outcome(response, 401, "login")
    assert "Smith" not in response.text


def test_expired_token_is_401_saying_it_expired(http: httpx.Client) -> None:
    old = issue_token(SECRET, org="Y00001", role="clinician", now=datetime(2020, 1, 1, tzinfo=UTC))

    assert "expired" in outcome(get(http, "/fhir/Patient/p1", old), 401, "login")


def test_search_by_nhs_number_finds_the_patient(http: httpx.Client, token: str) -> None:
    bundle = fhir(get(http, "/fhir/Patient", token, identifier=f"{NHS}|{NHS_NUMBER}"), 200)

    assert bundle["resourceType"] == "Bundle"
    assert bundle["type"] == "searchset"
    assert bundle["total"] == 1
    [entry] = bundle["entry"]
    assert entry["resource"]["id"] == "p1"
    assert entry["fullUrl"].endswith("/fhir/Patient/p1")
    assert entry["search"] == {"mode": "match"}
    assert bundle["id"] and bundle["meta"]["lastUpdated"]


def test_the_self_link_shows_the_search_as_carried_out(http: httpx.Client, token: str) -> None:
    # (review: unknown parameters are ignored, as FHIR lets a server do by default, but the self link
    # showed them, and a repeated one twice, as if the search had used them)
    path = f"/fhir/Patient?identifier=x|1&name=Smith&identifier={NHS}|{NHS_NUMBER}&_format=xml"
    bundle = fhir(http.get(path, headers={"Authorization": f"Bearer {token}"}), 200)

    [self_link] = [link["url"] for link in bundle["link"] if link["relation"] == "self"]
    assert self_link.endswith(f"/fhir/Patient?identifier={NHS.replace(':', '%3A').replace('/', '%2F')}%7C{NHS_NUMBER}")
    assert bundle["total"] == 1  # the last identifier, as the self link says


def test_a_search_says_which_parameters_it_did_not_use(http: httpx.Client, token: str) -> None:
    path = f"/fhir/Patient?identifier=x|1&name=Smith&identifier={NHS}|{NHS_NUMBER}&_format=xml"
    bundle = fhir(http.get(path, headers={"Authorization": f"Bearer {token}"}), 200)

    [outcome] = [e["resource"] for e in bundle["entry"] if e["search"]["mode"] == "outcome"]
    [issue] = outcome["issue"]
    assert (issue["severity"], issue["code"]) == ("warning", "not-supported")
    assert "not used: _format, identifier, name" in issue["diagnostics"]
    plain = fhir(get(http, "/fhir/Patient", token, identifier=f"{NHS}|{NHS_NUMBER}"), 200)
    assert [e["search"]["mode"] for e in plain["entry"]] == ["match"]


def test_prefer_handling_strict_refuses_a_search_with_a_parameter_it_would_not_use(
    http: httpx.Client, token: str
) -> None:
    headers = {"Authorization": f"Bearer {token}", "Prefer": "return=representation, handling=strict"}
    unknown = http.get(f"/fhir/Patient?identifier={NHS}|{NHS_NUMBER}&name=Smith", headers=headers)
    repeated = http.get(f"/fhir/Patient?identifier=x|1&identifier={NHS}|{NHS_NUMBER}", headers=headers)
    since = http.get("/fhir/Patient/p1/$everything?_since=2026-01-01", headers=headers)
    fine = http.get(f"/fhir/Patient?identifier={NHS}|{NHS_NUMBER}", headers=headers)

    # every Prefer header is one list; whitespace around = and a quoted value allowed; the first handling counts
    spelled = []
    for prefer in (["handling = strict"], ['handling="strict"'], ["return=minimal", "handling=strict"],
                   ["handling=strict, handling=lenient"], ["return=representation; handling=lenient, handling=strict"],
                   ['foo="a, handling=lenient", handling=strict']):  # fmt: skip
        headers_ = [("Authorization", f"Bearer {token}"), *(("Prefer", p) for p in prefer)]
        spelled.append(
            (http.get(f"/fhir/Patient?identifier={NHS}|{NHS_NUMBER}&name=Smith", headers=headers_), ["name"])
        )
    lenient = http.get(
        f"/fhir/Patient?identifier={NHS}|{NHS_NUMBER}&name=Smith",
        headers={"Authorization": f"Bearer {token}", "Prefer": "handling=lenient, handling=strict"},
    )
    assert fhir(lenient, 200)["total"] == 1

    for response, named in ((unknown, ["name"]), (repeated, ["identifier"]), (since, ["_since"]), *spelled):
        [issue] = fhir(response, 400)["issue"]
        assert issue["code"] == "not-supported" and issue["expression"] == named, issue
        assert "handling=strict" in issue["diagnostics"]
    assert fhir(fine, 200)["total"] == 1


def test_each_search_bundle_has_its_own_id(http: httpx.Client, token: str) -> None:
    first = fhir(get(http, "/fhir/Patient", token, identifier=f"{NHS}|{NHS_NUMBER}"), 200)
    second = fhir(get(http, "/fhir/Patient", token, identifier=f"{NHS}|{NHS_NUMBER}"), 200)

    assert first["id"] != second["id"]


def test_search_by_unknown_nhs_number_is_an_empty_bundle(http: httpx.Client, token: str) -> None:
    bundle = fhir(get(http, "/fhir/Patient", token, identifier=f"{NHS}|9999999999"), 200)

    assert bundle["total"] == 0
    assert bundle.get("entry", []) == []


def test_patient_search_without_identifier_is_400_naming_the_parameter(http: httpx.Client, token: str) -> None:
    response = get(http, "/fhir/Patient", token)

    assert "identifier" in outcome(response, 400, "required")
    assert response.json()["issue"][0]["expression"] == ["identifier"]


def test_identifier_without_a_system_bar_is_400_invalid(http: httpx.Client, token: str) -> None:
    assert "system|value" in outcome(get(http, "/fhir/Patient", token, identifier=NHS_NUMBER), 400, "invalid")


def test_patient_read_returns_the_resource(http: httpx.Client, token: str) -> None:
    assert fhir(get(http, "/fhir/Patient/p1", token), 200) == PATIENT


def test_unknown_patient_is_404(http: httpx.Client, token: str) -> None:
    assert "Patient/nobody" in outcome(get(http, "/fhir/Patient/nobody", token), 404, "not-found")


@pytest.mark.parametrize(
    ("path", "expected"), [("/fhir/Encounter/e1", ENCOUNTER), ("/fhir/Provenance/pv1", PROVENANCE)]
)
def test_other_resources_are_read_by_id(http: httpx.Client, token: str, path: str, expected: Json) -> None:
    assert fhir(get(http, path, token), 200) == expected


def test_organization_read(http: httpx.Client, token: str) -> None:
    assert fhir(get(http, "/fhir/Organization/RX1", token), 200)["name"] == "A hospital"


def test_unsupported_resource_type_is_404_not_supported(http: httpx.Client, token: str) -> None:
    assert "MedicationRequest" in outcome(get(http, "/fhir/MedicationRequest/o1", token), 404, "not-supported")


@pytest.mark.parametrize("patient", ["p1", "Patient/p1"])
def test_encounters_are_searched_by_patient(http: httpx.Client, token: str, patient: str) -> None:
    bundle = fhir(get(http, "/fhir/Encounter", token, patient=patient), 200)

    assert bundle["total"] == 1
    assert [e["resource"]["id"] for e in bundle["entry"]] == ["e1"]


def test_encounter_search_for_another_patient_is_empty(http: httpx.Client, token: str) -> None:
    assert fhir(get(http, "/fhir/Encounter", token, patient="p2"), 200)["total"] == 0


def test_provenance_is_searched_by_patient(http: httpx.Client, token: str) -> None:
    bundle = fhir(get(http, "/fhir/Provenance", token, patient="Patient/p1"), 200)

    assert [e["resource"]["id"] for e in bundle["entry"]] == ["pv1"]


def test_encounter_search_without_patient_is_400(http: httpx.Client, token: str) -> None:
    assert "patient" in outcome(get(http, "/fhir/Encounter", token), 400, "required")


def test_everything_returns_the_patient_and_what_is_about_them(http: httpx.Client, token: str) -> None:
    bundle = fhir(get(http, "/fhir/Patient/p1/$everything", token), 200)

    assert bundle["type"] == "searchset"
    assert kinds(bundle) == ["Encounter", "Patient", "Provenance"]
    assert bundle["total"] == 3


def test_everything_for_an_unknown_patient_is_404(http: httpx.Client, token: str) -> None:
    outcome(get(http, "/fhir/Patient/nobody/$everything", token), 404, "not-found")


@pytest.mark.parametrize("path", ["/nowhere", "/fhir/Patient/p1/history/extra", "/fhir"])
def test_unknown_route_is_404_operation_outcome(http: httpx.Client, token: str, path: str) -> None:
    outcome(get(http, path, token), 404, "not-found")


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE"])
def test_writing_a_patient_is_405_operation_outcome(http: httpx.Client, token: str, method: str) -> None:
    response = http.request(
        method, "/fhir/Patient/p1", headers={"Authorization": f"Bearer {token}"}, content=b'{"resourceType":"Patient"}'
    )

    outcome(response, 405, "not-supported")


def test_post_to_a_search_route_is_405(http: httpx.Client, token: str) -> None:
    response = http.post("/fhir/Patient", headers={"Authorization": f"Bearer {token}"}, json=PATIENT)

    outcome(response, 405, "not-supported")


def test_server_failure_is_500_without_internal_details(http: httpx.Client, token: str) -> None:
    response = get(http, f"/fhir/Organization/{CRASH_ID}", token)

    diagnostics = outcome(response, 500, "exception")
    assert "exploded" not in response.text
    assert NHS_NUMBER not in response.text
    assert "logged" in diagnostics


def test_responses_declare_utf8_fhir_json(http: httpx.Client, token: str) -> None:
    for response in (get(http, "/fhir/metadata"), get(http, "/fhir/Patient/p1", token), http.get("/fhir/Patient/p1")):
        assert response.headers["content-type"] == "application/fhir+json; charset=utf-8"
