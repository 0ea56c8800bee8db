"""Whether Kafka took a referral's decision (hub.store.coordination sent / mark_sent), and the accepts
of a coordinator not known sent, on SQLite and PostgreSQL; and migration 0011, after which the claims
made before it are not known sent."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
import sqlalchemy as sa
from alembic import command

from hub.core.ports import Decline, Json
from hub.store.coordination import SqlCoordinationStore
from hub.store.database import _config, current_revision, head_revision, open_engine, upgrade

AT = datetime(2026, 11, 3, 11, 5, tzinfo=UTC)


def episode(referral: str, person: str) -> Json:
    return {
        "resourceType": "EpisodeOfCare",
        "id": f"ep-{referral}",
        "patient": {"reference": f"Patient/{person}"},
        "referralRequest": [{"reference": f"ServiceRequest/{referral}"}],
    }


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


def test_a_decision_is_not_known_sent_until_marked_and_a_coordinators_unsent_accepts_are_listed(
    store: SqlCoordinationStore,
) -> None:
    for n in (1, 2):
        assert store.claim_acceptance(f"r{n}", f"p{n}", "c-ann", episode(f"r{n}", f"p{n}"), AT, always_open, 28) is None
    assert store.claim_acceptance("r3", "p3", "c-bob", episode("r3", "p3"), AT, always_open, 28) is None
    assert store.claim_decline("r4", "p4", Decline({"resourceType": "ServiceRequest", "id": "r4"}, AT), AT) is None

    assert [store.sent(f"r{n}") for n in range(1, 6)] == [False] * 5
    assert sorted(e["id"] for e in store.unsent_acceptances("c-ann")) == ["ep-r1", "ep-r2"]

    store.mark_sent("r1", AT)
    store.mark_sent("r4", AT)
    store.mark_sent("r4", AT.replace(hour=12))  # (sent twice: the first stands)

    assert [store.sent(f"r{n}") for n in range(1, 6)] == [True, False, False, True, False]
    assert [e["id"] for e in store.unsent_acceptances("c-ann")] == ["ep-r2"]
    assert [e["id"] for e in store.unsent_acceptances("c-bob")] == ["ep-r3"]
    assert store.unsent_acceptances("c-cat") == []


def test_migration_0011_leaves_the_claims_made_before_it_not_known_sent(database_url: str) -> None:
    engine = open_engine(database_url, migrate=False)
    config = _config()
    with engine.connect().execution_options(immediate=True) as connection, connection.begin():
        config.attributes["connection"] = connection
        command.upgrade(config, "0010")
    store = SqlCoordinationStore(engine)
    assert store.claim_acceptance("r1", "p1", "c-ann", episode("r1", "p1"), AT, always_open, 28) is None

    upgrade(engine)

    assert current_revision(engine) == head_revision() == "0015"
    assert (store.sent("r1"), store.acceptance("r1")) == (False, episode("r1", "p1"))
    with engine.connect() as conn:
        names = {c["name"] for c in sa.inspect(conn).get_columns("referral_acceptance")}
    assert "published_at" in names
    engine.dispose()
