"""A GP practice's at-risk register file through `carehub ingest register`, as an operator runs it (a
real CSV file, the embedded Kafka-protocol broker, the consumers, a SQLite record and dead-letter
store): a row extracted on a day yet to come is rejected naming its row and field, kept whole in
the dead-letter store, and the file's other rows reach the record."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from hub.bootstrap import build
from hub.core.identity import person_key
from hub.settings import Settings
from tests.e2e.test_referral_ingest import carehub

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(240)]
HEADER = "nhs_number,practice_ods,non_elective_admissions_12m,long_term_conditions,frailty,birth_date,extracted_on"
FIRST, FUTURE, LAST = "9434765919", "9990000018", "9990000026"


def test_a_register_row_extracted_in_the_future_is_dead_lettered_whole_and_the_other_rows_go_through(
    tmp_path: Path,
) -> None:
    today = datetime.now(UTC).astimezone(ZoneInfo("Europe/London")).date()
    past, future = (today - timedelta(days=3)).isoformat(), (today + timedelta(days=2)).isoformat()
    bad_line = f"{FUTURE},Y90001,1,2,mild,1950-01-01,{future}"
    register = tmp_path / "register.csv"
    register.write_text(
        f"{HEADER}\n{FIRST},Y90001,3,2,severe,1938-02-01,{past}\n{bad_line}\n{LAST},Y90001,0,4,moderate,,{past}\n"
    )

    result = carehub("ingest", "register", str(register), "--data-dir", "d", cwd=tmp_path)

    assert result.returncode == 1, result.stdout + result.stderr
    assert f"row 3, field extracted_on: {future} is in the future (today is " in result.stdout
    assert "3 row(s) from 1 file(s): accepted 2, rejected 1" in result.stdout
    services = build(Settings(data_dir=tmp_path / "d"))
    for nhs in (FIRST, LAST):
        measures = services.reader.search("Observation", person_key(services.secrets.key, nhs, None))
        assert len(measures) == 3, nhs
    assert not services.reader.everything(person_key(services.secrets.key, FUTURE, None))
    (kept,) = services.dead_letters.recent(20)
    assert kept["payload"] == f"{HEADER}\n{bad_line}\n".encode()
    assert kept["origin"].endswith("register.csv#row=3")
    issue = kept["reason"]["issue"][0]
    assert issue["expression"] == ["row 3", "extracted_on"]
    assert issue["diagnostics"].startswith(f"row 3, field extracted_on: {future} is in the future")
