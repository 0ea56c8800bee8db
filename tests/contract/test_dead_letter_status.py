"""What an operator did about dead letters (hub.store.dead_letter_status) on SQLite and PostgreSQL:
resolved all or none, a first resolution never overwritten, reopened, a file's row refused again
outstanding again, purged only when resolved long enough; and migration 0015 there and back."""

from __future__ import annotations

import hashlib
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


def test_redelivered_refusals_are_not_counted_again_nor_reopen_what_was_resolved_after_them(engine: sa.Engine) -> None:
    message = b"MSH|^~\\&|PAS|RXX|HUB|HUB|20261103||ADT^A01|C9|P|2.4\r"
    for n in (1, 2, 3):
        keep(engine, n, payload=message)
    for n in (1, 2, 3):  # the dead-letter topic read again (a restart, a rebalance): the same refusals
        keep(engine, n, payload=message)
    [letter] = recent_dead_letters(engine, 10)
    assert letter.refused_times == 3
    resolve(engine, [letter.id], by="ann", note="sender fixed it", at=AT + timedelta(hours=1))
    keep(engine, 2, payload=message)  # (redelivered after the resolution, but refused before it)
    assert outstanding(engine) == []
    keep(engine, 120, payload=message)  # (refused again, two hours on: what was done did not stop it)
    again = dead_letter_by_id(engine, letter.id)
    assert again is not None and again.resolution is None and again.refused_times == 4


def test_an_older_refusal_delivered_late_leaves_the_newest_reason(engine: sa.Engine) -> None:
    store, message = SqlDeadLetters(engine), b"MSH|late\r"
    for n, why in ((1, "first"), (5, "newest"), (3, "older, late")):
        reason = {"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": why}]}
        store.keep(
            received_at=AT + timedelta(minutes=n), source="urn:ods:RXX", origin="o", reason=reason, payload=message
        )
    [letter] = recent_dead_letters(engine, 10)
    assert letter.reason["issue"][0]["code"] == "newest"
    assert (letter.refused_times, letter.last_received_at) == (2, AT + timedelta(minutes=5))


def test_a_refusal_whose_entry_is_purged_meanwhile_is_kept_not_lost(
    engine: sa.Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    import hub.store.sql as sql

    keep(engine, 1, payload=b"MSH|purged\r")
    resolve(engine, [1], by="ann", note="done", at=AT)
    counted = sql._refused_again

    def purged_first(conn: sa.Connection, *args: object) -> bool:
        conn.execute(sa.delete(sql.dead_letter))  # (as a purge committed between the insert and the count)
        return counted(conn, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(sql, "_refused_again", purged_first)
    keep(engine, 30, payload=b"MSH|purged\r")
    [letter] = recent_dead_letters(engine, 10)
    assert (letter.received_at, letter.refused_times, letter.resolution) == (AT + timedelta(minutes=30), 1, None)


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
                "VALUES (:at, 'urn:ods:RXX', 'mllp:x', :d, '{}', :p)"
            ),
            {"at": AT.replace(tzinfo=None), "p": b"MSH|", "d": hashlib.sha256(b"MSH|").hexdigest()},
        )
    with engine.begin() as connection:  # (the same message kept again before 0015: a second entry)
        connection.execute(
            sa.text(
                "INSERT INTO dead_letter (received_at, source, origin, digest, reason, payload) "
                "VALUES (:at, 'urn:ods:RXX', 'mllp:y', :d, '{}', :p)"
            ),
            {"at": AT.replace(tzinfo=None, minute=9), "p": b"MSH|", "d": hashlib.sha256(b"MSH|").hexdigest()},
        )
    upgrade(engine)
    assert current_revision(engine) == head_revision() == "0015"
    assert outstanding(engine) == [2, 1]  # (kept before 0015: outstanding, and nothing deleted)
    SqlDeadLetters(engine).keep(
        received_at=AT + timedelta(hours=1), source="urn:ods:RXX", origin="mllp:z", reason=REASON, payload=b"MSH|"
    )
    assert outstanding(engine) == [2, 1]  # (the next refusal counts on the oldest)
    oldest = dead_letter_by_id(engine, 1)
    assert oldest is not None and oldest.refused_times == 2
    resolve(engine, [1], by="ann", note="done", at=AT)
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.downgrade(config, "0014")
    with engine.connect() as connection:  # (0014 keys a file's rows alone)
        assert connection.execute(sa.text("SELECT count(content_key) FROM dead_letter")).scalar() == 0
    columns = {c["name"] for c in sa.inspect(engine).get_columns("dead_letter")}
    assert "resolved_at" not in columns and "payload" in columns
    with engine.connect() as connection:
        assert connection.execute(sa.text("SELECT count(*) FROM dead_letter")).scalar() == 2
    engine.dispose()
