"""What each ledger decision came to: a webhook or mailbox permit is an attempt whose result is a later
entry; a ledger written before results were kept still verifies and says it cannot tell; the API's
AuditEvents are one per decision, each attempt's saying what it came to; a POST's outcome is told from how it failed."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import httpx
import pytest

from consumers.delivery_sender import sent_by
from hub.api.fhir_documents import audit_events_of
from hub.core.delivery import ledger_entries, result_entries
from hub.core.ledger import (
    BEFORE_RESULTS,
    DISCLOSED,
    GENESIS,
    NOT_DISCLOSED,
    POSSIBLY_DISCLOSED,
    REFUSED,
    Disclosure,
    Result,
    chain_hash,
    results,
    verify,
)
from hub.core.policy import Decision
from hub.store.memory import MemoryLedger
from schemas.subscriptions import Subscription

T0 = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)
SUB = Subscription(
    id="council", org="LA0001", events=("x",), webhook={"url": "http://h.invalid/", "secret_env": "HOOK_SECRET"}
)
PERMIT = Decision("permit", ("agreement",), ("test-locality-sharing@1",))
DENY = Decision("deny", ("no agreement",))
PATIENT = {"resourceType": "Patient", "id": "p1"}
CONSENT = {"resourceType": "Consent", "id": "c1", "patient": {"reference": "Patient/p1"}}


def attempted(ledger: MemoryLedger, attempt: str, outcome: str | None, detail: str = "") -> None:
    entries = ledger_entries(
        SUB, "webhook", [(PATIENT, PERMIT), (CONSENT, DENY)], T0, event="ev-1", versions={}, attempt=attempt
    )
    ledger.append(entries)
    if outcome is not None:
        ledger.append(result_entries(entries, outcome, detail, T0 + timedelta(seconds=1)))


def test_each_attempt_is_what_its_result_entry_says_and_a_denial_is_a_refusal() -> None:
    ledger = MemoryLedger()
    attempted(ledger, "a1", NOT_DISCLOSED, "ConnectError (no connection: nothing was sent)")
    attempted(ledger, "a2", POSSIBLY_DISCLOSED, "ReadTimeout (after the request was sent)")
    attempted(ledger, "a3", DISCLOSED)
    assert verify(ledger.entries())[1] is None
    assert results(ledger.rows) == {
        1: Result(NOT_DISCLOSED, "ConnectError (no connection: nothing was sent)", 3),
        2: Result(REFUSED),
        4: Result(POSSIBLY_DISCLOSED, "ReadTimeout (after the request was sent)", 6),
        5: Result(REFUSED),
        7: Result(DISCLOSED, "", 9),
        8: Result(REFUSED),
    }  # (3, 6, 9: result entries, no decisions of their own)
    assert all(ledger.rows[n - 1].body["resources"] == [] for n in (3, 6, 9))


def test_a_ledger_written_before_results_were_kept_verifies_and_says_it_cannot_tell() -> None:
    old = Disclosure(T0, "LA0001", "subscription:council", "webhook", "p1", ("Patient/p1#h",), "permit", event="ev-1")
    read = Disclosure(T0, "Y00001", "dr", "read", "p1", ("Patient/p1/_history/1#h",), "permit")
    body = old.body()
    assert "attempt" not in body and "outcome" not in body  # (hashed as before: old chains still verify)
    ledger = MemoryLedger()
    ledger.append([old, read])
    assert ledger.rows[0].hash == chain_hash(GENESIS, body)
    assert verify(ledger.entries())[1] is None
    assert results(ledger.rows) == {1: Result(POSSIBLY_DISCLOSED, BEFORE_RESULTS), 2: Result(DISCLOSED)}


def test_each_attempt_is_one_audit_event_with_what_it_came_to_and_a_result_is_none_of_its_own() -> None:
    ledger = MemoryLedger()
    attempted(ledger, "a1", NOT_DISCLOSED, "ConnectError")
    attempted(ledger, "a2", POSSIBLY_DISCLOSED, "HTTP 503")
    attempted(ledger, "a3", DISCLOSED)
    attempted(ledger, "a4", None)  # the hub stopped before recording what came of it
    ledger.append([Disclosure(T0, "Y00001", "dr", "read", "p1", ("Patient/p1/_history/1#h",), "permit")])
    events = {int(e["id"].removeprefix("ledger-")): e for e in audit_events_of(ledger.rows)}
    assert sorted(events) == [1, 2, 4, 5, 7, 8, 10, 11, 12]  # decisions only: no result entry (3, 6, 9)
    assert [events[n]["outcome"] for n in (1, 4, 7, 10)] == ["8", "4", "0", "4"]
    assert events[1]["outcomeDesc"].startswith("not disclosed: ConnectError (permit: agreement; attempt a1, result")
    assert events[4]["outcomeDesc"].startswith("possibly disclosed: HTTP 503")
    assert events[10]["outcomeDesc"].startswith("possibly disclosed: no result recorded")
    assert [events[n]["outcome"] for n in (2, 5, 8, 11)] == ["4"] * 4  # the denials, as before
    assert events[12]["outcome"] == "0"  # a read disclosed what it names
    succeeded = [n for n, e in events.items() if e["outcome"] == "0" and e["action"] == "E"]
    assert succeeded == [7]  # the one webhook attempt that arrived, once


@pytest.mark.parametrize(
    ("error", "outcome"),
    [
        (httpx.ConnectError("[Errno 111] Connection refused"), NOT_DISCLOSED),
        (httpx.ConnectTimeout("timed out"), NOT_DISCLOSED),
        (httpx.ReadTimeout(""), POSSIBLY_DISCLOSED),
        (httpx.WriteTimeout(""), POSSIBLY_DISCLOSED),
        (httpx.RemoteProtocolError("Server disconnected without sending a response."), POSSIBLY_DISCLOSED),
    ],
)
def test_a_post_that_failed_before_connecting_sent_nothing_and_any_later_failure_may_have(
    error: Exception, outcome: str
) -> None:
    assert sent_by(None, error).outcome == outcome


def test_an_answer_other_than_2xx_came_from_a_receiver_that_had_the_request() -> None:
    assert sent_by(httpx.Response(204)).outcome == DISCLOSED
    assert sent_by(httpx.Response(503)).outcome == POSSIBLY_DISCLOSED
    assert "may have kept it" in sent_by(httpx.Response(500)).error
