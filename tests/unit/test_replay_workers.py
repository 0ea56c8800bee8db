"""The environment replay workers start with (the C library's malloc on transparent huge pages,
only where the kernel offers them and the caller has not chosen an allocator), where their shards
go, and what a replay says of the memory it needs and of a worker that was stopped."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from hub import replay_machine, replay_parallel
from hub.replay_machine import _glibc_has_hugetlb, environment, worker_environment


@pytest.fixture
def thp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "enabled"
    monkeypatch.setattr(replay_machine, "_THP", path)
    monkeypatch.delenv("PYTHONMALLOC", raising=False)
    monkeypatch.delenv("GLIBC_TUNABLES", raising=False)
    monkeypatch.setattr(replay_machine, "_glibc_has_hugetlb", lambda: True)
    return path


@pytest.mark.parametrize("mode", ["always [madvise] never", "[always] madvise never"])
def test_workers_ask_for_huge_pages_where_the_kernel_offers_them(thp: Path, mode: str) -> None:
    thp.write_text(mode + "\n")
    assert worker_environment() == {"PYTHONMALLOC": "malloc", "GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}


def test_nothing_changes_where_huge_pages_are_off_or_unknown(thp: Path) -> None:
    thp.write_text("always madvise [never]\n")
    assert worker_environment() == {}
    thp.unlink()
    assert worker_environment() == {}


def test_the_callers_own_choices_are_kept(thp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    thp.write_text("always [madvise] never\n")
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.arena_max=2")
    assert worker_environment()["GLIBC_TUNABLES"] == "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1"
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.hugetlb=0")
    assert worker_environment() == {}
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.arena_max=2")
    monkeypatch.setenv("PYTHONMALLOC", "pymalloc")
    assert worker_environment() == {}


def test_nothing_changes_without_a_glibc_that_has_the_setting(thp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    thp.write_text("always [madvise] never\n")
    monkeypatch.setattr(replay_machine, "_glibc_has_hugetlb", _glibc_has_hugetlb)  # the real check
    for found in ("glibc 2.34", "musl 1.2", "glibc unknown"):
        monkeypatch.setattr(replay_machine.os, "confstr", lambda _name, found=found: found)
        assert worker_environment() == {}, found
    monkeypatch.setattr(replay_machine.os, "confstr", lambda _name: "glibc 2.36")
    assert worker_environment() != {}


def test_the_environment_is_restored_after_the_workers_start(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GLIBC_TUNABLES", "before")
    monkeypatch.delenv("PYTHONMALLOC", raising=False)
    with environment({"PYTHONMALLOC": "malloc", "GLIBC_TUNABLES": "during"}):
        assert (os.environ["PYTHONMALLOC"], os.environ["GLIBC_TUNABLES"]) == ("malloc", "during")
    assert "PYTHONMALLOC" not in os.environ
    assert os.environ["GLIBC_TUNABLES"] == "before"


@pytest.fixture
def shm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    place = tmp_path / "shm"
    place.mkdir()
    monkeypatch.setattr(replay_machine, "_SHM", place)
    return place


def meminfo(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, available_kib: int) -> None:
    info = tmp_path / "meminfo"
    info.write_text(f"MemTotal:       99999999 kB\nMemFree:  1 kB\nMemAvailable:   {available_kib} kB\n")
    monkeypatch.setattr(replay_machine, "_MEMINFO", info)


def test_shards_go_to_memory_backed_storage_where_there_is_room(
    shm: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    meminfo(monkeypatch, tmp_path, available_kib=16 * 1024 * 1024)  # 16 GiB
    assert replay_machine.scratch(tmp_path, 1_000_000) == shm  # 2 GB of shards
    assert replay_machine.scratch(tmp_path, 3_000_000) == tmp_path  # 6 GB: 24 GB wanted available
    meminfo(monkeypatch, tmp_path, available_kib=10**15)
    free = os.statvfs(shm).f_bavail * os.statvfs(shm).f_frsize
    assert replay_machine.scratch(tmp_path, free // replay_machine.SHARD_BYTES_PER_EVENT) == tmp_path  # no room


def test_shards_go_beside_the_target_without_dev_shm_or_a_memory_figure(
    shm: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(replay_machine, "_MEMINFO", tmp_path / "absent")
    assert replay_machine.scratch(tmp_path, 10) == tmp_path
    meminfo(monkeypatch, tmp_path, available_kib=16 * 1024 * 1024)
    shm.rmdir()
    assert replay_machine.scratch(None, 10) is None


def test_a_replay_short_of_memory_says_so_with_its_figures() -> None:
    per = replay_machine.FOLD_BYTES_PER_EVENT
    assert replay_machine.short_of_memory(1_000_000, 1_000_000 * per) is None  # (just enough)
    assert replay_machine.short_of_memory(1_000_000, None) is None  # no figure: nothing to say
    said = replay_machine.short_of_memory(1_000_000, 2_000_000_000)
    assert said == "folding up to the log's 1,000,000 events takes about 3.6 GB of memory and 2.0 GB is available"


def test_what_stopped_a_worker_is_said_plainly(tmp_path: Path) -> None:
    shard = tmp_path / "shard-0.db"
    error_of = replay_parallel._error_of
    assert error_of(shard, 1) == "exit code 1"
    assert error_of(shard, -signal.SIGSEGV) == "killed by SIGSEGV"
    killed = error_of(shard, -signal.SIGKILL, 2_000_000, 4_000_000_000)
    assert killed.startswith("killed by SIGKILL, most likely by the system for want of memory")
    assert "2,000,000 events takes about 7.2 GB; 4.0 GB was available at the start" in killed
    assert "(" not in error_of(shard, -signal.SIGKILL)  # no figures to give
    shard.with_suffix(".error").write_text("Traceback (most recent call last):\n  ...\nValueError: bad shard\n")
    assert error_of(shard, 1) == error_of(shard, -signal.SIGKILL) == "ValueError: bad shard"


def cgroup(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, own: str, files: dict[str, str]) -> None:
    """A fake /proc/self/cgroup and /sys/fs/cgroup: `files` by path under the cgroup mount."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "self").write_text(own)
    for name, text in files.items():
        (tmp_path / "fs" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "fs" / name).write_text(text)
    monkeypatch.setattr(replay_machine, "_SELF_CGROUP", tmp_path / "self")
    monkeypatch.setattr(replay_machine, "_CGROUPS", tmp_path / "fs")


def test_a_containers_memory_limit_is_what_a_replay_has_whatever_the_host_has_free(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    meminfo(monkeypatch, tmp_path, available_kib=64 * 1024 * 1024)  # the host: 64 GiB available
    gib = 1 << 30
    v2 = {
        "cgroup.controllers": "memory",
        "pod/memory.max": str(8 * gib),  # a pod limit above the container's
        "pod/memory.current": str(gib),
        "pod/box/memory.max": str(4 * gib),
        "pod/box/memory.current": str(3 * gib),
        "pod/box/memory.stat": f"anon {2 * gib}\ninactive_file {gib // 2}\n",
    }
    cgroup(monkeypatch, tmp_path, "0::/pod/box\n", v2)
    assert replay_machine.memory_available() == 4 * gib - 3 * gib + gib // 2  # the container's room
    v1 = {
        "memory/docker/abc/memory.limit_in_bytes": str(2 * gib),
        "memory/docker/abc/memory.usage_in_bytes": str(gib),
        "memory/docker/memory.limit_in_bytes": "9223372036854771712",  # v1's "no limit"
    }
    cgroup(monkeypatch, tmp_path / "v1", "4:memory:/docker/abc\n3:cpu,cpuacct:/docker/abc\n0::/\n", v1)
    assert replay_machine.memory_available() == gib
    said = replay_machine.short_of_memory(1_000_000, replay_machine.memory_available())
    assert said is not None and "1.1 GB is available" in said


def test_without_a_limit_the_system_figure_stands(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    meminfo(monkeypatch, tmp_path, available_kib=1024)
    cgroup(monkeypatch, tmp_path, "0::/\n", {"cgroup.controllers": "memory", "memory.max": "max"})
    assert replay_machine.memory_available() == 1024 * 1024
    monkeypatch.setattr(replay_machine, "_SELF_CGROUP", tmp_path / "absent")
    assert replay_machine.memory_available() == 1024 * 1024
    monkeypatch.setattr(replay_machine, "_MEMINFO", tmp_path / "absent")
    assert replay_machine.memory_available() is None
