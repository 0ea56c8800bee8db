"""`carehub deadletters` as an analyst runs it: which message failed and why, and one entry whole
(real SQLite file, the real console script in a subprocess)."""

from __future__ import annotations

import contextlib
import os
import pty
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from hub.bootstrap import build
from hub.settings import Settings
from hub.store.sql import SqlDeadLetters
from tests.builders import an_adt

pytestmark = pytest.mark.timeout(120)
CAREHUB = str(Path(sys.executable).with_name("carehub"))
AT = datetime(2026, 11, 3, 11, 5, tzinfo=UTC)
BAD_NHS = "1234567890"  # fails the Modulus 11 check


def outcome(diagnostics: str, *expression: str) -> dict[str, object]:
    issue = {"severity": "error", "code": "invalid", "diagnostics": diagnostics, "expression": list(expression)}
    return {"resourceType": "OperationOutcome", "issue": [issue]}


# Kept as the adapters keep them: an HL7 v2 message whole (with a terminal escape in it, as a hostile
# or broken sender might send), and a referral file's row as the CSV header plus the row.
HL7 = an_adt(control_id="CTRL-0042", nhs_number=BAD_NHS, family="O'BRIEN\x1b[2J", encoding="latin-1") + b"ZXX|\xe9\r"
CSV = (
    b"nhs_number,gp_practice_ods,referred_on,referrer,addressed_to,reason,referral_id\r\n"
    b"123,Y01,2026-11-01,Y01,X,frail,REF-77\r\n"
)


def carehub(*args: str) -> subprocess.CompletedProcess[bytes]:
    env = {"PATH": "/usr/bin:/bin", "COLUMNS": "400"}  # (wide: a long tmp path in a cell must not wrap)
    if "PYTHONPATH" in os.environ:  # (the command runs the code this test runs, an older checkout's too)
        env["PYTHONPATH"] = os.environ["PYTHONPATH"]
    return subprocess.run([CAREHUB, *args], capture_output=True, timeout=100, env=env, check=False)


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A hub's data directory whose dead-letter store holds a rejected ADT (id 1) and a referral row (id 2)."""
    data_dir = tmp_path_factory.mktemp("deadletters")
    services = build(Settings(data_dir=data_dir))
    store = SqlDeadLetters(services.engine)
    store.keep(
        received_at=AT,
        source="urn:ods:RXX",
        origin="mllp:10.0.0.7:51234",
        reason=outcome(f"NHS number {BAD_NHS} fails the Modulus 11 check", "PID-3"),
        payload=HL7,
    )
    store.keep(
        received_at=AT + timedelta(minutes=1),
        source="urn:ods:Y01",
        origin="file:/in/referrals.csv#row=3",
        reason=outcome("nhs_number is not a valid NHS number", "row 3", "nhs_number"),
        payload=CSV,
    )
    services.engine.dispose()
    return data_dir


def rows(stdout: str) -> list[list[str]]:
    """A Rich table's rows, their cells as they read."""
    return [[c.strip() for c in line.split("│")[1:-1]] for line in stdout.splitlines() if line.startswith("│")]


def test_the_listing_names_each_entry_by_its_id_its_message_and_the_reason(hub: Path) -> None:
    done = carehub("deadletters", "--data-dir", str(hub))
    assert done.returncode == 0, done.stderr
    said = done.stdout.decode()
    assert said.splitlines()[0].strip() == "2 dead letters outstanding, 0 resolved"
    header = next([h.strip() for h in line.split("┃")[1:-1]] for line in said.splitlines() if "┃" in line)
    assert header == ["id", "received", "source", "origin", "message", "reason"]
    assert rows(said) == [
        [
            "2",
            "2026-11-03 11:06:00 GMT",
            "urn:ods:Y01",
            "file:/in/referrals.csv#row=3",
            "row 3, referral_id REF-77",
            "nhs_number is not a valid NHS number [row 3, nhs_number]",
        ],
        [
            "1",
            "2026-11-03 11:05:00 GMT",
            "urn:ods:RXX",
            "mllp:10.0.0.7:51234",
            "MSH-10 CTRL-0042 (ADT^A03)",
            f"NHS number {BAD_NHS} fails the Modulus 11 check [PID-3]",
        ],
    ]
    assert "carehub deadletters show ID" in said


def test_show_raw_writes_the_kept_bytes_exactly_so_they_can_be_fixed_and_resent(hub: Path) -> None:
    for id_, kept in (("1", HL7), ("2", CSV)):
        done = carehub("deadletters", "show", id_, "--raw", "--data-dir", str(hub))
        assert done.returncode == 0, done.stderr
        assert done.stdout == kept


def test_show_prints_the_entry_its_reason_and_its_content_with_terminal_controls_escaped(hub: Path) -> None:
    done = carehub("deadletters", "show", "1", "--data-dir", str(hub))
    assert done.returncode == 0, done.stderr
    said = done.stdout.decode()
    assert "MSH-10 CTRL-0042 (ADT^A03)" in said
    assert f"NHS number {BAD_NHS} fails the Modulus 11 check [PID-3]" in said
    assert f"{len(HL7):,} bytes" in said
    content = said.split("\\xNN):\n", 1)[1].splitlines()
    assert content[0].startswith("MSH|^~\\&|PAS|RXX|CAREHUB|CAREHUB|202611031105||ADT^A03^ADT_A03|CTRL-0042|")
    assert content[2].startswith(f"PID|1||{BAD_NHS}^^^NHS^NH~M100^^^RXX^MR||O'BRIEN\\x1b[2J^JANE")
    assert content[-1] == "ZXX|\\xe9"  # (a byte that is not UTF-8, as it is)
    assert "\x1b" not in said and "\r" not in said


def test_show_raw_to_a_terminal_is_refused_and_writes_nothing_there(hub: Path) -> None:
    terminal, its_end = pty.openpty()
    try:
        command = [CAREHUB, "deadletters", "show", "1", "--raw", "--data-dir", str(hub)]
        env = {"PATH": "/usr/bin:/bin", "COLUMNS": "400"} | {k: v for k, v in os.environ.items() if k == "PYTHONPATH"}
        done = subprocess.run(command, stdout=its_end, stderr=subprocess.PIPE, env=env, timeout=100, check=False)
        os.set_blocking(terminal, False)
        with contextlib.suppress(BlockingIOError):
            assert os.read(terminal, 4096) == b""
    finally:
        os.close(terminal)
        os.close(its_end)
    assert done.returncode == 2
    assert b"--raw writes the bytes as kept, not to a terminal" in done.stderr


def test_show_takes_the_data_dir_given_before_it(hub: Path) -> None:
    done = carehub("deadletters", "--data-dir", str(hub), "show", "2", "--raw")
    assert (done.returncode, done.stdout) == (0, CSV), done.stderr


def test_show_of_an_id_the_store_does_not_hold_says_so_in_one_line(hub: Path) -> None:
    said = "no dead letter 99 in the dead-letter store: carehub deadletters lists their ids"
    done = carehub("deadletters", "show", "99", "--data-dir", str(hub))
    assert (done.returncode, done.stdout.decode().strip()) == (2, said)
    raw = carehub("deadletters", "show", "99", "--raw", "--data-dir", str(hub))  # (its stdout goes to a file)
    assert (raw.returncode, raw.stdout, raw.stderr.decode().strip()) == (2, b"", said)


@pytest.mark.kafka
def test_a_message_ingest_rejects_is_listed_by_its_control_id_and_shown_as_it_was_sent(tmp_path: Path) -> None:
    sent = an_adt(control_id="RJ-20261103-0007", nhs_number=BAD_NHS, mrn=None)
    (tmp_path / "discharge.hl7").write_bytes(sent)
    ingested = carehub("ingest", "hl7", str(tmp_path / "discharge.hl7"), "--data-dir", str(tmp_path))
    assert ingested.returncode == 1, ingested.stderr  # (rejected AE)
    listed = carehub("deadletters", "--data-dir", str(tmp_path))
    assert listed.returncode == 0, listed.stderr
    [[id_, _, source, _, message, reason]] = rows(listed.stdout.decode())
    assert (source, message) == ("urn:ods:RXX", "MSH-10 RJ-20261103-0007 (ADT^A03)")
    assert "PID-3" in reason
    shown = carehub("deadletters", "show", id_, "--raw", "--data-dir", str(tmp_path))
    assert (shown.returncode, shown.stdout) == (0, sent), shown.stderr


def test_an_operator_works_through_the_queue_resolving_what_was_done_and_reopening_a_mistake(tmp_path: Path) -> None:
    services = build(Settings(data_dir=tmp_path))
    for n in (1, 2, 3):  # (the third: CTRL-2 sent again an hour later, refused again)
        SqlDeadLetters(services.engine).keep(
            received_at=AT + timedelta(minutes=min(n, 2), hours=n // 3),
            source="urn:ods:RXX",
            origin="mllp:10.0.0.7:51234",
            reason=outcome(f"NHS number {BAD_NHS} fails the Modulus 11 check", "PID-3"),
            payload=an_adt(control_id=f"CTRL-{min(n, 2)}", nhs_number=BAD_NHS),
        )
    services.engine.dispose()
    at = ("--data-dir", str(tmp_path))

    typo = carehub("deadletters", "resolve", "1", "7", "--note", "resent fixed", *at)
    assert typo.returncode == 2 and b"no dead letter 7" in typo.stdout + typo.stderr
    done = carehub("deadletters", "resolve", "1", "--note", "resent fixed as CTRL-1b", "--by", "ann.on-call", *at)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "resolved 1 dead letter (1) by ann.on-call" in done.stdout.decode()

    listed = carehub("deadletters", *at).stdout.decode()
    assert "1 dead letter outstanding, 1 resolved (--all lists them too)" in listed
    assert [r[0] for r in rows(listed)] == ["2"]
    assert "refused 2 times, last 2026-11-03 12:07:00 GMT" in " ".join(listed.split())
    every = carehub("deadletters", "--all", *at).stdout.decode()
    assert [(r[0], r[-1]) for r in rows(every)][-1][0] == "1"
    assert "by ann.on-call: resent fixed as CTRL-1b" in " ".join(every.split())
    shown = carehub("deadletters", "show", "1", *at).stdout.decode()
    assert "status" in shown and "resent fixed as CTRL-1b" in shown

    theirs = carehub("deadletters", "--source", "rxx", *at).stdout.decode()  # (a code, in either case)
    assert [r[0] for r in rows(theirs)] == ["2"] and "listed: from rxx only" in theirs
    none = carehub("deadletters", "--source", "urn:ods:RYY", *at).stdout.decode()
    assert "no dead letters from urn:ods:RYY to list (1 outstanding, 1 resolved in all" in " ".join(none.split())

    back = carehub("deadletters", "reopen", "1", *at)
    assert "dead letter 1 is outstanding again" in back.stdout.decode()
    assert [r[0] for r in rows(carehub("deadletters", *at).stdout.decode())] == ["2", "1"]
