"""Input too large for one Kafka record, on the real broker (Tansu: it takes any size, the producer's
max_request_size of 1 MiB is the limit) with the real CLI, consumers and SQLite record: a rejected file or
message keeps its first 64 KiB in the dead-letter store with its size, SHA-256 and the error's place; an
event too large is answered as too large, never as Kafka not acknowledging in time."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from adapters.publishing import HEAD_BYTES, MessageTooLargeError, Publisher
from adapters.referrals.to_fhir import MappedEvent
from consumers.app import build_broker
from hub.bootstrap import build
from hub.settings import Settings
from schemas.events.coordination import REFERRAL_RECEIVED
from tests.builders import an_adt
from tests.conftest import TansuProcess

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(240)]
CAREHUB = str(Path(sys.executable).with_name("carehub"))
HEADER = "referral_id,nhs_number,birth_date,gp_practice_ods,referred_on,referrer,addressed_to,reason\n"
ROW = "WCC-{n:07d},9434765919,1940-01-01,Y90002,2026-11-20,E10000023,Y0PIC,{pad}\n"


def carehub(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    pythonpath = {"PYTHONPATH": os.environ["PYTHONPATH"]} if "PYTHONPATH" in os.environ else {}
    env = {"PATH": "/usr/bin:/bin", "COLUMNS": "400", **pythonpath}
    return subprocess.run([CAREHUB, *args], cwd=cwd, capture_output=True, text=True, timeout=200, env=env)


def said(result: subprocess.CompletedProcess[str]) -> str:
    """The output with the table's wrapping undone (words only)."""
    return " ".join(result.stdout.replace("│", " ").split())


def kept(data_dir: Path) -> list[dict[str, Any]]:
    return list(build(Settings(data_dir=data_dir)).dead_letters.recent(10))


def test_a_csv_too_large_to_keep_whole_is_dead_lettered_as_its_head_naming_its_size_hash_and_bad_row(
    tmp_path: Path,
) -> None:
    rows = "".join(ROW.format(n=n, pad="x" * 200) for n in range(12_000))
    raw = (HEADER + rows).encode() + b"WCC-9,9434765919,1940-01-01,Y90002,2026-11-20,E10000023,Y0PIC,caf\xe9\n"
    assert len(raw) > 2 * 1_048_576
    (tmp_path / "huge.csv").write_bytes(raw)

    result = carehub("ingest", "referrals", "huge.csv", "--data-dir", "d", cwd=tmp_path)
    out = said(result)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "1 row(s) from 1 file(s): rejected 1" in out
    assert "row 12002 (line 12002): byte 0xE9" in out
    assert f"the file is too large to keep whole in the dead-letter store ({len(raw):,} bytes" in out
    assert hashlib.sha256(raw).hexdigest() in out
    assert "in time" not in out and "not sent" not in out

    (entry,) = kept(tmp_path / "d")
    assert entry["payload"] == raw[:HEAD_BYTES]
    reason = entry["reason"]["issue"][0]
    assert reason["diagnostics"].startswith("row 12002 (line 12002): byte 0xE9 at offset")
    assert f"SHA-256 {hashlib.sha256(raw).hexdigest()}): the hub kept its first 65,536 bytes" in reason["diagnostics"]
    listing = carehub("deadletters", "--data-dir", "d", cwd=tmp_path)
    assert listing.returncode == 0 and "too large to keep whole" in said(listing)


def test_an_hl7_file_too_large_is_kept_as_its_head_and_a_too_large_event_is_not_asked_to_be_sent_again(
    tmp_path: Path,
) -> None:
    bad = an_adt(nhs_number="9434765918", mrn=None, control_id="BIGBAD", extra_segments=("NTE|1||" + "x" * 2_000_000,))
    good = an_adt(control_id="BIGGOOD", family="X" * 2_000_000)
    (tmp_path / "1-bad.hl7").write_bytes(bad)
    (tmp_path / "2-good.hl7").write_bytes(good)

    result = carehub("ingest", "hl7", "1-bad.hl7", "2-good.hl7", "--data-dir", "d", cwd=tmp_path)
    out = said(result)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "BIGGOOD AE 0 the message is too large for Kafka" in out
    assert "sending it again as it is cannot succeed" in out and "in time" not in out

    entries = kept(tmp_path / "d")
    (entry,) = [e for e in entries if e["payload"] == bad[:HEAD_BYTES]]
    (big,) = [e for e in entries if e["payload"] == good[:HEAD_BYTES]]  # refused too, and kept: never half-kept
    assert big["reason"]["issue"][0]["diagnostics"].startswith("the message is too large for Kafka")
    diagnostics = entry["reason"]["issue"][0]["diagnostics"]
    assert diagnostics.startswith("NHS number fails the Modulus 11 check")
    assert f"the message is too large to keep whole in the dead-letter store ({len(bad):,} bytes" in diagnostics
    assert hashlib.sha256(bad).hexdigest() in diagnostics


async def test_an_event_over_the_record_limit_is_refused_as_too_large_by_size_not_as_kafka_being_down(
    tansu: TansuProcess,
) -> None:
    broker = build_broker(tansu.bootstrap)
    await broker.start()
    try:
        out = Publisher(broker, timeout=10, clock=lambda: datetime.now(UTC), unit="the row", retry="send it again")
        payload = {"resourceType": "Bundle", "type": "collection", "entry": [], "note": "x" * 1_100_000}
        event = MappedEvent(REFERRAL_RECEIVED.type, "e-1", "VCS001", datetime.now(UTC), "k", payload)
        with pytest.raises(MessageTooLargeError) as refused:
            await out.event(event)
        small = MappedEvent(REFERRAL_RECEIVED.type, "e-2", "VCS001", datetime.now(UTC), "k", {"a": 1})
        await out.event(small)  # (the broker is up: only the size was wrong)
    finally:
        await broker.stop()
    assert refused.value.code == "too-long"
    assert refused.value.diagnostics.startswith("the row is too large for Kafka: 1,100,")
    assert "against a limit of 1,048,576 bytes" in refused.value.diagnostics
    assert "cannot succeed" in refused.value.diagnostics and "in time" not in refused.value.diagnostics
