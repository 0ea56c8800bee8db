"""Terminal rendering shared by the CLI commands (Rich)."""

from __future__ import annotations

import asyncio
import signal
from typing import TYPE_CHECKING

from rich.table import Table

if TYPE_CHECKING:
    from hub.bootstrap import Running


def listing(*headers: str, title: str | None = None) -> Table:
    """A table of what the hub holds (ids, file paths, reasons): a value too long for its column is
    folded onto the next line, never cut short with an ellipsis (Rich's default), so nothing a user
    needs (a dead letter's file, a rejection's reason) is lost, in a narrow terminal or a pipe."""
    table = Table(*headers, title=title)
    for column in table.columns:
        column.overflow = "fold"
    return table


def where_table(run: Running) -> Table:
    """Where each part of a running hub listens."""
    table = Table(title="CareHub is running", show_header=False)
    settings = run.services.settings
    embedded = "" if settings.bootstrap_servers() else " (embedded, in memory)"
    table.add_row("Kafka", f"{run.bootstrap}{embedded}")
    table.add_row("Record database", _redact(settings.database()))
    if run.mllp_port:
        table.add_row("MLLP (HL7 v2)", f"{settings.mllp.host}:{run.mllp_port}")
    if run.http_port:
        table.add_row("FHIR API", f"http://{settings.http.host}:{run.http_port}/fhir")
    return table


def _redact(url: str) -> str:
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        return f"{scheme}://***@{rest.split('@', 1)[1]}"
    return url


def on_signal() -> asyncio.Event:
    """An event set on SIGINT or SIGTERM, from now: take it before saying the hub is ready (a SIGTERM
    sent as soon as "Press Ctrl-C" was read found Python's default and killed the hub outright)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    return stop
