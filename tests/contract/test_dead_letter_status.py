"""What an operator did about dead letters (hub.store.dead_letter_status) on SQLite and PostgreSQL:
resolved all or none, a first resolution never overwritten, reopened, a file's row refused again
outstanding again, purged only when resolved long enough; and migration 0015 there and back."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa
from alembic import command

from hub.store.database import _config, current_revision, head_revision, open_engine, upgrade
from hub.store.dead_letter_status import purge, reopen, resolve, tally
from hub.store.queries import dead_letter_by_id, recent_dead_letters
from hub.store.sql import SqlDeadLetters

AT = datetime(2026, 11, 3, 11, 5, tzinfo=UTC)
REASON = {"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "invalid"}]}


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest) -> str:
    return str(request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "postgres_url"))


@pytest.fixture
def engine(database_url: str) -> Iterator[sa.Engine]:
    engine = open_engine(database_url)
    yield engine
    engine.dispose()


def keep(engine: sa.Engine, n: int, *, origin: str = "mllp:10.0.0.7:5000", payload: bytes | None = None) -> None:
    SqlDeadLetters(engine).keep(
        received_at=AT + timedelta(minutes=n),
        source="urn:ods:RXX",
        origin=origin,
        reason=REASON,
        payload=payload if payload is not None else f"MSH|^~\\&|{n}\r".encode(),
    )


def outstanding(engine: sa.Engine) -> list[int]:
    return [letter.id for letter in recent_dead_letters(engine, 100)]


def test_resolving_takes_letters_off_the_outstanding_listing_all_or_none(engine: sa.Engine) -> None:
    for n in (1, 2, 3):
        keep(engine, n)
    assert outstanding(engine) == [3, 2, 1]

    refused = resolve(engine, [1, 99], by="ann", note="resent fixed", at=AT)
    assert refused.unknown == [99] and refused.resolved == []
    assert outstanding(engine) == [3, 2, 1]  # (an unknown id resolves nothing: no half a batch)

    done = resolve(engine, [2, 1, 2], by="ann", note="resent fixed as CTRL-2", at=AT + timedelta(hours=1))
    assert done.resolved == [1, 2] and not done.already
    assert outstanding(engine) == [3]
    assert tally(engine) == (1, 2)
    assert [letter.id for letter in recent_dead_letters(engine, 100, resolved_too=True)] == [3, 2, 1]
    said = dead_letter_by_id(engine, 2)
    assert said is not None and said.resolution is not None
    assert (said.resolution.at, said.resolution.by, said.resolution.note) == (
        AT + timedelta(hours=1),
        "ann",
        "resent fixed as CTRL-2",
    )

    again = resolve(engine, [2, 3], by="bob", note="nothing to do", at=AT + timedelta(hours=2))
    assert again.resolved == [3]
    assert again.already[2].by == "ann" and again.already[2].note == "resent fixed as CTRL-2"  # (the first stands)


def test_a_resolved_letter_can_be_reopened(engine: sa.Engine) -> None:
    keep(engine, 1)
    assert reopen(engine, 1) is None  # (outstanding already)
    resolve(engine, [1], by="ann", note="oops", at=AT)
    was = reopen(engine, 1)
    assert was is not None and was.note == "oops"
    assert outstanding(engine) == [1]
    letter = dead_letter_by_id(engine, 1)
    assert letter is not None and letter.resolution is None
    with pytest.raises(KeyError):
        reopen(engine, 42)


def test_a_files_row_refused_again_after_it_was_resolved_is_outstanding_again(engine: sa.Engine) -> None:
    row = b"nhs_number,referral_id\r\n123,REF-7\r\n"
    store = SqlDeadLetters(engine)
    keep(engine, 1, origin="file:/in/referrals.csv#row=3", payload=row)
    assert store.holds(source="urn:ods:RXX", payload=row)  # (the adapter says "already kept", keeps nothing)
    resolve(engine, [1], by="ann", note="sender asked to fix", at=AT)
    assert not store.holds(source="urn:ods:RXX", payload=row)  # (resolved: the adapter keeps it again)
    keep(engine, 5, origin="file:/in/referrals-again.csv#row=3", payload=row)  # the same row, sent again
    assert outstanding(engine) == [1]  # (kept once, as ever, and outstanding again)
    letter = dead_letter_by_id(engine, 1)
    assert letter is not None and letter.resolution is None
    assert (letter.refused_times, letter.last_received_at) == (2, AT + timedelta(minutes=5))


def test_the_same_message_refused_again_is_counted_on_its_entry_not_kept_again(engine: sa.Engine) -> None:
    message = b"MSH|^~\\&|PAS|RXX|HUB|HUB|20261103||ADT^A01|C1|P|2.4\r"
    for n, port in ((1, 5000), (2, 5001), (3, 5002), (3, 5002)):  # (the last: one refusal delivered twice)
        keep(engine, n, origin=f"mllp:10.0.0.7:{port}", payload=message)
    keep(engine, 9, payload=b"MSH|other\r")
    assert outstanding(engine)[-1] == 1
    letter = dead_letter_by_id(engine, 1)
    assert letter is not None
    assert (letter.refused_times, letter.received_at, letter.last_received_at) == (
        3,
        AT + timedelta(minutes=1),
        AT + timedelta(minutes=3),
    )
    assert letter.origin == "mllp:10.0.0.7:5000"  # (where it came from first)
    assert len(outstanding(engine)) == 2


def test_purging_deletes_only_letters_resolved_before_the_cut_off(engine: sa.Engine) -> None:
    for n in (1, 2, 3):
        keep(engine, n)
    resolve(engine, [1], by="ann", note="old", at=AT)
    resolve(engine, [2], by="ann", note="recent", at=AT + timedelta(days=60))
    assert purge(engine, resolved_before=AT + timedelta(days=30)) == 1
    assert dead_letter_by_id(engine, 1) is None
    assert [letter.id for letter in recent_dead_letters(engine, 100, resolved_too=True)] == [3, 2]
    assert purge(engine, resolved_before=AT + timedelta(days=365)) == 1
    assert outstanding(engine) == [3]  # (outstanding: never purged)


def test_migration_0015_adds_the_resolution_and_going_back_drops_only_it(database_url: str) -> None:
    engine = open_engine(database_url, migrate=False)
    config = _config()
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "0014")
    with engine.begin() as connection:
        connection.execute(
            sa.text(
                "INSERT INTO dead_letter (received_at, source, origin, digest, reason, payload) "
                "VALUES (:at, 'urn:ods:RXX', 'mllp:x', 'd', '{}', :p)"
            ),
            {"at": AT.replace(tzinfo=None), "p": b"MSH|"},
        )
    upgrade(engine)
    assert current_revision(engine) == head_revision() == "0015"
    assert outstanding(engine) == [1]  # (kept before 0015: outstanding)
    resolve(engine, [1], by="ann", note="done", at=AT)
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.downgrade(config, "0014")
    columns = {c["name"] for c in sa.inspect(engine).get_columns("dead_letter")}
    assert "resolved_at" not in columns and "payload" in columns
    with engine.connect() as connection:
        assert connection.execute(sa.text("SELECT count(*) FROM dead_letter")).scalar() == 1
    engine.dispose()
