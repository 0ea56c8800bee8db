"""Moments typed on the command line (hub.instants): UK time unless an offset says otherwise, and a
date alone as its start or, bounding a period from above, its end."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
import typer

from hub.instants import from_, instant, up_to


@pytest.mark.parametrize(
    ("typed", "meant"),
    [
        ("2026-07-01T09:00", datetime(2026, 7, 1, 8, 0, tzinfo=UTC)),  # BST
        ("2026-12-01 09:00:00", datetime(2026, 12, 1, 9, 0, tzinfo=UTC)),  # GMT
        ("2026-07-01T09:00Z", datetime(2026, 7, 1, 9, 0, tzinfo=UTC)),
        ("2026-07-01T09:00+02:00", datetime(2026, 7, 1, 7, 0, tzinfo=UTC)),
        (" 2026-07-01 ", datetime(2026, 6, 30, 23, 0, tzinfo=UTC)),  # midnight in the UK, in BST
        ("20260701", datetime(2026, 6, 30, 23, 0, tzinfo=UTC)),
    ],
)
def test_a_moment_is_uk_time_unless_it_says_otherwise(typed: str, meant: datetime) -> None:
    assert instant(typed) == meant
    assert from_(typed) == meant


def test_a_date_that_ends_a_period_includes_the_whole_uk_day() -> None:
    tick = timedelta(microseconds=1)
    assert instant("2026-07-01", end_of_day=True) == datetime(2026, 7, 1, 23, 0, tzinfo=UTC) - tick
    assert up_to("2026-12-01") == datetime(2026, 12, 2, 0, 0, tzinfo=UTC) - tick
    # the day the clocks go back has 25 hours: all of them are in it
    assert instant("2026-10-25", end_of_day=True) - instant("2026-10-25") == timedelta(hours=25) - tick
    assert instant("2026-03-29", end_of_day=True) - instant("2026-03-29") == timedelta(hours=23) - tick
    assert up_to("2026-07-01T09:00") == datetime(2026, 7, 1, 8, 0, tzinfo=UTC)  # a time is as typed


def test_the_hour_the_clocks_go_back_is_kept_whole_by_a_period_that_names_it() -> None:
    # 01:30 on 25 October 2026 happens at 00:30Z (BST) and again at 01:30Z (GMT)
    assert from_("2026-10-25T01:30") == datetime(2026, 10, 25, 0, 30, tzinfo=UTC)
    assert up_to("2026-10-25T01:30") == datetime(2026, 10, 25, 1, 30, tzinfo=UTC)
    assert up_to("2026-10-25T03:00") == from_("2026-10-25T03:00")  # (an hour that happens once)


def test_what_is_not_a_moment_is_refused_saying_what_is() -> None:
    for typed in ("2026-13-01", "yesterday", "", "2026-07-01T25:00"):
        with pytest.raises(ValueError, match="is not an ISO 8601 date or time"):
            instant(typed)
        with pytest.raises(typer.BadParameter, match=r"e\.g\. 2026-10-05"):
            up_to(typed)
    assert from_(None) is None
    assert up_to(datetime(2026, 7, 1, 9, 0)) == datetime(2026, 7, 1, 8, 0, tzinfo=UTC)


@pytest.mark.parametrize("typed", ["2026-03-29T01:30", "2026-03-29T01:00", "2026-03-29 01:59:59"])
def test_a_uk_time_the_clocks_go_forward_over_is_refused_with_both_readings(typed: str) -> None:
    # 01:00 GMT on 29 March 2026 is followed by 02:00 BST: nobody's clock showed 01:00-01:59
    for parse in (from_, up_to):
        with pytest.raises(typer.BadParameter, match="is not a UK time: the clocks go forward") as refused:
            parse(typed)
        assert "+00:00 (GMT" in str(refused.value) and "+01:00 (BST" in str(refused.value)
    assert from_("2026-03-29T01:30:00+01:00") == datetime(2026, 3, 29, 0, 30, tzinfo=UTC)  # an offset says which
    assert from_("2026-03-29T00:59") == datetime(2026, 3, 29, 0, 59, tzinfo=UTC)  # either side of the gap
    assert up_to("2026-03-29T02:00") == datetime(2026, 3, 29, 1, 0, tzinfo=UTC)
    assert up_to("2026-03-29") == datetime(2026, 3, 29, 23, 0, tzinfo=UTC) - timedelta(microseconds=1)
