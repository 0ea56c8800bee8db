"""The hub's two secrets: the person-key secret (an HMAC key: NHS number -> person key) and the token
signing secret. From settings (CAREHUB_SECURITY__*), else <data_dir>/secrets.json, which a process on a
local SQLite database makes on first use; one on a server's database never makes one (another process
would hold another: people keyed apart, tokens refused)."""

from __future__ import annotations

import json
import os
import secrets
from dataclasses import dataclass

import sqlalchemy as sa

from hub.settings import Settings
from hub.store.database import DatabaseRefusedError, is_local, make_private_folder

_ENV = "CAREHUB_SECURITY__KEY_SECRET"  # (where a key that is not from secrets.json comes from)


@dataclass(frozen=True)
class Secrets:
    """The person-key HMAC secret and the token signing secret (key_from: where the key came from)."""

    key: bytes
    token: bytes
    key_from: str = "given to the hub"


def load_secrets(settings: Settings) -> Secrets:
    """Secrets from settings, else from <data_dir>/secrets.json, created on first use where the
    database is local (DatabaseRefusedError where it is a server's)."""
    sec = settings.security
    if sec.key_secret and sec.token_secret:
        return Secrets(sec.key_secret.get_secret_value().encode(), sec.token_secret.get_secret_value().encode(), _ENV)
    path = settings.data_dir / "secrets.json"
    if not path.exists():
        _refuse_to_make(settings)
        make_private_folder(path.parent)
        fresh = {"key": secrets.token_hex(32), "token": secrets.token_hex(32)}
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            json.dump(fresh, out)
    stored = json.loads(path.read_text())
    key = sec.key_secret.get_secret_value() if sec.key_secret else stored["key"]
    token = sec.token_secret.get_secret_value() if sec.token_secret else stored["token"]
    return Secrets(key.encode(), token.encode(), _ENV if sec.key_secret else str(path.resolve()))


def kept_key(settings: Settings) -> tuple[bytes, str] | None:
    """The person-key secret as configured, else as <data_dir>/secrets.json keeps it, and where it
    came from; None where there is neither (never made here: a new one would key no one the hub has)."""
    if settings.security.key_secret is not None:
        return settings.security.key_secret.get_secret_value().encode(), _ENV
    path = settings.data_dir / "secrets.json"
    if not path.is_file():
        return None
    return str(json.loads(path.read_text())["key"]).encode(), str(path.resolve())


def _refuse_to_make(settings: Settings) -> None:
    """Only a hub on a local SQLite file makes its own secrets: on a shared database, the other
    processes have them already (or will be given them), and one made here would be another."""
    url = settings.database()
    if is_local(url):
        return
    missing = [
        f"CAREHUB_SECURITY__{name.upper()}"
        for name in ("key_secret", "token_secret")
        if getattr(settings.security, name) is None
    ]
    shown = sa.make_url(url).render_as_string(hide_password=True)
    raise DatabaseRefusedError(
        f"{' and '.join(missing)} not set, and no secrets.json in {settings.data_dir}: with the database at "
        f"{shown}, CareHub makes no secret of its own; configure CAREHUB_SECURITY__KEY_SECRET and "
        "CAREHUB_SECURITY__TOKEN_SECRET (or secrets.json in --data-dir) as the hub's other processes have them"
    )
