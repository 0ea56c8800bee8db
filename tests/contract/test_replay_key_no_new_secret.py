"""A process never makes a new person-key secret for a database that already holds a record (a record
rebuilt by `carehub replay` that no key could be checked for, or a hub whose secrets.json was lost) or a
key fingerprint: it made one silently and keyed everyone it then saw apart from the people the record
holds (an A08 for someone in it made a second Patient). It refuses in one line, naming the secret to
copy, and leaves no secrets.json behind; a new or empty record, or a secret given, is served as ever."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import SecretStr

from hub.bootstrap import build
from hub.core.identity import person_key
from hub.core.record import apply_events
from hub.secret_keys import load_secrets
from hub.settings import SecuritySettings, Settings
from hub.store.database import DatabaseRefusedError, open_engine
from hub.store.key_fingerprint import fingerprint, held_fingerprint, hold_key_fingerprint
from hub.store.sql import SqlRecordUnitOfWork
from tests.crash_world import hospital

SECRET = "the-logs-key"
COPY = "Copy the secrets.json of the hub whose log it is into"


def a_record(folder: Path, *, fingerprinted: bool = False) -> None:
    """A record of a few people keyed under SECRET, as replay writes it (no secrets.json beside it)."""
    engine = open_engine(f"sqlite:///{folder / 'carehub.db'}")
    with SqlRecordUnitOfWork(engine) as uow:
        apply_events(uow, hospital(6, SECRET)[0])
        uow.commit()
    if fingerprinted:
        hold_key_fingerprint(engine, SECRET.encode(), source="test")
    engine.dispose()


def one_line(refused: pytest.ExceptionInfo[DatabaseRefusedError]) -> str:
    said = str(refused.value)
    assert "\n" not in said
    return said


def test_a_record_with_no_fingerprint_and_no_secret_is_refused_and_no_secret_is_made(tmp_path: Path) -> None:
    a_record(tmp_path)
    with pytest.raises(DatabaseRefusedError) as refused:
        build(Settings(data_dir=tmp_path))  # (`carehub up --data-dir` on it, as it was: a new secret, people split)
    said = one_line(refused)
    assert f"no secrets.json in {tmp_path} and no CAREHUB_SECURITY__KEY_SECRET" in said, said
    assert "already holds a record" in said, said
    assert f"{COPY} {tmp_path}, or set CAREHUB_SECURITY__KEY_SECRET as that hub has it" in said, said
    assert not (tmp_path / "secrets.json").exists()
    with pytest.raises(DatabaseRefusedError, match="already holds a record"):
        load_secrets(Settings(data_dir=tmp_path))  # (`carehub token`, say)
    assert not (tmp_path / "secrets.json").exists()

    # the log's secret given: served, and its fingerprint recorded as the first hub's on it
    keyed = Settings(data_dir=tmp_path, security=SecuritySettings(key_secret=SecretStr(SECRET)))
    services = build(keyed)
    assert held_fingerprint(services.engine) == fingerprint(SECRET.encode())
    events, people = hospital(6, SECRET)
    nhs = people[events[0].subject].nhs_number  # (an A08 for them finds them: no second Patient)
    assert services.reader.read("Patient", person_key(SECRET.encode(), nhs, None)) is not None
    services.engine.dispose()


def test_a_record_with_a_fingerprint_and_no_secret_leaves_no_wrong_secret_behind(tmp_path: Path) -> None:
    a_record(tmp_path, fingerprinted=True)
    with pytest.raises(DatabaseRefusedError) as refused:
        build(Settings(data_dir=tmp_path))  # (it made a secret, was refused on the fingerprint, and kept it)
    said = one_line(refused)
    assert "does not match the one the record in" in said and "its fingerprint is kept there" in said, said
    assert COPY in said, said
    assert not (tmp_path / "secrets.json").exists()


def test_a_new_or_empty_record_still_makes_its_own_secret(tmp_path: Path) -> None:
    build(Settings(data_dir=tmp_path / "new")).engine.dispose()
    assert (tmp_path / "new" / "secrets.json").is_file()
    open_engine(f"sqlite:///{tmp_path / 'empty' / 'carehub.db'}").dispose()  # (migrated, holding nothing)
    build(Settings(data_dir=tmp_path / "empty")).engine.dispose()
    assert (tmp_path / "empty" / "secrets.json").is_file()
