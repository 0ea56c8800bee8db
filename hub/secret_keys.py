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

KEY_ENV = "CAREHUB_SECURITY__KEY_SECRET"  # (where a key that is not from secrets.json comes from)


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
        return Secrets(
            sec.key_secret.get_secret_value().encode(), sec.token_secret.get_secret_value().encode(), KEY_ENV
        )
    path = settings.data_dir / "secrets.json"
    if not path.exists():
        _refuse_to_make(settings)
        if sec.key_secret is None:  # (a token secret alone may be made: it keys no one)
            _refuse_a_new_key_for_a_record(settings)
        make_private_folder(path.parent)
        fresh = {"key": secrets.token_hex(32), "token": secrets.token_hex(32)}
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            json.dump(fresh, out)
    stored = json.loads(path.read_text())
    key = sec.key_secret.get_secret_value() if sec.key_secret else stored["key"]
    token = sec.token_secret.get_secret_value() if sec.token_secret else stored["token"]
    return Secrets(key.encode(), token.encode(), KEY_ENV if sec.key_secret else str(path.resolve()))


def _refuse_a_new_key_for_a_record(settings: Settings) -> None:
    """Refused (DatabaseRefusedError, before secrets.json is made) where the local database already
    holds a record or a key fingerprint: a new person-key secret would key everyone it sees apart from
    the people it holds (an A08 for someone in it: a second Patient), or be refused on the fingerprint
    and be left behind, in the way of the right one. A record rebuilt by `carehub replay`, or a hub
    whose secrets.json was lost, is served only with the secret its log was written under."""
    held = _record_held(settings.database())
    if held is None:
        return
    kind, shown = held
    path = (settings.data_dir / "secrets.json").resolve()
    if kind == "fingerprint":
        why = (
            f"a new person-key secret ({path}) does not match the one the record in {shown} was built with (no new "
            "one would: its fingerprint is kept there), so none is made"
        )
    else:
        why = (
            f"{shown} already holds a record: a new person-key secret would key everyone in it apart from their "
            "record, so none is made"
        )
    raise DatabaseRefusedError(
        f"no secrets.json in {settings.data_dir} and no CAREHUB_SECURITY__KEY_SECRET: {why}. Copy the secrets.json "
        f"of the hub whose log it is into {settings.data_dir}, or set CAREHUB_SECURITY__KEY_SECRET as that hub has it"
    )


def _record_held(url: str) -> tuple[str, str] | None:
    """What the local SQLite database at `url` holds that a new person-key secret would key apart
    ("fingerprint", else "record") and the database as a person reads it; None where it holds neither,
    is not there (nothing is made here), or is not a database a hub could open either."""
    import sqlite3
    from pathlib import Path

    parsed = sa.make_url(url)
    if parsed.get_backend_name() != "sqlite" or not parsed.database or parsed.database == ":memory:":
        return None
    file = Path(parsed.database).resolve()
    if not file.is_file():
        return None
    shown = parsed.render_as_string(hide_password=True)
    try:  # (read and write, never create: a read-only open of a WAL database may not see its last writes)
        connection = sqlite3.connect(f"{file.as_uri()}?mode=rw", uri=True)
    except sqlite3.Error:
        return None
    try:
        tables = {row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if "key_fingerprint" in tables and connection.execute("SELECT 1 FROM key_fingerprint").fetchone():
            return "fingerprint", shown
        if "record_resource" in tables and connection.execute("SELECT 1 FROM record_resource LIMIT 1").fetchone():
            return "record", shown
    except sqlite3.Error:
        return None
    finally:
        connection.close()
    return None


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
