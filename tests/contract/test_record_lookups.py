"""The batched look-ups the record consumer's identity links use (hub.core.identity_links
BatchedLookups), on every back end: the same answers as get and find_by_identifier one at a time,
what the transaction wrote winning over what is committed."""

from __future__ import annotations

from datetime import timedelta

from hub.core.identity_links import BatchedLookups
from tests.contract.test_record_store import NHS, T0, Backend, a_patient
from tests.contract.test_record_store import backend as backend  # (the fixture: every back end)

A, B, C = "9434765919", "9990000018", "9990000026"


def test_batched_look_ups_answer_as_one_at_a_time_pending_writes_included(backend: Backend) -> None:
    with backend.uow() as uow:
        for pid, nhs in (("p1", A), ("p2", B), ("p3", C)):
            uow.put(a_patient(pid, nhs))
        uow.commit()
    with backend.uow() as uow:
        assert isinstance(uow, BatchedLookups)
        uow.put(a_patient("p2", A, version=2, time=T0 + timedelta(hours=1)))  # p2 now holds A, not B
        uow.put(a_patient("p4", C))  # new, holds C beside p3
        pairs = [(NHS, A), (NHS, B), (NHS, C), (NHS, "9990000034")]
        found = uow.find_by_identifiers("Patient", pairs)
        assert {pair: [r.id for r in held] for pair, held in found.items()} == {
            (NHS, A): ["p1", "p2"],
            (NHS, C): ["p3", "p4"],
        }
        for pair in pairs:
            assert [r.id for r in uow.find_by_identifier("Patient", *pair)] == [r.id for r in found.get(pair, [])]
        assert found[(NHS, A)][1].version_id == 2
        many = uow.get_many("Patient", ["p1", "p2", "p4", "nobody"])
        assert {pid: r.version_id for pid, r in many.items()} == {"p1": 1, "p2": 2, "p4": 1}
        assert uow.get_many("Encounter", ["p1"]) == {}
        assert uow.find_by_identifiers("Encounter", pairs) == {}
