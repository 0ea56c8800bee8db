"""What the database refuses, on SQLite and PostgreSQL: a process whose person-key secret is not the
one its record was built with (migration 0014 keeps the fingerprint), a schema newer than the code,
and a schema behind it where the caller does not migrate; and the secrets a process on a server's
database will not make for itself."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic import command
from pydantic import SecretStr

from hub.bootstrap import build
from hub.secret_keys import load_secrets
from hub.settings import DatabaseSettings, SecuritySettings, Settings
from hub.store.database import (
    DatabaseRefusedError,
    _config,
    current_revision,
    head_revision,
    open_engine,
    upgrade,
)
from hub.store.key_fingerprint import fingerprint, hold_key_fingerprint


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest) -> str:
    return str(request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "postgres_url"))


def settings(data: Path, url: str, key: str) -> Settings:
    security = SecuritySettings(key_secret=SecretStr(key), token_secret=SecretStr("tokens"))
    return Settings(data_dir=data, db=DatabaseSettings(url=url), security=security)


def test_the_first_process_records_its_key_and_one_with_another_key_is_refused(
    database_url: str, tmp_path: Path
) -> None:
    first = build(settings(tmp_path / "a", database_url, "the-hub-key"), migrate=True)  # (the hub: `up`)
    again = build(settings(tmp_path / "b", database_url, "the-hub-key"))  # (the same secret: welcome)
    with pytest.raises(DatabaseRefusedError) as refused:
        build(settings(tmp_path / "c", database_url, "another-key"))
    said = str(refused.value)
    assert "(CAREHUB_SECURITY__KEY_SECRET) does not match the one the record in" in said
    assert "another-key" not in said and "the-hub-key" not in said
    with first.engine.connect() as connection:
        held = connection.execute(sa.text("SELECT fingerprint FROM key_fingerprint")).scalars().all()
    assert held == [fingerprint(b"the-hub-key")]
    assert fingerprint(b"the-hub-key") != fingerprint(b"another-key")
    assert b"the-hub-key".hex() not in held[0]
    first.engine.dispose()
    again.engine.dispose()


def test_a_one_off_command_compares_the_fingerprint_and_never_records_one(database_url: str, tmp_path: Path) -> None:
    # between `carehub migrate` and the hub's first start, an operator's command carrying a stale secret
    # (a laptop's secrets.json) recorded its fingerprint, and every pod of the hub was then refused
    engine = open_engine(database_url, migrate=True)
    hold_key_fingerprint(engine, b"a-stale-key", source="test", record=False)
    hold_key_fingerprint(engine, b"the-hub-key", source="test")  # (the hub, starting: it records)
    with pytest.raises(DatabaseRefusedError):
        hold_key_fingerprint(engine, b"a-stale-key", source="test", record=False)  # (and is compared)
    with engine.connect() as connection:
        held = connection.execute(sa.text("SELECT fingerprint FROM key_fingerprint")).scalars().all()
    assert held == [fingerprint(b"the-hub-key")]
    engine.dispose()


def test_a_secrets_file_made_in_another_folder_is_refused_and_named(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    build(Settings(data_dir=tmp_path / "hub", db=DatabaseSettings(url=url))).engine.dispose()
    with pytest.raises(DatabaseRefusedError) as refused:
        build(Settings(data_dir=tmp_path / "laptop", db=DatabaseSettings(url=url)))
    assert f"({(tmp_path / 'laptop' / 'secrets.json').resolve()}) does not match" in str(refused.value)


def test_a_database_migrated_to_0014_takes_the_fingerprint_of_whoever_opens_it_first(database_url: str) -> None:
    engine = open_engine(database_url, migrate=False)
    config = _config()
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "0013")
    upgrade(engine)
    assert current_revision(engine) == head_revision() == "0015"
    hold_key_fingerprint(engine, b"kept", source="test")
    hold_key_fingerprint(engine, b"kept", source="test")
    with pytest.raises(DatabaseRefusedError):
        hold_key_fingerprint(engine, b"other", source="test")
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.downgrade(config, "0013")
    assert not sa.inspect(engine).has_table("key_fingerprint")
    engine.dispose()


def test_a_server_database_with_no_secret_configured_makes_none(tmp_path: Path) -> None:
    url = "postgresql+psycopg://hub@db.invalid:5432/carehub"  # (never connected to: refused first)
    with pytest.raises(DatabaseRefusedError) as refused:
        load_secrets(Settings(data_dir=tmp_path, db=DatabaseSettings(url=url)))
    said = str(refused.value)
    assert "CAREHUB_SECURITY__KEY_SECRET and CAREHUB_SECURITY__TOKEN_SECRET not set" in said
    assert "as the hub's other processes have them" in said
    assert not (tmp_path / "secrets.json").exists()
    keyed = SecuritySettings(key_secret=SecretStr("k"))
    with pytest.raises(DatabaseRefusedError, match=r"^CAREHUB_SECURITY__TOKEN_SECRET not set"):
        load_secrets(Settings(data_dir=tmp_path, db=DatabaseSettings(url=url), security=keyed))
    assert load_secrets(Settings(data_dir=tmp_path)).key  # (the default local SQLite: made, as ever)


def _stamp(url: str, revision: str) -> None:
    engine = sa.create_engine(url)
    with engine.begin() as connection:
        connection.execute(sa.text("UPDATE alembic_version SET version_num = :r"), {"r": revision})
    engine.dispose()


def test_a_schema_newer_than_the_code_is_refused_in_one_line_and_not_migrated_backwards(
    database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    open_engine(database_url).dispose()
    _stamp(database_url, "0099")
    caplog.set_level(logging.INFO, logger="hub.store.database")
    for migrate in (True, "empty"):
        with pytest.raises(DatabaseRefusedError) as refused:
            open_engine(database_url, migrate=migrate)  # type: ignore[arg-type]
        assert str(refused.value).startswith(
            "the database's schema (0099) is newer than this CareHub (0015): run the newer version, or restore"
        )
    assert "migrating" not in caplog.text


def test_a_schema_behind_the_code_is_migrated_only_where_asked(database_url: str) -> None:
    engine = open_engine(database_url, migrate=False)
    config = _config()
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "0013")
    with pytest.raises(DatabaseRefusedError, match=r"\(0013\) is behind this CareHub \(0015\).*carehub migrate"):
        open_engine(database_url, migrate="empty")
    assert current_revision(engine) == "0013"
    open_engine(database_url, migrate=True).dispose()
    assert current_revision(engine) == "0015"
    engine.dispose()


@pytest.mark.postgres
def test_an_empty_database_is_created_by_any_process(postgres_url: str, tmp_path: Path) -> None:
    services = build(settings(tmp_path, postgres_url, "first"))  # (no schema yet: nothing older uses it)
    assert current_revision(services.engine) == head_revision()
    services.engine.dispose()
