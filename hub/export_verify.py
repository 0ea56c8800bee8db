"""Verify a CareHub log export without the hub: `python export_verify.py EXPORT.ndjson PUBLIC_KEY.pem`.

This file stands alone (Python 3.11 and the `cryptography` package; nothing of CareHub's), so an
auditor can copy it and check an export on their own machine.

The export is NDJSON. Event lines carry the envelope attributes, the log position, the SHA-256 of
the record value's bytes as they lie on the log (`value_sha256`; null only for a record with no
value), the SHA-256 of the payload's canonical JSON (`payload_sha256`; null when the value is not
JSON) and, where the export included it, the payload itself. Every line but checkpoints feeds a
running chain: chain = SHA-256(previous chain + SHA-256(line bytes)), starting from 64 zeros. A
checkpoint line {"checkpoint": {...}, "signature": ...} states the number of lines and the chain so
far, signed with Ed25519 over its canonical JSON (sorted keys, no spaces). A checkpoint line
holds nothing else, exactly as the hub wrote it. The last line is the one checkpoint marked
`"final": true`, which also signs how many checkpoints came before it (`checkpoints`; absent from
exports made before CareHub stated it), each partition's first and last offset and event count,
and how many partitions the topic has (`topic_partitions`; absent from exports made
before CareHub stated it), so a partition with no events is listed as one. Each checkpoint signs
when the export was made (`exported_at`); the final one also signs for which organisation payloads
were included (`payloads_for`, null for hashes only; absent from older exports) and the hub's
disclosure ledger head once the export's own decisions were in it (`ledger_head`, SEQ:HASH, null for
an empty ledger; absent from older exports), and the verifier prints them, so an old export is not
taken for a current one, and the head can be checked on the hub (`carehub audit verify --head`). Verification recomputes
the chain, checks each checkpoint's count, chain and signature, each included payload against its
hash and the final checkpoint's partitions against the lines, and requires exactly one final
checkpoint, on the last line: a line altered, removed, added or moved, or a file cut short
anywhere, fails and is named.

The public key travels beside the export, so it proves nothing by itself: the verifier prints its
fingerprint (SHA-256 of the key's DER, in hex); confirm that with the hub's operator through
another channel, or obtain the key that way.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat, load_pem_public_key

GENESIS = "0" * 64
Extents = dict[int, dict[str, int]]


@dataclass(frozen=True)
class Verdict:
    """Whether the export verified, how many event lines, and the first problem found."""

    ok: bool
    events: int
    checkpoints: int
    problem: str | None = None
    partitions: list[dict[str, int]] = field(default_factory=list)
    topic_partitions: int | None = None  # how many the topic had, as the final checkpoint says
    final: dict[str, Any] = field(default_factory=dict)  # the final checkpoint, signed (when it verified)


def canonical(value: object) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def step(chain: str, line: bytes) -> str:
    return hashlib.sha256((chain + hashlib.sha256(line).hexdigest()).encode()).hexdigest()


def fingerprint(public_key_pem: bytes) -> str:
    """SHA-256 of the public key's DER (SubjectPublicKeyInfo), in hex; the same as
    `openssl pkey -pubin -in KEY.pem -outform DER | sha256sum`."""
    der = load_pem_public_key(public_key_pem).public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(der).hexdigest()


def extend(extents: Extents, partition: int, offset: int) -> None:
    """Count one event line into its partition's first and last offset and event count."""
    extent = extents.setdefault(partition, {"partition": partition, "first": offset, "last": offset, "events": 0})
    extent["first"], extent["last"] = min(extent["first"], offset), max(extent["last"], offset)
    extent["events"] += 1


def listed(extents: Extents) -> list[dict[str, int]]:
    return [extents[p] for p in sorted(extents)]


class _Reading:
    """The chain, counts and partitions read so far, and where the final checkpoint was."""

    def __init__(self, key: Ed25519PublicKey) -> None:
        self.key, self.chain, self.events, self.checkpoints = key, GENESIS, 0, 0
        self.extents: Extents = {}
        self.last_point: dict[str, Any] | None = None  # the checkpoint on the line just read, if any
        self.final_at: int | None = None
        self.final_point: dict[str, Any] | None = None
        self.since = 1  # the first line after the last checkpoint that verified

    def verdict(self, problem: str | None) -> Verdict:
        final = (self.final_point or {}) if problem is None else {}
        stated = final.get("topic_partitions")
        return Verdict(problem is None, self.events, self.checkpoints, problem, listed(self.extents), stated, final)

    def read(self, number: int, line: bytes) -> str | None:
        if self.final_at is not None:
            return f"line {number} comes after the final checkpoint (line {self.final_at}): lines were added"
        try:
            record = json.loads(line)
        except ValueError:
            return f"line {number} is not JSON"
        if not isinstance(record, dict):
            return f"line {number} is JSON but not an object ({type(record).__name__})"
        problem = self._checkpoint(number, line, record) if "checkpoint" in record else self._event(line, record)
        return f"line {number}: {problem}" if problem else None

    def _checkpoint(self, number: int, line: bytes, record: dict[str, Any]) -> str | None:
        point, signature = record["checkpoint"], record.get("signature")
        if not isinstance(point, dict) or not isinstance(signature, str):
            return "a checkpoint must be an object with a signature string"
        if set(record) != {"checkpoint", "signature"}:  # (only the checkpoint is signed: nothing may ride beside it)
            return f"a checkpoint line holds its checkpoint and signature only, and this one adds {_keys(record)}"
        if line != canonical(record):  # (the chain covers event lines only: a checkpoint line is held to its form)
            return "the checkpoint line is not as the hub wrote it (its bytes were changed)"
        try:  # (first: an altered checkpoint is itself the problem, not the lines it covers)
            self.key.verify(base64.b64decode(signature, validate=True), canonical(point))
        except (InvalidSignature, ValueError):
            return "checkpoint signature is not valid"
        if point.get("lines") != self.events or point.get("chain") != self.chain:
            # the checkpoint before it verified: the difference lies between the two
            return f"checkpoint does not match the lines before it: {_covered(self.since, number - 1)}"
        if self.last_point is not None and point.get("final") is not True:
            # (the writer puts event lines between checkpoints; only the final one may follow
            # another directly): a signed checkpoint copied in after itself would otherwise verify
            return "checkpoint repeats the one before it: lines were added"
        self.checkpoints += 1
        self.last_point, self.since = point, number + 1
        if point.get("final") is True:
            self.final_at, self.final_point = number, point
            before = point.get("checkpoints", self.checkpoints - 1)  # (absent from exports made before it was signed)
            if before != self.checkpoints - 1:
                return (
                    f"the final checkpoint signs {before} checkpoints before it and {self.checkpoints - 1} were "
                    "found: a checkpoint line was removed or added"
                )
            if point.get("partitions") != listed(self.extents):
                return "the final checkpoint's partitions do not match the lines before it"
            stated = point.get("topic_partitions", len(self.extents) and max(self.extents) + 1)
            if not isinstance(stated, int) or isinstance(stated, bool) or any(p >= stated for p in self.extents):
                return "the final checkpoint's count of the topic's partitions does not match the lines before it"
        return None

    def _event(self, line: bytes, record: dict[str, Any]) -> str | None:
        partition, offset = record.get("partition"), record.get("offset")
        if not isinstance(partition, int) or not isinstance(offset, int):
            return "an event line needs a whole-number partition and offset"
        if "payload" in record:
            digest = hashlib.sha256(canonical(record["payload"])).hexdigest()
            if digest != record.get("payload_sha256"):
                return "payload does not match its hash"
        self.chain = step(self.chain, line)
        self.events += 1
        self.last_point = None
        extend(self.extents, partition, offset)
        return None

    def ending(self) -> str | None:
        if self.final_at is not None:
            return None
        if self.last_point is not None and "final" not in self.last_point:
            return (
                "the export has no final checkpoint: it comes from an older CareHub version, whose "
                "exports cannot show they are complete; export it again"
            )
        return f"the export ends without its final checkpoint, after {self.events} event lines: it was cut short"


def verify(export: Path, public_key_pem: bytes) -> Verdict:
    key = load_pem_public_key(public_key_pem)
    if not isinstance(key, Ed25519PublicKey):
        return Verdict(False, 0, 0, "the public key is not an Ed25519 key")
    reading = _Reading(key)
    with export.open("rb") as lines:
        for number, raw in enumerate(lines, start=1):
            if raw.endswith(b"\r\n"):  # every line changed alike: a transfer's doing, not an edit to hunt for
                return reading.verdict(
                    f"line {number} ends with CR LF, not LF as exported: the file was converted to Windows line "
                    "ends on its way (a text-mode transfer, or an editor); convert it back (dos2unix) and verify again"
                )
            problem = reading.read(number, raw.rstrip(b"\n"))
            if problem:
                return reading.verdict(problem)
    return reading.verdict(reading.ending())


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print("usage: python export_verify.py EXPORT.ndjson PUBLIC_KEY.pem")  # noqa: T201
        return 2
    try:
        return _report(Path(argv[1]), Path(argv[2]))
    except BrokenPipeError:  # (an OSError too, but no file's: the reader of our output left)
        raise
    except OSError as exc:  # a file missing, a folder given, unreadable: one line, not a traceback
        print(f"NOT verified: cannot read {exc.filename or argv[1]}: {exc.strerror or exc}")  # noqa: T201
        return 2


def _report(export: Path, key: Path) -> int:
    pem = key.read_bytes()
    try:
        print(f"public key fingerprint (SHA-256 of its DER): {fingerprint(pem)}")  # noqa: T201
    except ValueError:
        print(f"NOT verified: {key} is not a PEM public key")  # noqa: T201
        return 1
    print("  confirm it with the hub's operator through another channel: the key came with the file")  # noqa: T201
    verdict = verify(export, pem)
    if not verdict.ok:
        read = _count(verdict.events, "event line")
        print(f"NOT verified: {verdict.problem}; {read} read before the problem was found")  # noqa: T201
        return 1
    print(f"verified: {_count(verdict.events, 'event')}, {_count(verdict.checkpoints, 'signed checkpoint')}")  # noqa: T201
    for line in _stated(verdict.final):
        print(f"  {line}")  # noqa: T201
    extents = {p["partition"]: p for p in verdict.partitions}
    stated = verdict.topic_partitions
    for n in range(stated) if stated is not None else sorted(extents):
        p = extents.get(n)
        shown = f"offsets {p['first']}-{p['last']}, {p['events']} events" if p else "no events"
        print(f"  partition {n}: {shown}")  # noqa: T201
    if stated is not None:
        print(f"  the topic has {_count(stated, 'partition')}")  # noqa: T201
    return 0


def _covered(first: int, last: int) -> str:
    """Which lines a failed checkpoint covers (those since the checkpoint before it)."""
    if last < first:
        return f"a line before line {first} was removed"
    lines = f"line {first}" if first == last else f"one of lines {first}-{last}"
    return f"{lines} was changed, removed or added (or one was removed or added next to them)"


def _stated(final: dict[str, Any]) -> list[str]:
    """When the export was made and what it holds, as its final checkpoint signs them: an old export
    verifies as well as a new one, and shows the log only as it stood then."""
    at = final.get("exported_at") or "not stated"
    said = [f"exported at {at} (signed): the log as it stood then, not as it stands now"]
    if "payloads_for" not in final:
        said.append("payloads: not stated (an export made before CareHub signed it)")
    elif final["payloads_for"] is None:
        said.append("payloads: none included (hashes only)")
    else:
        org = final["payloads_for"]
        said.append(f"payloads: included for {org}, where its agreements permit them")
    return [*said, _ledger_head(final)]


def _ledger_head(final: dict[str, Any]) -> str:
    """The disclosure ledger's head as the final checkpoint signs it: a head kept outside the hub."""
    if "ledger_head" not in final:
        return "disclosure ledger head: not stated (an export made before CareHub signed it)"
    head = final["ledger_head"]
    if head is None:
        return "disclosure ledger head: none (the ledger was empty when exported)"
    return (
        f"disclosure ledger head when exported: {head} (signed): on the hub, `carehub audit verify --head {head}` "
        "proves no entry up to it was changed or cut since"
    )


def _keys(record: dict[str, Any]) -> str:
    return ", ".join(sorted(set(record) - {"checkpoint", "signature"}))


def _count(n: int, thing: str) -> str:
    return f"{n} {thing}" if n == 1 else f"{n} {thing}s"


# how a Unix tool killed by SIGPIPE exits (128 + 13), as `verify ... | head -1` expects of it
_BROKEN_PIPE = 141


def run(argv: list[str]) -> int:
    """main, for a command line whose reader may stop early (`| head -1`): then stop quietly, with
    no traceback and no error at exit for the output it did not read."""
    try:
        code = main(argv)
        sys.stdout.flush()  # (here, not at exit, where a broken pipe can no longer be caught)
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # so the flush at exit finds somewhere to write
        return _BROKEN_PIPE
    return code


if __name__ == "__main__":
    sys.exit(run(sys.argv))
