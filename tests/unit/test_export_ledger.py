"""`carehub audit export --payloads` over a log read from a fake: each withheld payload gives the reasons
its resources were refused (the person's objection, a supplier no agreement names, a payload with no
FHIR resource), never a blanket "not covered"; its ledger entries name the event whose copy was
decided, and the final checkpoint signs for whom payloads were included."""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest

import hub.export
from hub.core.policy import Asker, ConsentRule, consent_rule, decide
from hub.core.ports import Json
from hub.export import export
from hub.store.memory import MemoryLedger
from tests.builders import an_agreement, an_objection
from tests.unit.test_export_verify import KEY

AUDIT = an_agreement("RXX", "AUD01", id="audit", purposes=("audit",), categories=("demographics", "encounters"))
PATIENT = {"resourceType": "Patient", "id": "p1"}


@dataclass
class Record:
    value: bytes | None
    source: str
    offset: int
    partition: int = 0
    headers: list[tuple[str, bytes]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.headers = [("ce_id", f"ev-{self.offset}".encode()), ("ce_source", self.source.encode())]


def exported(monkeypatch: pytest.MonkeyPatch, records: list[Record], consents: list[ConsentRule]) -> Any:
    async def read_log(bootstrap: str, *, partitions_read: Callable[[list[int]], None]) -> AsyncIterator[list[Any]]:
        partitions_read([0])
        yield records

    monkeypatch.setattr(hub.export, "read_log", read_log)
    asker = Asker("AUD01", "auditor", datetime.now(UTC))
    ledger, out = MemoryLedger(), io.BytesIO()

    def judge(resource: Json) -> Any:
        return decide(asker, resource, [AUDIT], consents)

    asyncio.run(export("", out, KEY, payloads=judge, ledger=ledger, auditor=("AUD01", "ms-audit")))
    lines = [orjson.loads(line) for line in out.getvalue().splitlines()]
    return lines, ledger


def test_a_withheld_payload_gives_the_true_reason_and_its_entries_name_the_event(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    objected = consent_rule(an_objection("9434765919", "AUD01") | {"id": "c1", "patient": {"reference": "Patient/p1"}})
    assert objected is not None
    records = [
        Record(orjson.dumps(PATIENT), "urn:ods:RXX", 0),  # covered, but the person objects
        Record(orjson.dumps(PATIENT), "urn:ods:RZZ", 1),  # a supplier no agreement names
        Record(orjson.dumps({"kind": "not FHIR"}), "urn:ods:RXX", 2),
    ]
    lines, ledger = exported(monkeypatch, records, [objected])
    why = [line["payload_withheld"] for line in lines[:3]]
    assert why[0] == "the person objected to sharing demographics with AUD01"
    assert why[1] == "no agreement in force shares demographics from RZZ with AUD01 for audit"
    assert why[2] == "it holds no FHIR resource the disclosure policy can decide, so it is withheld unread"
    assert not any("do not cover" in w for w in why)
    assert [(e.body["event"], e.body["reasons"]) for e in ledger.rows] == [
        ("ev-0", [why[0]]),
        ("ev-1", [why[1]]),
    ]
    assert lines[-1]["checkpoint"]["payloads_for"] == "AUD01"


def test_an_included_payload_has_no_withheld_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    lines, ledger = exported(monkeypatch, [Record(orjson.dumps(PATIENT), "urn:ods:RXX", 0)], [])
    assert lines[0]["payload"] == PATIENT
    assert "payload_withheld" not in lines[0]
    assert [(e.body["decision"], e.body["event"]) for e in ledger.rows] == [("permit", "ev-0")]
