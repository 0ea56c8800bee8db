"""The auditors' log export: NDJSON with payload hashes and signed checkpoints from a real log,
payloads only where the auditor's agreement covers them (and in the ledger), and a verifier that
needs only the file and the public key, and names the line where a tampered copy breaks."""

from __future__ import annotations

import asyncio
import hashlib
import os
import stat
import subprocess
import sys
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import httpx
import orjson
import pytest
from aiokafka import AIOKafkaProducer, ConsumerRecord
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat, load_pem_public_key

from adapters.hl7v2.to_fhir import map_message
from hub.api.auth import issue_token
from hub.bootstrap import build, running
from hub.export_verify import verify
from hub.kafka import free_port
from hub.settings import CoordinationSettings, HttpSettings, KafkaSettings, MllpSettings, Settings
from schemas.topics import EVENTS
from tests.builders import an_adt, an_agreement, an_objection
from tests.conftest import TansuProcess
from tests.kafka_log import read_all

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(180)]
VERIFIER = Path(__file__).parents[2] / "hub" / "export_verify.py"


def carehub(*args: str, bootstrap: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CAREHUB_")} | {"KAFKA_BOOTSTRAP_SERVERS": bootstrap}
    command = [str(Path(sys.executable).with_name("carehub")), *args]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=120, check=False)


def run_verifier(export: Path, key: Path) -> subprocess.CompletedProcess[str]:
    # the verifier stands alone: run it from a bare folder with nothing of CareHub's on the path
    bare = export.parent / "bare"
    bare.mkdir(exist_ok=True)
    copy = bare / "export_verify.py"
    copy.write_text(VERIFIER.read_text())
    return subprocess.run(
        [sys.executable, "-I", str(copy), str(export), str(key)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


async def test_the_export_verifies_without_the_hub_and_tampering_is_named(tmp_path: Path) -> None:
    settings = Settings(
        data_dir=tmp_path,
        kafka=KafkaSettings(group_id=f"t{uuid.uuid4().hex[:8]}-record"),
        mllp=MllpSettings(port=0),
        http=HttpSettings(port=0),
        coordination=CoordinationSettings(tick_s=0),
    )
    services = build(settings)
    services.agreements.load(
        an_agreement(
            "RXX",
            "AUD01",
            "Y00001",
            id="audit",
            purposes=("audit", "direct-care"),
            categories=("demographics", "encounters"),
        ),
        at=datetime.now(UTC),
    )
    async with running(settings, services=services) as run:
        messages = [an_adt(trigger="A01", control_id=f"X{i}", visit=f"V{i}", mrn=f"M{i}") for i in range(4)]
        outcomes = [o for m in messages for o in await run.intake.ingest(m, "test")]
        assert {o.code for o in outcomes} == {"AA"}
        assert await run.applied_ids([i for o in outcomes for i in o.event_ids])
        token = issue_token(services.secrets.token, org="Y00001", role="clinician", now=datetime.now(UTC))
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{run.http_port}/fhir") as http:
            made = await http.post(
                "/Consent", json=an_objection("9434765919", "RYY"), headers={"Authorization": f"Bearer {token}"}
            )
            assert made.status_code == 201, made.text

        out = tmp_path / "audit" / "log.ndjson"
        out.parent.mkdir()  # (the export makes no folders: a mistyped path is refused)
        env = {k: v for k, v in os.environ.items() if not k.startswith("CAREHUB_")} | {
            "KAFKA_BOOTSTRAP_SERVERS": run.bootstrap
        }
        carehub = str(Path(sys.executable).with_name("carehub"))
        args = [carehub, "audit", "export", "--out", str(out), "--payloads", "--org", "AUD01", "--user", "ms-audit"]
        args += ["--checkpoint-every", "2", "--data-dir", str(tmp_path)]
        done = await asyncio.to_thread(
            subprocess.run, args, env=env, capture_output=True, text=True, timeout=120, check=False
        )
        assert done.returncode == 0, done.stdout + done.stderr

    key = out.with_name("log.ndjson.pub.pem")
    verified = run_verifier(out, key)
    assert verified.returncode == 0, verified.stdout
    assert "verified: 5 events, 3 signed checkpoints" in verified.stdout

    lines = out.read_bytes().splitlines(keepends=True)
    events = [orjson.loads(line) for line in lines if b'"checkpoint"' not in line]
    assert all(len(e["payload_sha256"]) == 64 for e in events)
    assert sum("payload" in e for e in events) == 4  # the ADT: demographics and encounters are covered
    [consent] = [e for e in events if "payload_withheld" in e]  # consents are not in the auditor's agreement
    assert consent["type"] == "uk.nhs.carehub.consent.recorded.v1"
    channels = [(e.body["channel"], e.body["decision"]) for e in services.ledger.entries()]
    assert ("export", "permit") in channels
    assert ("export", "deny") in channels

    first_event = next(i for i, line in enumerate(lines) if b'"checkpoint"' not in line)
    altered = list(lines)
    altered[first_event] = altered[first_event].replace(b'"offset":0', b'"offset":9')
    removed = [line for i, line in enumerate(lines) if i != first_event]
    swapped = list(lines)
    swapped[0], swapped[1] = swapped[1], swapped[0]
    cut = [line for line in lines[:-1]]
    for name, copy in (("altered", altered), ("removed", removed), ("swapped", swapped), ("cut", cut)):
        bad = tmp_path / f"{name}.ndjson"
        bad.write_bytes(b"".join(copy))
        verdict = verify(bad, key.read_bytes())
        assert not verdict.ok, name
        assert verdict.problem, name
    assert "line 3" in (verify(tmp_path / "altered.ndjson", key.read_bytes()).problem or "")


# --- one export of a log written by hand: two suppliers, and records that are not FHIR events ---


@dataclass(frozen=True)
class Exported:
    out: Path
    key: Path
    printed: str
    log: list[ConsumerRecord[bytes, bytes]]

    def lines(self) -> list[bytes]:
        return self.out.read_bytes().splitlines(keepends=True)

    def events(self) -> list[dict[str, object]]:
        return [orjson.loads(line) for line in self.lines() if b'"checkpoint"' not in line]


async def put_on_the_log(bootstrap: str) -> None:
    from hub.kafka import create_topics

    await create_topics(bootstrap)
    mapped = [m for sender in ("RXX", "RZZ") for m in map_message(an_adt(sender=sender), key_secret=b"s")]
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        for m in mapped:
            headers = [("ce_id", m.event_id), ("ce_type", m.event_type), ("ce_source", m.source)]
            headers += [("ce_time", m.event_time.isoformat()), ("ce_subject", m.person_key)]
            encoded = [(k, v.encode()) for k, v in headers]
            await producer.send(EVENTS.name, orjson.dumps(m.payload), key=b"p", partition=0, headers=encoded)
        junk = [("ce_id", b"junk"), ("ce_source", b"urn:ods:RXX")]
        for value in (b"not json \xff", b"null", None):
            await producer.send(EVENTS.name, value, key=b"junk", partition=2, headers=junk)
        await producer.flush()
    finally:
        await producer.stop()


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Exported:
    """`carehub audit export --payloads` for AUD01, whose agreement is with RXX only."""
    data = tmp_path_factory.mktemp("export")
    build(Settings(data_dir=data)).agreements.load(
        an_agreement("RXX", "AUD01", id="audit", purposes=("audit",), categories=("demographics", "encounters")),
        at=datetime.now(UTC),
    )
    broker = TansuProcess(free_port()).start()
    try:
        asyncio.run(put_on_the_log(broker.bootstrap))
        out = data / "log.ndjson"
        out.write_text("last month's export, which every user could read\n")  # (replaced: --force)
        out.chmod(0o644)
        args = ["audit", "export", "--out", str(out), "--payloads", "--org", "AUD01", "--data-dir", str(data)]
        umask = os.umask(0o022)  # (the usual one: a file made without a mode of its own is 0644)
        try:
            done = carehub(*args, "--checkpoint-every", "2", "--force", bootstrap=broker.bootstrap)
        finally:
            os.umask(umask)
        assert done.returncode == 0, done.stdout + done.stderr
        log = asyncio.run(read_all(broker.bootstrap))
    finally:
        broker.stop()
    return Exported(out, out.with_name("log.ndjson.pub.pem"), done.stdout, log)


def test_payloads_follow_the_supplier_named_by_the_events_source(exported: Exported) -> None:
    shown = {str(e["source"]): "payload" in e for e in exported.events() if e["type"]}
    assert shown == {"urn:ods:RXX": True, "urn:ods:RZZ": False}  # RZZ is no party to the agreement
    [withheld] = [e for e in exported.events() if e["type"] and "payload" not in e]
    assert "from RZZ with AUD01 for audit" in str(withheld["payload_withheld"])  # the true reason
    verified = run_verifier(exported.out, exported.key)
    assert "payloads: included for AUD01, where its agreements permit them" in verified.stdout


def test_every_record_value_is_hashed_as_it_lies_on_the_log(exported: Exported) -> None:
    on_log = {(r.partition, r.offset): r.value for r in exported.log}
    hashed = {(e["partition"], e["offset"]): e["value_sha256"] for e in exported.events()}
    assert len(on_log) == len(hashed) == 5
    for position, value in on_log.items():
        expected = hashlib.sha256(value).hexdigest() if value is not None else None  # a tombstone has no bytes
        assert hashed[position] == expected, position
    junk = [e for e in exported.events() if e["partition"] == 2]
    assert [e["payload_sha256"] for e in junk] == [None, hashlib.sha256(b"null").hexdigest(), None]


def test_the_final_checkpoint_signs_each_partitions_extent(exported: Exported) -> None:
    final = orjson.loads(exported.lines()[-1])["checkpoint"]
    assert final["final"] is True
    assert final["partitions"] == [
        {"partition": 0, "first": 0, "last": 1, "events": 2},
        {"partition": 2, "first": 0, "last": 2, "events": 3},
    ]
    assert final["topic_partitions"] == EVENTS.partitions  # so the ones with no events show too
    verified = run_verifier(exported.out, exported.key)
    assert verified.returncode == 0, verified.stdout
    assert "partition 2: offsets 0-2, 3 events" in verified.stdout
    assert "partition 1: no events" in verified.stdout
    assert f"partition {EVENTS.partitions - 1}: no events" in verified.stdout


def test_an_export_cut_just_after_a_middle_checkpoint_fails(exported: Exported, tmp_path: Path) -> None:
    lines = exported.lines()
    middle = [n for n, line in enumerate(lines[:-1], start=1) if b'"checkpoint"' in line]
    assert middle
    for kept in middle:
        cut = tmp_path / f"cut{kept}.ndjson"
        cut.write_bytes(b"".join(lines[:kept]))
        verdict = verify(cut, exported.key.read_bytes())
        assert not verdict.ok, f"cut after line {kept}"
        assert "cut short" in (verdict.problem or "")


def test_the_export_and_the_verifier_print_the_keys_fingerprint(exported: Exported) -> None:
    der = load_pem_public_key(exported.key.read_bytes()).public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    expected = hashlib.sha256(der).hexdigest()
    assert expected in "".join(exported.printed.split())  # (the console may wrap it)
    assert expected in run_verifier(exported.out, exported.key).stdout


def test_the_export_holding_payloads_is_readable_by_its_owner_alone_though_it_replaced_an_open_file(
    exported: Exported,
) -> None:
    assert stat.S_IMODE(exported.out.stat().st_mode) == 0o600
    assert b"last month" not in exported.out.read_bytes() and any("payload" in e for e in exported.events())
    assert [p.name for p in exported.out.parent.iterdir() if p.name.endswith(".part")] == []


def test_the_final_checkpoint_signs_the_ledger_head_after_the_exports_own_entries(exported: Exported) -> None:
    # (an export kept by the auditor pins the ledger: a rewrite recomputing the chain after it is caught)
    env = {"PATH": "/usr/bin:/bin", "COLUMNS": "250"}
    command = [
        str(Path(sys.executable).with_name("carehub")),
        "audit",
        "verify",
        "--data-dir",
        str(exported.out.parent),
    ]
    verified = subprocess.run(command, capture_output=True, text=True, timeout=60, env=env, check=False)
    head = next(w for w in verified.stdout.split() if w[:1].isdigit() and ":" in w)
    final = orjson.loads(exported.lines()[-1])["checkpoint"]
    assert final["ledger_head"] == head
    assert int(head.split(":")[0]) >= 2  # (the export's own decisions, a permit and a denial, are in it)
    assert f"carehub audit verify --head {head}" in " ".join(exported.printed.split())
    printed = " ".join(run_verifier(exported.out, exported.key).stdout.split())
    assert f"disclosure ledger head when exported: {head} (signed)" in printed
