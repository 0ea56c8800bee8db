"""What a replay asks of the machine: memory to fold in, scratch space for its shards, and huge
pages for big folds (hub.replay_parallel's workers; hub.replay's warning before it folds)."""

from __future__ import annotations

import contextlib
import os
import platform
from collections.abc import Iterator
from multiprocessing import resource_tracker
from pathlib import Path

_SHM = Path("/dev/shm")  # noqa: S108 - a private directory is made in it (tempfile.TemporaryDirectory)
_MEMINFO = Path("/proc/meminfo")
SHARD_BYTES_PER_EVENT = 2048  # measured: a million events' shards take 2.0 GB


def scratch(near: Path | None, events: int) -> Path | None:
    """Where the shards go: memory-backed /dev/shm where it has room for twice their likely size
    and the machine has four times that available (the workers' folds need memory too), else
    beside the target (None: the system's temporary directory).

    They are written once, read once and deleted within seconds; on a disk's file system their
    pages still cost its bookkeeping (a million-event replay took about 2 s longer with its shards
    on ext4 than on tmpfs, on the 2-core VMs this was measured on)."""
    need = events * SHARD_BYTES_PER_EVENT
    available = memory_available()
    try:
        stat = os.statvfs(_SHM)
    except OSError:
        return near  # no /dev/shm (not Linux, or a container without it)
    if available is None:
        return near  # no memory figure
    room = stat.f_bavail * stat.f_frsize
    return _SHM if os.access(_SHM, os.W_OK) and room >= 2 * need and available >= 4 * need else near


def memory_available() -> int | None:
    """Bytes of memory a replay can have without being stopped for want of it: the system's
    MemAvailable (Linux), or less where this process's cgroup (a container's memory limit) leaves
    less, since the kernel stops a process over its limit whatever the host has free. None where
    neither says."""
    try:
        system: int | None = next(
            int(line.split()[1]) * 1024
            for line in _MEMINFO.read_text().splitlines()
            if line.startswith("MemAvailable:")
        )
    except (OSError, StopIteration, ValueError, IndexError):
        system = None
    found = [room for room in (system, _cgroup_room()) if room is not None]
    return min(found) if found else None


_SELF_CGROUP = Path("/proc/self/cgroup")
_CGROUPS = Path("/sys/fs/cgroup")


def _cgroup_room() -> int | None:
    """The least room any memory limit on this process's cgroup or its ancestors leaves (the limit
    less the usage, plus the file pages the kernel can drop), cgroup v2 or v1; None without one."""
    try:
        lines = _SELF_CGROUP.read_text().splitlines()
    except OSError:
        return None
    rooms: list[int] = []
    for line in lines:  # hierarchy:controllers:path, one line a hierarchy ("0::path" for v2)
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        if parts[1] == "":  # v2: at the root of the mount, or under unified/ beside v1's
            root = _CGROUPS if (_CGROUPS / "cgroup.controllers").exists() else _CGROUPS / "unified"
            files = ("memory.max", "memory.current")
        elif "memory" in parts[1].split(","):
            root, files = _CGROUPS / "memory", ("memory.limit_in_bytes", "memory.usage_in_bytes")
        else:
            continue
        path = root / parts[2].lstrip("/")
        for place in (path, *path.parents):
            if place != root and root not in place.parents:
                break
            room = _room_in(place, *files)
            if room is not None:
                rooms.append(room)
    return min(rooms) if rooms else None


def _room_in(place: Path, limit_file: str, usage_file: str) -> int | None:
    try:
        limit = (place / limit_file).read_text().strip()
        if limit == "max" or int(limit) >= 1 << 60:  # no limit (v2 says max, v1 a huge number)
            return None
        used = int((place / usage_file).read_text())
        stat = (place / "memory.stat").read_text() if (place / "memory.stat").exists() else ""
    except (OSError, ValueError):
        return None
    droppable = next((int(line.split()[1]) for line in stat.splitlines() if line.startswith("inactive_file ")), 0)
    return max(0, int(limit) - used + droppable)


# measured: workers folding 500,000 of bench/replay's events each held 1.8 GB (maxrss), and one
# process folding a million about 3.6 GB; events with bigger payloads take more
FOLD_BYTES_PER_EVENT = 3600


def short_of_memory(events: int, available: int | None) -> str | None:
    """Why a replay of about `events` events may be stopped by the system part way, if it may: a
    fold holds the whole record in memory until it is written."""
    need = events * FOLD_BYTES_PER_EVENT
    if available is None or need <= available:
        return None
    return (
        f"folding up to the log's {events:,} events takes about {gb(need)} of memory and {gb(available)} is available"
    )


def gb(size: int) -> str:
    return f"{size / 1e9:.1f} GB"


_THP = Path("/sys/kernel/mm/transparent_hugepage/enabled")
HUGE_PAGES_FROM = 1_000_000  # events a worker folds, from which huge pages pay for their slower start


def worker_environment() -> dict[str, str]:
    """Workers allocate with the C library's malloc, asking it for transparent huge pages (glibc's
    hugetlb tunable, 2.35 and later: madvise on its heap), where the kernel offers them.

    A big fold holds gigabytes of small objects; on 4 KiB pages, finding them costs TLB misses and
    touching them page faults. Python's allocator cannot use huge pages (its 1 MiB arenas are not
    aligned to them), so this takes the system's, which is slower for smaller folds: replay asks
    for it only from HUGE_PAGES_FROM events a worker. (Measured here: at 500,000 events a worker a
    million-event replay's workers took 34 s with Python's allocator against 37.5 s with huge pages;
    one process folding and writing a million events in memory took 69.5 s against 65.6 s.)
    Nothing changes where the kernel has them off, where the C library is not glibc 2.35 or later
    (malloc without huge pages is only slower), or where the caller has chosen an allocator or
    glibc's huge-page setting already (PYTHONMALLOC, glibc.malloc.hugetlb)."""
    try:
        offered = "[never]" not in _THP.read_text()
    except OSError:
        offered = False  # not Linux, or no transparent huge pages
    tunables = os.environ.get("GLIBC_TUNABLES")
    if not offered or not _glibc_has_hugetlb() or "PYTHONMALLOC" in os.environ or "malloc.hugetlb" in (tunables or ""):
        return {}
    hugetlb = "glibc.malloc.hugetlb=1"
    return {"PYTHONMALLOC": "malloc", "GLIBC_TUNABLES": f"{tunables}:{hugetlb}" if tunables else hugetlb}


def _glibc_has_hugetlb() -> bool:
    name, version = platform.libc_ver()
    try:
        return name == "glibc" and tuple(int(part) for part in version.split(".")[:2]) >= (2, 35)
    except ValueError:
        return False


@contextlib.contextmanager
def environment(changes: dict[str, str]) -> Iterator[None]:
    """os.environ with `changes` while the workers start (a spawned process takes the environment
    as it is when it starts), as it was afterwards. (The whole process sees them meanwhile: a thread
    starting a subprocess at that moment would pass them on. Multiprocessing's resource tracker is
    started first, so that it, at least, does not.)"""
    if changes:
        resource_tracker.ensure_running()
    before = {name: os.environ.get(name) for name in changes}
    os.environ.update(changes)
    try:
        yield
    finally:
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
