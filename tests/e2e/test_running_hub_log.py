"""Commands on the data directory of a running hub (`carehub up`, embedded broker) use its log: what
`ingest` sends reaches that hub's consumers, and `replay`, `kpi` and `audit export` read the log it
keeps in memory. Once the hub stops, they say plainly that there is no log to read. Real processes,
real sockets."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hub.embedded import ADVERT, advertised
from tests.builders import an_adt

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(180)]
CAREHUB = str(Path(sys.executable).with_name("carehub"))
ENV = {"PATH": "/usr/bin:/bin", "COLUMNS": "200"}


def carehub(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([CAREHUB, *args], cwd=cwd, capture_output=True, text=True, timeout=120, env=ENV)


def record_hash(data_dir: Path) -> str:
    done = carehub("record", "hash", "--data-dir", str(data_dir), cwd=data_dir)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout.strip()


def test_commands_on_a_running_hubs_data_directory_use_its_log_and_say_so_once_it_has_stopped(tmp_path: Path) -> None:
    hub = tmp_path / "hub"
    proc = subprocess.Popen(
        [CAREHUB, "up", "--mllp-port", "0", "--http-port", "0", "--data-dir", str(hub)],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=ENV,
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            if "Ctrl-C" in (proc.stdout.readline() if proc.stdout else ""):
                break
        assert proc.poll() is None, "carehub up stopped"
        said = json.loads((hub / ADVERT).read_text())
        assert said["pid"] == proc.pid and advertised(hub) == said["bootstrap"]

        message = tmp_path / "a03.hl7"
        adt = an_adt()
        message.write_bytes(adt if isinstance(adt, bytes) else adt.encode())
        sent = carehub("ingest", "hl7", str(message), "--data-dir", str(hub), cwd=tmp_path)
        assert sent.returncode == 0, sent.stdout + sent.stderr
        assert "no hub runs on" not in sent.stdout  # (it went to the running hub's log)
        deadline = time.monotonic() + 60  # applied by the running hub's consumers, not the command's own
        while time.monotonic() < deadline and " 0 resources" in (live := record_hash(hub)):
            time.sleep(0.5)
        assert " 0 resources" not in live

        replayed = carehub("replay", "--into", str(tmp_path / "replayed"), "--data-dir", str(hub), cwd=tmp_path)
        assert replayed.returncode == 0, replayed.stdout + replayed.stderr
        digest = live.split()[0]
        assert re.search(rf"^{digest}\s", replayed.stdout, re.MULTILINE), (live, replayed.stdout)
        kpis = carehub(
            "kpi", "--month", "2026-11", "--out", str(tmp_path / "kpi"), "--data-dir", str(hub), cwd=tmp_path
        )
        assert kpis.returncode == 0, kpis.stdout + kpis.stderr
        assert (tmp_path / "kpi" / "kpi-2026-11.csv").exists()
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    assert not (hub / ADVERT).exists()
    gone = carehub("kpi", "--month", "2026-11", "--out", str(tmp_path / "kpi"), "--data-dir", str(hub), cwd=tmp_path)
    assert gone.returncode == 2
    assert "carehub up" in gone.stdout and "KAFKA_BOOTSTRAP_SERVERS" in gone.stdout


def test_an_advert_left_by_a_hub_that_was_killed_or_a_garbled_one_is_ignored(tmp_path: Path) -> None:
    dead = subprocess.Popen(["true"])
    dead.wait()
    (tmp_path / ADVERT).write_text(json.dumps({"bootstrap": "127.0.0.1:1", "pid": dead.pid}))
    assert advertised(tmp_path) is None
    (tmp_path / ADVERT).write_text(json.dumps({"bootstrap": "127.0.0.1:1", "pid": os.getpid()}))
    assert advertised(tmp_path) == "127.0.0.1:1"
    for garbled in ("", "{", '{"pid": "x", "bootstrap": 1}', "[]"):
        (tmp_path / ADVERT).write_text(garbled)
        assert advertised(tmp_path) is None, garbled
