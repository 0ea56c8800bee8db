"""The KPI report's files (hub.kpi_report) say what their figures are of: the month's status (complete,
partial, no events), how far the log goes and when they were generated; the CSV loads as one table
across months with units, denominators and numeric targets; `carehub kpi` refuses a month it cannot
report on in one line."""

from __future__ import annotations

import csv
import re
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from typer.testing import CliRunner

import hub.cli  # noqa: F401  (registers every carehub command on hub.cli_base.app)
from hub import kpi_report
from hub.cli_base import app
from hub.core.kpis import KpiFold, Row
from hub.core.ports import RecordEvent
from hub.kpi_report import (
    COLUMNS,
    COMPLETE,
    NO_EVENTS,
    SKIPPED,
    About,
    about,
    checked_month,
    target_range,
    unit,
    write_csv,
    write_html,
)
from tests import locality_month as month

TODAY = date(2026, 12, 6)
GENERATED = datetime(2026, 12, 6, 9, 30, tzinfo=UTC)
LAST_EVENT = "2026-11-28T09:00:00+00:00"  # the locality month's latest event, in UK time (GMT)
PARTIAL = f"partial: the log goes up to {LAST_EVENT}"


def fold_of(*events: RecordEvent) -> KpiFold:
    fold = KpiFold(service=month.SERVICE)
    for event in events:
        fold.add(event)
    return fold


def report_of(fold: KpiFold, of: str, generated: datetime = GENERATED) -> tuple[list[Row], About]:
    rows = fold.report(of)  # (first, as the command does: it works out the first contacts)
    return rows, about(fold, of, generated)


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as out:
        return list(csv.DictReader(out))


def shown_text(html: str) -> str:
    """The page's text, tags taken out, as a reader sees it."""
    return " ".join(re.sub(r"<[^>]+>", " ", html).split())


# --- --month ---------------------------------------------------------------------------------


@pytest.mark.parametrize("typed", ["2026-11", "2026-12", "1999-01", "1970-01"])
def test_a_month_in_ascii_yyyy_mm_that_has_begun_is_accepted(typed: str) -> None:
    assert checked_month(typed, TODAY) == typed


@pytest.mark.parametrize(
    ("typed", "why"),
    [
        ("0000-01", "the year must be from 1970 to 2100"),
        ("9999-12", "the year must be from 1970 to 2100"),
        ("1969-12", "the year must be from 1970 to 2100"),
        ("\uff12\uff10\uff12\uff16-11", "give the month as YYYY-MM"),  # full-width digits
        ("2026-\u0661\u0661", "give the month as YYYY-MM"),  # Arabic-Indic digits
        ("2026-13", "give the month as YYYY-MM"),
        ("2026-1", "give the month as YYYY-MM"),
        ("2026-11 ", "give the month as YYYY-MM"),
        ("2026-11\n", "give the month as YYYY-MM"),
        ("", "give the month as YYYY-MM"),
        ("2027-01", "has not begun (today is 2026-12-06 in the UK)"),
    ],
)
def test_a_month_that_is_not_ascii_yyyy_mm_in_range_or_has_not_begun_is_refused_saying_why(
    typed: str, why: str
) -> None:
    with pytest.raises(ValueError, match=re.escape(why)) as refused:
        checked_month(typed, TODAY)
    assert "\n" not in str(refused.value).replace(repr(typed), "")


TYPED = (
    st.text(max_size=9)
    | st.from_regex(r"\d{4}-\d{2}", fullmatch=True)  # any script's digits
    | st.builds("{:04d}-{:02d}".format, st.integers(1960, 2110) | st.integers(0, 9999), st.integers(0, 13))
)


@given(TYPED)
def test_whatever_is_typed_is_refused_or_is_a_month_the_fold_can_report(typed: str) -> None:
    try:
        accepted = checked_month(typed, TODAY)
    except ValueError:
        return
    assert re.fullmatch(r"[0-9]{4}-[0-9]{2}", accepted, re.ASCII)
    fold = fold_of(month.referral("P1", month.at(2, 10), "gp"))
    assert fold.report(accepted)  # no year out of range, at either end of the month
    status = about(fold, accepted, GENERATED).status
    assert status in (NO_EVENTS, "partial: the log goes up to 2026-11-02T10:00:00+00:00"), status


# --- the month's status ----------------------------------------------------------------------


def test_a_month_the_log_has_not_gone_past_is_partial_up_to_its_last_event() -> None:
    _, said = report_of(fold_of(*month.script()), "2026-11")
    assert said.status == PARTIAL
    assert said.log_up_to_uk == LAST_EVENT
    assert said.generated_utc == "2026-12-06T09:30:00+00:00"


def test_a_month_the_log_has_gone_past_is_complete() -> None:
    december = month.register_row("P1", month.at(1, 9, month=12), 0, 0)
    _, said = report_of(fold_of(*month.script(), december), "2026-11")
    assert said.status == COMPLETE
    assert said.log_up_to_uk == "2026-12-01T09:00:00+00:00"


def test_a_month_not_over_when_the_report_is_generated_is_partial_whatever_the_log_says() -> None:
    december = month.register_row("P1", month.at(1, 9, month=12), 0, 0)  # (an event stamped ahead of the clock)
    _, said = report_of(fold_of(*month.script(), december), "2026-11", datetime(2026, 11, 30, 12, tzinfo=UTC))
    assert said.status == "partial: the log goes up to 2026-12-01T09:00:00+00:00"


def test_a_month_the_log_holds_nothing_of_says_so_even_when_the_log_goes_past_it() -> None:
    _, said = report_of(fold_of(*month.script()), "2026-10")
    assert said.status == NO_EVENTS
    empty = about(fold_of(), "2026-11", GENERATED)
    assert (empty.status, empty.log_up_to, empty.log_up_to_uk) == (NO_EVENTS, None, "")


def test_how_far_the_log_goes_is_uk_local_time_with_its_offset() -> None:
    summer = month.referral("P1", datetime(2026, 7, 1, 8, tzinfo=UTC), "gp")
    _, said = report_of(fold_of(summer), "2026-07")
    assert said.log_up_to_uk == "2026-07-01T09:00:00+01:00"  # BST
    assert said.status == "partial: the log goes up to 2026-07-01T09:00:00+01:00"


# --- the CSV ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("target", "low", "high"),
    [
        ("95%", 95, None),
        ("90%", 90, None),
        ("20-25%", 20, 25),
        ("28", None, 28),
        ("to be baselined", None, None),
        ("", None, None),
    ],
)
def test_a_target_is_a_minimum_a_range_or_a_cap(target: str, low: float | None, high: float | None) -> None:
    assert target_range(target) == (low, high)


@pytest.mark.parametrize(
    ("row", "expected"),
    [
        (Row("first visits within 4 weeks", "%", 100.0, "95%", of=2), "%"),
        (Row("declined", "% of referrals", 33.3, "to be baselined", of=3), "%"),
        (Row("days from referral to first visit", "mean", 9.98, of=2), "days"),
        (Row("hours from discharge to GP letter", "mean", 23.0, of=1), "hours"),
        (Row("GP letters within 48 hours", "pending", 0), "count"),
        (Row("caseload at month end", "c-ann", 1, "28"), "count"),
        (Row("referrals", "", 3), "count"),
        (Row("face-to-face visits at discharge", "mean", 2.0, of=1), "count"),  # a mean of a count
        (Row("days on caseload at discharge", "mean", 17.02, of=1), "days"),
        (Row("first to follow-up visit ratio", "follow-ups per first visit", 1.0, of=1), "ratio"),
    ],
)
def test_every_figure_says_what_unit_it_is_in(row: Row, expected: str) -> None:
    assert unit(row) == expected


def test_every_csv_line_carries_its_month_unit_denominator_numeric_target_and_the_months_status(
    tmp_path: Path,
) -> None:
    rows, said = report_of(fold_of(*month.script()), "2026-11")
    write_csv(rows, tmp_path / "kpi.csv", skipped={"not a CareHub CloudEvent": 2}, about=said)
    written = read_csv(tmp_path / "kpi.csv")
    assert list(written[0]) == list(COLUMNS)
    by = {(r["kpi"], r["breakdown"]): r for r in written}
    visits = by[("first visits within 4 weeks", "%")]
    assert (visits["value"], visits["unit"], visits["of"]) == ("100", "%", "2")
    assert (visits["target"], visits["target_min"], visits["target_max"]) == ("95%", "95", "")
    over = by[("discharged after over 12 weeks on caseload", "%")]
    assert (over["target"], over["target_min"], over["target_max"]) == ("20-25%", "20", "25")
    caseload = by[("caseload at month end", "c-ann")]
    assert (caseload["unit"], caseload["of"], caseload["target_min"], caseload["target_max"]) == ("count", "", "", "28")
    declined = by[("declined", "% of referrals")]
    assert (declined["unit"], declined["of"], declined["target_min"], declined["target_max"]) == ("%", "3", "", "")
    assert by[("days from referral to first contact", "mean")]["unit"] == "days"
    assert by[("hours from discharge to GP letter", "mean")]["unit"] == "hours"
    at_discharge = [
        by[("face-to-face visits at discharge", "mean")],
        by[("first to follow-up visit ratio", "follow-ups per first visit")],
        by[("initial visits with no follow-up", "%")],
        by[("days on caseload at discharge", "mean")],
    ]
    assert [(r["value"], r["unit"], r["of"]) for r in at_discharge] == [
        ("2", "count", "1"),
        ("1", "ratio", "1"),
        ("0", "%", "1"),
        ("17.02", "days", "1"),
    ]
    assert by[(SKIPPED, "not a CareHub CloudEvent")]["value"] == "2"
    assert {(r["month"], r["month_status"], r["log_up_to_uk"], r["generated_utc"]) for r in written} == {
        ("2026-11", PARTIAL, LAST_EVENT, "2026-12-06T09:30:00+00:00")
    }


def test_csv_files_of_several_months_concatenate_into_one_table_that_tells_them_apart(tmp_path: Path) -> None:
    fold = fold_of(*month.script())
    for of in ("2026-10", "2026-11"):
        rows, said = report_of(fold, of)
        write_csv(rows, tmp_path / f"kpi-{of}.csv", about=said)
    october, november = [(tmp_path / f"kpi-{of}.csv").read_text().splitlines() for of in ("2026-10", "2026-11")]
    assert october[0] == november[0]
    (tmp_path / "all.csv").write_text("\n".join([*october, *november[1:]]) + "\n")
    table = read_csv(tmp_path / "all.csv")
    referrals = {
        r["month"]: (r["value"], r["month_status"]) for r in table if (r["kpi"], r["breakdown"]) == ("referrals", "")
    }
    assert referrals == {"2026-10": ("0", NO_EVENTS), "2026-11": ("3", PARTIAL)}


def test_the_new_text_columns_are_protected_from_formulas_too(tmp_path: Path) -> None:
    said = About("2026-11", GENERATED, None, "=HYPERLINK(1)")
    write_csv([Row("referrals", "", 1, "+1")], tmp_path / "kpi.csv", about=said)
    [line] = read_csv(tmp_path / "kpi.csv")
    assert (line["month_status"], line["target"]) == ("'=HYPERLINK(1)", "'+1")


# --- the HTML --------------------------------------------------------------------------------


def test_the_report_shows_what_each_percentage_and_mean_is_of(tmp_path: Path) -> None:
    rows, said = report_of(fold_of(*month.script()), "2026-11")
    write_html(rows, tmp_path / "kpi.html", month="2026-11", title="PIC", about=said)
    shown = shown_text((tmp_path / "kpi.html").read_text())
    assert "first visits within 4 weeks % 100% of 2 95%" in shown
    assert "declined % of referrals 33.3% of 3 to be baselined" in shown
    assert "days from referral to first contact mean 2.58 (mean of 2)" in shown
    assert "huddles attended % 75% of 4 95%" in shown
    assert "referrals 3" in shown  # a count is a count
    assert "face-to-face visits at discharge mean 2 (mean of 1)" in shown
    assert "first to follow-up visit ratio follow-ups per first visit 1 (of 1)" in shown
    assert "initial visits with no follow-up % 0% of 1" in shown
    assert "days on caseload at discharge mean 17.02 (mean of 1)" in shown


def test_a_partial_month_says_so_at_the_top_with_how_far_the_log_goes_and_when(tmp_path: Path) -> None:
    rows, said = report_of(fold_of(*month.script()), "2026-11")
    write_html(rows, tmp_path / "kpi.html", month="2026-11", title="PIC", about=said)
    html = (tmp_path / "kpi.html").read_text()
    status = re.search(r'<p class="status (\w+)" id="month-status">(.*?)</p>', html)
    assert status is not None, html
    assert status[1] == "partial"
    assert f"Month status: {PARTIAL}" in status[2]
    assert html.index('id="month-status"') < html.index("<table")  # above the figures
    assert "<title>PIC 2026-11 (partial)</title>" in html
    shown = shown_text(html)
    assert "Generated 2026-12-06T09:30:00+00:00 (UTC)" in shown
    assert f"The log goes up to {LAST_EVENT} (UK time)" in shown


@pytest.mark.parametrize(
    ("of", "extra", "kind", "says"),
    [
        ("2026-10", [], "empty", f"Month status: {NO_EVENTS}"),
        ("2026-11", [month.register_row("P1", month.at(1, 9, month=12), 0, 0)], "complete", "Month status: complete"),
    ],
)
def test_an_empty_month_is_unmistakable_and_a_complete_one_says_it_is(
    tmp_path: Path, of: str, extra: list[RecordEvent], kind: str, says: str
) -> None:
    rows, said = report_of(fold_of(*month.script(), *extra), of)
    write_html(rows, tmp_path / "kpi.html", month=of, title="PIC", about=said)
    html = (tmp_path / "kpi.html").read_text()
    assert f'<p class="status {kind}" id="month-status">{says}' in html


# --- carehub kpi -----------------------------------------------------------------------------


def a_record(event: RecordEvent) -> SimpleNamespace:
    envelope = event.envelope()
    return SimpleNamespace(value=envelope.data, headers=[(k, v.encode()) for k, v in envelope.kafka_headers().items()])


@pytest.fixture
def log(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The locality month as the log the command reads; the list of bootstraps it was read from."""
    asked: list[str] = []
    records = [a_record(e) for e in month.script()]

    async def read_in_time_order(bootstrap: str) -> AsyncIterator[list[Any]]:
        asked.append(bootstrap)
        yield records

    monkeypatch.setattr(kpi_report, "read_in_time_order", read_in_time_order)
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "kafka.invalid:9092")
    return asked


def carehub_kpi(tmp_path: Path, of: str) -> Any:
    args = ["kpi", "--month", of, "--out", str(tmp_path / "kpi"), "--data-dir", str(tmp_path)]
    return CliRunner().invoke(app, args)


@pytest.mark.parametrize(
    ("typed", "said"),
    [
        ("0000-01", "--month '0000-01': the year must be from 1970 to 2100"),
        ("9999-12", "--month '9999-12': the year must be from 1970 to 2100"),
        (
            "\uff12\uff10\uff12\uff16-11",
            "--month '\uff12\uff10\uff12\uff16-11': give the month as YYYY-MM, e.g. 2026-11",
        ),
        ("2099-01", "--month '2099-01' has not begun (today is"),
        ("[red]x", "--month '[red]x': give the month as YYYY-MM"),  # text, not markup
    ],
)
def test_the_kpi_command_refuses_a_month_it_cannot_report_in_one_line_exit_2_reading_nothing(
    tmp_path: Path, log: list[str], typed: str, said: str
) -> None:
    done = carehub_kpi(tmp_path, typed)
    assert done.exit_code == 2, done.output
    assert isinstance(done.exception, SystemExit), done.exception  # not a traceback
    assert done.output.strip().startswith(said) and "\n" not in done.output.strip(), done.output
    assert log == [] and not (tmp_path / "kpi").exists()


def test_the_kpi_command_writes_the_months_status_into_both_files_and_says_it(tmp_path: Path, log: list[str]) -> None:
    done = carehub_kpi(tmp_path, "2026-11")
    assert done.exit_code == 0, done.output
    assert log == ["kafka.invalid:9092"]
    assert f"2026-11: {PARTIAL}" in " ".join(done.output.split())
    written = read_csv(tmp_path / "kpi" / "kpi-2026-11.csv")
    assert {(r["month"], r["month_status"], r["log_up_to_uk"]) for r in written} == {("2026-11", PARTIAL, LAST_EVENT)}
    generated = datetime.fromisoformat(written[0]["generated_utc"])
    assert generated.utcoffset() is not None and abs(datetime.now(UTC) - generated).total_seconds() < 60
    assert f"Month status: {PARTIAL}" in (tmp_path / "kpi" / "kpi-2026-11.html").read_text()

    quiet = carehub_kpi(tmp_path, "2026-10")
    assert quiet.exit_code == 0, quiet.output
    assert "warning: the log holds no events in 2026-10" in " ".join(quiet.output.split())  # the warning stays
    assert {r["month_status"] for r in read_csv(tmp_path / "kpi" / "kpi-2026-10.csv")} == {NO_EVENTS}
    assert f"Month status: {NO_EVENTS}" in (tmp_path / "kpi" / "kpi-2026-10.html").read_text()


def test_without_out_the_kpi_files_go_to_the_data_folder_not_where_the_command_was_run(
    tmp_path: Path, log: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    done = CliRunner().invoke(app, ["kpi", "--month", "2026-11", "--data-dir", str(tmp_path / "hub")])
    assert done.exit_code == 0, done.output
    assert (tmp_path / "hub" / "kpi" / "kpi-2026-11.csv").exists()
    assert list(elsewhere.iterdir()) == []


# --- month by month: "referrals by month" is a series, not one month ----------------------------


def test_the_trend_runs_back_from_the_month_to_the_first_month_the_log_holds_and_leaves_the_month_as_it_was(
    tmp_path: Path,
) -> None:
    from hub.kpi_report import TREND, trend, write_trend_csv

    october = month.referral("P1", month.at(20, 10, month=10), "gp")
    fold = KpiFold(service=month.SERVICE)
    for event in [october, *month.script()]:
        fold.add(event)
    before = {(r.kpi, r.breakdown): r.value for r in fold.report("2026-11")}
    found = trend(fold, "2026-11")
    assert [m for m, _ in found] == ["2026-10", "2026-11"]  # none before the log's first month
    assert [f[("referrals", "")] for _, f in found] == [1, 3]
    assert [f[("first visits", "")] for _, f in found] == [0, 2]
    # P1, referred 20 Oct, never visited: past its 4 weeks at the end of November
    assert found[1][1][("referrals waiting over 4 weeks for a first visit", "at month end")] == 1
    assert {(r.kpi, r.breakdown): r.value for r in fold.report("2026-11")} == before

    write_trend_csv(found, tmp_path / "trend.csv")
    with (tmp_path / "trend.csv").open(newline="") as f:
        lines = list(csv.reader(f))
    assert lines[0][0] == "month" and len(lines[0]) == 1 + len(TREND)
    assert [line[0] for line in lines[1:]] == ["2026-10", "2026-11"]
    assert lines[1][lines[0].index("first visits within 4 weeks (%)")] == ""  # nothing to divide by
    write_html(fold.report("2026-11"), tmp_path / "r.html", month="2026-11", title="PIC", trend=found)
    page = (tmp_path / "r.html").read_text()
    assert "Month by month (the last 2 months)" in page and "<th>2026-10</th>" in page
