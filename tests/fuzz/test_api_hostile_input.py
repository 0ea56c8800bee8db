"""Hostile input to the API over a real socket, on SQLite and PostgreSQL: ids, search parameters and
headers full of control characters, NULs, non-ASCII and length; arbitrary and mutated FHIR JSON posted
as a Consent; forged and malformed bearer tokens. None may get a server error: every refusal is a 4xx
FHIR OperationOutcome, and a Consent is published only when it was answered 201.

Budget: EXAMPLES per test (CAREHUB_FUZZ_EXAMPLES, default 25 here, times four for the cheap ones).
"""

from __future__ import annotations

import base64
import copy
import hashlib
import hmac
import os
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

import httpx
import jwt
import orjson
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from hub.api.auth import AUDIENCE, ISSUER, AuthError, TokenVerifier
from hub.api.outcomes import FHIR_JSON
from schemas.events import coordination as co
from tests.builders import an_objection
from tests.fuzz.conftest import NHS, NHS_NUMBERS, TOKEN_SECRET, LiveApi, token

EXAMPLES = int(os.environ.get("CAREHUB_FUZZ_EXAMPLES", "25"))
HOSTILE = settings(
    max_examples=EXAMPLES * 4,
    deadline=None,
    database=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
BODIES = settings(HOSTILE, max_examples=EXAMPLES * 2)

# Text a client can put in a URL: anything, NUL and surrogates' neighbours included.
nasty_text = st.text(
    st.characters(codec="utf-8") | st.sampled_from(["\x00", "\x01", "\x7f", "\x85", "\u2028", "\ufeff", "%", "/", "|"]),
    max_size=80,
) | st.sampled_from(["", " ", "x" * 5000, "Patient/", "Patient/p1/../x", "%00", "..", "|", "a|", "|b"])
# What an HTTP/1.1 header value may carry (h11 refuses the rest before the app sees it).
header_text = st.text(
    st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f"), max_size=600
).map(lambda value: value.strip(" "))


@pytest.fixture(scope="module")
def http(base_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=base_url, timeout=10) as client:
        yield client


def refused_or_served(response: httpx.Response) -> None:
    """No 5xx; every error is a FHIR OperationOutcome."""
    assert response.status_code < 500, f"{response.status_code} for {response.request.url}: {response.text[:300]}"
    if response.status_code >= 400:
        assert response.headers["content-type"] == FHIR_JSON, response.headers
        body = response.json()
        assert body["resourceType"] == "OperationOutcome", body
        assert body["issue"][0]["severity"] == "error" and body["issue"][0]["code"], body


def path_segment(text: str) -> str:
    return quote(text, safe="")


@HOSTILE
@given(kind=st.sampled_from(["Patient", "Encounter", "Consent", "Organization", "Observation", "x"]), id=nasty_text)
def test_hostile_ids_never_get_a_server_error(http: httpx.Client, kind: str, id: str) -> None:
    headers = {"Authorization": f"Bearer {token()}"}

    refused_or_served(http.get(f"/fhir/{kind}/{path_segment(id)}", headers=headers))
    refused_or_served(http.get(f"/fhir/Patient/{path_segment(id)}/$everything", headers=headers))


@HOSTILE
@given(patient=nasty_text, identifier=nasty_text, kind=st.sampled_from(["Encounter", "Provenance", "Consent", "Zz"]))
def test_hostile_search_parameters_never_get_a_server_error(
    http: httpx.Client, patient: str, identifier: str, kind: str
) -> None:
    headers = {"Authorization": f"Bearer {token()}"}
    auditor = {"Authorization": f"Bearer {token(role='auditor')}"}

    refused_or_served(http.get(f"/fhir/{kind}", params={"patient": patient}, headers=headers))
    refused_or_served(http.get("/fhir/Patient", params={"identifier": identifier}, headers=headers))
    refused_or_served(http.get("/fhir/AuditEvent", params={"patient": patient}, headers=auditor))


@HOSTILE
@given(reason=header_text)
def test_hostile_break_glass_reasons_never_get_a_server_error(
    live_api: LiveApi, http: httpx.Client, reason: str
) -> None:
    headers = {"Authorization": f"Bearer {token()}", "X-Break-Glass-Reason": reason.encode("latin-1")}
    patient = live_api.patient_ids()[0]

    refused_or_served(http.get(f"/fhir/Patient/{patient}", headers=headers))  # type: ignore[arg-type]


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)


@st.composite
def hostile_tokens(draw: st.DrawFn) -> str:
    """Tokens shaped like JWTs with hostile headers and claims, some signed with the hub's own secret."""
    header = draw(st.dictionaries(st.sampled_from(["alg", "typ", "kid", "crit", "jku", "x5u", "b64"]), json_values))
    header.setdefault("alg", draw(st.sampled_from(["HS256", "none", "RS256", "HS512", "", None])))
    now = int(datetime.now(UTC).timestamp())
    claims: dict[str, Any] = {"iss": ISSUER, "aud": AUDIENCE, "sub": "u", "iat": now, "exp": now + 600}
    claims |= {"org": "Y00001", "role": "clinician"}
    for name in draw(st.lists(st.sampled_from([*claims, "nbf", "jti"]), max_size=4)):
        claims[name] = draw(json_values)
    signing = b".".join(_b64(orjson.dumps(part)).encode() for part in (header, claims))
    how = draw(st.sampled_from(["ours", "forged", "none", "garbage"]))
    if how == "garbage":
        return draw(st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=200))
    key = TOKEN_SECRET.encode() if how == "ours" else b"not-the-hub-secret-not-the-hub!!"
    signature = "" if how == "none" else _b64(hmac.new(key, signing, hashlib.sha256).digest())
    return f"{signing.decode()}.{signature}"


@HOSTILE
@given(candidate=hostile_tokens())
@example(candidate="")  # (over HTTP an empty token is "Bearer " with a trailing space, which httpx will not send)
def test_a_hostile_token_is_refused_as_an_auth_error_or_accepted_whole(candidate: str) -> None:
    try:
        who = TokenVerifier(TOKEN_SECRET.encode()).verify(candidate)
    except AuthError as refused:
        said = refused.diagnostics
    else:
        assert (who.org, who.role) == ("Y00001", "clinician") and isinstance(who.user, str)
        return
    assert candidate not in said or len(candidate) < 8  # never echoed back


@BODIES
@given(candidate=hostile_tokens())
def test_a_hostile_token_over_http_is_401(http: httpx.Client, candidate: str) -> None:
    response = http.get("/fhir/Encounter", params={"patient": "p1"}, headers={"Authorization": f"Bearer {candidate}"})

    refused_or_served(response)
    assert response.status_code in (200, 401)


def a_consent(nhs_number: str) -> dict[str, Any]:
    return an_objection(nhs_number, "Y00001", category="encounters")


@st.composite
def mutated_consents(draw: st.DrawFn) -> Any:
    """A valid Consent for a known person, then cut and spliced: keys dropped, values replaced."""
    consent = a_consent(draw(st.sampled_from(NHS_NUMBERS)))
    for _ in range(draw(st.integers(0, 4))):
        node: Any = consent
        path = draw(st.lists(st.integers(0, 5), min_size=1, max_size=4))
        for step in path[:-1]:
            children = (
                list(node) if isinstance(node, dict) else list(range(len(node))) if isinstance(node, list) else []
            )
            if not children:
                break
            key = children[step % len(children)]
            if not isinstance(node[key], dict | list):
                break
            node = node[key]
        if isinstance(node, dict) and node:
            key = sorted(node)[path[-1] % len(node)]
            action = draw(st.sampled_from(["drop", "replace", "nul", "empty"]))
            if action == "drop":
                del node[key]
            elif action == "replace":
                node[key] = draw(json_values)
            elif action == "nul":
                node[key] = f"{node[key]}\x00" if isinstance(node[key], str) else "\x00"
            else:
                node[key] = type(node[key])() if isinstance(node[key], dict | list | str) else None
    return consent


raw_bodies = (
    st.binary(max_size=300)
    | json_values.map(orjson.dumps)
    | st.sampled_from([b"", b"{", b"[]", b"null", b'{"resourceType":"Consent"}', b"\xff\xfe", b'"\\ud800"'])
    | st.integers(1, 300).map(lambda n: b"[" * n + b"]" * n)
    | st.just(b'{"resourceType":"Consent","x":' + b"[" * 5000 + b"]" * 5000 + b"}")
)


def nested_consent(depth: int) -> bytes:
    """A Consent for a known person carrying extensions nested `depth` deep (orjson will not write it)."""
    valid = orjson.dumps(a_consent(NHS_NUMBERS[0]))
    deep = b'{"url":"http://x","extension":[' * depth + b'{"url":"http://x","valueString":"a"}' + b"]}" * depth
    return valid[:-1] + b',"extension":[' + deep + b"]}"


def _with_nul(consent: dict[str, Any]) -> dict[str, Any]:
    consent["provision"]["actor"][0]["reference"]["identifier"]["value"] += "\x00"
    return consent


@BODIES
@given(body=raw_bodies | mutated_consents().map(orjson.dumps) | st.integers(1, 600).map(nested_consent))
@example(body=orjson.dumps(_with_nul(an_objection(NHS_NUMBERS[0], "Y00001"))))  # no database keeps a NUL
@example(body=nested_consent(200))  # deep enough to exhaust fhir.resources' recursion
def test_posting_arbitrary_or_mutated_json_as_a_consent_never_gets_a_server_error(
    live_api: LiveApi, http: httpx.Client, body: bytes
) -> None:
    before = len(live_api.published)
    headers = {
        "Authorization": f"Bearer {token(org='RXX', role='coordinator')}",
        "Content-Type": "application/fhir+json",
    }

    response = http.post("/fhir/Consent", content=body, headers=headers)

    refused_or_served(response)
    assert len(live_api.published) == before + (response.status_code == 201)
    if response.status_code == 201:
        assert response.json()["resourceType"] == "Consent"
        assert b"\\u0000" not in live_api.published[-1].data


def test_a_valid_consent_is_taken_and_a_huge_one_is_413(live_api: LiveApi, http: httpx.Client) -> None:
    headers = {"Authorization": f"Bearer {token(org='RXX', role='coordinator')}"}
    consent = a_consent(NHS_NUMBERS[1])

    taken = http.post("/fhir/Consent", json=consent, headers=headers)
    padded = copy.deepcopy(consent) | {"text": {"status": "generated", "div": "x" * (2 << 20)}}
    huge = http.post("/fhir/Consent", json=padded, headers=headers)

    assert taken.status_code == 201, taken.text
    assert huge.status_code == 413
    assert huge.json()["issue"][0]["code"] == "too-long"


def test_an_expired_but_otherwise_good_token_is_refused(http: httpx.Client) -> None:
    old = jwt.encode(
        {"iss": ISSUER, "aud": AUDIENCE, "sub": "u", "org": "Y00001", "role": "clinician", "iat": 1, "exp": 2},
        TOKEN_SECRET.encode(),
        algorithm="HS256",
    )

    response = http.get("/fhir/Encounter", params={"patient": "p1"}, headers={"Authorization": f"Bearer {old}"})

    assert response.status_code == 401
    assert "expired" in response.json()["issue"][0]["diagnostics"]


# --- the coordination commands: referrals in, Parameters for a coordinator's actions -----------------

COMMANDS = [
    "/fhir/ServiceRequest",
    "/fhir/ServiceRequest/r1/$accept",
    "/fhir/ServiceRequest/r1/$decline",
    "/fhir/Patient/p1/$record-contact",
    "/fhir/EpisodeOfCare/e1/$close",
    "/fhir/Task/t1/$status",
]


@st.composite
def parameters(draw: st.DrawFn) -> Any:
    """FHIR Parameters with the names the commands read, and hostile values."""
    names = st.sampled_from(["coordinator", "at", "kind", "reason", "status", "referral", "goals", "practice", "x"])
    values = nasty_text | st.sampled_from(["2026-11-25T10:00:00Z", "2026-11-25", "face-to-face", "completed", ""])
    return {
        "resourceType": draw(st.sampled_from(["Parameters", "Parameters", "Bundle"])),
        "parameter": draw(
            st.lists(st.fixed_dictionaries({"name": names, "valueString": values}) | json_values, max_size=5)
        ),
    }


def referrals() -> st.SearchStrategy[Any]:
    subject = st.fixed_dictionaries(
        {
            "identifier": st.fixed_dictionaries(
                {"system": st.just(NHS), "value": nasty_text | st.sampled_from(NHS_NUMBERS)}
            )
        }
    )
    code = st.sampled_from(co.REFERRAL_SOURCES) | nasty_text
    source = st.builds(
        lambda c: [
            {
                "url": co.SOURCE_EXTENSION,
                "valueCodeableConcept": {"coding": [{"system": co.REFERRAL_SOURCE_SYSTEM, "code": c}]},
            }
        ],
        code,
    )
    return st.fixed_dictionaries(
        {"resourceType": st.just("ServiceRequest"), "status": st.just("active"), "intent": st.just("order")},
        optional={
            "subject": subject | json_values,
            "authoredOn": nasty_text,
            "performer": json_values,
            "extension": source | json_values,
        },
    )


@BODIES
@given(
    path=st.sampled_from(COMMANDS),
    body=raw_bodies | parameters().map(orjson.dumps) | referrals().map(orjson.dumps),
)
def test_hostile_coordination_commands_never_get_a_server_error(
    live_api: LiveApi, http: httpx.Client, path: str, body: bytes
) -> None:
    who = token(org="Y0PIC", role="coordinator") if "$" in path else token(org="Y00001", role="clinician")
    path = path.replace("/p1/", f"/{live_api.patient_ids()[0]}/")  # a person the record knows: deeper
    response = http.post(path, content=body, headers={"Authorization": f"Bearer {who}"})

    refused_or_served(response)
    if response.status_code < 300:
        assert all(b"\\u0000" not in e.data for e in live_api.published)
