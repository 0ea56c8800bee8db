"""A rejection already in the dead-letter store (the same source and content: the same file sent again)
is reported again, saying so, but not kept again; other rows of the file go on as before."""

from __future__ import annotations

from datetime import UTC, datetime
from types import SimpleNamespace

from adapters.referrals.service import ACCEPTED, REJECTED, KeptInputs, ReferralIntake
from consumers.deadletters import keep_all
from hub.core.errors import StoreUnavailableError
from hub.store.memory import MemoryDeadLetters
from schemas.topics import DEAD_LETTER, EVENTS
from tests.unit.test_referral_adapters import SECRET, FakeBroker

NOW = datetime(2026, 11, 25, tzinfo=UTC)
REGISTER = "nhs_number,practice_ods,non_elective_admissions_12m,long_term_conditions,frailty,birth_date,extracted_on"
GOOD_ROW = "9434765919,Y90001,3,2,severe,1938-02-01,2026-11-02"
BAD_ROW = "9434765918,Y90001,1,1,mild,,2026-11-02"  # fails the Modulus 11 check


def intake(broker: FakeBroker, kept: KeptInputs | None = None, at: datetime = NOW) -> ReferralIntake:
    return ReferralIntake(broker, key_secret=SECRET, clock=lambda: at, kept=kept)  # type: ignore[arg-type]


def register(*rows: str) -> bytes:
    return "\n".join([REGISTER, *rows, ""]).encode()


def consume(broker: FakeBroker, store: MemoryDeadLetters) -> None:
    """Hand what was published to the dead-letter consumer's writer, as Kafka would."""
    records = [
        SimpleNamespace(headers=[(k, v.encode()) for k, v in headers.items()], value=value, timestamp=0)
        for _, value, _, headers in broker.on(DEAD_LETTER.name)
    ]
    keep_all(store, records)


async def test_a_bad_row_already_in_the_dead_letter_store_is_reported_again_but_not_kept_again() -> None:
    store = MemoryDeadLetters()
    raw = register(GOOD_ROW, BAD_ROW)
    first, again = FakeBroker(), FakeBroker()
    sent = await intake(first, store).ingest(raw, "file:/in/r.csv")
    consume(first, store)
    resent = await intake(again, store, datetime(2026, 11, 26, tzinfo=UTC)).ingest(raw, "file:/in/r.csv")
    consume(again, store)

    assert [(o.row, o.status, o.dead_lettered, o.already_kept) for o in sent] == [
        (2, ACCEPTED, False, False),
        (3, REJECTED, True, False),
    ]
    assert [(o.row, o.status, o.dead_lettered, o.already_kept) for o in resent] == [
        (2, ACCEPTED, False, False),
        (3, REJECTED, False, True),
    ]
    assert resent[1].reason and resent[1].reason.startswith("row 3, field nhs_number: fails the Modulus 11 check")
    assert resent[1].reason.endswith("; already in the dead-letter store, not kept again")
    assert not again.on(DEAD_LETTER.name) and len(again.on(EVENTS.name)) == 1
    (kept,) = store.recent(10)
    assert kept["payload"] == register(BAD_ROW) and kept["received_at"] == NOW


async def test_a_file_refused_whole_and_sent_again_is_not_kept_again() -> None:
    store = MemoryDeadLetters()
    raw = register(GOOD_ROW).replace(b",", b";")
    for _ in range(2):
        broker = FakeBroker()
        (outcome,) = await intake(broker, store).ingest(raw, "file:s.csv")
        consume(broker, store)
    assert outcome.already_kept and outcome.reason and outcome.reason.endswith("not kept again")
    assert len(store.recent(10)) == 1


async def test_the_same_bad_row_twice_in_one_ingest_is_dead_lettered_once() -> None:
    broker = FakeBroker()
    same = intake(broker)
    first = await same.ingest(register(BAD_ROW), "file:/a/r.csv")
    copy = await same.ingest(register(BAD_ROW), "file:/a/r.csv")
    assert [(o.dead_lettered, o.already_kept) for o in first + copy] == [(True, False), (False, True)]
    assert len(broker.on(DEAD_LETTER.name)) == 1


class DownStore:
    def holds(self, *, source: str, payload: bytes) -> bool:
        raise StoreUnavailableError("the database is not answering")


async def test_a_dead_letter_store_that_does_not_answer_leaves_the_rejection_dead_lettered() -> None:
    broker = FakeBroker()
    (outcome,) = await intake(broker, DownStore()).ingest(register(BAD_ROW), "file:r.csv")
    assert (outcome.status, outcome.dead_lettered, outcome.already_kept) == (REJECTED, True, False)
    assert len(broker.on(DEAD_LETTER.name)) == 1
