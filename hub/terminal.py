"""Terminal rendering shared by the CLI commands (Rich)."""

from __future__ import annotations

import asyncio
import logging
import re
import signal
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

if TYPE_CHECKING:
    from hub.bootstrap import Running

log = logging.getLogger(__name__)
# what a terminal must never be sent as it is: C0 and C1 controls but tab and newline, and the
# bidirectional overrides that make text read otherwise than it is (what the hub holds came from outside)
_UNSHOWABLE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def controls_escaped(text: str) -> str:
    """`text` with its terminal controls as \\xNN (\\uNNNN for a bidirectional override): an ESC in a
    name is shown as \\x1b, never sent to the terminal to recolour or rewrite it."""
    return _UNSHOWABLE.sub(_escaped, text)


def _escaped(control: re.Match[str]) -> str:
    code = ord(control.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


class ControlSafeConsole(Console):
    """The CLI's console: every string it prints (a message, a table's cell or title) has its terminal
    controls escaped first (controls_escaped), whichever command printed it and from wherever the text
    came. Our own messages hold none: colour is Rich markup, never an escape sequence."""

    def render_str(self, text: str, **options: Any) -> Text:
        return super().render_str(controls_escaped(text), **options)


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


def on_signal(*, at_once_again: bool = True) -> asyncio.Event:
    """An event set on SIGINT or SIGTERM, from now, logged as "stopping (signal ...)": take it before
    the hub starts (a SIGTERM sent while it started found Python's default and killed it outright,
    its consumers never leaving their groups). A second signal before the hub has stopped stops it at
    once, as Python's default does (a start that hangs can still be interrupted), where
    `at_once_again`: with a shared Kafka, which keeps what was acknowledged. On the embedded broker,
    whose log is in memory, a repeat is only logged: stopping at once there, before the consumers have
    applied what the broker holds (hub.embedded.drain, which then takes the signals and says how much
    a second one would lose), lost messages the hub had acknowledged, without a word."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def stopping(sig: signal.Signals) -> None:
        if not stop.is_set():
            log.info("stopping (signal %s)", sig.name)
            stop.set()
            return
        if not at_once_again:
            log.warning(
                "already stopping (signal %s again): the consumers apply what the embedded broker holds "
                "first; a signal once that has begun stops at once",
                sig.name,
            )
            return
        log.warning("stopping at once (signal %s again)", sig.name)
        for each in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(each)
        signal.raise_signal(sig)

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stopping, sig)
    return stop
