"""The embedded broker of a long-running hub (`carehub up`, `carehub demo --serve`) on its data
directory: its advert to the other commands there, taking over one a killed hub left, and draining
it before it stops (it keeps its log in memory)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from aiokafka.errors import KafkaError

from hub.core.errors import RuleRefusedError
from hub.kafka import adopted_broker, behind, embedded_broker, embedded_broker_at
from hub.settings import Settings
from hub.store.database import make_private_folder
from schemas.topics import DEAD_LETTER, EVENTS_DEAD_LETTER

if TYPE_CHECKING:
    from hub.bootstrap import Running

log = logging.getLogger(__name__)

# in the data directory while `carehub up` or `carehub demo --serve` runs the embedded broker: where
# it listens, and the process that runs it, so that other commands on the same data directory use
# its log (the embedded broker keeps its log in memory, and only while it runs)
ADVERT = "embedded-broker.json"
# how long a stopping hub applies what its embedded broker still holds before saying so: the records a
# last clock tick or delivery left are applied within it, and a stop that is no wait is not a warning
QUIET_DRAIN_S = 5.0


def shared_kafka(settings: Settings) -> str:
    """The Kafka a command should use: the configured one; else the embedded broker of a hub running
    on the same data directory; else the one a hub killed outright there left running (its log holds
    what that hub acknowledged: what a command sends to it waits there, with the rest, for the next
    `carehub up` on the data directory, which takes it over; a broker of the command's own would
    apply it to the record and then forget it, so no replay, export or KPI report could read it);
    else '' (there is none: start one's own)."""
    found = settings.bootstrap_servers() or advertised(settings.data_dir)
    if found:
        return found
    left = left_running(settings.data_dir)
    if left is None:
        return ""
    if settings.data_dir not in _TOLD:
        _TOLD.add(settings.data_dir)
        log.warning(
            "no hub runs on %s, but the one stopped outright there left its embedded broker (pid %s)"
            " running: using its log, where what this sends waits to be applied until `carehub up` on"
            " this data directory takes it over",
            settings.data_dir,
            left[0],
        )
    return left[1]


_TOLD: set[Path] = set()  # data directories whose left broker this process has said it uses


def one_off_log(data_dir: Path) -> str:
    """What a command that sent events through a broker of its own (no hub running on `data_dir`,
    no Kafka configured) tells its user: the record has them; the log they went through is gone."""
    return (
        f"no hub runs on {data_dir} and no Kafka is configured: what was accepted is in its record, but the "
        "log it went through was this command's own and ended with it, so replay, log export and the KPIs "
        "(which read the log) will not see it. Start `carehub up` on that data directory (or set "
        "KAFKA_BOOTSTRAP_SERVERS) before sending, to keep it on the log"
    )


def _advert(data_dir: Path) -> tuple[int, int | None, str] | None:
    """The advert on this data directory, if there is a readable one: (hub pid, broker pid, bootstrap)."""
    try:
        found = json.loads((data_dir / ADVERT).read_text())
        broker = found.get("broker_pid")
        return int(found["pid"]), None if broker is None else int(broker), str(found["bootstrap"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def advertised(data_dir: Path) -> str | None:
    """Where the embedded broker of a hub running on this data directory listens, if one is."""
    found = _advert(data_dir)
    if found is None:
        return None
    pid, _, bootstrap = found
    return bootstrap if _alive(pid) else None  # (a hub killed outright leaves its file behind)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True


def another_hub(data_dir: Path) -> str | None:
    """Where the embedded broker of another hub running on this data directory listens, if one does:
    its advert names a live process other than this one (a container restarted as PID 1 finds its own
    pid in the advert the killed one left) and a broker that answers where it says."""
    found = _advert(data_dir)
    if found is None:
        return None
    pid, broker, bootstrap = found
    if pid == os.getpid() or not _alive(pid) or broker is None or not embedded_broker_at(broker, bootstrap):
        return None
    return bootstrap


def left_running(data_dir: Path) -> tuple[int, str] | None:
    """The embedded broker (pid, bootstrap) that a hub on this data directory started and left
    running when it was killed outright (SIGKILL, a crash): its log, in memory, still holds what that
    hub acknowledged, so the next `carehub up` here takes it over rather than start an empty one."""
    found = _advert(data_dir)
    if found is None:
        return None
    pid, broker, bootstrap = found
    if _alive(pid) or broker is None or not embedded_broker_at(broker, bootstrap):
        return None
    return broker, bootstrap


@contextlib.contextmanager
def _advertising(data_dir: Path, bootstrap: str, broker_pid: int) -> Iterator[None]:
    """The advert, while the context lasts (not where another live hub has one here already)."""
    path, pid = data_dir / ADVERT, os.getpid()
    if another_hub(data_dir) is not None:
        log.warning("another hub runs an embedded broker on %s: this one's is not advertised", data_dir)
        yield
        return
    temporary = path.with_suffix(f".{pid}.tmp")
    temporary.write_text(json.dumps({"bootstrap": bootstrap, "pid": pid, "broker_pid": broker_pid}))
    temporary.replace(path)
    try:
        yield
    finally:
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            if int(json.loads(path.read_text())["pid"]) == pid:
                path.unlink()


@contextlib.asynccontextmanager
async def kafka(settings: Settings, *, advertise: bool = False) -> AsyncIterator[str]:
    """The configured Kafka; else the embedded broker of a hub running on the same data directory
    (unless this one is to `advertise` its own); else, if it is to `advertise`, the embedded broker
    a hub killed outright here left running; else an embedded broker for as long as the context
    lasts, advertised in the data directory if `advertise`."""
    configured = settings.bootstrap_servers() if advertise else shared_kafka(settings)
    if configured:
        yield configured
        return
    running_here = another_hub(settings.data_dir) if advertise else None
    if running_here is not None:  # two hubs, two logs, one record: what one applied no replay of the other's log holds
        raise RuleRefusedError(
            f"a hub already runs on {settings.data_dir} (its embedded broker at {running_here}): stop it"
            " first (Ctrl-C), or give this one another --data-dir"
        )
    make_private_folder(settings.data_dir)
    left = left_running(settings.data_dir) if advertise else None
    if left is not None:
        pid, bootstrap = left
        log.warning(
            "taking over the embedded broker (pid %s) that the hub stopped outright on %s left running:"
            " the consumers apply what it holds",
            pid,
            settings.data_dir,
        )
        async with adopted_broker(pid, bootstrap):
            with _advertising(settings.data_dir, bootstrap, pid):
                yield bootstrap
        return
    if advertise and (settings.data_dir / ADVERT).exists() and advertised(settings.data_dir) is None:
        log.warning(
            "the hub last run on %s was stopped outright and its embedded broker is gone: messages it had"
            " acknowledged and not yet applied went with the broker's memory (Apache Kafka keeps them)",
            settings.data_dir,
        )
    started: list[int] = []
    log_path, own_session = settings.data_dir / "broker.log", advertise  # (a long-running hub outlives a kill)
    async with embedded_broker(log_path=log_path, on_start=started.append, own_session=own_session) as bootstrap:
        with _advertising(settings.data_dir, bootstrap, started[0]) if advertise else contextlib.nullcontext():
            yield bootstrap


async def drain(run: Running, timeout: float) -> None:
    """Before the embedded broker stops (and its log, held in memory, with it), let the consumers
    apply what it holds, the dead-letter consumer included: every message the hub acknowledged (AA,
    or AE/AR with the promise to keep it) is then in the record or the dead-letter store. A second
    Ctrl-C (or SIGTERM) stops at once, saying how much was left; one after that is ignored while the
    broker stops, so the hub never dies leaving its broker behind."""
    loop, again = asyncio.get_running_loop(), asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):  # (not the main thread)
            loop.add_signal_handler(sig, again.set)  # (left in place: the hub is stopping)
    try:
        left, deadline = await _lag(run), loop.time() + timeout
        quiet_until, warned = loop.time() + min(QUIET_DRAIN_S, timeout), False
        while left and not again.is_set() and loop.time() < deadline:
            if not warned and loop.time() >= quiet_until:  # (a clock tick's few records: applied unremarked)
                warned = True
                log.warning(
                    "stopping: the consumers are applying the %d records still on the embedded broker's log,"
                    " which is held in memory only (Ctrl-C again to stop at once and lose them)",
                    left,
                )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(again.wait(), 0.3)
            left = await _lag(run)
    except (KafkaError, OSError) as exc:
        log.error("stopping: could not tell what the embedded broker still holds (%s)", type(exc).__name__)
        return
    if left:
        log.error("stopped with %d records on the embedded broker's log not applied: they go with it", left)


async def _lag(run: Running) -> int:
    """Records on the log that a consumer group of this hub has yet to commit, counted per group."""
    lag = await behind(run.bootstrap, run.consumer_groups)
    total = sum(lag.values())
    if run.dead_letter_group:
        for topic in (DEAD_LETTER.name, EVENTS_DEAD_LETTER.name):
            total += sum((await behind(run.bootstrap, [run.dead_letter_group], topic)).values())
    return total
