"""The person-key fingerprint a replayed record is given: that of the key its log was written under (the
events carry person keys made with it), so a hub started on it with another secret is refused, as on
the record it rebuilds, instead of making each person it sees a second Patient."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import sqlalchemy as sa

from hub.settings import Settings


@dataclass(frozen=True)
class LogKey:
    """The fingerprint of the key the log was written under, and where it was found."""

    fingerprint: str
    found_in: str


def log_key(settings: Settings) -> LogKey | None:
    """The fingerprint the hub's own database holds, else that of the person-key secret configured
    or kept in --data-dir's secrets.json; None where neither says (nothing is made to find out)."""
    from hub.secret_keys import kept_key
    from hub.store.key_fingerprint import fingerprint

    held = _held(settings.database())
    if held is not None:
        return held
    kept = kept_key(settings)
    return LogKey(fingerprint(kept[0]), kept[1]) if kept else None


def _held(url: str) -> LogKey | None:
    """The fingerprint the database at `url` holds, if it answers and holds one (a local file that is
    not there is not made)."""
    from hub.core.errors import StoreUnavailableError
    from hub.store.database import open_engine
    from hub.store.key_fingerprint import held_fingerprint

    parsed = sa.make_url(url)
    if parsed.get_backend_name() == "sqlite" and not (parsed.database and Path(parsed.database).is_file()):
        return None
    try:
        engine = open_engine(url, migrate=False)
        try:
            held = held_fingerprint(engine)
        finally:
            engine.dispose()
    except (StoreUnavailableError, sa.exc.SQLAlchemyError):
        return None  # (no database to read: the secret, where known, says the same)
    shown = parsed.render_as_string(hide_password=True)
    return LogKey(held, f"the record in {shown}") if held is not None else None


def keyed_note(key: LogKey | None, settings: Settings) -> str:
    """What replay's summary says of the rebuilt record's key: the secret it needs to be served."""
    kept = settings.data_dir / "secrets.json"
    copy = f"copy {kept} into the serving hub's --data-dir" if kept.is_file() else "copy the hub's secrets.json"
    how = f"{copy}, or set the same CAREHUB_SECURITY__KEY_SECRET"
    if key is None:
        database = sa.make_url(settings.database()).render_as_string(hide_password=True)
        return (
            f"warning: no person-key fingerprint recorded in the rebuilt record: neither {database} "
            f"nor {kept} nor CAREHUB_SECURITY__KEY_SECRET gives the key the log was written under. The first "
            f"hub on it records its own: start it only with that secret ({how}), or everyone it sees is keyed "
            "apart from their record"
        )
    return (
        "the rebuilt record needs the person-key secret the log was written under to be served (its "
        f"fingerprint, from {key.found_in}, is recorded in it, and a hub with another secret is refused): {how}"
    )
