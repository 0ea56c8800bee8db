"""Registers and referrals through `carehub ingest`, as an operator runs it: the embedded Kafka-protocol
broker (Tansu), the consumers and a SQLite record, all real; good rows land in the record, bad rows in
the dead-letter store with their row and field."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from hub.bootstrap import Services, build
from hub.core.identity import person_key
from hub.instants import UK
from hub.settings import Settings
from schemas.events import coordination as co

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(240)]
CAREHUB = str(Path(sys.executable).with_name("carehub"))
EXAMPLES = Path(__file__).resolve().parents[2] / "adapters" / "referrals" / "examples"
GOOD, BAD, LATER = "9434765919", "9434765918", "9990000018"
HEADER = "nhs_number,practice_ods,non_elective_admissions_12m,long_term_conditions,frailty,birth_date"


def carehub(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    pythonpath = {"PYTHONPATH": os.environ["PYTHONPATH"]} if "PYTHONPATH" in os.environ else {}  # (another tree)
    return subprocess.run(
        [CAREHUB, *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=200,
        env={"PATH": "/usr/bin:/bin", "COLUMNS": "250", **pythonpath},
    )


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_good_rows_reach_the_record_and_bad_rows_the_dead_letter_store_with_row_and_field(tmp_path: Path) -> None:
    register = write(
        tmp_path / "register.csv",
        f"{HEADER}\n{GOOD},Y90001,3,2,severe,1938-02-01\n{BAD},Y90001,1,1,mild,\n{LATER},Y90001,0,4,frailish,\n",
    )
    first = carehub(
        "ingest", "register", str(register), "--extracted-on", "2026-11-02", "--data-dir", "d", cwd=tmp_path
    )
    assert first.returncode == 1, first.stdout + first.stderr
    assert "row 3, field nhs_number: fails the Modulus 11 check" in first.stdout
    assert "row 4, field frailty: 'frailish' is not one of none, mild, moderate, severe" in first.stdout
    assert "3 row(s) from 1 file(s): accepted 1, rejected 2" in first.stdout
    assert GOOD not in first.stderr and BAD not in first.stderr  # INFO logs name no NHS number

    example = json.loads((EXAMPLES / "4-vcse-referrals.json").read_text())[0]
    impossible = {**example, "referral_id": "VCS-9", "referred_on": "2026-11-31"}
    vcse_docs = [{**example, "nhs_number": GOOD}, {**impossible, "nhs_number": GOOD}]
    referrals = json.dumps(vcse_docs)
    vcse = write(tmp_path / "vcse.json", referrals)
    again = carehub("ingest", "referrals", str(vcse), "--data-dir", "d", cwd=tmp_path)
    assert again.returncode == 1, again.stdout + again.stderr
    assert "row 2, field referred_on: '2026-11-31' is not a real date" in again.stdout

    services = build(Settings(data_dir=tmp_path / "d"))
    key = person_key(services.secrets.key, GOOD, None)
    observations = services.reader.search("Observation", key)
    measures = {o["code"]["coding"][0]["code"]: o for o in observations}
    assert measures["non-elective-admissions-12m"]["valueInteger"] == 3
    assert measures["frailty"]["valueCodeableConcept"]["coding"][0]["code"] == co.FRAILTY["severe"]
    (request,) = services.reader.search("ServiceRequest", key)
    assert request["status"] == "active"
    assert request["performer"][0]["identifier"]["value"] == "Y0PIC"
    assert request["meta"]["source"] == "urn:ods:VCS001"
    for rejected in (BAD, LATER):
        assert not services.reader.everything(person_key(services.secrets.key, rejected, None))

    kept = services.dead_letters.recent(20)
    reasons = {row["reason"]["issue"][0]["diagnostics"]: row for row in kept}
    assert len(kept) == 3
    nhs_row = next(row for text, row in reasons.items() if text.startswith("row 3, field nhs_number"))
    assert nhs_row["payload"] == f"{HEADER}\n{BAD},Y90001,1,1,mild,\n".encode()
    assert nhs_row["origin"].endswith("register.csv#row=3")
    assert nhs_row["reason"]["issue"][0]["expression"] == ["row 3", "nhs_number"]
    assert nhs_row["source"] == "urn:ods:Y90001"
    date_row = next(row for text, row in reasons.items() if text.startswith("row 2, field referred_on"))
    assert json.loads(date_row["payload"])["referral_id"] == "VCS-9"


def ingested(services: Services) -> dict[str, list[dict[str, object]]]:
    """What the adapter wrote (the coordination consumer's tasks and clock ticks move with the clock)."""
    return {kind: services.reader.search(kind, None) for kind in ("Patient", "ServiceRequest", "Observation")}


def test_the_examples_are_accepted_and_a_second_ingest_leaves_the_record_as_it_was(tmp_path: Path) -> None:
    first = carehub("ingest", "referrals", str(EXAMPLES), "--data-dir", "d", cwd=tmp_path)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "18 row(s) from 5 file(s): accepted 18" in first.stdout
    # no hub runs there: the record has the rows, but the log the KPIs read does not, and it says so
    said = " ".join(first.stdout.split())
    assert "no hub runs on d and no Kafka is configured" in said and "the KPIs" in said and "carehub up" in said
    services = build(Settings(data_dir=tmp_path / "d"))
    before = ingested(services)
    counts = services.reader.counts()
    assert counts["ServiceRequest"] == 6
    assert counts["Observation"] >= 33
    declined = [r for r in services.reader.search("ServiceRequest", None) if r["status"] == "revoked"]
    assert len(declined) == 1
    again = carehub("ingest", "referrals", str(EXAMPLES), "--format", "", "--data-dir", "d", cwd=tmp_path)
    assert again.returncode == 2  # an empty --format is refused, nothing sent
    again = carehub("ingest", "referrals", str(EXAMPLES), "--data-dir", "d", cwd=tmp_path)
    assert again.returncode == 0, again.stdout + again.stderr
    assert ingested(services) == before  # same resources, same versions: every event applied once


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (("ingest", "referrals", "nope.json"), "no such file or folder: nope.json"),
        (("ingest", "register", "nope.csv"), "no such file or folder: nope.csv"),
        (("ingest", "referrals", "--format", "pdf", "x.json"), "--format must be one of"),
        (("ingest", "register", "--extracted-on", "2 Nov", "x.csv"), "Invalid value for '--extracted-on'"),
    ],
)
def test_bad_paths_and_options_exit_2_before_anything_is_sent(tmp_path: Path, args: tuple[str, ...], says: str) -> None:
    result = carehub(*args, "--data-dir", "d", cwd=tmp_path)
    assert result.returncode == 2
    assert says in result.stdout + result.stderr


def test_an_extraction_date_in_the_future_is_refused_before_any_row_is_read(tmp_path: Path) -> None:
    register = write(tmp_path / "register.csv", f"{HEADER}\n{GOOD},Y90001,3,2,severe,1938-02-01\n")
    later = (datetime.now(UK) + timedelta(days=2)).date().isoformat()  # (past any clock skew)
    result = carehub("ingest", "register", str(register), "--extracted-on", later, "--data-dir", "d", cwd=tmp_path)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "row" not in result.stdout  # (no row rejected, one by one, for the option's date)
    said = " ".join(result.stdout.split())
    assert said.startswith(f"--extracted-on {later} is in the future (today is "), said
    assert "nothing was sent" in said
    assert not (tmp_path / "d").exists()  # no hub started: nothing published, nothing dead-lettered


def test_a_semicolon_or_windows_1252_csv_is_refused_whole_saying_where_and_how_to_save_it(tmp_path: Path) -> None:
    header = f"{HEADER},extracted_on"
    (tmp_path / "in").mkdir()
    write(tmp_path / "in" / "good.csv", f"{header}\n{GOOD},Y90001,3,2,severe,1938-02-01,2026-11-02\n")
    semicolons = f"{header}\r\n{LATER},Y90001,0,4,mild,,2026-11-02\r\n".replace(",", ";")
    write(tmp_path / "in" / "semicolons.csv", semicolons)
    asc = "nhs_number,gp_practice_ods,referred_on,referrer,addressed_to,reason,referrer_name\r\n"
    windows = f"{asc}{LATER},Y90001,2026-10-01,E09000008,Y0PIC,owes £5,Renée\r\n".encode("cp1252")
    (tmp_path / "in" / "windows.csv").write_bytes(windows)

    result = carehub("ingest", "referrals", "in", "--data-dir", "d", cwd=tmp_path)

    assert result.returncode == 1, result.stdout + result.stderr
    offset = windows.index("£".encode("cp1252"))
    assert "│ row 1 (the header) is separated by semicolons (7 columns" in result.stdout
    assert f"│ row 2 (line 2): byte 0xA3 at offset {offset} of the file" in result.stdout
    assert "3 row(s) from 3 file(s): accepted 1, rejected 2" in result.stdout
    services = build(Settings(data_dir=tmp_path / "d"))
    assert services.reader.everything(person_key(services.secrets.key, GOOD, None))
    kept = {row["origin"].rsplit("/", 1)[-1]: row for row in services.dead_letters.recent(20)}
    assert sorted(kept) == ["semicolons.csv", "windows.csv"]
    assert kept["semicolons.csv"]["payload"] == semicolons.encode()
    assert kept["semicolons.csv"]["reason"]["issue"][0]["diagnostics"] == (
        "row 1 (the header) is separated by semicolons (7 columns split on ';'), as Excel saves CSV in some "
        'languages; the hub reads comma-separated CSV only: save it as "CSV UTF-8 (Comma delimited)" in Excel and '
        "send the file again"
    )
    assert kept["windows.csv"]["payload"] == windows
    assert kept["windows.csv"]["reason"]["issue"][0]["diagnostics"] == (
        f"row 2 (line 2): byte 0xA3 at offset {offset} of the file (counting from 0) is not UTF-8 "
        "(in Windows-1252 it is '£'): the file is not UTF-8 text; save it as \"CSV UTF-8 (Comma delimited)\" in "
        "Excel and send the file again"
    )


def test_a_file_sent_twice_keeps_its_bad_row_once_and_says_the_second_time_it_is_already_kept(tmp_path: Path) -> None:
    bad = f"{BAD},Y90001,1,1,mild,"
    register = write(tmp_path / "register.csv", f"{HEADER}\n{GOOD},Y90001,3,2,severe,1938-02-01\n{bad}\n")
    args = ("ingest", "register", str(register), "--extracted-on", "2026-11-02", "--data-dir", "d")

    first, again = carehub(*args, cwd=tmp_path), carehub(*args, cwd=tmp_path)

    assert first.returncode == again.returncode == 1, first.stdout + again.stdout + again.stderr
    assert "row 3, field nhs_number: fails the Modulus 11 check" in again.stdout
    assert "already in the dead-letter store" not in first.stdout
    assert "check it with the person's record); already in the dead-letter store, not kept again" in again.stdout
    assert "2 row(s) from 1 file(s): accepted 1, rejected 1 (1 already in the dead-letter store)" in again.stdout
    (kept,) = build(Settings(data_dir=tmp_path / "d")).dead_letters.recent(20)
    assert kept["payload"] == f"{HEADER}\n{bad}\n".encode()
    assert kept["origin"].endswith("register.csv#row=3")
