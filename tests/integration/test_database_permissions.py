"""The SQLite record holds patient data: the hub makes its file, the -wal and -shm beside it and its
folder for their user alone, whatever the umask, and names in a warning (leaving it as it is) one
that others may read already. Real files, real SQLite."""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from hub.bootstrap import build
from hub.settings import Settings
from hub.store.database import open_engine


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture(params=[0o022, 0o002, 0o000], ids=lambda m: f"umask {m:03o}")
def umask(request: pytest.FixtureRequest) -> Iterator[int]:
    """The process's umask for the test (the usual 022, a shared group's 002, none at all)."""
    before = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(before)


def written(url: str) -> sa.Engine:
    """An engine on `url` that has written (so SQLite has made its -wal and -shm), still open."""
    engine = open_engine(url)
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE probe (x INTEGER)"))
    return engine


def test_a_new_database_its_wal_and_shm_and_its_folder_are_the_users_alone(tmp_path: Path, umask: int) -> None:
    folder = tmp_path / "new" / "hub"
    engine = written(f"sqlite:///{folder / 'carehub.db'}")
    try:
        assert mode(folder) == 0o700
        files = {p.name: mode(p) for p in folder.iterdir()}
        assert files == {"carehub.db": 0o600, "carehub.db-wal": 0o600, "carehub.db-shm": 0o600}
    finally:
        engine.dispose()


def test_a_database_open_to_others_already_is_left_as_it_is_and_named_in_one_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    folder = tmp_path / "shared"
    folder.mkdir()
    db = folder / "carehub.db"
    written(f"sqlite:///{db}").dispose()
    folder.chmod(0o755)
    db.chmod(0o644)
    caplog.set_level(logging.WARNING, logger="hub.store.database")
    for _ in range(3):  # (several commands, or workers, in one process)
        open_engine(f"sqlite:///{db}").dispose()
    assert (mode(folder), mode(db)) == (0o755, 0o644)
    said = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert said == [
        f"{folder} is open to users other than its owner (mode 0755) and holds the hub's secrets (secrets.json) "
        f"and may hold patient data: chmod 700 {folder}",
        f"{db} is open to users other than its owner (mode 0644) and holds patient data: chmod 600 {db}",
    ]


def test_a_private_database_draws_no_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    db = tmp_path / "own" / "carehub.db"
    written(f"sqlite:///{db}").dispose()
    caplog.set_level(logging.WARNING, logger="hub.store.database")
    open_engine(f"sqlite:///{db}").dispose()
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []


def test_a_hub_built_in_a_new_data_directory_keeps_it_and_its_files_private(tmp_path: Path, umask: int) -> None:
    data_dir = tmp_path / "var"
    services = build(Settings(data_dir=data_dir))
    services.engine.dispose()
    assert (mode(data_dir / "carehub.db"), mode(data_dir / "secrets.json")) == (0o600, 0o600)
    assert mode(data_dir) == 0o700
