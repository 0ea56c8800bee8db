"""The commissioner's KPI report (`carehub kpi`'s HTML) in a real browser: Debian's chromium driven by
Playwright, opened from the file the report writer wrote, on screen and printed.

The reports are built from the hand-computed locality month (tests/locality_month.py), the same month with
the long practice and coordinator names real data has, and a month with nothing to divide by; a report
says the month's status (partial, no events) above its figures, on screen and printed."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from hub.core.kpis import KpiFold, Row
from hub.core.ports import RecordEvent
from hub.kpi_report import NO_EVENTS, About, about, write_html
from tests import locality_month as month
from tests.browser import CHROMIUM, CHROMIUM_ARGS, NO_CHROMIUM, SCREENSHOTS

pytestmark = [pytest.mark.timeout(120), pytest.mark.browser]
A4_PRINTABLE = 718  # px: 210 mm less two 10 mm margins, at 96 px to the inch
GENERATED = datetime(2026, 12, 6, 9, 30, tzinfo=UTC)
PARTIAL = "partial: the log goes up to 2026-11-28T09:00:00+00:00"  # the locality month's last event
LONG_PRACTICES = {
    "The Whitehorse Road and Brigstock Family Practice (Thornton Heath)": ("P1", "P2"),
    "DR A J KOWALCZYK-ABERNATHY & PARTNERS, MAYDAY HEALTH CENTRE": ("P5",),
}
LONG_COORDINATORS = {"P1": "Margaret Oyelaran-Whitfield (South Croydon PCN)", "P2": "WILLIAMSON-MBEKI, Oluwaseun"}
# what the page says about every chart, measured by chromium (SVG user units are CSS pixels here: no viewBox)
GEOMETRY = """() => [...document.querySelectorAll('figure svg')].map(svg => {
  const box = (b) => ({x: b.x, y: b.y, width: b.width, height: b.height});
  const own = (t) => [...t.childNodes].filter(n => n.nodeType === Node.TEXT_NODE).map(n => n.data).join('');
  const client = svg.getBoundingClientRect();
  return {
    kpi: svg.closest('figure').querySelector('figcaption').textContent,
    width: svg.width.baseVal.value,
    height: svg.height.baseVal.value,
    client: {width: client.width, height: client.height},
    bars: [...svg.querySelectorAll('rect')].map(r => box(r.getBBox())),
    texts: [...svg.querySelectorAll('text')].map(t => ({
      text: own(t), title: t.querySelector('title')?.textContent ?? null, box: box(t.getBBox()),
    })),
  };
})"""


def fold_of(events: list[RecordEvent]) -> KpiFold:
    fold = KpiFold(service=month.SERVICE)
    for event in events:
        fold.add(event)
    return fold


def referred_from(practice: str, who: str, day: int) -> RecordEvent:
    """A GP referral of `who` whose Patient is registered at `practice`."""
    event = month.referral(who, month.at(day, 10), "gp")
    [patient] = [e["resource"] for e in event.payload["entry"] if e["resource"]["resourceType"] == "Patient"]
    patient["generalPractitioner"][0]["identifier"]["value"] = practice
    return event


def long_named_month() -> list[Row]:
    """The locality month, with three more referrals from long-named practices and two more episodes held
    by long-named coordinators: names as a PAS or a social-care system spells them."""
    extra = [
        referred_from(name, who, 16 + i) for name, people in LONG_PRACTICES.items() for i, who in enumerate(people)
    ]
    extra += [month.episode(who, month.at(18, 9), name) for who, name in LONG_COORDINATORS.items()]
    return fold_of(month.script() + extra).report("2026-11")


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not CHROMIUM.exists():
        pytest.skip(NO_CHROMIUM)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


def opened(browser: Any, rows: list[Row], path: Path, *, of: str, said: About | None = None) -> tuple[Any, list[str]]:
    """The report written to `path` and opened from the file; (page, every URL the page asked for)."""
    write_html(rows, path, month=of, title="Personal Independence Coordination", about=said)
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    asked: list[str] = []
    page.on("request", lambda request: asked.append(request.url))
    response = page.goto(path.as_uri())
    assert response is not None and response.ok
    page.wait_for_load_state("networkidle")
    return page, asked


def table_of(page: Any) -> dict[tuple[str, str], str]:
    """(kpi, breakdown) -> the value cell, as the page shows it ("90% of 10" for a percentage)."""
    cells = page.locator("table tbody tr").evaluate_all(
        "rows => rows.map(r => [...r.querySelectorAll('td')].map(td => td.innerText))"
    )
    return {(kpi, breakdown): value for kpi, breakdown, value, _target in cells}


def figure(shown: str) -> float:
    """The number a value cell starts with ("33.3% of 3" is 33.3)."""
    number = re.match(r"-?[0-9.]+", shown)
    assert number is not None, shown
    return float(number[0])


def status_of(page: Any) -> str:
    """The month's status box: visible, above the figures, and what it says."""
    box = page.locator("#month-status")
    assert box.is_visible()
    assert box.bounding_box()["y"] < page.locator("table").bounding_box()["y"], "the status is below the figures"
    return str(box.inner_text())


def charts_of(page: Any) -> list[dict[str, Any]]:
    charts: list[dict[str, Any]] = page.evaluate(GEOMETRY)
    assert charts and len(charts) == page.locator("figure svg").count()
    for i in range(len(charts)):
        assert page.locator("figure svg").nth(i).is_visible(), charts[i]["kpi"]
    return charts


def bar_rows(chart: dict[str, Any]) -> list[dict[str, Any]]:
    """The chart read as a person reads it: one line per breakdown, the label leftmost, then the bar
    (if any) and the value label, all on the same line."""
    lines: dict[int, list[dict[str, Any]]] = {}
    for text in chart["texts"]:
        middle = round(text["box"]["y"] + text["box"]["height"] / 2)
        lines.setdefault(middle, []).append(text)
    rows = []
    for middle, texts in sorted(lines.items()):
        assert len(texts) == 2, f"{chart['kpi']}: expected a label and a value on line {middle}, got {texts}"
        label, value = sorted(texts, key=lambda t: t["box"]["x"])
        bars = [b for b in chart["bars"] if b["y"] <= middle <= b["y"] + b["height"]]
        assert len(bars) <= 1, f"{chart['kpi']}: two bars on one line: {bars}"
        rows.append({"label": label, "value": value, "bar": bars[0] if bars else None})
    return rows


def shown_name(label: dict[str, Any]) -> str:
    """The breakdown a label stands for: its text, or the full name its tooltip carries if shortened."""
    text: str = label["text"]
    if text.endswith("…"):
        assert label["title"] and label["title"].startswith(text[:-1]), label
        return str(label["title"])
    return text


def assert_readable(chart: dict[str, Any], rows: list[Row]) -> None:
    """Every label is inside the chart's box, no label is drawn over a bar, bars are to scale, and a
    breakdown with no value has no bar."""
    kpi, width, height = chart["kpi"], chart["width"], chart["height"]
    assert chart["client"]["width"] > 0 and chart["client"]["height"] > 0, chart
    read = bar_rows(chart)
    assert [shown_name(r["label"]) for r in read] == [r.breakdown for r in rows], kpi
    values = {r.breakdown: r.value for r in rows}
    scale = []
    for line in read:
        name, bar = shown_name(line["label"]), line["bar"]
        for text in (line["label"], line["value"]):
            box = text["box"]
            assert box["x"] >= 0 and box["x"] + box["width"] <= width, f"{kpi}: {text['text']!r} clipped: {box}"
            assert box["y"] >= 0 and box["y"] + box["height"] <= height, f"{kpi}: {text['text']!r} clipped: {box}"
        label_end = line["label"]["box"]["x"] + line["label"]["box"]["width"]
        assert label_end <= line["value"]["box"]["x"], f"{kpi}: label {name!r} runs into its value"
        if values[name] is None:
            assert bar is None, f"{kpi}: {name!r} has no value but a bar: {bar}"
            assert line["value"]["text"] == "n/a"
            continue
        assert bar is not None, f"{kpi}: {name!r} has a value but no bar"
        assert label_end <= bar["x"], f"{kpi}: label {name!r} (ends at {label_end:.1f}) overlaps its bar {bar}"
        assert bar["x"] + bar["width"] <= line["value"]["box"]["x"], f"{kpi}: {name!r} value drawn over its bar"
        assert float(line["value"]["text"]) == values[name], f"{kpi}: {name!r}"
        scale.append((values[name], bar["width"]))
    top, longest = max(scale)
    assert all(abs(w - longest * v / (top or 1)) <= 1 for v, w in scale), f"{kpi}: bars not to scale: {scale}"


def charted(rows: list[Row]) -> dict[str, list[Row]]:
    groups: dict[str, list[Row]] = {}
    for row in rows:
        groups.setdefault(row.kpi, []).append(row)
    return {kpi: items for kpi, items in groups.items() if len(items) > 1 and all(r.breakdown != "%" for r in items)}


def assert_prints(page: Any, pdf: Path) -> None:
    """On an A4 page nothing is wider than the paper, the charts still read, and chromium makes a PDF."""
    page.set_viewport_size({"width": A4_PRINTABLE, "height": 1000})
    page.emulate_media(media="print")
    overflow = page.evaluate("() => document.documentElement.scrollWidth - document.documentElement.clientWidth")
    assert overflow <= 0, f"the printed page is {overflow}px wider than A4"
    for chart in charts_of(page):
        right = page.evaluate(
            "kpi => [...document.querySelectorAll('figure svg')]"
            ".find(s => s.getAttribute('aria-label') === kpi).getBoundingClientRect().right",
            chart["kpi"],
        )
        assert right <= A4_PRINTABLE, f"{chart['kpi']} is cut off by the paper's edge ({right}px)"
    page.pdf(path=str(pdf), format="A4", margin={"top": "10mm", "bottom": "10mm", "left": "10mm", "right": "10mm"})
    assert pdf.read_bytes().startswith(b"%PDF-") and pdf.stat().st_size > 5_000


def assert_self_contained(page: Any, asked: list[str], path: Path) -> None:
    assert asked == [path.as_uri()], f"the report asked for more than itself: {asked}"
    assert page.locator("script, link, img, iframe, object, embed").count() == 0


def test_the_locality_month_report_shows_the_hand_computed_figures_with_readable_charts(
    browser: Any, tmp_path: Path
) -> None:
    fold = fold_of(month.script())
    rows = fold.report("2026-11")
    path = tmp_path / "kpi-2026-11.html"
    page, asked = opened(browser, rows, path, of="2026-11", said=about(fold, "2026-11", GENERATED))
    try:
        shown = table_of(page)
        charts = charts_of(page)
        heading = page.locator("h1").inner_text()
        status = status_of(page)
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SCREENSHOTS / "kpi-report.png"), full_page=True)
        assert_prints(page, tmp_path / "kpi-2026-11.pdf")
        printed_status = status_of(page)
        page.screenshot(path=str(SCREENSHOTS / "kpi-report-print.png"), full_page=True)
        assert_self_contained(page, asked, path)
    finally:
        page.close()

    assert heading == "Personal Independence Coordination: 2026-11"
    assert f"Month status: {PARTIAL}" in status and status == printed_status
    assert {key: figure(value) for key, value in shown.items()} == month.EXPECTED_KPIS
    assert shown[("days from referral to first contact", "mean")] == "2.58 (mean of 2)"
    assert shown[("declined", "% of referrals")] == "33.3% of 3"
    assert shown[("huddles attended", "%")] == "75% of 4"
    assert shown[("caseload at month end", "c-bob")] == "0"
    expected = charted(rows)
    assert list(expected) == ["referrals by source", "age at referral", "caseload at month end"]
    assert [c["kpi"] for c in charts] == list(expected)
    for chart in charts:
        assert_readable(chart, expected[chart["kpi"]])
    assert (SCREENSHOTS / "kpi-report.png").stat().st_size > 10_000


def test_long_practice_and_coordinator_names_are_neither_clipped_nor_drawn_over_their_bars(
    browser: Any, tmp_path: Path
) -> None:
    rows = long_named_month()
    path = tmp_path / "kpi-2026-11.html"
    page, asked = opened(browser, rows, path, of="2026-11")
    try:
        shown = table_of(page)
        charts = charts_of(page)
        page.screenshot(path=str(SCREENSHOTS / "kpi-report-long-names.png"), full_page=True)
        for chart in charts:  # on screen, then on paper
            assert_readable(chart, charted(rows)[chart["kpi"]])
        assert_prints(page, tmp_path / "kpi-2026-11.pdf")
        printed = charts_of(page)
        page.screenshot(path=str(SCREENSHOTS / "kpi-report-long-names-print.png"), full_page=True)
        assert_self_contained(page, asked, path)
    finally:
        page.close()

    for chart in printed:
        assert_readable(chart, charted(rows)[chart["kpi"]])
    practice, coordinator = next(iter(LONG_PRACTICES)), LONG_COORDINATORS["P1"]
    assert shown[("referrals by practice", practice)] == "2"
    assert shown[("referrals by practice", month.PRACTICE)] == "3"
    assert shown[("caseload at month end", coordinator)] == "1"
    assert shown[("referrals", "")] == "6"
    assert {c["kpi"] for c in charts} >= {"referrals by practice", "caseload at month end"}


def test_a_month_with_nothing_to_divide_by_shows_n_a_and_draws_no_bar_for_it(browser: Any, tmp_path: Path) -> None:
    fold = fold_of(month.script())
    rows = fold.report("2026-10")
    # a measure with a breakdown where one breakdown has nothing to divide by, as a per-coordinator mean would
    by_coordinator = "days to first visit by coordinator"
    rows += [Row(by_coordinator, "c-ann", None), Row(by_coordinator, "c-bob", 4.5)]
    path = tmp_path / "kpi-2026-10.html"
    page, asked = opened(browser, rows, path, of="2026-10", said=about(fold, "2026-10", GENERATED))
    try:
        shown = table_of(page)
        charts = charts_of(page)
        status = status_of(page)
        page.screenshot(path=str(SCREENSHOTS / "kpi-report-empty-month.png"), full_page=True)
        assert_prints(page, tmp_path / "kpi-2026-10.pdf")
        assert_self_contained(page, asked, path)
    finally:
        page.close()

    for key in (
        ("first visits within 4 weeks", "%"),
        ("days from referral to first contact", "mean"),
        ("hours from discharge to GP letter", "mean"),
        ("declined", "% of referrals"),
        ("huddles attended", "%"),
    ):
        assert shown[key] == "n/a", key
    assert shown[("referrals", "")] == "0" and shown[("huddles held", "")] == "0"
    assert status.startswith(f"Month status: {NO_EVENTS}.")
    expected = charted(rows)
    assert [c["kpi"] for c in charts] == list(expected)
    for chart in charts:
        assert_readable(chart, expected[chart["kpi"]])
