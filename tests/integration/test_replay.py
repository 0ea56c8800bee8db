"""Replay: the record rebuilt from the Kafka log hashes the same as an uninterrupted live pass, and
`--until` gives the record as it stood then."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest

from hub.replay import replay
from hub.store.database import open_engine
from hub.store.hashing import record_hash
from tests.conftest import TansuProcess
from tests.integration.test_crash_safety import produce, reference_hash, the_events

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(300)]


async def test_replay_rebuilds_the_same_record_and_as_of_a_moment(tmp_path: Path, tansu: TansuProcess) -> None:
    events = the_events(3000)
    await produce(tansu.bootstrap, events)
    engine = open_engine(f"sqlite:///{tmp_path / 'replayed.db'}")
    result = await replay(tansu.bootstrap, engine)
    assert (result.events, result.applied, result.skipped) == (3000, 3000, 0)
    assert record_hash(engine) == reference_hash(tmp_path, events)
    engine.dispose()

    moment = sorted(e.time for e in events)[1500] + timedelta(seconds=0)
    earlier = [e for e in events if e.time <= moment]
    partial = open_engine(f"sqlite:///{tmp_path / 'as-of.db'}")
    await replay(tansu.bootstrap, partial, until=moment)
    reference_dir = tmp_path / "ref-as-of"
    reference_dir.mkdir()
    assert record_hash(partial) == reference_hash(reference_dir, earlier)
    assert record_hash(partial)[2] == len(earlier) < len(events)
    partial.dispose()


def test_the_replay_command_prints_the_hash(tmp_path: Path, tansu: TansuProcess) -> None:
    events = the_events(500)
    asyncio.run(produce(tansu.bootstrap, events))
    env = {k: v for k, v in os.environ.items() if not k.startswith("CAREHUB_")}
    env["KAFKA_BOOTSTRAP_SERVERS"] = tansu.bootstrap
    exe = str(Path(sys.executable).with_name("carehub"))
    run = subprocess.run(
        [exe, "replay", "--into", str(tmp_path / "new")],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    expected = reference_hash(tmp_path, events)
    assert expected[0] in run.stdout
    again = subprocess.run(
        [exe, "record", "hash", "--data-dir", str(tmp_path / "new")],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert again.stdout.split()[0] == expected[0]
    refused = subprocess.run(
        [exe, "replay", "--into", str(tmp_path / "new")],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert refused.returncode == 1
    assert "empty record" in refused.stdout
