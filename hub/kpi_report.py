"""`carehub kpi --month YYYY-MM`: the commissioner's KPIs from the Kafka log, as CSV and an HTML report.

The figures come from hub.core.kpis, a fold over events, so the same log always gives the same
report (and a replayed log gives the report the live hub would have). Charts are inline SVG: the
report is one self-contained file that prints and opens anywhere, with no script.

Every report says what its figures are of (`About`, from hub.core.kpi_months, as are the months a
report can be for): when it was generated (UTC), how far the log goes (its latest event, UK time
with the UTC offset) and the month's status: "complete", "partial: the log goes up to <time>" (the
month was not over at the log's last event, or at generation) or "no events in this month" (the log
holds nothing the KPIs count in it).

The CSV is one table, one line per figure, so that months' files concatenate and load as one:
    month         YYYY-MM, on every line
    kpi, breakdown, value    value blank where there is nothing to divide by
    unit          count, %, days, hours or ratio (a mean of a count, visits per discharge, is a count)
    of            what a percentage, mean or ratio is of (its denominator); blank for a count
    target        the contract's words; target_min and target_max the same as numbers ("95%" is a
                  floor of 95, "20-25%" 20 to 25, the caseload's "28" a cap), blank where it has none
    month_status, log_up_to_uk, generated_utc   the `About`, repeated on every line (a filter on
                  month_status picks out partial and empty months in a concatenation)
then one line per reason events were skipped (kpi "events skipped (whole log)", the reason in
breakdown, the count in value), if any were.
"""

from __future__ import annotations

import csv
import math
import re
from collections.abc import Mapping, Sequence
from datetime import datetime
from html import escape
from pathlib import Path

from consumers.decoding import decode
from hub.core.errors import InvalidMessageError
from hub.core.kpi_months import COMPLETE as COMPLETE
from hub.core.kpi_months import NO_EVENTS as NO_EVENTS
from hub.core.kpi_months import About as About
from hub.core.kpi_months import about as about
from hub.core.kpi_months import checked_month as checked_month
from hub.core.kpi_months import months_counted as months_counted
from hub.core.kpi_months import months_to
from hub.core.kpis import RATIO, KpiFold, Row
from hub.replay_read import read_in_time_order

SKIPPED = "events skipped (whole log)"
COLUMNS = (
    "month",
    "kpi",
    "breakdown",
    "value",
    "unit",
    "of",
    "target",
    "target_min",
    "target_max",
    "month_status",
    "log_up_to_uk",
    "generated_utc",
)
_TARGET = re.compile(r"([0-9]+(?:\.[0-9]+)?)(?:-([0-9]+(?:\.[0-9]+)?))?(%?)")
# a spreadsheet runs a cell that starts with one of these as a formula (OWASP "CSV injection")
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
_NUMBER = re.compile(r"-?\d+(\.\d+)?")
# a chart's labels are 12px Arial: about 0.7em a character bounds it from above (runs of W and M aside), so a
# label column sized from the longest label is never drawn over by the bars; longer labels are shortened
_CHAR_PX = 8.4
_LABEL_CHARS = 40


async def fold_log(bootstrap: str, service: str) -> tuple[KpiFold, int]:
    """Every event on the log, folded; (fold, records read). What could not be read is in fold.skipped."""
    fold = KpiFold(service=service)
    read = 0
    async for records in read_in_time_order(bootstrap):  # (as the live consumers applied it)
        for record in records:
            read += 1
            try:
                event = decode(record)
            except InvalidMessageError as error:  # the record consumer dead-lettered it too
                fold.skip(str(error))
                continue
            fold.add(event)
    return fold, read


def write_csv(
    rows: Sequence[Row], path: Path, *, skipped: Mapping[str, int] | None = None, about: About | None = None
) -> None:
    """The COLUMNS, one line per figure, then one line per reason events were skipped, if any were
    (the layout is in the module docstring). Without `about` its columns are blank."""
    month = "" if about is None else about.month
    said = ["", "", ""] if about is None else [about.status, about.log_up_to_uk, about.generated_utc]
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(COLUMNS)
        for row in rows:
            low, high = target_range(row.target)
            writer.writerow(
                [
                    month,
                    spreadsheet_text(row.kpi),
                    spreadsheet_text(row.breakdown),
                    _number(row.value),
                    unit(row),
                    "" if row.of is None else row.of,
                    spreadsheet_text(row.target),
                    _number(low),
                    _number(high),
                    *map(spreadsheet_text, said),
                ]
            )
        for reason, count in sorted((skipped or {}).items()):
            writer.writerow([month, SKIPPED, spreadsheet_text(reason), count, "count", "", "", "", "", *said])


def write_report(fold: KpiFold, month: str, out: Path, *, title: str, now: datetime) -> tuple[list[Row], About]:
    """The month's figures, and the files `carehub kpi` writes into `out`: kpi-MONTH.csv (with the month
    and its status on every line), kpi-MONTH-trend.csv and kpi-MONTH.html."""
    rows = fold.report(month)
    said, months = about(fold, month, now), trend(fold, month)
    write_csv(rows, out / f"kpi-{month}.csv", skipped=fold.skipped, about=said)
    write_trend_csv(months, out / f"kpi-{month}-trend.csv")
    write_html(
        rows, out / f"kpi-{month}.html", month=month, title=title, skipped=fold.skipped, about=said, trend=months
    )
    return rows, said


def unit(row: Row) -> str:
    """What the row's value is: "%", "days" or "hours" (a mean, by its KPI's name), "ratio" (follow-ups
    per first visit), else "count" (a mean of a count, such as visits per discharge, too)."""
    if row.breakdown == "%" or row.breakdown.startswith("% of "):
        return "%"
    if row.breakdown == "mean":
        return next((word for word in ("days", "hours") if word in row.kpi.split()), "count")
    return "ratio" if row.breakdown == RATIO else "count"


def target_range(target: str) -> tuple[float | None, float | None]:
    """The contract's target as (at least, at most): "95%" is (95, None), "20-25%" (20, 25), a bare
    number is a cap ("28" caseload: (None, 28)), and words ("to be baselined") are (None, None)."""
    said = _TARGET.fullmatch(target.strip())
    if said is None:
        return None, None
    low, high, percent = said.groups()
    if high is not None:
        return float(low), float(high)
    return (float(low), None) if percent else (None, float(low))


def skipped_note(skipped: Mapping[str, int]) -> str:
    """One sentence on the events left out of the figures, and why ('' if none were)."""
    if not skipped:
        return ""
    why = "; ".join(f"{reason} ({count:,})" for reason, count in sorted(skipped.items()))
    return f"{sum(skipped.values()):,} events on the log could not be read and are not in the figures: {why}"


# the measures the report follows month by month (trend): (kpi, breakdown)
TREND = (
    ("referrals", ""),
    ("first visits", ""),
    ("first visits within 4 weeks", "%"),
    ("referrals waiting over 4 weeks for a first visit", "at month end"),
    ("discharges", ""),
    ("GP letters within 48 hours", "%"),
    ("declined", "% of referrals"),
    ("people referred on", ""),
    ("huddles attended", "%"),
)
TREND_MONTHS = 12

Trend = list[tuple[str, dict[tuple[str, str], float | None]]]


def trend(fold: KpiFold, month: str, months: int = TREND_MONTHS) -> Trend:
    """The TREND measures for `month` and up to `months` - 1 before it, from the first month the log
    holds anything the KPIs count (none before it: they would read as quiet months)."""
    held = months_counted(fold)
    first = min(held) if held else month
    found: Trend = []
    for shown in (w for w in months_to(month, months) if w >= first or w == month):
        figures = {(r.kpi, r.breakdown): r.value for r in fold.report(shown)}
        found.append((shown, {key: figures.get(key) for key in TREND}))
    return found


def write_trend_csv(found: Trend, path: Path) -> None:
    """month, then one column per TREND measure ("kpi (breakdown)"), one line a month."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(["month", *(spreadsheet_text(_measure(k, b)) for k, b in TREND)])
        for month, figures in found:
            writer.writerow([month, *(_number(figures[key]) for key in TREND)])


def _measure(kpi: str, breakdown: str) -> str:
    return f"{kpi} ({breakdown})" if breakdown else kpi


def _trend_html(found: Trend | None) -> str:
    if not found or len(found) < 2:
        return ""
    head = "".join(f"<th>{escape(m)}</th>" for m, _ in found)
    body = "\n".join(
        f"<tr><td>{escape(_measure(k, b))}</td>"
        + "".join(f'<td class="n">{escape(_shown(f[(k, b)]))}</td>' for _, f in found)
        + "</tr>"
        for k, b in TREND
    )
    return (
        f"<h2>Month by month (the last {len(found)} months)</h2>\n"
        f'<table class="trend"><thead><tr><th>KPI</th>{head}</tr></thead>\n<tbody>\n{body}\n</tbody></table>\n'
    )


def write_html(
    rows: Sequence[Row],
    path: Path,
    *,
    month: str,
    title: str,
    skipped: Mapping[str, int] | None = None,
    about: About | None = None,
    trend: Trend | None = None,
) -> None:
    """A printable report: the month's status at the top, a table of every figure (a percentage or
    mean with what it is of), and a bar chart for each measure with a breakdown."""
    groups: dict[str, list[Row]] = {}
    for row in rows:
        groups.setdefault(row.kpi, []).append(row)
    charts = [
        _chart(kpi, items) for kpi, items in groups.items() if len(items) > 1 and all(r.breakdown != "%" for r in items)
    ]
    table = "\n".join(
        f"<tr><td>{escape(r.kpi)}</td><td>{escape(r.breakdown)}</td>"
        f'<td class="n">{_value_cell(r)}</td><td>{escape(r.target)}</td></tr>'
        for r in rows
    )
    note = skipped_note(skipped or {})
    warning = f'<p class="warning">{escape(note)}.</p>' if note else ""
    flag = "" if about is None or about.status == COMPLETE else f" ({about.status.split(':')[0]})"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{escape(title)} {escape(month)}{escape(flag)}</title>
<style>
body {{ font-family: Arial, sans-serif; margin: 2em; color: #212b32; }}
table {{ border-collapse: collapse; margin-bottom: 2em; }}
td, th {{ border-bottom: 1px solid #d8dde0; padding: 4px 12px; text-align: left; }}
td.n {{ text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }}
span.of {{ color: #4c6272; }}
p.warning {{ border-left: 4px solid #ffb81c; padding-left: 8px; }}
p.status {{ font-size: 1.3em; font-weight: bold; padding: 8px 12px; border: 4px solid #007f3b; }}
p.status.partial {{ border-color: #ffb81c; background: #fff3cd; }}
p.status.empty {{ border-color: #d5281b; background: #fde8e6; }}
figure {{ display: inline-block; vertical-align: top; margin: 0 2em 2em 0; }}
@media print {{ figure {{ break-inside: avoid; }} p.status {{ print-color-adjust: exact; }} }}
</style></head>
<body>
<h1>{escape(title)}: {escape(month)}</h1>
{_about_html(about)}
<p>Computed from the event log by <code>carehub kpi --month {escape(month)}</code>.
n/a: nothing to divide by this month.</p>
{warning}
<table><thead><tr><th>KPI</th><th>breakdown</th><th>value</th><th>target</th></tr></thead>
<tbody>
{table}
</tbody></table>
{"".join(charts)}
{_trend_html(trend)}
</body></html>
"""
    )


def _about_html(about: About | None) -> str:
    """The month's status, in a box a partial or empty month cannot be missed in, and when and from what."""
    if about is None:
        return ""
    if about.status == COMPLETE:
        kind, said = "complete", "Month status: complete (the log goes past the end of the month)."
    elif about.status == NO_EVENTS:
        kind = "empty"
        said = (
            f"Month status: {NO_EVENTS}. The log holds nothing the KPIs count in {about.month}: "
            "these are not the figures of a quiet month. Check the month."
        )
    else:
        kind = "partial"
        said = f"Month status: {about.status}. The month was not over: these are not its final figures."
    up_to = about.log_up_to_uk or "it holds no events"
    return (
        f'<p class="status {kind}" id="month-status">{escape(said)}</p>\n'
        f'<p class="about">Generated {escape(about.generated_utc)} (UTC). '
        f"The log goes up to {escape(up_to)} (UK time).</p>"
    )


def _value_cell(row: Row) -> str:
    """The value as the table shows it: a percentage or mean with what it is of ("90% of 10")."""
    if row.value is None:
        return "n/a"
    shown = escape(_number(row.value)) + ("%" if unit(row) == "%" else "")
    if row.of is None:
        return shown
    if unit(row) == "%":
        return f'{shown}<span class="of"> of {row.of:,}</span>'
    what = "mean of" if row.breakdown == "mean" else "of"
    return f'{shown}<span class="of"> ({what} {row.of:,})</span>'


def _chart(kpi: str, rows: list[Row]) -> str:
    bar, gap, room = 18, 6, 190
    names = [_label(r.breakdown) for r in rows]
    left = max(130, math.ceil(max(len(n) for n in names) * _CHAR_PX) + gap)  # the bars start here
    width = left + room + 40  # and the widest leaves room for its value
    top = max((r.value for r in rows if r.value is not None), default=0) or 1
    height = len(rows) * (bar + gap)

    def one(i: int, r: Row) -> str:
        y, label, shown = i * (bar + gap), escape(_shown(r.value)), names[i]
        full = f"<title>{escape(r.breakdown)}</title>" if shown != r.breakdown else ""
        name = f'<text x="0" y="{y + 13}" font-size="12">{escape(shown)}{full}</text>'
        if r.value is None:  # no value is no bar: a zero-length bar would read as 0
            return f'{name}<text x="{left + gap}" y="{y + 13}" font-size="12">{label}</text>'
        length = int(room * r.value / top)
        return (
            f'{name}<rect x="{left}" y="{y}" width="{length}" height="{bar}" fill="#005eb8">'
            f"<title>{escape(r.breakdown)}: {label}</title></rect>"
            f'<text x="{left + gap + length}" y="{y + 13}" font-size="12">{label}</text>'
        )

    bars = "".join(one(i, r) for i, r in enumerate(rows))
    return (
        f"<figure><figcaption>{escape(kpi)}</figcaption>"
        f'<svg role="img" aria-label="{escape(kpi)}" width="{width}" height="{height}">{bars}</svg></figure>'
    )


def _label(breakdown: str) -> str:
    """A breakdown as a chart labels it: shortened with an ellipsis if long (in full in its tooltip and the table)."""
    return breakdown if len(breakdown) <= _LABEL_CHARS else breakdown[: _LABEL_CHARS - 1].rstrip() + "…"


def spreadsheet_text(text: str) -> str:
    """A text cell a spreadsheet shows as text: a leading formula character gets a quote first
    (a number, negative ones included, stays a number)."""
    if text.startswith(_FORMULA_START) and not _NUMBER.fullmatch(text):
        return f"'{text}"
    return text


def _shown(value: float | None) -> str:
    return "n/a" if value is None else _number(value)


def _number(value: float | None) -> str:
    if value is None:
        return ""
    return str(int(value)) if float(value).is_integer() else f"{value:.2f}".rstrip("0").rstrip(".")
