"""`carehub ingest referrals` with a referral_id used again: a voluntary organisation's id reused for a
stranger (its own rows giving two birth dates) is refused naming row and field and kept in the dead-letter
store, the first person keeping their referral; an adult social care correction of the NHS number still
moves the referral, with a birth date or without; a status column is named as ignored. The embedded
broker (Tansu), the consumers and a SQLite record, all real."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from hub.bootstrap import build
from hub.core.identity import person_key
from hub.settings import Settings
from tests.e2e.test_referral_ingest import carehub

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(240)]
FIRST, STRANGER, WRONG, RIGHT = "9434765919", "9990000018", "9995423510", "9991615598"
VCSE = {
    "referral_id": "AC-5002",
    "nhs_number": FIRST,
    "birth_date": "1942-02-20",
    "gp_practice_ods": "Y90001",
    "referred_on": "2026-12-03",
    "referrer": "VCS001",
    "addressed_to": "Y0PIC",
    "needs": ["financial-support", "carer-support"],
}
ASC = (
    "referral_id,nhs_number,birth_date,gp_practice_ods,referred_on,referrer,addressed_to,reason,status\n"
    "WCC-2026-1004,{nhs},1941-06-30,Y90002,2026-12-04,E10000023,Y0PIC,Self-neglect concerns,{status}\n"
)


def said(result: subprocess.CompletedProcess[str]) -> str:
    return " ".join(result.stdout.replace("│", " ").split())


def test_a_reused_referral_id_is_refused_and_kept_while_a_correction_still_moves_its_referral(tmp_path: Path) -> None:
    (tmp_path / "1-vcse.json").write_text(json.dumps([VCSE]))
    (tmp_path / "2-asc.csv").write_text(ASC.format(nhs=WRONG, status=""))
    first = carehub("ingest", "referrals", "1-vcse.json", "2-asc.csv", "--data-dir", "d", cwd=tmp_path)
    assert first.returncode == 0, first.stdout + first.stderr

    reused = VCSE | {"nhs_number": STRANGER, "birth_date": "1960-01-01", "needs": ["emotional-needs"]}
    (tmp_path / "3-reused.json").write_text(json.dumps([reused]))
    (tmp_path / "4-corrected.csv").write_text(ASC.format(nhs=RIGHT, status="withdrawn"))
    again = carehub("ingest", "referrals", "3-reused.json", "4-corrected.csv", "--data-dir", "d", cwd=tmp_path)
    out = said(again)
    assert again.returncode == 1, again.stdout + again.stderr
    assert (
        "row 1, field referral_id: 'AC-5002' is already used by VCS001 for a different person; it was sent for "
        "another NHS number with another birth_date"
    ) in out
    assert "4-corrected.csv 2 accepted" in out
    assert "4-corrected.csv: column(s) status ignored: the asc-csv layout does not read them" in out

    services = build(Settings(data_dir=tmp_path / "d"))
    key = services.secrets.key
    (kept,) = services.reader.search("ServiceRequest", person_key(key, FIRST, None))
    assert kept["identifier"][0]["value"] == "AC-5002"
    assert kept["reasonCode"] == [{"text": "Financial support"}, {"text": "Carer support"}]
    assert not services.reader.search("ServiceRequest", person_key(key, STRANGER, None))
    (moved,) = services.reader.search("ServiceRequest", person_key(key, RIGHT, None))
    assert moved["identifier"][0]["value"] == "WCC-2026-1004"
    assert not services.reader.search("ServiceRequest", person_key(key, WRONG, None))
    (letter,) = services.dead_letters.recent(10)
    assert json.loads(letter["payload"])["nhs_number"] == STRANGER
    assert letter["reason"]["issue"][0]["expression"] == ["row 1", "referral_id", "birth_date"]


def test_a_council_export_without_birth_dates_corrects_an_nhs_number_in_a_later_command(tmp_path: Path) -> None:
    no_birth_date = ASC.replace(",birth_date", "").replace(",1941-06-30", "")
    (tmp_path / "1-wrong.csv").write_text(no_birth_date.format(nhs=WRONG, status=""))
    (tmp_path / "2-right.csv").write_text(no_birth_date.format(nhs=RIGHT, status=""))
    for name in ("1-wrong.csv", "2-right.csv"):
        sent = carehub("ingest", "referrals", name, "--data-dir", "d", cwd=tmp_path)
        assert sent.returncode == 0, sent.stdout + sent.stderr
        assert f"{name} 2 accepted" in said(sent)

    services = build(Settings(data_dir=tmp_path / "d"))
    (moved,) = services.reader.search("ServiceRequest", person_key(services.secrets.key, RIGHT, None))
    assert moved["identifier"][0]["value"] == "WCC-2026-1004"
    assert not services.reader.search("ServiceRequest", person_key(services.secrets.key, WRONG, None))
