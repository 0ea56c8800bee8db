"""Bearer tokens: what `carehub token` issues is what the API accepts, and nothing else is."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta

import jwt
import pytest

from hub.api.auth import AUDIENCE, ISSUER, ROLES, AuthError, Principal, TokenVerifier, issue_token

SECRET = b"unit-test-signing-secret-of-32-bytes!"
NOW = datetime(2026, 3, 1, 9, 30, tzinfo=UTC)


def claims_of(token: str) -> dict[str, object]:
    return dict(jwt.decode(token, options={"verify_signature": False}))


def test_issued_token_verifies_to_the_principal_it_names() -> None:
    token = issue_token(SECRET, org="Y00001", role="clinician", user="gp-123", now=datetime.now(UTC))

    assert TokenVerifier(SECRET).verify(token) == Principal(org="Y00001", role="clinician", user="gp-123")


def test_token_without_user_names_the_org_and_role_as_subject() -> None:
    token = issue_token(SECRET, org="RX1", role="system", now=datetime.now(UTC))

    assert TokenVerifier(SECRET).verify(token).user == "RX1:system"


@pytest.mark.parametrize("role", ROLES)
def test_every_known_role_is_accepted(role: str) -> None:
    token = issue_token(SECRET, org="Y00001", role=role, now=datetime.now(UTC))

    assert TokenVerifier(SECRET).verify(token).role == role


def test_token_carries_the_standard_claims_and_lifetime() -> None:
    claims = claims_of(issue_token(SECRET, org="Y00001", role="auditor", now=NOW, ttl=timedelta(hours=2)))

    assert claims["iss"] == ISSUER
    assert claims["aud"] == AUDIENCE
    assert claims["org"] == "Y00001"
    assert claims["role"] == "auditor"
    assert claims["iat"] == int(NOW.timestamp())
    assert claims["exp"] == int((NOW + timedelta(hours=2)).timestamp())
    assert isinstance(claims["jti"], str) and claims["jti"]


def test_default_lifetime_is_eight_hours() -> None:
    claims = claims_of(issue_token(SECRET, org="Y00001", role="clinician", now=NOW))

    assert claims["exp"] == int((NOW + timedelta(hours=8)).timestamp())


def test_two_tokens_for_the_same_user_have_different_ids() -> None:
    first = claims_of(issue_token(SECRET, org="Y00001", role="clinician", now=NOW))
    second = claims_of(issue_token(SECRET, org="Y00001", role="clinician", now=NOW))

    assert first["jti"] != second["jti"]


def test_expired_token_is_refused_saying_it_expired() -> None:
    token = issue_token(SECRET, org="Y00001", role="clinician", now=datetime.now(UTC) - timedelta(hours=9))

    with pytest.raises(AuthError, match="expired") as caught:
        TokenVerifier(SECRET).verify(token)
    assert token not in caught.value.diagnostics


def test_token_signed_with_another_secret_is_refused_without_echoing_it() -> None:
    token = issue_token(b"some-other-secret-of-32-bytes-long!", org="Y00001", role="clinician", now=datetime.now(UTC))

    with pytest.raises(AuthError) as caught:
        TokenVerifier(SECRET).verify(token)
    assert "not signed by this hub" in caught.value.diagnostics
    assert "same --data-dir" in caught.value.diagnostics  # (a token from another hub's data directory)
    assert token not in caught.value.diagnostics
    assert token.split(".")[2] not in str(caught.value)


def test_token_for_another_audience_is_refused() -> None:
    claims = claims_of(issue_token(SECRET, org="Y00001", role="clinician", now=datetime.now(UTC)))
    token = jwt.encode({**claims, "aud": "someone-else"}, SECRET, algorithm="HS256")

    with pytest.raises(AuthError, match="audience"):
        TokenVerifier(SECRET).verify(token)


def test_token_from_another_issuer_is_refused() -> None:
    claims = claims_of(issue_token(SECRET, org="Y00001", role="clinician", now=datetime.now(UTC)))
    token = jwt.encode({**claims, "iss": "not-carehub"}, SECRET, algorithm="HS256")

    with pytest.raises(AuthError, match="not valid"):
        TokenVerifier(SECRET).verify(token)


def test_signed_token_with_an_unknown_role_is_refused() -> None:
    claims = claims_of(issue_token(SECRET, org="Y00001", role="clinician", now=datetime.now(UTC)))
    token = jwt.encode({**claims, "role": "superuser"}, SECRET, algorithm="HS256")

    with pytest.raises(AuthError, match="role"):
        TokenVerifier(SECRET).verify(token)


def test_unsigned_token_is_refused() -> None:
    claims = claims_of(issue_token(SECRET, org="Y00001", role="clinician", now=datetime.now(UTC)))
    token = jwt.encode(claims, None, algorithm="none")

    with pytest.raises(AuthError):
        TokenVerifier(SECRET).verify(token)


@pytest.mark.parametrize("garbage", ["", "not-a-jwt", "a.b.c"])
def test_malformed_token_is_refused(garbage: str) -> None:
    with pytest.raises(AuthError, match="not valid"):
        TokenVerifier(SECRET).verify(garbage)


def test_unknown_role_cannot_be_issued_and_the_error_names_the_allowed_roles() -> None:
    with pytest.raises(ValueError, match="superuser") as caught:
        issue_token(SECRET, org="Y00001", role="superuser", now=NOW)
    for role in ROLES:
        assert role in str(caught.value)


@pytest.mark.parametrize("org", ["", "Y1", "Y0000100000X", "Y00-01", "Y0 01"])
def test_implausible_ods_code_cannot_be_issued(org: str) -> None:
    with pytest.raises(ValueError, match="ODS"):
        issue_token(SECRET, org=org, role="clinician", now=NOW)


def test_token_contains_no_nhs_number() -> None:
    claims = claims_of(issue_token(SECRET, org="Y00001", role="clinician", user="gp-9", now=NOW))
    header = jwt.get_unverified_header(issue_token(SECRET, org="Y00001", role="clinician", now=NOW))
    # iat and exp are epoch seconds (ten digits too) and jti is random hex; no other claim may hold a digit run
    identifying = {k: v for k, v in claims.items() if k not in ("iat", "exp", "jti")} | header

    assert set(claims) == {"iss", "aud", "sub", "org", "role", "iat", "exp", "jti"}
    assert re.fullmatch(r"[0-9a-f]{32}", str(claims["jti"]))
    assert not re.search(r"\d{3}\s?\d{3}\s?\d{4}", json.dumps(identifying))
