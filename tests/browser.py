"""Debian's chromium for the page tests, driven by Playwright through executable_path (Playwright's own
browser download cannot work on these machines): where it is, how it is started, where screenshots go."""

from __future__ import annotations

from pathlib import Path

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SCREENSHOTS = Path(__file__).resolve().parents[1] / "var" / "screenshots"
NO_CHROMIUM = "no /usr/bin/chromium: `make chromium` installs Debian's chromium (apt-get install chromium)"
