"""`carehub kpi --month YYYY-MM`: the commissioner's KPIs from the Kafka log, as CSV and an HTML report.

The figures come from hub.core.kpis, a fold over events, so the same log always gives the same
report (and a replayed log gives the report the live hub would have). Charts are inline SVG: the
report is one self-contained file that prints and opens anywhere, with no script.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from html import escape
from pathlib import Path

from consumers.decoding import decode
from hub.core.errors import InvalidMessageError
from hub.core.kpis import KpiFold, Row
from hub.replay import read_log


async def fold_log(bootstrap: str, service: str) -> tuple[KpiFold, int]:
    """Every event on the log, folded; (fold, events read)."""
    fold = KpiFold(service=service)
    read = 0
    async for records in read_log(bootstrap):
        for record in records:
            read += 1
            try:
                fold.add(decode(record))
            except InvalidMessageError:
                continue  # not a CareHub event: the record consumer dead-lettered it
    return fold, read


def write_csv(rows: Sequence[Row], path: Path) -> None:
    """kpi, breakdown, value, target: one line per figure."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(["kpi", "breakdown", "value", "target"])
        for row in rows:
            writer.writerow([row.kpi, row.breakdown, _number(row.value), row.target])


def write_html(rows: Sequence[Row], path: Path, *, month: str, title: str) -> None:
    """A printable report: a table of every figure, and a bar chart for each measure with a breakdown."""
    groups: dict[str, list[Row]] = {}
    for row in rows:
        groups.setdefault(row.kpi, []).append(row)
    charts = [
        _chart(kpi, items) for kpi, items in groups.items() if len(items) > 1 and all(r.breakdown != "%" for r in items)
    ]
    table = "\n".join(
        f"<tr><td>{escape(r.kpi)}</td><td>{escape(r.breakdown)}</td>"
        f'<td class="n">{escape(_number(r.value))}</td><td>{escape(r.target)}</td></tr>'
        for r in rows
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{escape(title)} {escape(month)}</title>
<style>
body {{ font-family: Arial, sans-serif; margin: 2em; color: #212b32; }}
table {{ border-collapse: collapse; margin-bottom: 2em; }}
td, th {{ border-bottom: 1px solid #d8dde0; padding: 4px 12px; text-align: left; }}
td.n {{ text-align: right; font-variant-numeric: tabular-nums; }}
figure {{ display: inline-block; margin: 0 2em 2em 0; }}
@media print {{ figure {{ break-inside: avoid; }} }}
</style></head>
<body>
<h1>{escape(title)}: {escape(month)}</h1>
<p>Computed from the event log by <code>carehub kpi --month {escape(month)}</code>.</p>
<table><thead><tr><th>KPI</th><th>breakdown</th><th>value</th><th>target</th></tr></thead>
<tbody>
{table}
</tbody></table>
{"".join(charts)}
</body></html>
"""
    )


def _chart(kpi: str, rows: list[Row]) -> str:
    width, bar, gap = 360, 18, 6
    top = max((r.value for r in rows), default=0) or 1
    height = len(rows) * (bar + gap)

    def one(i: int, r: Row) -> str:
        y, length, label = i * (bar + gap), int((width - 170) * r.value / top), escape(_number(r.value))
        return (
            f'<text x="0" y="{y + 13}" font-size="12">{escape(r.breakdown)}</text>'
            f'<rect x="130" y="{y}" width="{length}" height="{bar}" fill="#005eb8">'
            f"<title>{escape(r.breakdown)}: {label}</title></rect>"
            f'<text x="{136 + length}" y="{y + 13}" font-size="12">{label}</text>'
        )

    bars = "".join(one(i, r) for i, r in enumerate(rows))
    return (
        f"<figure><figcaption>{escape(kpi)}</figcaption>"
        f'<svg role="img" aria-label="{escape(kpi)}" width="{width}" height="{height}">{bars}</svg></figure>'
    )


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:.2f}".rstrip("0").rstrip(".")
