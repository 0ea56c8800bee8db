"""Input kept in part, on the real broker (Tansu), CLI, consumers and SQLite store: the same over-size
file sent again is not kept again (the store knows the head by the whole file's SHA-256), the listing and
`deadletters show` name the whole file's size and digest, and `show --raw` will not hand out the head as
if it were the file; an HL7 message whose second event is too large puts none of its events on the log."""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

import pytest

from adapters.publishing import HEAD_BYTES
from hub.bootstrap import build
from hub.core.identity import person_key
from hub.settings import Settings
from tests.integration.test_oversize_files import CAREHUB, carehub, kept, said

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(300)]
HEADER = "referral_id,nhs_number,gp_practice_ods,referred_on,referrer,addressed_to,reason\n"
ROW = "WCC-{n:07d},9434765919,Y90002,2026-11-20,E10000023,Y0PIC,{reason}\n"


def oversize_file() -> bytes:
    rows = "".join(ROW.format(n=n, reason="Falls " + "x" * 200) for n in range(6_000))
    return (HEADER + rows).encode() + b"WCC-X,9434765919,Y90002,2026-11-20,E10000023,Y0PIC,caf\xe9\n"


def raw_show(data_dir: Path, id_: str, *flags: str) -> subprocess.CompletedProcess[bytes]:
    command = [CAREHUB, "deadletters", "show", id_, "--raw", *flags, "--data-dir", str(data_dir)]
    return subprocess.run(command, capture_output=True, timeout=100, check=False, env={"PATH": "/usr/bin:/bin"})


def test_an_oversize_file_sent_twice_is_kept_once_and_its_head_is_never_handed_out_as_the_file(
    tmp_path: Path,
) -> None:
    raw = oversize_file()
    digest = hashlib.sha256(raw).hexdigest()
    assert len(raw) > 1_048_576
    (tmp_path / "big.csv").write_bytes(raw)
    first = carehub("ingest", "referrals", "big.csv", "--data-dir", "d", cwd=tmp_path)
    assert first.returncode == 1 and "rejected 1" in said(first), first.stdout + first.stderr
    again = carehub("ingest", "referrals", "big.csv", "--data-dir", "d", cwd=tmp_path)
    assert "already in the dead-letter store, not kept again" in said(again), again.stdout + again.stderr
    (entry,) = kept(tmp_path / "d")
    assert entry["payload"] == raw[:HEAD_BYTES]

    listing = carehub("deadletters", "--data-dir", "d", cwd=tmp_path)
    assert f"kept in part of {len(raw):,} bytes, sha256 {digest}" in said(listing), listing.stdout
    shown = carehub("deadletters", "show", "1", "--data-dir", "d", cwd=tmp_path)
    assert f"kept in part: the first 65,536 bytes of {len(raw):,} bytes, sha256 {digest}" in said(shown)

    refused = raw_show(tmp_path / "d", "1")
    assert (refused.returncode, refused.stdout) == (2, b""), refused.stderr
    assert b"is kept in part" in refused.stderr and b"--partial" in refused.stderr
    partial = raw_show(tmp_path / "d", "1", "--partial")
    assert (partial.returncode, partial.stdout) == (0, raw[:HEAD_BYTES]), partial.stderr
    assert b"warning: dead letter 1 is kept in part" in partial.stderr


def test_an_hl7_message_whose_second_event_is_too_large_puts_none_of_its_events_on_the_record(
    tmp_path: Path,
) -> None:
    segments = [
        "MSH|^~\\&|PAS|RXX|HUB|HUB|202612010900||ADT^A40^ADT_A39|MERGE1|P|2.4",
        "EVN|A40|202612010900",
        "PID|||9434765919^^^NHS^NH~M1^^^RXX^MR||SMITH^JANE||19420220|F",
        "MRG|M2^^^RXX^MR",
        f"PID|||9990000018^^^NHS^NH~M3^^^RXX^MR||{'X' * 1_200_000}^JOHN||19500101|M",
        "MRG|M4^^^RXX^MR",
    ]
    (tmp_path / "merge.hl7").write_bytes(("\r".join(segments) + "\r").encode())
    result = carehub("ingest", "hl7", "merge.hl7", "--data-dir", "d", cwd=tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "MERGE1 AE 0 the message is too large for Kafka" in said(result)

    services = build(Settings(data_dir=tmp_path / "d"))
    assert services.reader.read("Patient", person_key(services.secrets.key, "9434765919", None)) is None
    (entry,) = kept(tmp_path / "d")
    assert entry["reason"]["issue"][0]["diagnostics"].startswith("the message is too large for Kafka")
