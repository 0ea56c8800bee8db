"""`carehub up` on its embedded defaults loses nothing it acknowledged when it is stopped: the embedded
broker keeps its log in memory, so a Ctrl-C lets the consumers apply what it holds before it goes, and
a hub killed outright leaves the broker running for the next `carehub up` on the data directory to take
over (with its log). Real processes, MLLP sockets and the hub's SQLite file."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from adapters.hl7v2.transport import MllpClient
from hub.embedded import ADVERT
from hub.kafka import embedded_broker_at
from tests.builders import an_adt

pytestmark = [pytest.mark.kafka, pytest.mark.slow, pytest.mark.timeout(480)]
CAREHUB = str(Path(sys.executable).with_name("carehub"))
ENV = {"PATH": "/usr/bin:/bin", "COLUMNS": "200"}
CONNECTIONS, EACH, ROUNDS = 4, 150, 5
BAD_NHS = "1234567890"  # fails the Modulus 11 check: AE, kept in the dead-letter store


def start(data_dir: Path) -> tuple[subprocess.Popen[str], int, str]:
    """`carehub up` in a session of its own (as a terminal runs it); its MLLP port and what it said
    once it is ready."""
    proc = subprocess.Popen(
        [CAREHUB, "up", "--mllp-port", "0", "--http-port", "0", "--data-dir", str(data_dir)],
        cwd=data_dir.parent,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=ENV,
        start_new_session=True,
    )
    said, deadline = "", time.monotonic() + 150  # (a hub taking over a broker waits out the dead members: ~35 s)
    while time.monotonic() < deadline and proc.poll() is None and "Ctrl-C" not in said:
        said += proc.stdout.readline() if proc.stdout else ""
    assert "Ctrl-C" in said, said
    listening = re.search(r"MLLP[^\n]*?:(\d+)", said)
    assert listening, said
    return proc, int(listening[1]), said


async def send_all(port: int, round_: int) -> tuple[int, int]:
    """CONNECTIONS senders at once, EACH discharges apiece (a visit each, every tenth with an NHS number
    that fails its check); how many were acknowledged AA, and how many refused AE (to be kept whole)."""

    async def sender(n: int) -> tuple[int, int]:
        client = await MllpClient.connect("127.0.0.1", port)
        accepted = refused = 0
        try:
            for i in range(EACH):
                tag = f"{round_}x{n}x{i}"
                nhs = BAD_NHS if i % 10 == 9 else None
                mrn = None if nhs else f"M{tag}"
                ack = await client.send(an_adt(control_id=f"S{tag}", visit=f"V{tag}", mrn=mrn, nhs_number=nhs))
                accepted += b"MSA|AA" in ack
                refused += b"MSA|AE" in ack
        finally:
            await client.close()
        return accepted, refused

    said = await asyncio.gather(*(sender(n) for n in range(CONNECTIONS)))
    return sum(a for a, _ in said), sum(r for _, r in said)


def send_until_behind(data_dir: Path, port: int) -> tuple[int, int, int]:
    """Rounds of send_all until the record is behind what was acknowledged (it always has been here;
    a faster machine may take more rounds): acknowledged, refused, how far behind."""
    accepted = refused = 0
    for round_ in range(ROUNDS):
        a, r = asyncio.run(send_all(port, round_))
        accepted, refused = accepted + a, refused + r
        assert (a, r) == (CONNECTIONS * EACH * 9 // 10, CONNECTIONS * EACH // 10)
        behind = accepted - encounters(data_dir)
        if behind > 0:
            return accepted, refused, behind
    raise AssertionError(f"the record kept up with {accepted} messages sent as fast as they were acknowledged")


def encounters(data_dir: Path) -> int:
    with sqlite3.connect(data_dir / "carehub.db") as db:
        (n,) = db.execute("SELECT count(*) FROM record_resource WHERE resource_type = 'Encounter'").fetchone()
    return int(n)


def dead_letters(data_dir: Path) -> int:
    with sqlite3.connect(data_dir / "carehub.db") as db:
        (n,) = db.execute("SELECT count(*) FROM dead_letter").fetchone()
    return int(n)


def broker_of(data_dir: Path) -> tuple[int, str]:
    said = json.loads((data_dir / ADVERT).read_text())
    return int(said["broker_pid"]), str(said["bootstrap"])


def test_ctrl_c_applies_everything_acknowledged_before_the_embedded_broker_goes(tmp_path: Path) -> None:
    hub = tmp_path / "hub"
    proc, port, _ = start(hub)
    broker = broker_of(hub)
    try:
        accepted, refused, _ = send_until_behind(hub, port)
        os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C at the terminal: the whole foreground group
        out, _ = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            proc.kill()
        if embedded_broker_at(*broker):
            os.kill(broker[0], signal.SIGKILL)
    assert proc.returncode == 0, out
    assert (encounters(hub), dead_letters(hub)) == (accepted, refused), out
    assert not embedded_broker_at(*broker), "the embedded broker outlived the hub"
    assert not (hub / ADVERT).exists()


def test_a_hub_killed_outright_leaves_its_broker_to_the_next_one_on_the_data_directory(tmp_path: Path) -> None:
    hub = tmp_path / "hub"
    proc, port, _ = start(hub)
    again: subprocess.Popen[str] | None = None
    broker = broker_of(hub)
    try:
        accepted, refused, _ = send_until_behind(hub, port)
        proc.kill()  # SIGKILL to the hub alone, as an OOM killer or `kill -9` does
        proc.wait(30)
        assert embedded_broker_at(*broker), "the killed hub's broker went with it"
        # a file sent meanwhile goes onto that broker's log, to wait with the rest (with a broker of
        # its own, the ingest applied it and its log went: in the record, in no log a replay reads)
        late = tmp_path / "late.hl7"
        late.write_bytes(an_adt(control_id="LATE1", visit="VLATE", mrn="MLATE"))
        before = encounters(hub)
        sent = subprocess.run(
            [CAREHUB, "ingest", "hl7", str(late), "--data-dir", str(hub)],
            capture_output=True, text=True, env=ENV, timeout=120, check=False,
        )  # fmt: skip
        assert sent.returncode == 0, sent.stdout + sent.stderr
        assert "left its embedded broker" in sent.stdout + sent.stderr
        assert encounters(hub) == before, "the ingest applied it itself"
        accepted += 1

        again, _, said = start(hub)
        assert "taking over the embedded broker" in said
        assert broker_of(hub) == broker, "the restarted hub started a broker of its own"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and (encounters(hub), dead_letters(hub)) != (accepted, refused):
            time.sleep(0.5)
        assert (encounters(hub), dead_letters(hub)) == (accepted, refused)
        again.send_signal(signal.SIGTERM)
        out, _ = again.communicate(timeout=120)
        assert again.returncode == 0, out
    finally:
        for p in (proc, again):
            if p is not None and p.poll() is None:
                p.kill()
        if embedded_broker_at(*broker):
            os.kill(broker[0], signal.SIGKILL)
    assert not embedded_broker_at(*broker), "the taken-over broker outlived the hub that took it over"
