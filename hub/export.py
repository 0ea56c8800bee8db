"""`carehub audit export`: the event log as NDJSON for auditors, with signed checkpoints.

Each event line carries the log position, the envelope attributes, the SHA-256 of the record value's
bytes as they lie on the log and the SHA-256 of the payload (canonical JSON; null when the value is
not JSON). With `--payloads`, the payload itself is included where the auditor's own agreement
permits every resource in it (decided by the same policy as any read, for the auditor's
organisation and the audit purpose, with the supplier named by the event's source as on delivery,
and written to the disclosure ledger, each entry naming the event whose copy was decided); otherwise
the line says it was withheld, and why (the reasons its resources were refused, as the ledger records
them), and keeps the hashes.
Every `checkpoint_every` lines a checkpoint states the line count and the running chain, and the
last line is the final checkpoint, which also states each partition's first and last offset and
event count, how many partitions the topic has (so one with no events shows) and for which
organisation payloads were included (`payloads_for`, null for hashes only) and the disclosure ledger's
head once the export's own decisions are in it (`ledger_head`, SEQ:HASH; null for an empty ledger), so
an export the auditor keeps pins the ledger as `carehub audit verify --head` checks it; all are signed
with the hub's Ed25519 export key. An auditor verifies the file with `hub/export_verify.py` and the
public key alone (whose fingerprint they confirm with the hub).
"""

from __future__ import annotations

import base64
import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import orjson
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
    load_pem_private_key,
)

from hub.core.ledger import Disclosure, resource_ref
from hub.core.policy import Decision, person_of
from hub.core.ports import Json, Ledger
from hub.core.record import resources_of
from hub.core.timetravel import WITHHELD_WITH_EVENT
from hub.export_verify import GENESIS, Extents, canonical, extend, listed, step
from hub.replay_read import read_log
from schemas.envelope import header_value
from schemas.topics import EVENTS

KEY_FILE = "export-signing-key.pem"


@dataclass(frozen=True)
class Summary:
    events: int
    checkpoints: int
    payloads: int
    withheld: int
    ledger_head: str | None = None  # SEQ:HASH, as signed in the final checkpoint


def signing_key(data_dir: Path) -> Ed25519PrivateKey:
    """The hub's export signing key, created once in the data directory (mode 0600)."""
    path = data_dir / KEY_FILE
    if not path.exists():
        data_dir.mkdir(parents=True, exist_ok=True)
        pem = Ed25519PrivateKey.generate().private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(pem)
    key = load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(f"{path} is not an Ed25519 private key")
    return key


def public_pem(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)


class Writer:
    """Writes event lines and signed checkpoints, keeping the chain."""

    def __init__(
        self,
        out: IO[bytes],
        key: Ed25519PrivateKey,
        *,
        every: int,
        exported_at: datetime,
        payloads_for: str | None = None,
    ) -> None:
        self.out, self.key, self.every, self.exported_at = out, key, every, exported_at
        self.payloads_for = payloads_for  # the organisation whose agreements let payloads in; None: hashes only
        self.chain, self.events, self.checkpoints = GENESIS, 0, 0
        self.extents: Extents = {}
        self.topic_partitions: int | None = None  # how many the topic has, once known
        self.ledger_head: tuple[str | None] | None = None  # (the head, or None for an empty ledger), once read

    def event(self, line: Json) -> None:
        data = canonical(line)
        self.out.write(data + b"\n")
        self.chain = step(self.chain, data)
        self.events += 1
        extend(self.extents, line["partition"], line["offset"])
        if self.events % self.every == 0:
            self.checkpoint()

    def checkpoint(self, *, final: bool = False) -> None:
        """A signed checkpoint; the final one (the last line) also names each partition's extent,
        so that a file cut after a middle checkpoint, or missing a partition, shows it."""
        point: Json = {
            "lines": self.events,
            "chain": self.chain,
            "topic": EVENTS.name,
            "exported_at": self.exported_at.isoformat(),
            "final": final,
        }
        if final:
            point["checkpoints"] = self.checkpoints  # so a checkpoint removed between shows
            point["partitions"] = listed(self.extents)
            point["payloads_for"] = self.payloads_for
            if self.topic_partitions is not None:  # so a partition with no events shows as one
                point["topic_partitions"] = self.topic_partitions
            if self.ledger_head is not None:  # so the auditor holds a head kept outside the hub
                point["ledger_head"] = self.ledger_head[0]
        signature = base64.b64encode(self.key.sign(canonical(point))).decode()
        self.out.write(canonical({"checkpoint": point, "signature": signature}) + b"\n")
        self.checkpoints += 1


Decide = Callable[[Json], Decision]
_WITHHELD = Decision("deny", (WITHHELD_WITH_EVENT,))
# a JSON payload with no FHIR resource in it: nothing of it was decided, so the ledger has no entry
_UNREADABLE = "it holds no FHIR resource the disclosure policy can decide, so it is withheld unread"
_NO_SUPPLIER = Decision("deny", ("the event names no supplying organisation (ce_source urn:ods:CODE)",))


async def export(
    bootstrap: str,
    out: IO[bytes],
    key: Ed25519PrivateKey,
    *,
    payloads: Decide | None,
    ledger: Ledger | None,
    auditor: tuple[str, str],
    every: int = 10_000,
) -> Summary:
    """Write the whole log, partition by partition in offset order, then a final checkpoint."""
    now = datetime.now(UTC)
    writer = Writer(out, key, every=every, exported_at=now, payloads_for=auditor[0] if payloads is not None else None)
    included = withheld = 0
    disclosures: list[Disclosure] = []

    def partitions_read(partitions: list[int]) -> None:
        writer.topic_partitions = len(partitions)

    async for records in read_log(bootstrap, partitions_read=partitions_read):
        for record in records:
            headers = list(record.headers)
            line: Json = {
                "partition": record.partition,
                "offset": record.offset,
                **{name: header_value(headers, f"ce_{name}") for name in ("id", "type", "source", "time", "subject")},
            }
            line["value_sha256"] = hashlib.sha256(record.value).hexdigest() if record.value is not None else None
            try:
                payload: Any = orjson.loads(record.value)
                line["payload_sha256"] = hashlib.sha256(canonical(payload)).hexdigest()
            except orjson.JSONDecodeError:  # (a record with no value too)
                payload, line["payload_sha256"] = None, None
            if payloads is not None and isinstance(payload, dict):
                shown, judged = _decide(payload, line["source"], payloads)
                if not shown:  # nothing of it leaves: the ledger must not show a permit for it
                    line["payload_withheld"] = why_withheld(judged)
                    judged = [(r, d if not d.permitted else _WITHHELD) for r, d in judged]
                disclosures += _entries(judged, auditor, now, event=line["id"])
                if shown:
                    line["payload"] = payload
                    included += 1
                else:
                    withheld += 1
            writer.event(line)
        if ledger is not None and disclosures:
            ledger.append(disclosures)
            disclosures = []
    if ledger is not None:
        writer.ledger_head = (ledger_head(ledger),)
    writer.checkpoint(final=True)
    head = writer.ledger_head[0] if writer.ledger_head else None
    return Summary(writer.events, writer.checkpoints, included, withheld, head)


def ledger_head(ledger: Ledger) -> str | None:
    """The ledger's last entry as SEQ:HASH (as `carehub audit verify` prints it); None where it is empty."""
    last = None
    for last in ledger.entries():  # noqa: B007 (the last one is wanted)
        pass
    return f"{last.seq}:{last.hash}" if last is not None else None


def _decide(payload: Json, source: str | None, decide: Decide) -> tuple[bool, list[tuple[Json, Decision]]]:
    from hub.core.ports import RecordEvent

    try:
        resources = resources_of(RecordEvent("", "", "", datetime.now(UTC), "", payload))
    except Exception:  # not a FHIR payload the policy can read: withheld
        return False, []
    if not (source or "").startswith("urn:ods:"):  # no supplier to check the agreement against
        return False, [(r, _NO_SUPPLIER) for r in resources]
    # the event's source names the supplier, as on delivery (payloads carry no meta.source)
    stamped = [{**r, "meta": {**(r.get("meta") or {}), "source": source}} for r in resources]
    judged = [(r, decide(r)) for r in stamped]
    return all(d.permitted for _, d in judged), judged


def why_withheld(judged: list[tuple[Json, Decision]]) -> str:
    """The payload_withheld line: the reasons its resources were refused, as the ledger records them."""
    reasons = dict.fromkeys(reason for _, d in judged if not d.permitted for reason in d.reasons)
    return "; ".join(reasons) or _UNREADABLE


def _entries(
    judged: list[tuple[Json, Decision]], auditor: tuple[str, str], at: datetime, *, event: str | None
) -> list[Disclosure]:
    groups: dict[tuple[str | None, Decision], list[str]] = {}
    for resource, decision in judged:
        groups.setdefault((person_of(resource), decision), []).append(resource_ref(resource))
    return [
        Disclosure(
            at=at,
            recipient_org=auditor[0],
            recipient_user=auditor[1],
            channel="export",
            person_key=person,
            resources=tuple(refs),
            decision=decision.outcome,
            reasons=decision.reasons,
            basis={"role": "auditor", "agreements": list(decision.agreements), "consents": list(decision.consents)},
            event=event,  # the resources are the event's own copy, as it was decided
        )
        for (person, decision), refs in groups.items()
    ]
