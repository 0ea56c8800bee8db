"""`carehub replay --into DIR` keeps the person-key fingerprint of the key the log was written under
(that of the secret CAREHUB_SECURITY__KEY_SECRET or --data-dir's secrets.json gives, once checked against
the person keys on the log: another hub's, from a stray var/ say, is never recorded), so a hub started on
the rebuilt record with another secret is refused instead of keying people apart; the summary says the
same secret is needed, and the record hash is the same with the fingerprint there. Only once the replay
has written the record: a failed one leaves none."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from pydantic import SecretStr

from hub.bootstrap import build
from hub.kafka import free_port
from hub.settings import SecuritySettings, Settings
from hub.store.database import DatabaseRefusedError, open_engine
from hub.store.key_fingerprint import fingerprint, hold_key_fingerprint
from tests.conftest import TansuProcess
from tests.integration.test_crash_safety import SECRET, produce, the_events

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(180)]
CAREHUB = str(Path(sys.executable).with_name("carehub"))


@pytest.fixture(scope="module")
def bootstrap() -> Iterator[str]:
    broker = TansuProcess(free_port()).start()
    try:
        asyncio.run(produce(broker.bootstrap, the_events(40)))
        yield broker.bootstrap
    finally:
        broker.stop()


def carehub(bootstrap: str, cwd: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    env = {"PATH": "/usr/bin:/bin", "COLUMNS": "250", "KAFKA_BOOTSTRAP_SERVERS": bootstrap, **env}
    return subprocess.run([CAREHUB, *args], capture_output=True, text=True, timeout=150, env=env, cwd=cwd, check=False)


def held(folder: Path) -> list[str]:
    engine = sa.create_engine(f"sqlite:///{folder / 'carehub.db'}")
    try:
        with engine.connect() as conn:
            return list(conn.execute(sa.text("SELECT fingerprint FROM key_fingerprint")).scalars())
    finally:
        engine.dispose()


def source_hub(tmp_path: Path, key: str = SECRET) -> tuple[Path, bytes]:
    """A hub's data directory (its record database with its fingerprint, and secrets.json), keyed
    with `key` (that of the log, unless another hub's is asked for)."""
    source = tmp_path / "hub"
    source.mkdir(mode=0o700, parents=True)
    (source / "secrets.json").write_text(json.dumps({"key": key, "token": "a-token-secret"}))
    build(Settings(data_dir=source)).engine.dispose()
    return source, key.encode()


@pytest.mark.parametrize("kept_in", ["beside its record", "alone"])
def test_a_replayed_record_refuses_a_hub_with_another_key_secret_and_serves_one_with_the_same(
    bootstrap: str, tmp_path: Path, kept_in: str
) -> None:
    source, key = source_hub(tmp_path)
    if kept_in == "alone":  # (a data directory whose record is elsewhere: the key alone says)
        (source / "carehub.db").unlink()
    done = carehub(bootstrap, tmp_path, "replay", "--into", "rebuilt", "--workers", "1", "--data-dir", str(source))
    assert done.returncode == 0, done.stdout + done.stderr
    rebuilt = tmp_path / "rebuilt"
    assert held(rebuilt) == [fingerprint(key)]
    said = " ".join(done.stdout.split())
    assert "needs the person-key secret the log was written under" in said, said
    assert "secrets.json into the serving hub's --data-dir, or set the same CAREHUB_SECURITY__KEY_SECRET" in said, said

    assert "checked: its fingerprint is recorded in it" in said, said

    # `carehub up --data-dir rebuilt` as it was: it made a secret of its own, then split people
    with pytest.raises(DatabaseRefusedError, match=r"Copy the secrets\.json of the hub whose log it is"):
        build(Settings(data_dir=rebuilt))
    assert not (rebuilt / "secrets.json").exists()  # (none made: it was left behind, and in the way)
    other = Settings(data_dir=rebuilt, security=SecuritySettings(key_secret=SecretStr("another-hubs-key")))
    with pytest.raises(DatabaseRefusedError, match="does not match the one the record"):
        build(other)
    shutil.copy(source / "secrets.json", rebuilt / "secrets.json")
    build(Settings(data_dir=rebuilt)).engine.dispose()  # the same secret: served

    printed = done.stdout.strip().splitlines()[-1]
    assert carehub(bootstrap, tmp_path, "record", "hash", "--data-dir", "rebuilt").stdout.strip() == printed


def test_a_replay_keyed_by_the_environment_records_that_keys_fingerprint(bootstrap: str, tmp_path: Path) -> None:
    # (on two processes: the record is loaded from their shards into the database that holds it)
    args = ["replay", "--into", "rebuilt", "--workers", "2", "--data-dir", str(tmp_path / "none")]
    done = carehub(bootstrap, tmp_path, *args, CAREHUB_SECURITY__KEY_SECRET=SECRET)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "on 2 processes" in done.stdout
    assert held(tmp_path / "rebuilt") == [fingerprint(SECRET.encode())]
    assert not (tmp_path / "none").exists()  # (no secret made to fingerprint)


def test_a_replay_that_knows_no_key_records_none_and_says_so(bootstrap: str, tmp_path: Path) -> None:
    done = carehub(bootstrap, tmp_path, "replay", "--into", "rebuilt", "--workers", "1", "--data-dir", "none")
    assert done.returncode == 0, done.stdout + done.stderr
    assert held(tmp_path / "rebuilt") == []
    said = " ".join(done.stdout.split())
    assert "no person-key fingerprint recorded" in said, said
    assert not (tmp_path / "none").exists()


def test_a_replay_into_an_empty_database_keyed_by_another_secret_is_refused_before_folding(
    bootstrap: str, tmp_path: Path
) -> None:
    source, _ = source_hub(tmp_path)
    target = tmp_path / "elsewhere" / "carehub.db"
    engine = open_engine(f"sqlite:///{target}")
    hold_key_fingerprint(engine, b"another-hubs-key", source="test")
    engine.dispose()
    args = ["replay", "--into", f"sqlite:///{target}", "--workers", "1", "--data-dir", str(source)]
    refused = carehub(bootstrap, tmp_path, *args)
    assert refused.returncode == 2, refused.stdout + refused.stderr
    said = " ".join(refused.stdout.split())
    assert said == (
        f"--into sqlite:///{target} holds the fingerprint of another person-key secret than the one the log was "
        f"written under (that in {source.resolve() / 'secrets.json'}): everyone in the rebuilt "
        "record would be keyed apart from it; give --into a new folder, or an empty database that no hub with "
        "another secret has used"
    ), said
    assert held(target.parent) == [fingerprint(b"another-hubs-key")]  # (a database that was there: kept as it was)


def test_a_replay_from_a_folder_holding_another_hubs_var_records_no_fingerprint_of_it(
    bootstrap: str, tmp_path: Path
) -> None:
    """Run where another hub's var/ is (the default --data-dir), replay recorded that hub's fingerprint,
    and told the operator to copy its secrets.json: the log's own was then refused on the record."""
    elsewhere = tmp_path / "cwd"
    stray, _ = source_hub(elsewhere, key="another-hubs-key")
    stray.rename(elsewhere / "var")
    done = carehub(bootstrap, elsewhere, "replay", "--into", "../rebuilt", "--workers", "1")
    assert done.returncode == 0, done.stdout + done.stderr
    rebuilt = tmp_path / "rebuilt"
    assert held(rebuilt) == []
    said = " ".join(done.stdout.split())
    assert "warning: no person-key fingerprint recorded in the rebuilt record" in said, said
    kept = elsewhere.resolve() / "var" / "secrets.json"
    assert f"the person-key secret in {kept} does not give the person keys the log holds" in said, said
    assert f"copy {kept}" not in said, said
    assert "another-hubs-key" not in done.stdout + done.stderr  # (where it is, never the secret)

    # served with the log's secret (no other recorded first), and refused without one
    with pytest.raises(DatabaseRefusedError, match="already holds a record"):
        build(Settings(data_dir=rebuilt))
    (rebuilt / "secrets.json").write_text(json.dumps({"key": SECRET, "token": "t"}))
    build(Settings(data_dir=rebuilt)).engine.dispose()
    assert held(rebuilt) == [fingerprint(SECRET.encode())]

    # the log's secret in the environment is checked and wins over the stray var/ (its database lost to it)
    again = carehub(
        bootstrap, elsewhere, "replay", "--into", "../again", "--workers", "1", CAREHUB_SECURITY__KEY_SECRET=SECRET
    )
    assert again.returncode == 0, again.stdout + again.stderr
    assert held(tmp_path / "again") == [fingerprint(SECRET.encode())]
    assert "that in CAREHUB_SECURITY__KEY_SECRET, which gives the person keys the log holds" in " ".join(
        again.stdout.split()
    )


def test_a_failed_replay_into_an_empty_database_leaves_no_fingerprint_in_it(tmp_path: Path) -> None:
    source, _ = source_hub(tmp_path)
    target = tmp_path / "empty" / "carehub.db"
    open_engine(f"sqlite:///{target}").dispose()  # (migrated, holding nothing)
    args = ["replay", "--into", f"sqlite:///{target}", "--workers", "1", "--data-dir", str(source)]
    failed = carehub("127.0.0.1:1", tmp_path, *args)  # (no broker there)
    assert failed.returncode == 1, failed.stdout + failed.stderr
    assert f"nothing was written to sqlite:///{target}" in " ".join(failed.stdout.split()), failed.stdout
    assert held(target.parent) == []
