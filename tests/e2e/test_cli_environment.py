"""`carehub` and its environment as an operator sets it (real processes): a misspelt setting, a bad value
and a worker about to feed a shared consumer group into a local SQLite file are refused in one line, exit
2; `up` takes its ports and data directory from the environment, and logs its stop, a SIGTERM sent while
it starts included (then a clean one, no longer a kill)."""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(120)
CAREHUB = str(Path(sys.executable).with_name("carehub"))
NO_BROKER = "127.0.0.1:1"


def carehub(*args: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    clean = {"PATH": "/usr/bin:/bin", "COLUMNS": "250"} | env
    return subprocess.run([CAREHUB, *args], cwd=cwd, capture_output=True, text=True, timeout=100, env=clean)


def one_line(done: subprocess.CompletedProcess[str]) -> str:
    """What the command said, asserted to be one line and exit 2, with nothing of a traceback."""
    assert done.returncode == 2, done.stdout + done.stderr
    assert "Traceback" not in done.stdout + done.stderr and "─" not in done.stdout + done.stderr
    assert len(done.stdout.splitlines()) == 1, done.stdout
    return done.stdout.strip()


def test_a_worker_with_a_misspelt_database_setting_is_refused_before_it_joins_the_group(tmp_path: Path) -> None:
    env = {"KAFKA_BOOTSTRAP_SERVERS": NO_BROKER, "CAREHUB_DATABSE_URL": "postgresql+psycopg://db/carehub"}
    said = one_line(carehub("worker", "--data-dir", str(tmp_path / "hub"), cwd=tmp_path, env=env))
    assert said.startswith("CAREHUB_DATABSE_URL names no setting (did you mean CAREHUB_DATABASE_URL?)")
    assert not (tmp_path / "hub").exists()  # (no throwaway SQLite record made)
    unknown = one_line(carehub("topics", "create", cwd=tmp_path, env={"CAREHUB_POLICY__ENFORCED": "false"}))
    assert "CAREHUB_POLICY__ENFORCED names no setting (did you mean CAREHUB_POLICY__ENFORCE?)" in unknown


def test_a_bad_setting_value_is_one_line_naming_the_variable(tmp_path: Path) -> None:
    said = one_line(carehub("up", "--data-dir", str(tmp_path), cwd=tmp_path, env={"CAREHUB_MLLP__PORT": "25x75"}))
    assert said == "CAREHUB_MLLP__PORT='25x75': Input should be a valid integer, unable to parse string as an integer"


def test_a_worker_on_a_shared_kafka_with_the_default_sqlite_record_is_refused_unless_named(tmp_path: Path) -> None:
    hub = tmp_path / "hub"
    said = one_line(carehub("worker", "--data-dir", str(hub), cwd=tmp_path, env={"KAFKA_BOOTSTRAP_SERVERS": NO_BROKER}))
    assert said == (
        f"the record would go to a local SQLite file ({hub.resolve() / 'carehub.db'}) while the consumer group "
        f"carehub-record on Kafka at {NO_BROKER} is shared: set CAREHUB_DATABASE_URL to the hub's database (a "
        "sqlite:/// URL if a local file is meant)"
    )
    meant = {"KAFKA_BOOTSTRAP_SERVERS": NO_BROKER, "CAREHUB_DATABASE_URL": f"sqlite:///{hub / 'carehub.db'}"}
    done = carehub("worker", "--data-dir", str(hub), cwd=tmp_path, env=meant)
    assert done.returncode == 1 and "cannot be reached" in done.stdout, done.stdout + done.stderr  # (it went on)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.kafka
def test_up_takes_its_ports_and_data_dir_from_the_environment_and_a_sigterm_while_it_starts_stops_it_cleanly(
    tmp_path: Path,
) -> None:
    mllp, http, data = free_port(), free_port(), tmp_path / "from-env"
    env = {"CAREHUB_MLLP__PORT": str(mllp), "CAREHUB_HTTP__PORT": str(http), "CAREHUB_DATA_DIR": str(data)}
    proc = subprocess.Popen(
        [CAREHUB, "up"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={"PATH": "/usr/bin:/bin", "COLUMNS": "200"} | env,
    )
    try:
        logged, deadline = "", time.monotonic() + 60
        while "embedded Kafka broker listening" not in logged and time.monotonic() < deadline:
            logged += proc.stderr.readline() if proc.stderr else ""
        assert "embedded Kafka broker listening" in logged, logged
        proc.send_signal(signal.SIGTERM)  # (while its consumers join their groups)
        out, err = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out + logged + err
    assert re.search(rf"MLLP \(HL7 v2\)\s*│?\s*127\.0\.0\.1:{mllp}\b", out), out
    assert f"http://127.0.0.1:{http}/fhir" in out and (data / "carehub.db").is_file()
    assert "INFO hub.terminal: stopping (signal SIGTERM)" in logged + err
    assert "Traceback" not in err
