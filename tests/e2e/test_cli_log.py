"""The `carehub` commands that read the Kafka log (replay, kpi, audit export), run as an operator runs
them against a real broker: the target of a replay is the one --into names and the summary says so and
accounts for every event; backwards periods, unusable paths and ignored options are refused in one line."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path

import pytest

from hub.bootstrap import build
from hub.kafka import free_port
from hub.settings import Settings
from schemas.agreements import Agreement, Category, LawfulBasis, Party, Purpose
from tests import locality_month
from tests.conftest import TansuProcess
from tests.integration.test_crash_safety import produce
from tests.integration.test_replay import a_tick

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(180)]
CAREHUB = str(Path(sys.executable).with_name("carehub"))
VERIFIER = Path(__file__).parents[2] / "hub" / "export_verify.py"


@dataclass(frozen=True)
class Log:
    bootstrap: str
    events: int  # on the log
    ticks: int  # of them clock ticks
    repeats: int  # of them an event already on the log, again


@pytest.fixture(scope="module")
def log() -> Iterator[Log]:
    """The scripted November 2026 locality on a broker, with the clock's ticks and one event twice."""
    month = locality_month.script()
    keys = sorted({e.subject for e in month})
    ticks = [a_tick(n, t, keys[n % len(keys)]) for n, t in enumerate(locality_month.tick_times())]
    events = [*sorted([*month, *ticks], key=lambda e: e.time), month[0]]  # (the first one, sent again)
    broker = TansuProcess(free_port()).start()
    try:
        asyncio.run(produce(broker.bootstrap, events))
        yield Log(broker.bootstrap, len(events), len(ticks), 1)
    finally:
        broker.stop()


def carehub(log: Log, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = {"PATH": "/usr/bin:/bin", "COLUMNS": "250", "KAFKA_BOOTSTRAP_SERVERS": log.bootstrap} | (env or {})
    return subprocess.run([CAREHUB, *args], capture_output=True, text=True, timeout=150, env=clean, check=False)


def test_replay_writes_where_into_says_whatever_the_database_url_and_accounts_for_every_event(
    log: Log, tmp_path: Path
) -> None:
    live = tmp_path / "live.db"
    done = carehub(
        log,
        "replay",
        "--into",
        str(tmp_path / "new"),
        "--workers",
        "1",
        env={"CAREHUB_DATABASE_URL": f"sqlite:///{live}"},
    )
    assert done.returncode == 0, done.stdout + done.stderr
    target = (tmp_path / "new" / "carehub.db").resolve()
    assert target.is_file() and not live.exists()
    said = " ".join(done.stdout.split())
    assert f"replaying into {target}, as --into says (CAREHUB_DATABASE_URL is not used)" in said
    applied = log.events - log.ticks - log.repeats
    assert (
        f"replayed {log.events} events in " in said
        and f"into {target}: {applied} applied, {log.ticks + log.repeats} with nothing to apply (clock ticks, "
        "which the record does not keep, or repeats of events already applied), 0 not CareHub events;"
        in said
    ), said
    assert not done.stdout.startswith("\n")  # (no spinner drawn where no one watches)
    hashed = carehub(log, "record", "hash", "--data-dir", str(tmp_path / "new"))
    assert hashed.stdout.split()[0] in done.stdout
    assert f"{applied} events applied" in hashed.stdout


def test_replay_into_a_database_url_writes_there(log: Log, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'rebuilt.db'}"
    done = carehub(log, "replay", "--into", url, "--workers", "1")
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"into {url}: " in " ".join(done.stdout.split())
    assert (tmp_path / "rebuilt.db").is_file()
    unknown = carehub(log, "replay", "--into", "nonsense://x")
    assert unknown.returncode == 2
    assert unknown.stdout.strip() == "--into 'nonsense://x' is neither a folder nor a database URL SQLAlchemy knows"


def test_a_replay_into_a_database_that_holds_a_record_names_it_and_shows_no_progress_after(
    log: Log, tmp_path: Path
) -> None:
    assert carehub(log, "replay", "--into", str(tmp_path / "new"), "--workers", "1").returncode == 0
    again = carehub(log, "replay", "--into", str(tmp_path / "new"), "--workers", "1")
    assert again.returncode == 2  # a refusal of the arguments, as the other bad targets are
    target = (tmp_path / "new" / "carehub.db").resolve()
    assert again.stdout.strip() == (
        f"replay writes into an empty record; {target} already holds one: "
        "give --into a new folder, or an empty database"
    )


def test_a_replay_over_a_backwards_period_or_into_a_file_is_refused_and_writes_nothing(
    log: Log, tmp_path: Path
) -> None:
    backwards = carehub(
        log, "replay", "--into", str(tmp_path / "new"), "--since", "2026-11-20", "--until", "2026-11-10"
    )
    assert backwards.returncode == 2
    assert backwards.stdout.strip() == (
        "--since 2026-11-20 00:00 GMT is after --until 2026-11-10 23:59 GMT: the period ends before it starts"
    )
    assert not (tmp_path / "new").exists()
    afile = tmp_path / "afile"
    afile.write_text("")
    into_a_file = carehub(log, "replay", "--into", str(afile))
    assert into_a_file.returncode == 2
    assert into_a_file.stdout.strip() == (
        f"--into {afile} is a file: give a new folder for the rebuilt record (or an empty database's URL)"
    )
    assert "Traceback" not in into_a_file.stderr


def test_kpis_for_a_month_the_log_holds_nothing_of_are_written_with_a_warning(log: Log, tmp_path: Path) -> None:
    out = tmp_path / "kpi"
    empty = carehub(log, "kpi", "--month", "1999-01", "--out", str(out), "--data-dir", str(tmp_path))
    assert empty.returncode == 0, empty.stdout + empty.stderr
    assert (
        "warning: the log holds no events in 1999-01 that the KPIs count (they fall in 2026-11): "
        "the report for 1999-01 was written all the same; check --month"
    ) in empty.stdout
    assert (out / "kpi-1999-01.csv").is_file() and (out / "kpi-1999-01.html").is_file()
    november = carehub(log, "kpi", "--month", "2026-11", "--out", str(out), "--data-dir", str(tmp_path))
    assert november.returncode == 0, november.stdout + november.stderr
    assert "warning" not in november.stdout


def test_kpis_out_to_a_file_is_one_line_not_a_traceback(log: Log, tmp_path: Path) -> None:
    afile = tmp_path / "afile"
    afile.write_text("")
    onto = carehub(log, "kpi", "--month", "2026-11", "--out", str(afile), "--data-dir", str(tmp_path))
    assert onto.returncode == 2
    assert onto.stdout.strip() == f"--out {afile} is a file: give a folder for kpi-2026-11.csv and kpi-2026-11.html"
    under = carehub(log, "kpi", "--month", "2026-11", "--out", str(afile / "kpi"), "--data-dir", str(tmp_path))
    assert under.returncode == 2
    assert under.stdout.strip().endswith(f"carehub: {afile / 'kpi'}: part of it is a file, not a folder")
    assert "Traceback" not in onto.stderr + under.stderr


def test_the_export_refuses_a_folder_for_out_and_org_without_payloads_and_counts_in_words(
    log: Log, tmp_path: Path
) -> None:
    data = str(tmp_path / "hub")
    build(Settings(data_dir=Path(data))).engine.dispose()  # a hub's state: its ledger and signing key
    folder = carehub(log, "audit", "export", "--out", str(tmp_path), "--data-dir", data)
    assert folder.returncode == 2
    assert (
        folder.stdout.strip() == f"--out {tmp_path} is a folder: give the file to write, e.g. {tmp_path / 'log.ndjson'}"
    )
    ignored = carehub(
        log, "audit", "export", "--out", str(tmp_path / "log.ndjson"), "--org", "AUD01", "--data-dir", data
    )
    assert ignored.returncode == 2
    assert "--org is used only with --payloads" in ignored.stdout
    assert not (tmp_path / "log.ndjson").exists()
    done = carehub(log, "audit", "export", "--out", str(tmp_path / "log.ndjson"), "--data-dir", data)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"{log.events} events, 1 signed checkpoint;" in done.stdout
    verified = subprocess.run(
        [sys.executable, "-I", str(VERIFIER), str(tmp_path / "log.ndjson"), str(tmp_path / "log.ndjson.pub.pem")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert verified.returncode == 0, verified.stdout
    assert f"verified: {log.events} events, 1 signed checkpoint" in verified.stdout
    assert "payloads: none included (hashes only)" in verified.stdout
    again = carehub(log, "audit", "export", "--out", str(tmp_path / "log.ndjson"), "--data-dir", data)
    assert again.returncode == 2  # (an existing export is not overwritten unasked)
    forced = carehub(log, "audit", "export", "--out", str(tmp_path / "log.ndjson"), "--force", "--data-dir", data)
    assert forced.returncode == 0, forced.stdout + forced.stderr


def test_the_export_refuses_a_data_dir_with_no_hub_and_an_auditor_no_agreement_names(log: Log, tmp_path: Path) -> None:
    out = tmp_path / "log.ndjson"
    typo = tmp_path / "typo"
    refused = carehub(log, "audit", "export", "--out", str(out), "--data-dir", str(typo))
    assert refused.returncode == 2
    assert refused.stdout.startswith(f"no CareHub state in {typo} (no carehub.db): check --data-dir"), refused.stdout
    assert not typo.exists() and not out.exists()
    # a hub whose one agreement names AUD01 for audit, and RXX, but not AUD02
    data = tmp_path / "hub"
    services = build(Settings(data_dir=data))
    services.agreements.load(_agreement("AUD01", "audit"), at=datetime.now(UTC))
    services.agreements.load(_agreement("AUD02", "direct-care"), at=datetime.now(UTC))
    before = len(list(services.ledger.entries()))
    blank = carehub(log, "audit", "export", "--out", str(out), "--payloads", "--org", " ", "--data-dir", str(data))
    assert (blank.returncode, blank.stdout.strip()) == (
        2,
        "--payloads needs --org: payloads follow the auditor's own agreements",
    )
    for org in ("AUD02", "AUD9"):  # named for another purpose; named nowhere (a typo)
        unknown = carehub(
            log, "audit", "export", "--out", str(out), "--payloads", "--org", org, "--data-dir", str(data)
        )
        assert unknown.returncode == 2
        said = " ".join(unknown.stdout.split())
        assert said == (
            f"--org {org}: no sharing agreement in force today names {org} as a party for audit, so every payload "
            "it did not supply itself would be withheld: check --org (carehub agreements list), or leave out "
            "--payloads for hashes only"
        )
        assert not out.exists()
    assert len(list(services.ledger.entries())) == before  # nothing recorded for an export never made
    done = carehub(log, "audit", "export", "--out", str(out), "--payloads", "--org", "aud01", "--data-dir", str(data))
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"{log.events} events, 1 signed checkpoint, " in done.stdout
    assert len(list(services.ledger.entries())) > before
    services.engine.dispose()


def _agreement(org: str, purpose: str) -> Agreement:
    return Agreement(
        id=f"audit-{org.lower()}-{purpose}",
        version=1,
        title=f"{org} for {purpose}",
        parties=(Party(code=org, name=org), Party(code="RXX", name="A hospital")),
        purposes=(Purpose(purpose),),
        categories=(Category("encounters"),),
        lawful_basis=LawfulBasis(article6="6(1)(e) public task", article9="9(2)(h) health or social care"),
        valid_from=date(2020, 1, 1),
    )


# --- an auditor's review (2026-12-06): each of these ended in a traceback, or said nothing ----------


@pytest.mark.parametrize(
    ("into", "said"),
    [
        ("mysql://x@y/z", "--into mysql://x@y/z: the record is kept in SQLite or PostgreSQL, not mysql"),
        ("sqlite://", "--into sqlite:// is a database in memory, gone when replay ends: give a file or a folder"),
        ("postgresql://127.0.0.1:1/x", "--into: database postgresql://127.0.0.1:1/x is not answering"),
    ],
)
def test_a_replay_into_a_database_it_cannot_keep_a_record_in_is_refused_in_one_line(
    log: Log, tmp_path: Path, into: str, said: str
) -> None:
    refused = carehub(log, "replay", "--into", into)
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert refused.stdout.startswith(said) and "Traceback" not in refused.stderr


def test_a_replay_into_a_database_whose_resources_were_deleted_but_not_its_event_ids_is_refused(
    log: Log, tmp_path: Path
) -> None:
    import sqlite3

    assert carehub(log, "replay", "--into", str(tmp_path / "new"), "--workers", "1").returncode == 0
    with sqlite3.connect(tmp_path / "new" / "carehub.db") as db:
        db.execute("DELETE FROM record_resource")
        db.execute("DELETE FROM record_identifier")
    again = carehub(log, "replay", "--into", str(tmp_path / "new"), "--workers", "1")
    assert again.returncode == 2, again.stdout + again.stderr
    assert "already holds one" in again.stdout and "Traceback" not in again.stderr


def test_a_replay_of_a_period_the_log_holds_nothing_of_says_the_record_is_empty(log: Log, tmp_path: Path) -> None:
    done = carehub(log, "replay", "--into", str(tmp_path / "new"), "--workers", "1", "--as-of", "2020-01-01")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "no event on the log falls in the period asked for" in " ".join(done.stdout.split())


def test_a_replay_that_cannot_reach_the_log_leaves_no_empty_record_behind(log: Log, tmp_path: Path) -> None:
    failed = carehub(
        log, "replay", "--into", str(tmp_path / "a" / "new"), env={"KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1"}
    )
    assert failed.returncode == 1
    assert "KafkaConnectionError" in failed.stdout
    assert not (tmp_path / "a").exists()
    assert "Unclosed AIOKafkaConsumer" not in failed.stderr
