"""`carehub replay` that fails or is stopped part way removes what it made itself (the database file it
made in a folder that was there, or the folder it made) and says so: a retry then starts from what was
there, never from an empty or half-made record, and a database that was there before it is kept."""

from __future__ import annotations

import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from typer.testing import CliRunner

import hub.cli  # (registers every carehub command on hub.cli_base.app)
from hub.cli_base import app
from hub.store.database import open_engine
from hub.store.tables import processed_event

pytestmark = pytest.mark.timeout(120)
CAREHUB = str(Path(sys.executable).with_name("carehub"))
NO_BROKER = "127.0.0.1:1"  # nothing listens there: the log cannot be reached
TREE = {"PYTHONPATH": os.environ["PYTHONPATH"]} if "PYTHONPATH" in os.environ else {}  # (another tree)


def replay(into: str, cwd: Path, broker: str = NO_BROKER) -> subprocess.Popen[str]:
    env = {"PATH": "/usr/bin:/bin", "COLUMNS": "250", "KAFKA_BOOTSTRAP_SERVERS": broker} | TREE
    args = [CAREHUB, "replay", "--into", into, "--workers", "1", "--data-dir", str(cwd / "hub")]
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=cwd)


def said(done: subprocess.Popen[str]) -> tuple[int, str, str]:
    out, err = done.communicate(timeout=60)
    return done.returncode, " ".join(out.split()), err


@pytest.fixture
def silent_broker() -> Iterator[str]:
    """A port that takes connections and never answers: a replay waits on it until stopped."""
    with socket.socket() as listening:
        listening.bind(("127.0.0.1", 0))
        listening.listen(16)
        yield f"127.0.0.1:{listening.getsockname()[1]}"


def test_a_replay_into_an_empty_folder_that_cannot_reach_the_log_leaves_the_folder_empty(tmp_path: Path) -> None:
    folder = tmp_path / "rebuilt"
    folder.mkdir()
    code, out, err = said(replay(str(folder), tmp_path))
    assert code == 1, out + err
    assert list(folder.iterdir()) == []
    assert "KafkaConnectionError" in out and "Traceback" not in err
    assert f"nothing kept: removed {folder / 'carehub.db'}, which this replay made; run it again" in out


def test_a_failed_replay_keeps_an_empty_database_that_was_there_before_it(tmp_path: Path) -> None:
    folder = tmp_path / "rebuilt"
    open_engine(f"sqlite:///{folder / 'carehub.db'}").dispose()  # (an empty record, made by someone else)
    code, out, err = said(replay(str(folder), tmp_path))
    assert code == 1, out + err
    with sqlite3.connect(folder / "carehub.db") as db:
        assert db.execute("SELECT count(*) FROM processed_event").fetchone() == (0,)
    assert f"nothing was written to {folder / 'carehub.db'}; run it again" in out


def wait_for_schema(database: Path, within_s: float = 60) -> None:
    """Until the replay has made its database and brought it to the current schema."""
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        if database.is_file():
            with sqlite3.connect(f"file:{database}?mode=ro", uri=True) as db:
                try:
                    if db.execute("SELECT count(*) FROM alembic_version").fetchone() == (1,):
                        return
                except sqlite3.OperationalError:
                    pass  # (not made yet, or locked while it is)
        time.sleep(0.1)
    raise AssertionError(f"no database at {database}")


@pytest.mark.parametrize("existing", [True, False], ids=["existing-folder", "new-folder"])
def test_a_replay_stopped_with_ctrl_c_removes_what_it_made(tmp_path: Path, silent_broker: str, existing: bool) -> None:
    folder = tmp_path / "rebuilt"
    if existing:
        folder.mkdir()
    running = replay(str(folder), tmp_path, broker=silent_broker)
    try:
        wait_for_schema(folder / "carehub.db")
        time.sleep(1.0)  # (reading the log now: waiting on the broker that never answers)
    finally:
        running.send_signal(signal.SIGINT)
    code, out, err = said(running)
    assert code == 130, out + err
    assert (list(folder.iterdir()) == []) if existing else not folder.exists()
    removed = folder / "carehub.db" if existing else folder
    assert f"replay interrupted: nothing kept: removed {removed}, which this replay made; run it again" in out
    assert "Traceback" not in err


def written(engine: sa.Engine) -> None:
    with engine.begin() as conn:
        conn.execute(sa.insert(processed_event).values(consumer="record", event_id="e1"))


def test_a_replay_whose_coordination_read_fails_after_the_record_was_written_removes_the_record_it_made(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import hub.replay
    import hub.replay_coordination

    async def record(bootstrap: str, engine: sa.Engine, **_: Any) -> hub.replay.ReplayResult:
        written(engine)
        return hub.replay.ReplayResult(1, 1, 0, 0, 0.1)

    async def coordination(*_: Any, **__: Any) -> None:
        raise RuntimeError("KafkaConnectionError: the broker went away")

    monkeypatch.setattr(hub.replay, "replay", record)
    monkeypatch.setattr(hub.replay_coordination, "rebuild", coordination)
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", NO_BROKER)
    monkeypatch.setenv("COLUMNS", "250")
    folder, kept = tmp_path / "rebuilt", tmp_path / "kept"
    done = CliRunner().invoke(app, ["replay", "--into", str(folder), "--data-dir", str(tmp_path / "hub")])
    assert done.exit_code == 1, done.output
    assert not folder.exists()  # (a retry is not refused as "already holds one")
    told = " ".join(done.output.split())
    assert f"the broker went away (replaying into {folder / 'carehub.db'}): nothing kept: removed {folder}" in told

    open_engine(f"sqlite:///{kept / 'carehub.db'}").dispose()  # an empty database that was there: kept
    again = CliRunner().invoke(app, ["replay", "--into", str(kept), "--data-dir", str(tmp_path / "hub")])
    assert again.exit_code == 1, again.output
    told = " ".join(again.output.split())
    assert f"{kept / 'carehub.db'} holds the record but not the coordination tasks; empty it" in told
    assert (kept / "carehub.db").is_file()
