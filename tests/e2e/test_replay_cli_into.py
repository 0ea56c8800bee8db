"""`carehub replay --into` a SQLite URL whose folder does not exist: a replay that fails leaves no folder
it made behind (as it leaves no new --into folder), and never removes a folder that was there before."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

CAREHUB = str(Path(sys.executable).with_name("carehub"))
NO_BROKER = "127.0.0.1:1"  # nothing listens there: the log cannot be reached


def replay_into(url: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {"PATH": "/usr/bin:/bin", "COLUMNS": "250", "KAFKA_BOOTSTRAP_SERVERS": NO_BROKER}
    args = [CAREHUB, "replay", "--into", url, "--workers", "1", "--data-dir", str(cwd / "hub")]
    return subprocess.run(args, capture_output=True, text=True, timeout=60, env=env, cwd=cwd, check=False)


@pytest.mark.parametrize("database", ["{tmp}/a/b/rebuilt.db", "a/b/rebuilt.db"], ids=["absolute", "relative"])
def test_a_replay_into_a_sqlite_url_in_new_folders_that_cannot_reach_the_log_removes_them(
    tmp_path: Path, database: str
) -> None:
    failed = replay_into(f"sqlite:///{database.format(tmp=tmp_path)}", tmp_path)
    assert failed.returncode == 1, failed.stdout + failed.stderr
    assert "KafkaConnectionError" in failed.stdout and "Traceback" not in failed.stderr
    assert not (tmp_path / "a").exists()


def test_a_failed_replay_into_a_sqlite_url_keeps_the_folders_that_were_there_and_removes_only_its_own(
    tmp_path: Path,
) -> None:
    kept = tmp_path / "kept"
    kept.mkdir()
    (kept / "notes.txt").write_text("someone else's")
    assert replay_into(f"sqlite:///{kept / 'rebuilt.db'}", tmp_path).returncode == 1
    assert (kept / "notes.txt").read_text() == "someone else's"
    assert replay_into(f"sqlite:///{kept / 'new' / 'rebuilt.db'}", tmp_path).returncode == 1
    assert kept.is_dir() and not (kept / "new").exists()
    assert (kept / "notes.txt").read_text() == "someone else's"
