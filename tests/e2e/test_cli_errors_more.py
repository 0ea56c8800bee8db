"""`carehub` as an operator meets its errors (real processes): a Kafka that cannot be reached and an HTTP port
in use are one line and an exit code, never a traceback; an option out of range is refused with exit 2; and
what the hub holds is printed with its terminal controls escaped (\\xNN), never sent to the terminal."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import jwt
import pytest

from adapters.hl7v2.to_fhir import map_message
from hub.api.auth import AUDIENCE
from hub.bootstrap import build
from hub.core.identity import person_key
from hub.core.ledger import Disclosure
from hub.core.ports import RecordEvent
from hub.core.record import apply_events
from hub.embedded import another_hub
from hub.settings import Settings
from schemas.subscriptions import Subscription
from tests.builders import an_adt, an_agreement
from tests.conftest import TansuProcess

pytestmark = pytest.mark.timeout(120)
CAREHUB = str(Path(sys.executable).with_name("carehub"))
TREE = {"PYTHONPATH": os.environ["PYTHONPATH"]} if "PYTHONPATH" in os.environ else {}  # (another tree)
ROOT = Path(__file__).resolve().parents[2]
NO_BROKER = "127.0.0.1:1"  # nothing listens there: Kafka cannot be reached
UNREACHABLE = (
    f"carehub: Kafka at {NO_BROKER} (KAFKA_BOOTSTRAP_SERVERS) cannot be reached: check KAFKA_BOOTSTRAP_SERVERS and "
    "that Kafka runs there and takes connections from this machine"
)
ESC = "\x1b"
RED = f"O{ESC}[31mBRIEN"  # a family name that, sent raw, turns the operator's terminal red
SHOWN = "O\\x1b[31mBRIEN"  # as the CLI prints it
PRACTICE = "Y00001"


def carehub(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = {"PATH": "/usr/bin:/bin", "COLUMNS": "250"} | TREE | (env or {})
    return subprocess.run(
        [CAREHUB, *args], cwd=cwd, capture_output=True, text=True, timeout=100, env=clean, check=False
    )


def unreachable(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return carehub(*args, cwd=cwd, env={"KAFKA_BOOTSTRAP_SERVERS": NO_BROKER} | (env or {}))


def said_in_one_line(done: subprocess.CompletedProcess[str], line: str) -> None:
    """The command ended with `line`, its last on stdout, exit 1 and nothing of a traceback anywhere."""
    assert done.returncode == 1, done.stdout + done.stderr
    assert done.stdout.splitlines()[-1] == line, done.stdout + done.stderr
    for noise in ("Traceback", "KafkaConnectionError", "Task was destroyed", "Unclosed"):
        assert noise not in done.stdout + done.stderr, done.stderr


# every command that talks to Kafka, as the walkthrough ran them; {hl7}, {csv}, {yaml}: an input file
TALKING_TO_KAFKA = [
    ("up", "--mllp-port", "0", "--http-port", "0"),
    ("worker",),
    ("ingest", "hl7", "{hl7}"),
    ("ingest", "register", "{csv}"),
    ("kpi", "--month", "2026-11", "--out", "kpi"),
    ("audit", "export", "--out", "log.ndjson"),
    ("agreements", "load", "{yaml}"),
    ("topics", "create"),
]


@pytest.mark.parametrize("command", TALKING_TO_KAFKA, ids=lambda c: " ".join(c[:2]))
def test_a_kafka_that_cannot_be_reached_is_one_line_naming_it_not_a_traceback(
    tmp_path: Path, command: tuple[str, ...]
) -> None:
    build(Settings(data_dir=tmp_path / "hub")).engine.dispose()  # (a hub: what the export and the KPIs read)
    (tmp_path / "adt.hl7").write_bytes(an_adt())
    files = {
        "hl7": str(tmp_path / "adt.hl7"),
        "csv": str(ROOT / "adapters" / "referrals" / "examples" / "1-register.csv"),
        "yaml": str(ROOT / "schemas" / "examples" / "agreement.example.yaml"),
    }
    args = [arg.format(**files) for arg in command]
    # (a SQLite record with a shared Kafka, named explicitly: meant, so `up` and `worker` go on to Kafka)
    record = {"CAREHUB_DATABASE_URL": f"sqlite:///{tmp_path / 'hub' / 'carehub.db'}"}
    said_in_one_line(unreachable(*args, "--data-dir", str(tmp_path / "hub"), cwd=tmp_path, env=record), UNREACHABLE)


def test_the_embedded_broker_of_a_hub_that_no_longer_answers_is_named_in_one_line(tmp_path: Path) -> None:
    hub = tmp_path / "hub"
    hub.mkdir()
    # the advert of a hub on this data directory (this process, alive) whose broker is gone
    (hub / "embedded-broker.json").write_text(f'{{"pid": {os.getpid()}, "broker_pid": 1, "bootstrap": "{NO_BROKER}"}}')
    (tmp_path / "adt.hl7").write_bytes(an_adt())
    done = carehub("ingest", "hl7", str(tmp_path / "adt.hl7"), "--data-dir", str(hub), cwd=tmp_path)
    said_in_one_line(
        done,
        f"carehub: the embedded Kafka broker at {NO_BROKER} cannot be reached: check that the hub running on "
        "--data-dir (carehub up) still runs, or set KAFKA_BOOTSTRAP_SERVERS",
    )


def advert(data_dir: Path, pid: int, broker_pid: int, bootstrap: str) -> None:
    """What a hub running on the data directory leaves there for the other commands."""
    data_dir.mkdir(exist_ok=True)
    (data_dir / "embedded-broker.json").write_text(
        f'{{"pid": {pid}, "broker_pid": {broker_pid}, "bootstrap": "{bootstrap}"}}'
    )


@pytest.mark.kafka
def test_a_second_hub_on_a_data_directory_a_hub_runs_on_is_refused_in_one_line(
    tmp_path: Path, tansu: TansuProcess
) -> None:
    """Two hubs on one data directory kept one record fed from two logs (the second only warned): what
    one applied, no replay of the other's log held."""
    hub = tmp_path / "hub"
    assert tansu.proc is not None
    advert(hub, os.getpid(), tansu.proc.pid, tansu.bootstrap)  # (this process stands for the running hub)
    done = carehub("up", "--mllp-port", "0", "--http-port", "0", "--data-dir", str(hub), cwd=tmp_path)
    said_in_one_line(
        done,
        f"carehub: a hub already runs on {hub} (its embedded broker at {tansu.bootstrap}): stop it first"
        " (Ctrl-C), or give this one another --data-dir",
    )
    assert "embedded Kafka broker listening" not in done.stderr  # (refused before starting one)


@pytest.mark.kafka
def test_only_a_live_hub_with_a_broker_that_answers_counts_as_running_there(
    tmp_path: Path, tansu: TansuProcess
) -> None:
    """A stale advert must not keep a hub from starting: a container restarted runs as PID 1 again and
    finds its own pid in the advert the killed one left; a reused pid has no broker where it says."""
    assert tansu.proc is not None
    hub = tmp_path / "hub"
    advert(hub, tansu.proc.pid, tansu.proc.pid, tansu.bootstrap)  # (a live process other than this one)
    assert another_hub(hub) == tansu.bootstrap
    advert(hub, os.getpid(), tansu.proc.pid, tansu.bootstrap)  # this process's own pid: the advert is stale
    assert another_hub(hub) is None
    with subprocess.Popen(["sleep", "30"]) as other:  # some other live process, the broker gone
        try:
            advert(hub, other.pid, 1, NO_BROKER)
            assert another_hub(hub) is None
        finally:
            other.kill()


@pytest.fixture
def port_in_use() -> Iterator[int]:
    """A 127.0.0.1 port another process listens on."""
    with socket.socket() as listening:
        listening.bind(("127.0.0.1", 0))
        listening.listen(1)
        yield listening.getsockname()[1]


def test_an_http_port_in_use_is_one_line_like_an_mllp_one_said_before_kafka_starts(
    tmp_path: Path, port_in_use: int
) -> None:
    done = carehub("up", "--mllp-port", "0", "--http-port", str(port_in_use), "--data-dir", str(tmp_path), cwd=tmp_path)
    said = f"carehub: error while attempting to bind on address ('127.0.0.1', {port_in_use}): address already in use"
    said_in_one_line(done, said)
    assert done.stdout.strip() == said
    assert "embedded Kafka broker listening" not in done.stderr  # (refused before the slow start-up)


@pytest.mark.parametrize(
    ("hours", "why"),
    [("-1", "expired when printed"), ("0", "expired when printed"), ("1000000", "longer than 744 hours (31 days)")],
)
def test_a_token_lifetime_of_no_time_or_over_a_month_is_refused(tmp_path: Path, hours: str, why: str) -> None:
    build(Settings(data_dir=tmp_path)).engine.dispose()  # (a hub's secrets: only --hours is wrong)
    done = carehub(
        "token", "--org", PRACTICE, "--role", "clinician", "--hours", hours, "--data-dir", str(tmp_path), cwd=tmp_path
    )
    assert done.returncode == 2, done.stdout + done.stderr
    assert done.stdout == ""  # no token
    assert "Invalid value for '--hours'" in done.stderr and why in done.stderr


def test_a_token_lives_at_most_the_month_its_help_says(tmp_path: Path) -> None:
    build(Settings(data_dir=tmp_path)).engine.dispose()
    helped = carehub("token", "--help", cwd=tmp_path)
    assert "Lifetime in hours: more than 0, at most 744 (31 days)" in helped.stdout
    done = carehub(
        "token", "--org", PRACTICE, "--role", "clinician", "--hours", "744", "--data-dir", str(tmp_path), cwd=tmp_path
    )
    assert done.returncode == 0, done.stdout + done.stderr
    claims = jwt.decode(done.stdout.strip(), options={"verify_signature": False}, audience=AUDIENCE)
    assert claims["exp"] - claims["iat"] == 744 * 3600


def test_the_huddle_shows_a_name_with_a_terminal_escape_as_written_not_as_colour(tmp_path: Path) -> None:
    services = build(Settings(data_dir=tmp_path))
    adt = [
        an_adt(trigger="A01", family=RED, control_id="H1", visit="V1", event_time="202611150900"),
        an_adt(trigger="A03", family=RED, control_id="H2", visit="V1", discharge="202611231100",
               event_time="202611231105"),
    ]  # fmt: skip
    events = [
        RecordEvent(m.event_id, m.event_type, m.source, m.event_time, m.person_key, m.payload)
        for raw in adt
        for m in map_message(raw, key_secret=services.secrets.key)
    ]
    with services.uow_factory() as uow:
        assert apply_events(uow, events).applied == len(events)
        uow.commit()
    services.agreements.load(an_agreement("RXX", PRACTICE), at=datetime.now(UTC))
    services.engine.dispose()

    done = carehub(
        "huddle",
        "--practice",
        PRACTICE,
        "--date",
        "2026-11-26",
        "--no-publish",
        "--data-dir",
        str(tmp_path),
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert SHOWN in done.stdout
    assert ESC not in done.stdout


@pytest.fixture
def hub(tmp_path: Path) -> Path:
    """A hub whose ledger, subscriptions and outbox hold terminal controls (names, ids and errors from outside)."""
    data = tmp_path / "hub"
    services = build(Settings(data_dir=data))
    person = person_key(services.secrets.key, "9434765919", None)
    at = datetime.now(UTC)
    read = ("Patient/p/_history/1#00",)
    services.ledger.append([Disclosure(at, PRACTICE, RED, "read", person, read, "permit", (f"bell\a{ESC}[2J",))])
    events = (f"uk.nhs.carehub.{ESC}]0;owned{ESC}\\referral.received.v1",)  # (it sets the terminal's title)
    services.subscriptions.save(Subscription(id="council-referrals", org="LA123", events=events))
    queued = {"subscription_id": "council-referrals", "event_id": f"evt{ESC}[1A", "person_key": None, "body": {}}
    services.outbox.enqueue([queued], now=at)
    [listed] = services.outbox.listing()
    services.outbox.settle(listed.id, status="failed", attempts=6, next_attempt_at=at, error=f"HTTP 500: {ESC}[2J")
    services.engine.dispose()
    return data


@pytest.mark.parametrize(
    ("command", "shown"),
    [
        (("audit", "disclosures", "--nhs-number", "9434765919"), (SHOWN, "bell\\x07\\x1b[2J")),
        (("subscriptions", "list"), ("uk.nhs.carehub.\\x1b]0;owned\\x1b\\referral.received.v1",)),
        (("deliveries", "list"), ("evt\\x1b[1A", "HTTP 500: \\x1b[2J")),
    ],
    ids=["disclosures", "subscriptions", "deliveries"],
)
def test_what_the_hub_holds_is_printed_with_its_terminal_controls_escaped(
    hub: Path, command: tuple[str, ...], shown: tuple[str, ...]
) -> None:
    done = carehub(*command, "--data-dir", str(hub), cwd=hub)
    assert done.returncode == 0, done.stdout + done.stderr
    for value in shown:
        assert value in done.stdout
    assert ESC not in done.stdout and "\a" not in done.stdout
