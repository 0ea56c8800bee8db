"""The registrations the delivery consumer keeps (whom each person is registered with), on every back
end; and migration 0009, which fills them from the record a hub already holds when it is upgraded."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
import sqlalchemy as sa
from alembic import command

from hub.core.delivery import Registration
from hub.core.ports import StoredResource
from hub.store.database import _config, current_revision, head_revision, open_engine, upgrade
from hub.store.memory import MemoryRegistrations
from hub.store.registrations import SqlRegistrations
from hub.store.sql import SqlRecordUnitOfWork

ODS = "https://fhir.nhs.uk/Id/ods-organization-code"
AT = datetime(2026, 11, 3, 11, 5, tzinfo=UTC)
STUB_TIME = datetime(1900, 1, 1, tzinfo=UTC)


@pytest.fixture(params=["memory", "sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def registrations(request: pytest.FixtureRequest) -> Iterator[Any]:
    if request.param == "memory":
        yield MemoryRegistrations()
        return
    engine = open_engine(request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "postgres_url"))
    yield SqlRegistrations(engine)
    engine.dispose()


def test_registrations_are_kept_replaced_and_read_back_in_any_number(registrations: Any) -> None:
    many = {f"p{n:04d}": Registration(frozenset({"Y00001"}), AT, f"e{n}") for n in range(1200)}
    registrations.save(many, {})
    registrations.save({"p0001": Registration(frozenset({"Y00002", "Y00003"}), AT, "moved")}, {})
    merged = Registration(frozenset(), AT, "m", merged_into="p0001")
    registrations.save({"p0002": Registration(frozenset(), AT, "deleted"), "p0003": merged}, {})

    found = registrations.of([*many, "nobody"])

    assert len(found) == 1200
    assert found["p0001"] == Registration(frozenset({"Y00002", "Y00003"}), AT, "moved")
    assert found["p0002"] == Registration(frozenset(), AT, "deleted")
    assert found["p0003"] == merged
    assert found["p1199"] == many["p1199"]
    assert registrations.of([]) == {}


def test_a_row_a_batch_changed_is_read_as_it_was_before_by_that_batch_redone(registrations: Any) -> None:
    first = Registration(frozenset({"Y1"}), AT, "e1")
    registrations.save({"p": first, "q": first}, {}, {0: 10})  # a batch from offset 10, committed
    later = Registration(frozenset({"Y2"}), AT, "e2")
    registrations.save({"p": later, "new": later}, {"p": first, "new": None}, {0: 20, 1: 5})  # not committed

    assert registrations.of(["p", "q", "new"], {0: 20}) == {"p": first, "q": first}  # that batch, redone
    assert registrations.of(["p", "new"], {1: 5}) == {"p": first}  # its other partition, redone elsewhere
    assert registrations.of(["p", "q", "new"], {0: 27}) == {"p": later, "q": first, "new": later}  # the next one
    assert registrations.of(["p"], {2: 0}) == {"p": later}  # another partition's batch
    assert registrations.of(["p"]) == {"p": later}
    merged = Registration(frozenset(), AT, "m", merged_into="s")
    registrations.save({"p": merged}, {"p": later}, {1: 6})  # a third batch, on partition 1 only
    assert registrations.of(["p"], {0: 20}) == {"p": first}  # the earliest batch redone decides
    assert registrations.of(["p"], {1: 6}) == {"p": later}


def resource(
    kind: str, rid: str, content: dict[str, Any], at: datetime = AT, person: str | None = None
) -> StoredResource:
    person = person if person is not None else (rid if kind == "Patient" else None)
    return StoredResource(kind, rid, person, 1, at, f"event-{rid}", {"resourceType": kind, "id": rid, **content})


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest) -> str:
    return str(request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "postgres_url"))


def test_migration_0009_registers_the_people_the_record_already_holds(database_url: str) -> None:
    engine = open_engine(database_url, migrate=False)
    config = _config()
    with engine.connect().execution_options(immediate=True) as connection, connection.begin():
        config.attributes["connection"] = connection
        command.upgrade(config, "0008")
    practice = {"identifier": [{"system": ODS, "value": "Y00001"}], "name": "MALTON SURGERY"}
    with SqlRecordUnitOfWork(engine) as uow:
        for stored in (
            resource("Organization", "org-1", practice),
            resource("Patient", "by-reference", {"generalPractitioner": [{"reference": "Organization/org-1"}]}),
            resource(
                "Patient",
                "by-code",
                {"generalPractitioner": [{"identifier": {"system": ODS, "value": "Y00002"}}]},
            ),
            resource("Patient", "no-practice", {}),
            resource(
                "Patient",
                "stub",
                {"generalPractitioner": [{"identifier": {"system": ODS, "value": "Y9"}}]},
                at=STUB_TIME,
            ),
            resource(
                "Patient",
                "merged-away",
                {
                    "generalPractitioner": [{"reference": "Organization/org-1"}],
                    "link": [{"type": "replaced-by", "other": {"reference": "Patient/by-reference"}}],
                },
                person="by-reference",
            ),
        ):
            uow.put(stored)
        for n in range(1100):  # more than the migration inserts at a time, while it still reads
            uow.put(resource("Patient", f"p{n:04d}", {"generalPractitioner": [{"reference": "Organization/org-1"}]}))
        uow.commit()

    upgrade(engine)

    assert current_revision(engine) == head_revision() == "0015"
    found = SqlRegistrations(engine).of(["by-reference", "by-code", "no-practice", "merged-away", "stub"])
    assert found == {
        "by-reference": Registration(frozenset({"Y00001"}), AT, "event-by-reference"),
        "by-code": Registration(frozenset({"Y00002"}), AT, "event-by-code"),
        "merged-away": Registration(frozenset(), AT, "event-merged-away", merged_into="by-reference"),
    }  # (a Patient only a referral introduced registers no one)
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM person_registration")).scalar() == 1103
    engine.dispose()


@pytest.mark.parametrize(
    "odd",
    [
        {"resourceType": "Patient", "id": "gp-string", "generalPractitioner": ["Organization/x"]},
        {
            "resourceType": "Patient",
            "id": "gp-identifier-list",
            "generalPractitioner": [{"identifier": [{"value": "Y1"}]}],
        },
        {"resourceType": "Patient", "id": "link-without-other", "link": [{"type": "replaced-by"}]},
        {"resourceType": "Organization", "id": "identifier-string", "identifier": ["Y00001"]},
    ],
    ids=lambda odd: odd["id"],
)
def test_migration_0009_takes_whatever_shape_the_record_kept(database_url: str, odd: dict[str, Any]) -> None:
    # (review: the record keeps what senders said; an entry of another shape stopped the upgrade)
    engine = open_engine(database_url, migrate=False)
    config = _config()
    with engine.connect().execution_options(immediate=True) as connection, connection.begin():
        config.attributes["connection"] = connection
        command.upgrade(config, "0008")
    with SqlRecordUnitOfWork(engine) as uow:
        uow.put(
            resource(odd["resourceType"], odd["id"], {k: v for k, v in odd.items() if k not in ("resourceType", "id")})
        )
        uow.commit()

    upgrade(engine)

    assert current_revision(engine) == head_revision()
    assert SqlRegistrations(engine).of([odd["id"]]) == {}
    engine.dispose()
