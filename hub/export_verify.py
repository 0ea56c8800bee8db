"""Verify a CareHub log export without the hub: `python export_verify.py EXPORT.ndjson PUBLIC_KEY.pem`.

This file stands alone (Python 3.11 and the `cryptography` package; nothing of CareHub's), so an
auditor can copy it and check an export on their own machine.

The export is NDJSON. Event lines carry the envelope attributes, the log position and the SHA-256 of
the payload (and the payload itself where the export included it). Every line but checkpoints feeds a
running chain: chain = SHA-256(previous chain + SHA-256(line bytes)), starting from 64 zeros. A
checkpoint line {"checkpoint": {...}, "signature": ...} states the number of lines and the chain so
far, signed with Ed25519 over its canonical JSON (sorted keys, no spaces). Verification recomputes
the chain, checks each checkpoint's count, chain and signature, checks each included payload against
its hash, and requires the file to end with a checkpoint: a line altered, removed, added or moved,
or a file cut short, fails and is named.
"""

from __future__ import annotations

import base64
import hashlib
import json
import sys
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import load_pem_public_key

GENESIS = "0" * 64


@dataclass(frozen=True)
class Verdict:
    """Whether the export verified, how many event lines, and the first problem found."""

    ok: bool
    events: int
    checkpoints: int
    problem: str | None = None


def canonical(value: object) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def step(chain: str, line: bytes) -> str:
    return hashlib.sha256((chain + hashlib.sha256(line).hexdigest()).encode()).hexdigest()


def verify(export: Path, public_key_pem: bytes) -> Verdict:
    key = load_pem_public_key(public_key_pem)
    if not isinstance(key, Ed25519PublicKey):
        return Verdict(False, 0, 0, "the public key is not an Ed25519 key")
    chain, events, checkpoints, last_was_checkpoint = GENESIS, 0, 0, False
    with export.open("rb") as lines:
        for number, raw in enumerate(lines, start=1):
            line = raw.rstrip(b"\n")
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                return Verdict(False, events, checkpoints, f"line {number} is not JSON")
            if "checkpoint" in record:
                point = record["checkpoint"]
                if point.get("lines") != events or point.get("chain") != chain:
                    return Verdict(
                        False, events, checkpoints, f"line {number}: checkpoint does not match the lines before it"
                    )
                try:
                    key.verify(base64.b64decode(record.get("signature", "")), canonical(point))
                except (InvalidSignature, ValueError):
                    return Verdict(False, events, checkpoints, f"line {number}: checkpoint signature is not valid")
                checkpoints += 1
                last_was_checkpoint = True
                continue
            if "payload" in record:
                digest = hashlib.sha256(canonical(record["payload"])).hexdigest()
                if digest != record.get("payload_sha256"):
                    return Verdict(False, events, checkpoints, f"line {number}: payload does not match its hash")
            chain = step(chain, line)
            events += 1
            last_was_checkpoint = False
    if not last_was_checkpoint:
        return Verdict(False, events, checkpoints, "the export does not end with a signed checkpoint (cut short?)")
    return Verdict(True, events, checkpoints)


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print("usage: python export_verify.py EXPORT.ndjson PUBLIC_KEY.pem")  # noqa: T201
        return 2
    verdict = verify(Path(argv[1]), Path(argv[2]).read_bytes())
    if verdict.ok:
        print(f"verified: {verdict.events} events, {verdict.checkpoints} signed checkpoints")  # noqa: T201
        return 0
    print(f"NOT verified after {verdict.events} events: {verdict.problem}")  # noqa: T201
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
