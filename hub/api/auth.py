"""Bearer tokens: HS256 JWTs that `carehub token` issues and the running hub verifies.

A token names the user's organisation (ODS code) and role; the information-sharing policy decides
what that organisation may see. Tokens are never logged or echoed back.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

import jwt

from hub.core.fhir_read import ODS_CODE

ISSUER = "carehub"
AUDIENCE = "carehub-fhir"
ROLES = ("clinician", "coordinator", "auditor", "admin", "system")


class AuthError(Exception):
    """A request's credentials were missing or not acceptable (HTTP 401)."""

    def __init__(self, diagnostics: str) -> None:
        super().__init__(diagnostics)
        self.diagnostics = diagnostics


@dataclass(frozen=True)
class Principal:
    """Who is asking: organisation, role and user."""

    org: str
    role: str
    user: str


def checked_claims(org: str, role: str) -> str:
    """The organisation a token for `org` in `role` names (ValueError, saying why, if none can be issued)."""
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}; roles are: {', '.join(ROLES)}")
    org = org.strip().upper()
    if not ODS_CODE.fullmatch(org):
        raise ValueError(f"{org!r} is not an ODS code (3 to 10 letters and digits)")
    return org


def issue_token(
    secret: bytes,
    *,
    org: str,
    role: str,
    now: datetime,
    user: str | None = None,
    ttl: timedelta = timedelta(hours=8),
) -> str:
    """A signed token for a user of `org` in `role`, valid for `ttl` from `now`."""
    org = checked_claims(org, role)
    claims = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": user or f"{org}:{role}",
        "org": org,
        "role": role,
        "iat": int(now.timestamp()),
        "exp": int((now + ttl).timestamp()),
        "jti": uuid.uuid4().hex,
    }
    return jwt.encode(claims, secret, algorithm="HS256")


class TokenVerifier:
    """Checks signature, issuer, audience, expiry and role."""

    def __init__(self, secret: bytes) -> None:
        self._secret = secret

    def verify(self, token: str) -> Principal:
        try:
            claims = jwt.decode(
                token,
                self._secret,
                algorithms=["HS256"],
                audience=AUDIENCE,
                issuer=ISSUER,
                options={"require": ["exp", "iat", "iss", "aud", "sub"]},
            )
        except jwt.ExpiredSignatureError as exc:
            raise AuthError("the bearer token has expired; ask for a new one (carehub token)") from exc
        except jwt.InvalidAudienceError as exc:
            raise AuthError("the bearer token is not for this API (wrong audience)") from exc
        except jwt.InvalidSignatureError as exc:
            raise AuthError(
                "the bearer token was not signed by this hub: issue one with `carehub token` and the same "
                "--data-dir as the running hub"
            ) from exc
        except jwt.InvalidTokenError as exc:
            raise AuthError(f"the bearer token is not valid here ({type(exc).__name__})") from exc
        role, org = claims.get("role"), claims.get("org")
        if role not in ROLES or not isinstance(org, str) or not ODS_CODE.fullmatch(org):
            raise AuthError("the bearer token names no known role and organisation")
        return Principal(org=org, role=str(role), user=str(claims["sub"]))
