"""The council walkthrough, as an operator runs it: an adult social care CSV giving the person's name,
address, phone, carer, the referring social worker and the council's case number goes through
`carehub ingest referrals` (embedded broker, consumers, SQLite record, all real), nothing of it is named
as ignored, the record holds it, and `carehub huddle` names the person instead of "(name not held)"."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from hub.bootstrap import build
from hub.core.identity import person_key
from hub.instants import UK
from hub.settings import Settings
from tests.builders import an_agreement

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(240)]
CAREHUB = str(Path(sys.executable).with_name("carehub"))
NHS = "9434765919"
HEADER = (
    "referral_id,nhs_number,birth_date,gp_practice_ods,referred_on,referrer,referrer_name,addressed_to,reason,"
    "given_name,family_name,address_line_1,address_line_2,postcode,phone,carer_name,carer_relationship,"
    "carer_phone,worker_name,worker_phone,worker_email,case_reference"
)


def carehub(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    pythonpath = {"PYTHONPATH": os.environ["PYTHONPATH"]} if "PYTHONPATH" in os.environ else {}
    return subprocess.run(
        [CAREHUB, *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=200,
        env={"PATH": "/usr/bin:/bin", "COLUMNS": "250", **pythonpath},
    )


def test_a_council_referral_with_the_persons_details_names_them_on_the_huddle_agenda(tmp_path: Path) -> None:
    today = datetime.now(UK).date()
    referred = (today - timedelta(days=2)).isoformat()
    row = (
        f"WCC-77,{NHS},1941-03-09,Y90001,{referred},E10000023,Example County Council,Y0PIC,Carer strain,"
        "Mary,Okafor,12 Elm Road,Exampleton,ex1 2ab,01632 960123,Daniel Okafor,Son,07700 900456,"
        "Sam Patel,01632 960999,sam.patel@example.gov.uk,MOS-448812"
    )
    misdialled = (  # (someone else, their worker's phone mistyped: left out, the referral kept)
        f"WCC-78,9990000026,1938-05-01,Y90001,{referred},E10000023,Example County Council,Y0PIC,Falls,"
        ",,,,,,,,,Sam Patel,0163 29,,MOS-448813"
    )
    (tmp_path / "council.csv").write_text(f"{HEADER}\n{row}\n{misdialled}\n")
    ingest = carehub("ingest", "referrals", "council.csv", "--data-dir", "d", cwd=tmp_path)
    assert ingest.returncode == 0, ingest.stdout + ingest.stderr
    assert "ignored" not in ingest.stdout
    said = " ".join(ingest.stdout.split())
    assert "2 row(s) from 1 file(s): accepted 2 (1 accepted with a detail left out" in said, said
    assert "row 3, field worker_phone" in said and "0163 29" not in said
    assert "Okafor" not in ingest.stderr and NHS not in ingest.stderr  # INFO logs name no one

    services = build(Settings(data_dir=tmp_path / "d"))
    key = person_key(services.secrets.key, NHS, None)
    patient = services.reader.read("Patient", key)
    assert patient is not None
    assert patient["name"] == [{"family": "Okafor", "given": ["Mary"]}]
    assert patient["address"][0]["postalCode"] == "EX1 2AB"
    assert patient["contact"][0]["name"] == {"text": "Daniel Okafor"}
    (request,) = services.reader.search("ServiceRequest", key)
    assert {"system": "https://carehub.invalid/Id/case-reference/E10000023", "value": "MOS-448812"} in request[
        "identifier"
    ]
    assert request["contained"][0]["practitioner"] == {"display": "Sam Patel"}
    # the council and the practice share referrals and demographics for care coordination
    categories = ("demographics", "referrals", "provenance", "consents")
    services.agreements.load(an_agreement("E10000023", "Y90001", categories=categories), at=datetime.now(UTC))
    services.engine.dispose()

    huddle = carehub("huddle", "--practice", "Y90001", "--date", today.isoformat(), "--data-dir", "d", cwd=tmp_path)
    assert huddle.returncode == 0, huddle.stdout + huddle.stderr
    assert "Mary Okafor" in huddle.stdout
    assert "name not held" not in huddle.stdout
