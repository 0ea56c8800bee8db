"""Every benchmark ends the same way: one JSON line on stdout, and a row in bench/RESULTS.md."""

from __future__ import annotations

import json
import os
import platform
from datetime import UTC, datetime
from pathlib import Path

RESULTS = Path(__file__).with_name("RESULTS.md")


def machine() -> str:
    """A one-line description of this machine."""
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (
        f"{platform.system()} {platform.machine()}, {os.cpu_count()} cores, {cpu}, Python {platform.python_version()}"
    )


def emit(figures: dict[str, object], *, command: str) -> None:
    """Append the figures to bench/RESULTS.md and print them as the last line, as JSON."""
    if not RESULTS.exists():
        RESULTS.write_text("# Benchmark results\n\nEach entry: when, the machine, the command, the figures (JSON).\n")
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    with RESULTS.open("a") as out:
        out.write(f"\n## {figures.get('bench')} — {stamp}\n\n- machine: {machine()}\n- command: `{command}`\n")
        out.write(f"\n```json\n{json.dumps(figures, indent=2)}\n```\n")
    print(json.dumps(figures))
