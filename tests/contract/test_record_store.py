"""One contract, every back end: the in-memory fake, a SQLite file and PostgreSQL (eventsourcing style).

The record rules run on each store and must give the same answers; PostgreSQL is skipped with its
reason where no server answers.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from hub.core.errors import ConcurrentWriteError, StoreUnavailableError
from hub.core.ports import DeadLetters, RecordEvent, RecordReader, RecordUnitOfWork, StoredResource
from hub.core.record import apply_events
from hub.store.database import current_revision, head_revision, open_engine
from hub.store.memory import MemoryDeadLetters, MemoryRecordStore
from hub.store.sql import SqlDeadLetters, SqlRecordReader, SqlRecordUnitOfWork
from tests.locality_month import at
from tests.unit.test_accept_once_in_the_folds import PERSON, accept, episode_id, referral

T0 = datetime(2026, 11, 1, 9, 30, tzinfo=UTC)
NHS = "https://fhir.nhs.uk/Id/nhs-number"


@dataclass
class Backend:
    name: str
    uow: Callable[[], RecordUnitOfWork]
    reader: RecordReader
    dead_letters: DeadLetters
    engine: sa.Engine | None = None


@pytest.fixture(params=["memory", "sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def backend(request: pytest.FixtureRequest) -> Iterator[Backend]:
    if request.param == "memory":
        store = MemoryRecordStore()
        yield Backend("memory", store.unit_of_work, store.reader(), MemoryDeadLetters())
        return
    url = request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "postgres_url")
    engine = open_engine(url)
    yield Backend(
        request.param,
        lambda: SqlRecordUnitOfWork(engine),
        SqlRecordReader(engine),
        SqlDeadLetters(engine),
        engine,
    )
    engine.dispose()


def a_patient(pid: str, nhs: str, *, version: int = 1, time: datetime = T0, family: str = "SMITH") -> StoredResource:
    content: dict[str, Any] = {
        "resourceType": "Patient",
        "id": pid,
        "identifier": [{"system": NHS, "value": nhs}],
        "name": [{"family": family}],
        "meta": {"versionId": str(version)},
    }
    return StoredResource("Patient", pid, pid, version, time, f"e-{pid}-{version}", content)


def an_encounter(eid: str, pid: str, *, time: datetime = T0) -> StoredResource:
    content = {
        "resourceType": "Encounter",
        "id": eid,
        "status": "in-progress",
        "subject": {"reference": f"Patient/{pid}"},
    }
    return StoredResource("Encounter", eid, pid, 1, time, f"e-{eid}", content)


def test_what_is_committed_is_read_back_exactly(backend: Backend) -> None:
    with backend.uow() as uow:
        uow.put(a_patient("p1", "9434765919"))
        uow.put(an_encounter("e1", "p1"))
        uow.mark_processed("ev1")
        uow.commit()
    with backend.uow() as uow:
        stored = uow.get("Patient", "p1")
        assert stored is not None and stored.event_time == T0 and stored.version_id == 1
        assert stored.content["name"] == [{"family": "SMITH"}]
        assert uow.processed(["ev1", "ev2"]) == {"ev1"}
        assert [r.id for r in uow.find_by_identifier("Patient", NHS, "9434765919")] == ["p1"]
        assert [(r.resource_type, r.id) for r in uow.of_person("p1")] == [
            ("Encounter", "e1"),
            ("Patient", "p1"),
        ]
    assert backend.reader.read("Patient", "p1") == stored.content
    assert [p["id"] for p in backend.reader.patients_by_identifier(NHS, "9434765919")] == ["p1"]
    assert backend.reader.patients_by_identifier(NHS, "9999999999") == []
    assert [e["id"] for e in backend.reader.search("Encounter", "p1")] == ["e1"]
    assert backend.reader.search("Encounter", "nobody") == []
    assert [e["id"] for e in backend.reader.search_many("Encounter", ["nobody", "p1"])] == ["e1"]
    assert [r["resourceType"] for r in backend.reader.everything("p1")] == ["Patient", "Encounter"]
    assert backend.reader.everything("nobody") == []
    assert backend.reader.counts() == {"Patient": 1, "Encounter": 1}


def test_nothing_is_kept_without_commit(backend: Backend) -> None:
    with backend.uow() as uow:
        uow.put(a_patient("p1", "9434765919"))
        uow.mark_processed("ev1")
        assert uow.get("Patient", "p1") is not None  # visible inside its own transaction
    with backend.uow() as uow:
        assert uow.get("Patient", "p1") is None
        assert uow.processed(["ev1"]) == set()


def test_a_persons_resources_of_one_kind_include_what_is_not_committed_yet(backend: Backend) -> None:
    with backend.uow() as uow:
        uow.put(a_patient("p1", "9434765919"))
        uow.put(an_encounter("e1", "p1"))
        uow.put(an_encounter("e9", "p2"))
        uow.commit()
    with backend.uow() as uow:
        uow.put(an_encounter("e2", "p1"))
        uow.put(an_encounter("e1", "p2"))  # moved to someone else, not committed yet
        assert [r.id for r in uow.of_person("p1", "Encounter")] == ["e2"]
        assert [r.id for r in uow.of_person("p2", "Encounter")] == ["e1", "e9"]
        assert [r.id for r in uow.of_person("p1", "Patient")] == ["p1"]
        assert uow.of_person("p1", "EpisodeOfCare") == []


@pytest.mark.parametrize("batches", [1, 2], ids=["one batch", "two batches"])
def test_two_accepts_of_one_referral_write_one_episode_of_care_the_firsts(backend: Backend, batches: int) -> None:
    log = [referral(), *accept(1, at(6, 9), "c-ann"), *accept(2, at(6, 9, 5), "c-bob")]
    for part in (log, []) if batches == 1 else (log[:3], log[3:]):
        with backend.uow() as uow:
            apply_events(uow, part)
            uow.commit()
    episodes = backend.reader.search("EpisodeOfCare", PERSON)
    assert [(e["id"], e["careManager"]["identifier"]["value"]) for e in episodes] == [(episode_id(1), "c-ann")]


def test_a_replaced_version_updates_the_identifier_index(backend: Backend) -> None:
    with backend.uow() as uow:
        uow.put(a_patient("p1", "9434765919"))
        uow.commit()
    with backend.uow() as uow:
        uow.put(a_patient("p1", "9990000018", version=2, time=T0 + timedelta(hours=1)))
        assert [r.id for r in uow.find_by_identifier("Patient", NHS, "9434765919")] == []
        uow.commit()
    assert backend.reader.patients_by_identifier(NHS, "9434765919") == []
    assert [p["meta"]["versionId"] for p in backend.reader.patients_by_identifier(NHS, "9990000018")] == ["2"]


def test_an_older_write_racing_a_newer_one_does_not_win(backend: Backend) -> None:
    with backend.uow() as uow:
        uow.put(a_patient("p1", "9434765919", version=2, time=T0 + timedelta(hours=1), family="NEWER"))
        uow.commit()
    with backend.uow() as uow:
        uow.put(a_patient("p1", "9434765919", version=2, time=T0, family="OLDER"))
        uow.commit()
    found = backend.reader.read("Patient", "p1")
    assert found is not None and found["name"] == [{"family": "NEWER"}]


def test_the_same_event_committed_by_two_workers_is_refused_the_second_time(
    backend: Backend,
) -> None:
    first, second = backend.uow(), backend.uow()
    with first:
        first.mark_processed("ev1")
        first.commit()
    with second, pytest.raises(ConcurrentWriteError):
        second.mark_processed("ev1")
        second.commit()


def test_dead_letters_are_kept_whole_once_newest_first(backend: Backend) -> None:
    reason = {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": "invalid"}],
    }
    for n, payload in enumerate([b"MSH|first\r", b"MSH|second\r\xff"]):
        for _ in range(2):  # redelivered: kept once
            backend.dead_letters.keep(
                received_at=T0 + timedelta(seconds=n),
                source="urn:ods:RXX",
                origin=f"mllp:{n}",
                reason=reason,
                payload=payload,
            )
    kept = backend.dead_letters.recent(10)
    assert [k["payload"] for k in kept] == [b"MSH|second\r\xff", b"MSH|first\r"]
    assert kept[0]["reason"] == reason and kept[0]["received_at"] == T0 + timedelta(seconds=1)


def test_a_rejected_row_of_a_file_is_kept_once_per_source_and_content_however_often_it_is_sent(
    backend: Backend,
) -> None:
    reason = {"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "invalid"}]}
    row = b"nhs_number,practice_ods\n9434765918,Y90001\n"
    sent = [("urn:ods:Y90001", "file:/in/reg.csv#row=3"), ("urn:ods:Y90001", "file:/moved/reg.csv#row=4")]
    for n, (source, origin) in enumerate([*sent, ("urn:ods:Y90002", "file:/in/reg.csv#row=3")]):
        backend.dead_letters.keep(
            received_at=T0 + timedelta(days=n), source=source, origin=origin, reason=reason, payload=row
        )
    for n in range(3):  # an HL7 message sent again is counted on its entry, not kept again (its ports differ)
        backend.dead_letters.keep(
            received_at=T0 + timedelta(days=n),
            source="urn:ods:RXX",
            origin=f"mllp:peer:{n}",
            reason=reason,
            payload=b"MSH|",
        )
    backend.dead_letters.keep(  # (one refusal delivered twice by the dead-letter topic: counted once)
        received_at=T0 + timedelta(days=2), source="urn:ods:RXX", origin="mllp:peer:2", reason=reason, payload=b"MSH|"
    )
    kept = backend.dead_letters.recent(10)
    assert [(k["source"], k["origin"], k["refused_times"]) for k in kept] == [
        ("urn:ods:RXX", "mllp:peer:0", 3),
        ("urn:ods:Y90002", "file:/in/reg.csv#row=3", 1),
        ("urn:ods:Y90001", "file:/in/reg.csv#row=3", 2),
    ]
    holds = backend.dead_letters.holds  # type: ignore[attr-defined]
    assert holds(source="urn:ods:Y90001", payload=row) and holds(source="urn:ods:RXX", payload=b"MSH|")
    assert not holds(source="urn:ods:Y90003", payload=row) and not holds(source="urn:ods:Y90001", payload=b"x")


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest) -> str:
    return str(request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "postgres_url"))


def test_migrations_bring_an_empty_database_to_head_and_are_idempotent(database_url: str) -> None:
    first = open_engine(database_url)
    assert head_revision() == "0015"
    assert current_revision(first) == head_revision()
    again = open_engine(database_url)
    assert current_revision(again) == head_revision()
    first.dispose()
    again.dispose()


def test_an_unreachable_database_is_reported_as_unavailable() -> None:
    with pytest.raises(StoreUnavailableError, match="not answering"):
        open_engine("postgresql+psycopg://postgres@127.0.0.1:1/none?connect_timeout=2")


def test_registered_with_finds_a_practices_patients_by_ods_identifier_or_organization(backend: Backend) -> None:
    ods = "https://fhir.nhs.uk/Id/ods-organization-code"
    practice = {"resourceType": "Organization", "id": "org-y1", "identifier": [{"system": ods, "value": "Y00001"}]}
    other = {"resourceType": "Organization", "id": "org-y2", "identifier": [{"system": ods, "value": "Y00002"}]}
    by_reference = a_patient("p1", "9434765919")
    by_reference.content["generalPractitioner"] = [{"reference": "Organization/org-y1"}]
    by_identifier = a_patient("p2", "9990000018")
    by_identifier.content["generalPractitioner"] = [{"identifier": {"system": ods, "value": "Y00001"}}]
    elsewhere = a_patient("p3", "9990000026")
    elsewhere.content["generalPractitioner"] = [{"reference": "Organization/org-y2"}]
    mentions_only = a_patient("p4", "9990000034", family="Y00001")  # the code in a name is no registration
    with backend.uow() as uow:
        for org in (practice, other):
            uow.put(StoredResource("Organization", org["id"], None, 1, T0, f"e-{org['id']}", org))
        for patient in (by_reference, by_identifier, elsewhere, mentions_only):
            uow.put(patient)
        uow.commit()
    assert [p["id"] for p in backend.reader.registered_with("Y00001")] == ["p1", "p2"]
    assert [p["id"] for p in backend.reader.registered_with("Y00002")] == ["p3"]
    assert backend.reader.registered_with("Y99999") == []


def test_everything_gives_the_practice_a_patient_names_by_reference_or_by_ods_code(backend: Backend) -> None:
    # a practice's register row names it by ODS code: after a move, $everything gave no Organization
    ods = "https://fhir.nhs.uk/Id/ods-organization-code"
    orgs = [
        {"resourceType": "Organization", "id": f"org-y{n}", "identifier": [{"system": ods, "value": f"Y0000{n}"}]}
        for n in (1, 2, 3)
    ]
    by_identifier = a_patient("p1", "9434765919")
    by_identifier.content["generalPractitioner"] = [{"identifier": {"system": ods, "value": "Y00002"}}]
    by_reference = a_patient("p2", "9990000018")
    by_reference.content["generalPractitioner"] = [{"reference": "Organization/org-y3"}]
    unknown = a_patient("p3", "9990000026")
    unknown.content["generalPractitioner"] = [{"identifier": {"system": ods, "value": "Y99999"}}]
    with backend.uow() as uow:
        for org in orgs:
            uow.put(StoredResource("Organization", org["id"], None, 1, T0, f"e-{org['id']}", org))
        for patient in (by_identifier, by_reference, unknown):
            uow.put(patient)
        uow.commit()

    def held(pid: str) -> list[str]:
        return [f"{r['resourceType']}/{r['id']}" for r in backend.reader.everything(pid)]

    assert held("p1") == ["Patient/p1", "Organization/org-y2"]
    assert held("p2") == ["Patient/p2", "Organization/org-y3"]
    assert held("p3") == ["Patient/p3"]


def a_practice_said(event_id: str, hour: int, person: str) -> RecordEvent:
    content = {"resourceType": "Organization", "id": "org-1", "name": "HELMSLEY SURGERY"}
    return RecordEvent(event_id, "uk.nhs.carehub.encounter.admitted.v1", "urn:ods:RXX",
                       T0.replace(hour=hour), person, content)  # fmt: skip


@pytest.mark.postgres
@pytest.mark.parametrize("later_first", [True, False], ids=["the later commits first", "the earlier commits first"])
@pytest.mark.parametrize("exists", [False, True], ids=["first said at once", "said again at once"])
def test_two_workers_saying_one_practice_at_once_keep_what_one_worker_would(
    postgres_url: str, exists: bool, later_first: bool
) -> None:
    # people on different partitions share their GP practice, so two live workers can write its row in
    # overlapping transactions (PostgreSQL runs them at once; SQLite one after the other). The row must
    # end as one worker reading both events would leave it, in either order: the earliest event that
    # said it named, the latest time remembered. (Before, the later commit's upsert was refused by the
    # newer time already stored, and the row named whichever event committed first.)
    engine = open_engine(postgres_url)
    earlier, later = a_practice_said("e10", 10, "p1"), a_practice_said("e20", 20, "p2")
    if exists:
        with SqlRecordUnitOfWork(engine) as uow:
            apply_events(uow, [a_practice_said("e12", 12, "p0")])
            uow.commit()
    one = MemoryRecordStore()
    with one.unit_of_work() as uow:
        apply_events(uow, [a_practice_said("e12", 12, "p0")] if exists else [])
        apply_events(uow, [earlier, later])
        expected = uow.get("Organization", "org-1")
    first, second = SqlRecordUnitOfWork(engine), SqlRecordUnitOfWork(engine)
    with first, second:
        apply_events(first, [later if later_first else earlier])
        apply_events(second, [earlier if later_first else later])  # read before the first commits
        first.commit()
        second.commit()
    with SqlRecordUnitOfWork(engine) as uow:
        assert uow.get("Organization", "org-1") == expected
    engine.dispose()


@pytest.mark.postgres
def test_many_workers_writing_one_practice_at_once_end_as_one_worker_would(postgres_url: str) -> None:
    # the same, with the commits themselves overlapping: eight threads, each a worker's transactions
    # saying the practice at its own times; each reads the row, then commits at once with the others
    engine = open_engine(postgres_url, pool_size=8)
    said = [[a_practice_said(f"e{w}-{n}", (7 * n + 3 * w) % 24, f"p{w}") for n in range(6)] for w in range(8)]
    one = MemoryRecordStore()
    with one.unit_of_work() as uow:
        apply_events(uow, [e for worker in said for e in worker])
        expected = uow.get("Organization", "org-1")
    rounds = threading.Barrier(len(said))

    def worker(events: list[RecordEvent]) -> None:
        for event in events:
            with SqlRecordUnitOfWork(engine) as uow:
                apply_events(uow, [event])
                rounds.wait(30)  # every worker has read the row; now all commit together
                uow.commit()

    with ThreadPoolExecutor(len(said)) as pool:
        for done in [pool.submit(worker, events) for events in said]:
            done.result(120)
    with SqlRecordUnitOfWork(engine) as uow:
        assert uow.get("Organization", "org-1") == expected
    engine.dispose()
