"""The database as `carehub` commands meet it, run as an operator runs them: a person-key secret other
than the record's, or none on a server's database, a schema newer than the code, and a schema behind
it under a command that does not migrate: each one line and exit 2, nothing changed; `carehub migrate`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic import command

from hub.bootstrap import build
from hub.settings import DatabaseSettings, SecuritySettings, Settings
from hub.store.database import _config, current_revision

pytestmark = pytest.mark.timeout(120)
CAREHUB = str(Path(sys.executable).with_name("carehub"))
NHS = "9434765919"
A08 = f"MSH|^~\\&|PAS|RXX|CAREHUB|HUB|202612071200||ADT^A08|ROT1|P|2.4\rPID|1||{NHS}^^^NHS^NH||SMITH^JO||19500101|F\r"


def carehub(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    clean = {"PATH": "/usr/bin:/bin", "COLUMNS": "250"} | (env or {})
    return subprocess.run(
        [CAREHUB, *args], capture_output=True, text=True, timeout=100, env=clean, cwd=cwd, check=False
    )


def one_line_refusal(done: subprocess.CompletedProcess[str], said: str) -> None:
    assert done.returncode == 2, done.stdout + done.stderr
    assert said in " ".join(done.stdout.split()), done.stdout
    assert "Traceback" not in done.stdout + done.stderr
    assert "migrating" not in done.stderr


@pytest.mark.postgres
def test_another_key_secret_or_none_on_a_server_database_is_refused_before_anyone_is_keyed(
    postgres_url: str, tmp_path: Path
) -> None:
    security = SecuritySettings(key_secret="the-hub-key", token_secret="tokens")  # type: ignore[arg-type]
    hub = Settings(data_dir=tmp_path / "hub", db=DatabaseSettings(url=postgres_url), security=security)
    build(hub, migrate=True)  # (as `carehub up` does: the hub's own process records its fingerprint)
    message = tmp_path / "a08.hl7"
    message.write_text(A08)
    on_db = {"CAREHUB_DATABASE_URL": postgres_url, "CAREHUB_SECURITY__TOKEN_SECRET": "tokens"}
    rotated = carehub(
        "ingest", "hl7", str(message), "--data-dir", str(tmp_path / "w"),
        env=on_db | {"CAREHUB_SECURITY__KEY_SECRET": "another-key"},
    )  # fmt: skip
    one_line_refusal(rotated, "the person-key secret (CAREHUB_SECURITY__KEY_SECRET) does not match the one")
    laptop = tmp_path / "laptop"
    laptop.mkdir()
    keyless = carehub("ingest", "hl7", str(message), env={"CAREHUB_DATABASE_URL": postgres_url}, cwd=laptop)
    one_line_refusal(keyless, "CAREHUB_SECURITY__KEY_SECRET and CAREHUB_SECURITY__TOKEN_SECRET not set")
    assert not (laptop / "var" / "secrets.json").exists()
    engine = sa.create_engine(postgres_url)
    with engine.connect() as connection:
        assert connection.execute(sa.text("SELECT count(*) FROM record_resource")).scalar_one() == 0
    engine.dispose()


def test_a_subject_access_request_with_another_key_is_refused(tmp_path: Path) -> None:
    build(Settings(data_dir=tmp_path / "hub")).engine.dispose()
    other = {"CAREHUB_SECURITY__KEY_SECRET": "not-the-hub-key"}
    done = carehub("audit", "disclosures", "--nhs-number", NHS, "--data-dir", str(tmp_path / "hub"), env=other)
    one_line_refusal(done, "(CAREHUB_SECURITY__KEY_SECRET) does not match the one the record in sqlite:///")


def test_a_schema_newer_than_the_code_is_one_line_not_a_traceback(tmp_path: Path) -> None:
    build(Settings(data_dir=tmp_path / "hub")).engine.dispose()
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'hub' / 'carehub.db'}")
    with engine.begin() as connection:
        connection.execute(sa.text("UPDATE alembic_version SET version_num = '0099'"))
    for args in (("deadletters",), ("record", "hash"), ("migrate",)):
        done = carehub(*args, "--data-dir", str(tmp_path / "hub"))
        one_line_refusal(done, "the database's schema (0099) is newer than this CareHub (0015): run the newer")
        assert len(done.stdout.strip().splitlines()) <= 2  # (one line, wrapped at most once)
    assert current_revision(engine) == "0099"
    engine.dispose()


@pytest.mark.postgres
def test_a_listing_leaves_a_server_database_behind_the_code_to_carehub_migrate(
    postgres_url: str, tmp_path: Path
) -> None:
    security = SecuritySettings(key_secret="k", token_secret="t")  # type: ignore[arg-type]
    engine = build(Settings(data_dir=tmp_path, db=DatabaseSettings(url=postgres_url), security=security)).engine
    config = _config()
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.downgrade(config, "0013")
    on_db = {"CAREHUB_DATABASE_URL": postgres_url}
    for args in (("deadletters",), ("record", "hash"), ("agreements", "list")):
        done = carehub(*args, "--data-dir", str(tmp_path), env=on_db)
        one_line_refusal(done, "the database's schema (0013) is behind this CareHub (0015)")
        assert "run `carehub migrate` first" in " ".join(done.stdout.split())
    assert current_revision(engine) == "0013"
    migrated = carehub("migrate", "--data-dir", str(tmp_path), env=on_db)
    assert migrated.returncode == 0, migrated.stdout + migrated.stderr
    assert "migrated from 0013 to 0015" in migrated.stdout
    assert "already at 0015" in carehub("migrate", "--data-dir", str(tmp_path), env=on_db).stdout
    listed = carehub("deadletters", "--data-dir", str(tmp_path), env=on_db)
    assert listed.returncode == 0, listed.stdout + listed.stderr
    engine.dispose()
