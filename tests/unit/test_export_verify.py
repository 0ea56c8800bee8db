"""The export verifier on exports written by the hub's own Writer and signed with a real key: a file cut
anywhere fails, the final checkpoint must be the one last line, and lines that are JSON but not
objects fail by line number instead of crashing the verifier."""

from __future__ import annotations

import base64
import hashlib
import io
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from hub.core.policy import Decision
from hub.export import Writer, _decide, public_pem
from hub.export_verify import GENESIS, canonical, fingerprint, main, verify

KEY = Ed25519PrivateKey.generate()
AT = datetime(2026, 11, 3, 12, 0, tzinfo=UTC)


def an_export(events: int = 5, every: int = 2, *, finals: int = 1, payloads_for: str | None = None) -> list[bytes]:
    """The lines of an export of `events` event lines on two partitions (a final checkpoint after
    each of `finals` runs of them)."""
    out = io.BytesIO()
    writer = Writer(out, KEY, every=every, exported_at=AT, payloads_for=payloads_for)
    for _ in range(finals):
        for n in range(events):
            writer.event({"partition": n % 2, "offset": writer.events, "id": f"e{writer.events}"})
        writer.checkpoint(final=True)
    return out.getvalue().splitlines(keepends=True)


def verdict_of(lines: list[bytes], tmp_path: Path) -> tuple[bool, str]:
    path = tmp_path / "export.ndjson"
    path.write_bytes(b"".join(lines))
    verdict = verify(path, public_pem(KEY))
    return verdict.ok, verdict.problem or ""


def test_a_whole_export_verifies_and_its_final_checkpoint_signs_each_partitions_extent(tmp_path: Path) -> None:
    lines = an_export()
    assert verdict_of(lines, tmp_path) == (True, "")
    path = tmp_path / "export.ndjson"
    assert verify(path, public_pem(KEY)).partitions == [
        {"partition": 0, "first": 0, "last": 4, "events": 3},
        {"partition": 1, "first": 1, "last": 3, "events": 2},
    ]


def test_an_export_cut_after_any_line_fails_and_says_it_was_cut_short(tmp_path: Path) -> None:
    lines = an_export()
    middle = [n for n, line in enumerate(lines[:-1], start=1) if b'"checkpoint"' in line]
    assert middle == [3, 6]
    for kept in range(len(lines)):
        ok, problem = verdict_of(lines[:kept], tmp_path)
        assert not ok, f"cut after line {kept}"
        assert "cut short" in problem, f"cut after line {kept}: {problem}"


def test_a_checkpoint_copied_in_after_itself_fails_though_its_signature_is_good(tmp_path: Path) -> None:
    lines = an_export(events=5, every=2)  # e e c e e c e F
    assert b'"checkpoint"' in lines[2]
    ok, problem = verdict_of([*lines[:3], lines[2], *lines[3:]], tmp_path)
    assert not ok
    assert "line 4: checkpoint repeats the one before it" in problem
    exact = an_export(events=4, every=2)  # e e c e e c F: the final may follow a checkpoint directly
    assert verdict_of(exact, tmp_path) == (True, "")


def test_a_final_checkpoint_before_the_last_line_fails_naming_the_line_after_it(tmp_path: Path) -> None:
    lines = an_export(events=3, finals=2)  # e e c e F | e c e c F
    ok, problem = verdict_of(lines, tmp_path)
    assert not ok
    assert "line 6 comes after the final checkpoint (line 5)" in problem


def test_a_final_checkpoint_whose_partitions_disagree_with_the_lines_fails(tmp_path: Path) -> None:
    out = io.BytesIO()
    writer = Writer(out, KEY, every=100, exported_at=AT)
    writer.event({"partition": 0, "offset": 0})
    writer.extents[3] = {"partition": 3, "first": 0, "last": 9, "events": 10}  # signed, but not in the file
    writer.checkpoint(final=True)
    ok, problem = verdict_of(out.getvalue().splitlines(keepends=True), tmp_path)
    assert not ok
    assert "line 2: the final checkpoint's partitions do not match the lines before it" in problem


def test_partitions_with_no_events_are_listed_from_the_topics_partition_count(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = io.BytesIO()
    writer = Writer(out, KEY, every=100, exported_at=AT)
    writer.topic_partitions = 4
    writer.event({"partition": 1, "offset": 0})
    writer.checkpoint(final=True)
    path, key = tmp_path / "export.ndjson", tmp_path / "key.pem"
    path.write_bytes(out.getvalue())
    key.write_bytes(public_pem(KEY))
    assert verify(path, public_pem(KEY)).topic_partitions == 4
    assert main(["export_verify.py", str(path), str(key)]) == 0
    shown = capsys.readouterr().out
    assert "partition 0: no events" in shown
    assert "partition 1: offsets 0-0, 1 events" in shown
    assert "partition 3: no events" in shown
    assert "the topic has 4 partitions" in shown


def test_a_final_checkpoint_counting_fewer_partitions_than_the_lines_use_fails(tmp_path: Path) -> None:
    out = io.BytesIO()
    writer = Writer(out, KEY, every=100, exported_at=AT)
    writer.topic_partitions = 2
    writer.event({"partition": 2, "offset": 0})
    writer.checkpoint(final=True)
    ok, problem = verdict_of(out.getvalue().splitlines(keepends=True), tmp_path)
    assert not ok
    assert "line 2: the final checkpoint's count of the topic's partitions does not match" in problem


def test_an_export_from_before_final_checkpoints_is_refused_as_from_an_older_version(tmp_path: Path) -> None:
    point = {"lines": 0, "chain": GENESIS, "topic": "carehub.events.v1", "exported_at": AT.isoformat()}
    signature = base64.b64encode(KEY.sign(canonical(point))).decode()
    ok, problem = verdict_of([canonical({"checkpoint": point, "signature": signature}) + b"\n"], tmp_path)
    assert not ok
    assert "older CareHub version" in problem


@pytest.mark.parametrize("line", [b"42", b"[]", b"null", b"true", b'"checkpoint"', b'{"checkpoint": 7}'])
def test_a_line_that_is_json_but_not_what_an_export_holds_fails_naming_the_line(tmp_path: Path, line: bytes) -> None:
    lines = an_export()
    lines.insert(1, line + b"\n")
    ok, problem = verdict_of(lines, tmp_path)
    assert not ok
    assert problem.startswith("line 2"), problem


def test_a_checkpoint_with_a_signature_that_is_not_a_string_fails_naming_the_line(tmp_path: Path) -> None:
    lines = an_export()
    lines[2] = lines[2].replace(b'"signature":"', b'"signature":["').replace(b'"}\n', b'"]}\n')
    ok, problem = verdict_of(lines, tmp_path)
    assert not ok
    assert problem == "line 3: a checkpoint must be an object with a signature string"


def test_the_verifier_prints_the_key_fingerprint_the_auditor_confirms_elsewhere(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "export.ndjson").write_bytes(b"".join(an_export()))
    (tmp_path / "key.pem").write_bytes(public_pem(KEY))
    der = KEY.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    assert fingerprint(public_pem(KEY)) == hashlib.sha256(der).hexdigest()
    assert main(["export_verify.py", str(tmp_path / "export.ndjson"), str(tmp_path / "key.pem")]) == 0
    printed = capsys.readouterr().out
    assert f"fingerprint (SHA-256 of its DER): {hashlib.sha256(der).hexdigest()}" in printed
    assert "verified: 5 events, 3 signed checkpoints" in printed


def test_a_payload_from_an_event_naming_no_organisation_is_withheld_whatever_the_agreements_say() -> None:
    """The supplier is the event's source (urn:ods:CODE): with none to check the agreement against,
    nothing leaves, and the ledger is told why for each resource."""
    encounter = {"resourceType": "Encounter", "id": "e1", "status": "finished", "subject": {"reference": "Patient/p"}}
    everything = lambda resource: Decision("permit", ("allowed",))  # noqa: E731 - an agreement that covers all
    for source in ("urn:carehub:clock", "", None):
        shown, judged = _decide(encounter, source, everything)
        assert not shown
        assert [d.outcome for _, d in judged] == ["deny"]
        assert "names no supplying organisation" in judged[0][1].reasons[0]
    shown, judged = _decide(encounter, "urn:ods:RXX", everything)
    assert shown
    assert judged[0][0]["meta"]["source"] == "urn:ods:RXX"  # decided as supplied by RXX


def test_a_checkpoint_line_carrying_anything_beside_its_signed_checkpoint_fails(tmp_path: Path) -> None:
    import json

    lines = an_export()  # e e c e e c e F
    for n in (2, 7):  # a middle checkpoint and the final one
        record = json.loads(lines[n])
        added = canonical(record | {"comment": "all good", "payload": {"note": "unsigned"}}) + b"\n"
        ok, problem = verdict_of([*lines[:n], added, *lines[n + 1 :]], tmp_path)
        assert not ok
        said = "a checkpoint line holds its checkpoint and signature only, and this one adds comment, payload"
        assert problem == f"line {n + 1}: {said}"
        spaced = json.dumps(record).encode() + b"\n"  # the same content, other bytes
        ok, problem = verdict_of([*lines[:n], spaced, *lines[n + 1 :]], tmp_path)
        assert (ok, problem) == (
            False,
            f"line {n + 1}: the checkpoint line is not as the hub wrote it (its bytes were changed)",
        )


def test_a_middle_checkpoint_removed_fails_at_the_final_one(tmp_path: Path) -> None:
    lines = an_export()  # e e c e e c e F
    ok, problem = verdict_of([*lines[:5], *lines[6:]], tmp_path)
    assert not ok
    assert problem == (
        "line 7: the final checkpoint signs 2 checkpoints before it and 1 were found: a checkpoint line was "
        "removed or added"
    )


def test_an_export_whose_line_ends_were_converted_to_crlf_says_so(tmp_path: Path) -> None:
    lines = [line.replace(b"\n", b"\r\n") for line in an_export()]
    ok, problem = verdict_of(lines, tmp_path)
    assert not ok
    assert problem.startswith("line 1 ends with CR LF, not LF as exported: the file was converted")
