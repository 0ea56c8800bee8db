"""The claims of referral decisions and episode closes (hub.store.coordination), on SQLite and
PostgreSQL; migration 0010, which keeps the accepts claimed before it as accepts; and 0013, which lets
a referrer's withdrawal claim a referral as an accept or a decline does."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
import sqlalchemy as sa
from alembic import command

from hub.core.ports import CaseloadFull, Closure, Decline, Json, Withdrawal
from hub.store.coordination import SqlCoordinationStore
from hub.store.database import _config, current_revision, head_revision, open_engine, upgrade

AT = datetime(2026, 11, 3, 11, 5, tzinfo=UTC)


def episode(referral: str, person: str = "p1") -> Json:
    return {"resourceType": "EpisodeOfCare", "id": f"ep-{referral}", "patient": {"reference": f"Patient/{person}"}}


def always_open(_: Json) -> bool:
    return True


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest) -> str:
    return str(request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "postgres_url"))


@pytest.fixture
def store(database_url: str) -> Iterator[SqlCoordinationStore]:
    engine = open_engine(database_url)
    yield SqlCoordinationStore(engine)
    engine.dispose()


def test_a_referral_is_decided_once_accepted_or_declined(store: SqlCoordinationStore) -> None:
    declined = Decline({"resourceType": "ServiceRequest", "id": "r1", "status": "revoked"}, AT)

    assert store.claim_decline("r1", "p1", declined, AT) is None
    assert store.claim_decline("r1", "p1", Decline({"id": "other"}, AT), AT) == declined
    assert store.claim_acceptance("r1", "p1", "c-ann", episode("r1"), AT, always_open, 28) == declined
    assert store.claim_acceptance("r2", "p1", "c-ann", episode("r2"), AT, always_open, 28) is None
    assert store.claim_decline("r2", "p1", declined, AT) == episode("r2")
    assert (store.declined("r1"), store.acceptance("r1")) == (declined, None)
    assert (store.declined("r2"), store.acceptance("r2")) == (None, episode("r2"))


def test_a_withdrawal_claims_a_referral_as_an_accept_or_a_decline_does_and_the_first_claim_wins(
    store: SqlCoordinationStore,
) -> None:
    withdrawn = Withdrawal({"resourceType": "ServiceRequest", "id": "w1", "status": "revoked"}, AT)
    declined = Decline({"resourceType": "ServiceRequest", "id": "w2", "status": "revoked"}, AT)

    assert store.claim_withdrawal("w1", "p1", withdrawn, AT) is None
    assert store.claim_withdrawal("w1", "p1", Withdrawal({"id": "other"}, AT), AT) == withdrawn
    assert store.claim_acceptance("w1", "p1", "c-ann", episode("w1"), AT, always_open, 28) == withdrawn
    assert store.claim_decline("w1", "p1", declined, AT) == withdrawn
    assert (store.withdrawn("w1"), store.declined("w1"), store.acceptance("w1")) == (withdrawn, None, None)
    assert store.claim_decline("w2", "p1", declined, AT) is None
    assert store.claim_withdrawal("w2", "p1", withdrawn, AT) == declined
    assert store.claim_acceptance("w3", "p3", "c-ann", episode("w3", "p3"), AT, always_open, 28) is None
    assert store.claim_withdrawal("w3", "p3", withdrawn, AT) == episode("w3", "p3")
    assert store.withdrawn("w3") is None
    assert not store.sent("w1")
    store.mark_sent("w1", AT)
    assert store.sent("w1")


def test_migration_0013_takes_withdrawals_and_going_back_drops_only_them(database_url: str) -> None:
    engine = open_engine(database_url)
    store = SqlCoordinationStore(engine)
    withdrawn = Withdrawal({"resourceType": "ServiceRequest", "id": "w1"}, AT)
    assert store.claim_withdrawal("w1", "p1", withdrawn, AT) is None
    assert store.claim_decline("d1", "p1", Decline({"id": "d1"}, AT), AT) is None
    config = _config()
    with engine.connect().execution_options(immediate=True) as connection, connection.begin():
        config.attributes["connection"] = connection
        command.downgrade(config, "0012")
    assert (store.withdrawn("w1"), store.declined("d1")) == (None, Decline({"id": "d1"}, AT))
    upgrade(engine)
    assert store.claim_withdrawal("w1", "p1", withdrawn, AT) is None
    engine.dispose()


def test_an_accept_past_the_cap_is_refused_until_an_episode_claimed_is_closed(store: SqlCoordinationStore) -> None:
    for n in range(3):
        assert store.claim_acceptance(f"r{n}", f"p{n}", "c-ann", episode(f"r{n}", f"p{n}"), AT, always_open, 3) is None

    full = CaseloadFull("c-ann", 3)
    assert store.claim_acceptance("r3", "p3", "c-ann", episode("r3", "p3"), AT, always_open, 3) == full
    assert store.claim_acceptance("r3", "p3", "c-bob", episode("r3", "p3"), AT, always_open, 3) is None
    closed = Closure(episode("r0", "p0"), {"resourceType": "Composition"}, {"at": None})
    assert store.claim_closure("p0", closed, AT) is None
    assert store.claim_closure("p0", Closure(episode("r0", "p0"), {}, {"at": "x"}), AT) == closed
    assert store.closure("ep-r0") == closed
    # (a close claimed is not yet a close: Kafka may not have taken it)
    assert store.claim_acceptance("r4", "p4", "c-ann", episode("r4", "p4"), AT, always_open, 3) == full

    def on_the_record(found: Json) -> bool:  # the record has the close
        return found["id"] != "ep-r0"

    assert store.claim_acceptance("r4", "p4", "c-ann", episode("r4", "p4"), AT, on_the_record, 3) is None


def test_migration_0010_keeps_the_accepts_claimed_before_it_as_accepts(database_url: str) -> None:
    engine = open_engine(database_url, migrate=False)
    config = _config()
    with engine.connect().execution_options(immediate=True) as connection, connection.begin():
        config.attributes["connection"] = connection
        command.upgrade(config, "0009")
    with engine.begin() as conn:
        table = sa.table(
            "referral_acceptance",
            sa.column("referral_id", sa.String),
            sa.column("coordinator", sa.String),
            sa.column("episode", sa.JSON),
            sa.column("claimed_at", sa.DateTime),
            sa.column("person_key", sa.String),
        )
        row = {"referral_id": "r1", "coordinator": "c-ann", "claimed_at": AT.replace(tzinfo=None), "person_key": "p1"}
        conn.execute(sa.insert(table), [{**row, "episode": episode("r1")}])

    upgrade(engine)

    assert current_revision(engine) == head_revision() == "0015"
    store = SqlCoordinationStore(engine)
    assert (store.acceptance("r1"), store.declined("r1")) == (episode("r1"), None)
    assert store.claim_decline("r1", "p1", Decline({"id": "r1"}, AT), AT) == episode("r1")
    engine.dispose()


@pytest.mark.postgres
def test_a_burst_of_accepts_for_one_coordinator_never_waits_on_a_connection_while_holding_the_lock(
    postgres_url: str,
) -> None:
    # a pool of 3, six accepts for c-ann at once, each asking the record (a connection of its own) whether
    # earlier episodes are open: asked while the claim holds its connection and the coordinator's lock,
    # the holder waited for a connection the waiters held, until the pool's timeout
    from concurrent.futures import ThreadPoolExecutor

    engine = open_engine(postgres_url, pool_size=2, max_overflow=1, pool_timeout=5)
    store = SqlCoordinationStore(engine)
    assert store.claim_acceptance("r0", "p0", "c-ann", episode("r0", "p0"), AT, always_open, 28) is None

    def on_the_record(found: Json) -> bool:
        with engine.connect() as conn:  # (as the API's still_open reads the record)
            return bool(conn.scalar(sa.select(sa.literal(True))))

    def accept(n: int) -> object:
        return store.claim_acceptance(f"r{n}", f"p{n}", "c-ann", episode(f"r{n}", f"p{n}"), AT, on_the_record, 28)

    try:
        with ThreadPoolExecutor(6) as pool:
            answers = list(pool.map(accept, range(1, 7)))
    finally:
        engine.dispose()
    assert answers == [None] * 6
