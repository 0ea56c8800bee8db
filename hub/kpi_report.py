"""`carehub kpi --month YYYY-MM`: the commissioner's KPIs from the Kafka log, as CSV and an HTML report.

The figures come from hub.core.kpis, a fold over events, so the same log always gives the same
report (and a replayed log gives the report the live hub would have). Charts are inline SVG: the
report is one self-contained file that prints and opens anywhere, with no script.
"""

from __future__ import annotations

import csv
import math
import re
from collections.abc import Mapping, Sequence
from html import escape
from pathlib import Path

from consumers.decoding import decode
from hub.core.errors import InvalidMessageError
from hub.core.kpis import KpiFold, Row
from hub.replay import read_log

SKIPPED = "events skipped (whole log)"
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
    async for records in read_log(bootstrap):
        for record in records:
            read += 1
            try:
                event = decode(record)
            except InvalidMessageError as error:  # the record consumer dead-lettered it too
                fold.skip(str(error))
                continue
            fold.add(event)
    return fold, read


def write_csv(rows: Sequence[Row], path: Path, *, skipped: Mapping[str, int] | None = None) -> None:
    """kpi, breakdown, value, target: one line per figure (value blank when there is nothing to divide
    by), then one line per reason events were skipped, if any were."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(["kpi", "breakdown", "value", "target"])
        for row in rows:
            writer.writerow(
                [
                    spreadsheet_text(row.kpi),
                    spreadsheet_text(row.breakdown),
                    _number(row.value),
                    spreadsheet_text(row.target),
                ]
            )
        for reason, count in sorted((skipped or {}).items()):
            writer.writerow([SKIPPED, spreadsheet_text(reason), count, ""])


def skipped_note(skipped: Mapping[str, int]) -> str:
    """One sentence on the events left out of the figures, and why ('' if none were)."""
    if not skipped:
        return ""
    why = "; ".join(f"{reason} ({count:,})" for reason, count in sorted(skipped.items()))
    return f"{sum(skipped.values()):,} events on the log could not be read and are not in the figures: {why}"


def write_html(
    rows: Sequence[Row], path: Path, *, month: str, title: str, skipped: Mapping[str, int] | None = None
) -> None:
    """A printable report: a table of every figure, and a bar chart for each measure with a breakdown."""
    groups: dict[str, list[Row]] = {}
    for row in rows:
        groups.setdefault(row.kpi, []).append(row)
    charts = [
        _chart(kpi, items) for kpi, items in groups.items() if len(items) > 1 and all(r.breakdown != "%" for r in items)
    ]
    table = "\n".join(
        f"<tr><td>{escape(r.kpi)}</td><td>{escape(r.breakdown)}</td>"
        f'<td class="n">{escape(_shown(r.value))}</td><td>{escape(r.target)}</td></tr>'
        for r in rows
    )
    note = skipped_note(skipped or {})
    warning = f'<p class="warning">{escape(note)}.</p>' if note else ""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{escape(title)} {escape(month)}</title>
<style>
body {{ font-family: Arial, sans-serif; margin: 2em; color: #212b32; }}
table {{ border-collapse: collapse; margin-bottom: 2em; }}
td, th {{ border-bottom: 1px solid #d8dde0; padding: 4px 12px; text-align: left; }}
td.n {{ text-align: right; font-variant-numeric: tabular-nums; }}
p.warning {{ border-left: 4px solid #ffb81c; padding-left: 8px; }}
figure {{ display: inline-block; vertical-align: top; margin: 0 2em 2em 0; }}
@media print {{ figure {{ break-inside: avoid; }} }}
</style></head>
<body>
<h1>{escape(title)}: {escape(month)}</h1>
<p>Computed from the event log by <code>carehub kpi --month {escape(month)}</code>.
n/a: nothing to divide by this month.</p>
{warning}
<table><thead><tr><th>KPI</th><th>breakdown</th><th>value</th><th>target</th></tr></thead>
<tbody>
{table}
</tbody></table>
{"".join(charts)}
</body></html>
"""
    )


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
