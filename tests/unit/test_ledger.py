"""The disclosure ledger's hash chain: an altered, removed or swapped entry is named by verify."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta

from hub.core.ledger import Disclosure, verify
from hub.store.memory import MemoryLedger

T0 = datetime(2026, 11, 25, 9, 0, tzinfo=UTC)


def a_ledger(n: int = 5) -> MemoryLedger:
    ledger = MemoryLedger()
    ledger.append(
        [
            Disclosure(
                at=T0 + timedelta(minutes=i),
                recipient_org="Y90001",
                recipient_user=f"user{i}",
                channel="read",
                person_key=f"p{i % 2}",
                resources=(f"Patient/p{i % 2}/_history/1#abc",),
                decision="permit",
            )
            for i in range(n)
        ]
    )
    return ledger


def test_an_untouched_chain_verifies() -> None:
    assert verify(a_ledger().entries()) == (5, None)


def test_an_altered_entry_is_named() -> None:
    ledger = a_ledger()
    entry = ledger.rows[2]
    ledger.rows[2] = dataclasses.replace(entry, body={**entry.body, "recipient_org": "X99999"})
    _, broken = verify(ledger.entries())
    assert broken is not None
    assert broken.seq == 3
    assert "altered" in broken.problem


def test_a_removed_entry_is_named() -> None:
    ledger = a_ledger()
    del ledger.rows[1]
    _, broken = verify(ledger.entries())
    assert broken is not None
    assert broken.seq == 2
    assert "missing" in broken.problem


def test_two_swapped_entries_are_caught_at_the_first() -> None:
    ledger = a_ledger()
    a, b = ledger.rows[1], ledger.rows[2]
    ledger.rows[1] = dataclasses.replace(b, seq=2)
    ledger.rows[2] = dataclasses.replace(a, seq=3)
    _, broken = verify(ledger.entries())
    assert broken is not None
    assert broken.seq == 2


def test_appending_later_continues_the_same_chain() -> None:
    ledger = a_ledger(3)
    ledger.rows.extend(a_ledger(0).rows)
    more = a_ledger(2)
    ledger.append([Disclosure(T0, "Y1", "u", "read", None, (), "permit")])
    assert verify(ledger.entries()) == (4, None)
    assert more.rows[0].hash != ledger.rows[3].hash


def test_a_chain_cut_short_is_caught_only_against_a_head_recorded_earlier() -> None:
    ledger = a_ledger()
    head = (ledger.rows[-1].seq, ledger.rows[-1].hash)
    assert verify(ledger.entries(), head) == (5, None)
    del ledger.rows[-2:]
    assert verify(ledger.entries()) == (3, None)  # on its own a shorter chain is a valid chain
    _, broken = verify(ledger.entries(), head)
    assert broken is not None
    assert (broken.seq, broken.problem) == (4, "the ledger ends at entry 3, before the head 5")


def test_a_head_that_no_longer_matches_its_entry_is_caught() -> None:
    ledger = a_ledger()
    _, broken = verify(ledger.entries(), (3, "f" * 64))
    assert broken is not None
    assert broken.seq == 3
    assert "recorded earlier as the head" in broken.problem
