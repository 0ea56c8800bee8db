"""Fields and columns the layouts do not read: named when a required one is missing (probably misspelt)
and in the ingest summary (what they say was not applied), and `reason` said to be required for want of
`needs`; adult social care referrals accepted without a referral_id are counted, as a correction cannot
move them."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson

from adapters.referrals.rows import Format
from adapters.referrals.service import ACCEPTED, REJECTED, ReferralIntake
from hub.referrals_ingest import file_notes
from tests.unit.test_referral_adapters import SECRET, FakeBroker

NOW = datetime(2026, 12, 7, 12, tzinfo=UTC)
VCSE = {
    "referral_id": "AC-5014",
    "nhs_number": "9434765919",
    "gp_practice_ods": "Y90001",
    "referred_on": "2026-12-06",
    "referrer": "VCS001",
    "addressed_to": "Y0PIC",
}
ASC_HEADER = "referral_id,nhs_number,birth_date,gp_practice_ods,referred_on,referrer,addressed_to,reason"
ASC_ROW = "WCC-1,9434765919,1944-07-02,Y90002,2026-12-02,E10000023,Y0PIC,Carer strain"


def intake() -> ReferralIntake:
    return ReferralIntake(FakeBroker(), key_secret=SECRET, clock=lambda: NOW)  # type: ignore[arg-type]


async def reasons(*docs: dict[str, Any]) -> list[str | None]:
    outcomes = await intake().ingest(orjson.dumps(list(docs)), "file:v.json", Format.VCSE_JSON)
    assert all(o.status == REJECTED for o in outcomes)
    return [o.reason for o in outcomes]


async def test_reason_is_said_to_be_required_because_needs_is_absent_or_empty() -> None:
    absent, empty = await reasons(VCSE, VCSE | {"needs": []})
    assert absent == "row 1, field reason: is required when needs is absent: give needs, a reason or both"
    assert empty == "row 2, field reason: is required when needs names none: give needs, a reason or both"


async def test_a_missing_required_field_names_the_unread_field_it_was_probably_sent_as() -> None:
    sent = {k: v for k, v in VCSE.items() if k != "nhs_number"} | {"NHS Number": "9434765919", "reason": "x"}
    (said,) = await reasons(sent)
    assert said == (
        'row 1, field nhs_number: is required (the row has "NHS Number", which the hub does not read: '
        "the field is spelt nhs_number)"
    )


async def test_a_missing_required_column_names_the_header_column_it_was_probably_sent_as() -> None:
    header = ASC_HEADER.replace("nhs_number", "NHS Number")
    (outcome,) = await intake().ingest(f"{header}\n{ASC_ROW}\n".encode(), "file:a.csv", Format.ASC_CSV)
    assert outcome.status == REJECTED and outcome.row is None
    assert outcome.reason == (
        'row 1 (the header) lacks the column(s) nhs_number (the header has "nhs number", which the hub does not '
        "read: the column is spelt nhs_number)"
    )


async def test_columns_the_layout_does_not_read_are_named_in_the_summary_as_not_applied() -> None:
    raw = f"{ASC_HEADER},status\n{ASC_ROW},withdrawn\n".encode()
    read = await intake().ingest_file(raw, "file:withdraw.csv")
    assert [o.status for o in read.outcomes] == [ACCEPTED]
    assert read.ignored == ("status",)
    (note,) = file_notes("withdraw.csv", read)
    assert note.startswith("withdraw.csv: column(s) status ignored: the asc-csv layout does not read them")
    assert "nothing they say was applied" in note


async def test_referrals_accepted_without_a_referral_id_are_counted_as_ones_a_correction_cannot_move() -> None:
    header = ASC_HEADER.removeprefix("referral_id,")
    row = ASC_ROW.removeprefix("WCC-1,")
    read = await intake().ingest_file(f"{header}\n{row}\n".encode(), "file:noid.csv")
    assert [o.without_id for o in read.outcomes] == [True]
    (note,) = file_notes("noid.csv", read)
    assert note.startswith("noid.csv: 1 referral(s) accepted without a referral_id: sent again with a corrected NHS")
    with_id = await intake().ingest_file(f"{ASC_HEADER}\n{ASC_ROW}\n".encode(), "file:id.csv")
    assert file_notes("id.csv", with_id) == []
