"""`carehub demo` shows its synthetic locality's care coordination: referrals, tasks and a huddle agenda.

One cut-down demo run (the size tests/e2e/test_logs.py uses) in a subprocess, read as a person reads it.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from hub.core.huddle import SECTIONS

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(240)]
PEOPLE, DAYS, SEED = 60, 10, 3


@dataclass(frozen=True)
class DemoRun:
    """What one `carehub demo` run left: its data folder and what it printed."""

    data_dir: Path
    stdout: str
    stderr: str


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> DemoRun:
    data_dir = tmp_path_factory.mktemp("demo")
    exe = Path(sys.executable).with_name("carehub")
    env = {k: v for k, v in os.environ.items() if not k.startswith("CAREHUB_") and k != "KAFKA_BOOTSTRAP_SERVERS"}
    env |= {"COLUMNS": "200", "PYTHONIOENCODING": "utf-8"}  # rich tables unwrapped, with their box lines
    args = [str(exe), "demo", "--data-dir", str(data_dir), "--mllp-port", "0", "--http-port", "0"]
    args += ["--people", str(PEOPLE), "--days", str(DAYS), "--seed", str(SEED)]
    run = subprocess.run(args, env=env, capture_output=True, encoding="utf-8", timeout=200, check=False)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    return DemoRun(data_dir, run.stdout, run.stderr)


def table(output: str, title: str) -> dict[str, list[str]]:
    """The rows of the rich table printed under `title`: first cell -> the other cells."""
    lines = output.splitlines()
    start = next((i for i, line in enumerate(lines) if title in line), None)
    assert start is not None, f"no table titled {title!r} in:\n{output}"
    rows: dict[str, list[str]] = {}
    for line in lines[start + 1 :]:
        if line.startswith("└"):
            return rows
        if line.startswith("│"):
            first, *others = (cell.strip() for cell in line.strip("│").split("│"))
            rows[first] = others
    raise AssertionError(f"the table titled {title!r} does not end")


def test_the_demo_shows_referrals_to_the_pic_service_by_source(demo: DemoRun) -> None:
    referrals = {source: int(n) for source, (n,) in table(demo.stdout, "Referrals to the PIC service").items()}
    assert referrals
    assert all(n > 0 for n in referrals.values())
    assert {"gp", "huddle"} <= set(referrals)
    answered = re.search(r"Accepted (\d+), declined (\d+), discharged from the service (\d+)", demo.stdout)
    assert answered, demo.stdout
    accepted, declined, closed = map(int, answered.groups())
    assert accepted > 0
    assert accepted + declined <= sum(referrals.values())
    assert 0 < closed <= accepted


def test_the_demo_shows_coordinator_tasks_one_triage_and_one_first_visit_per_referral(demo: DemoRun) -> None:
    referrals = sum(int(n) for (n,) in table(demo.stdout, "Referrals to the PIC service").values())
    closed = int(re.findall(r"discharged from the service (\d+)", demo.stdout)[0])
    columns = ("open", "completed", "cancelled", "overdue")
    counts = {
        task: dict(zip(columns, map(int, cells), strict=True))
        for task, cells in table(demo.stdout, "Coordinator tasks and their clocks").items()
    }
    assert {"referral-triage", "first-visit", "review-6-weeks", "review-12-weeks", "pic-summary"} <= set(counts)
    made = {task: c["open"] + c["completed"] + c["cancelled"] for task, c in counts.items()}
    assert made["referral-triage"] == made["first-visit"] == referrals
    assert made["pic-summary"] == closed  # one per discharge from the service
    assert counts["referral-triage"]["completed"] > 0
    assert counts["referral-triage"]["overdue"] > 0  # the demo leaves some referrals untriaged on purpose


def test_the_demo_shows_a_huddle_agenda_with_every_section(demo: DemoRun) -> None:
    heading = re.search(r"Huddle agenda for (\S+) on (\d{4}-\d{2}-\d{2})", demo.stdout)
    assert heading, demo.stdout
    agenda = {section: int(n) for section, (n,) in table(demo.stdout, heading.group(0)).items()}
    assert set(agenda) == set(SECTIONS.values())
    assert sum(agenda.values()) > 0
    assert f"/huddle/{heading.group(1)}?date={heading.group(2)}" in demo.stdout  # and where to print it


def test_the_demo_runs_without_a_warning_or_an_error(demo: DemoRun) -> None:
    # nothing in the demo is meant to go wrong: a warning is a part of the hub waiting on another (an
    # accept on the event loop waited 30 s for a write lock a consumer held while awaiting Kafka, and
    # the demo took two minutes saying "dependency unavailable")
    said = [line for line in (demo.stdout + demo.stderr).splitlines() if " WARNING " in line or " ERROR " in line]
    assert not said, "\n".join(said[:10])


def test_the_commands_the_demo_prints_to_copy_are_each_on_one_line(demo: DemoRun) -> None:
    # (not on a terminal, its URLs wrapped inside their quotes: copied, they broke)
    lines = demo.stdout.splitlines()
    fhir = next(line for line in lines if line.startswith("Read it over FHIR: "))
    assert re.fullmatch(r"Read it over FHIR: TOKEN=\$\(.+\); curl -H .+ 'http://127\.0\.0\.1:\d+/fhir/[^' ]+'", fhir), (
        fhir
    )
    huddle = next(line for line in lines if line.startswith("The huddle page: "))
    assert re.fullmatch(
        r"The huddle page: TOKEN=\$\(.+\); open 'http://127\.0\.0\.1:\d+/huddle/\S+&token='\$TOKEN", huddle
    )


def test_a_demo_run_again_on_the_same_folder_says_it_adds_to_the_record_there(demo: DemoRun) -> None:
    """A second `make demo` on ./var stacked a second month on the first, its figures counting both,
    and said nothing (a newcomer's walkthrough). Run after the tests that read the first run's output."""
    assert "already holds a record" not in demo.stdout  # (the first run, on an empty folder)
    exe = Path(sys.executable).with_name("carehub")
    env = {k: v for k, v in os.environ.items() if not k.startswith("CAREHUB_") and k != "KAFKA_BOOTSTRAP_SERVERS"}
    env |= {"COLUMNS": "400"}
    args = [str(exe), "demo", "--data-dir", str(demo.data_dir), "--mllp-port", "0", "--http-port", "0"]
    args += ["--people", "20", "--days", "1", "--seed", str(SEED + 1)]
    again = subprocess.run(args, env=env, capture_output=True, encoding="utf-8", timeout=200, check=False)
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-2000:]
    first = again.stdout.splitlines()[1]
    people = re.search(r"already holds a record \((\d+) people\) from an earlier run", first)
    assert people, again.stdout[:1000]
    assert int(people[1]) >= PEOPLE // 2  # the first run's people


def test_the_demos_kpi_files_are_those_carehub_kpi_writes_month_and_status_on_every_line(demo: DemoRun) -> None:
    import csv

    reports = sorted((demo.data_dir / "kpi").glob("kpi-????-??.csv"))  # (one a run: a run again may add one)
    assert reports
    for report in reports:
        month = report.stem.removeprefix("kpi-")
        assert (demo.data_dir / "kpi" / f"kpi-{month}-trend.csv").exists()
        with report.open(newline="") as f:
            lines = list(csv.DictReader(f))
        said = {(line["month"], bool(line["month_status"]), bool(line["generated_utc"])) for line in lines}
        assert lines and said == {(month, True, True)}, report


def test_the_demo_gives_the_gp_letters_figure_of_the_month_its_discharges_fell_in(demo: DemoRun) -> None:
    """The discharges from the service are this morning's; a KPI line for a month of referrals before
    them said n/a for the letters (a GP practice's walkthrough). The month they fell in is reported."""
    said = " ".join(demo.stdout.split())
    figures = re.findall(r"GP letters within 48 h(?: for \d{4}-\d{2}, when [^:]*)?:? (n/a|\d+(?:\.\d+)?%)", said)
    assert figures, said[-1500:]
    assert figures[-1] != "n/a", said[-1500:]
