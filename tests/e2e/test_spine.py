"""The spine end to end: HL7 v2 over a real MLLP socket -> Kafka -> record -> FHIR over real HTTP."""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from aiokafka import AIOKafkaProducer

from adapters.hl7v2.transport import MllpClient
from hub.api.auth import issue_token
from hub.bootstrap import Services, build, running
from hub.core.ledger import verify
from hub.settings import HttpSettings, KafkaSettings, MllpSettings, Settings
from schemas.events.rejected import OUTCOME_HEADER
from schemas.topics import DEAD_LETTER, EVENTS
from tests.builders import an_adt, an_agreement

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(90)]
NHS = "https://fhir.nhs.uk/Id/nhs-number"


def on_a_server(monkeypatch: pytest.MonkeyPatch) -> None:
    """The secrets a hub on a server's database is given (it makes none of its own there)."""
    monkeypatch.setenv("CAREHUB_SECURITY__KEY_SECRET", "spine-key-secret")
    monkeypatch.setenv("CAREHUB_SECURITY__TOKEN_SECRET", "spine-token-secret-at-least-32-bytes-long")


def hub_settings(tmp_path: Path, bootstrap: str) -> Settings:
    return Settings(
        data_dir=tmp_path,
        kafka_bootstrap_servers=bootstrap,
        kafka=KafkaSettings(group_id=f"t{uuid.uuid4().hex[:8]}-record"),
        mllp=MllpSettings(port=0),
        http=HttpSettings(port=0),
    )


def sharing(settings: Settings, *parties: str) -> Services:
    """The hub's services with an agreement letting the test's GP practice read the hospital's data."""
    services = build(settings)
    services.agreements.load(an_agreement(*parties), at=datetime.now(UTC))
    return services


def msa(ack: bytes) -> list[str]:
    segment = next(s for s in ack.split(b"\r") if s.startswith(b"MSA"))
    return segment.decode().split("|")


def err(ack: bytes) -> str:
    return next((s.decode() for s in ack.split(b"\r") if s.startswith(b"ERR")), "")


async def fhir_get(client: httpx.AsyncClient, path: str, token: str) -> httpx.Response:
    return await client.get(path, headers={"Authorization": f"Bearer {token}"})


async def wait_for(client: httpx.AsyncClient, path: str, token: str, *, total: int, within: float) -> float:
    started = time.perf_counter()
    while time.perf_counter() - started < within:
        response = await fhir_get(client, path, token)
        if response.status_code == 200 and response.json().get("total", 0) >= total:
            return time.perf_counter() - started
        await asyncio.sleep(0.02)
    raise AssertionError(f"{path} did not show {total} result(s) within {within}s")


async def test_discharge_sent_over_mllp_is_readable_over_fhir_within_one_second(
    tmp_path: Path, kafka_bootstrap: str
) -> None:
    settings = hub_settings(tmp_path, kafka_bootstrap)
    nhs = "9434765919"
    async with running(settings, services=sharing(settings)) as run:
        token = issue_token(run.services.secrets.token, org="Y00001", role="clinician", now=datetime.now(UTC))
        client = await MllpClient.connect("127.0.0.1", run.mllp_port or 0)
        base = f"http://127.0.0.1:{run.http_port}/fhir"
        async with httpx.AsyncClient(base_url=base, timeout=5) as http:
            admit = await client.send(an_adt(trigger="A01", nhs_number=nhs, control_id="C1", visit="V77"))
            assert msa(admit)[1] == "AA"
            started = time.perf_counter()
            discharge = await client.send(an_adt(trigger="A03", nhs_number=nhs, control_id="C2", visit="V77"))
            assert msa(discharge)[1:3] == ["AA", "C2"]
            found = await fhir_get(http, f"/Patient?identifier={NHS}|{nhs}", token)
            while found.json().get("total", 0) == 0 and time.perf_counter() - started < 1:
                found = await fhir_get(http, f"/Patient?identifier={NHS}|{nhs}", token)
            patient_id = found.json()["entry"][0]["resource"]["id"]
            while time.perf_counter() - started < 1:
                encounters = (await fhir_get(http, f"/Encounter?patient={patient_id}", token)).json()
                statuses = [e["resource"]["status"] for e in encounters.get("entry", [])]
                if statuses == ["finished"]:
                    break
                await asyncio.sleep(0.01)
            elapsed = time.perf_counter() - started
            assert statuses == ["finished"], statuses
            assert elapsed < 1.0, f"discharge took {elapsed:.3f}s to reach /fhir"
            everything = (await fhir_get(http, f"/Patient/{patient_id}/$everything", token)).json()
            kinds = {e["resource"]["resourceType"] for e in everything["entry"]}
            assert {"Patient", "Encounter", "Provenance"} <= kinds
        ledger = run.services.ledger
        assert verify(ledger.entries())[1] is None
        about = [e.body for e in ledger.about(patient_id)]
        assert {b["channel"] for b in about} == {"search", "everything"}
        assert all(b["recipient_org"] == "Y00001" and b["decision"] == "permit" for b in about)
        assert all(b["basis"]["agreements"] == ["test-locality-sharing@1"] for b in about)
        assert any(r.startswith("Encounter/") for b in about for r in b["resources"])
        await client.close()


async def test_bad_nhs_number_is_answered_AE_naming_PID_3_and_kept_while_good_messages_go_through(
    tmp_path: Path, kafka_bootstrap: str
) -> None:
    settings = hub_settings(tmp_path, kafka_bootstrap)
    async with running(settings, services=sharing(settings)) as run:
        token = issue_token(run.services.secrets.token, org="Y00001", role="clinician", now=datetime.now(UTC))
        client = await MllpClient.connect("127.0.0.1", run.mllp_port or 0)
        bad = an_adt(
            trigger="A03", nhs_number="9434765910", control_id="BAD1", mrn=None
        )  # (no hospital number to go on)
        good = an_adt(trigger="A03", nhs_number="9434765919", control_id="GOOD1")
        bad_ack, good_ack = await client.send(bad), await client.send(good)
        await client.close()
        assert msa(bad_ack)[1:3] == ["AE", "BAD1"]
        assert "PID" in err(bad_ack) and "3" in err(bad_ack)
        assert "Modulus 11" in err(bad_ack)
        assert "9434765910" not in bad_ack.decode()
        assert msa(good_ack)[1] == "AA"
        deadline = time.perf_counter() + 10
        while not run.services.dead_letters.recent(10) and time.perf_counter() < deadline:
            await asyncio.sleep(0.05)
        kept = run.services.dead_letters.recent(10)
        assert [k["payload"] for k in kept] == [bad]
        assert kept[0]["reason"]["resourceType"] == "OperationOutcome"
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{run.http_port}/fhir") as http:
            await wait_for(http, f"/Patient?identifier={NHS}|9434765919", token, total=1, within=5)
            none = await fhir_get(http, f"/Patient?identifier={NHS}|9434765910", token)
            assert none.json()["total"] == 0


async def test_resent_control_id_is_acknowledged_again_but_applied_once(tmp_path: Path, kafka_bootstrap: str) -> None:
    settings = hub_settings(tmp_path, kafka_bootstrap)
    async with running(settings) as run:
        client = await MllpClient.connect("127.0.0.1", run.mllp_port or 0)
        message = an_adt(trigger="A01", nhs_number="9434765919", control_id="SAME", visit="V1")
        acks = [await client.send(message) for _ in range(3)]
        await client.close()
        assert [msa(a)[1] for a in acks] == ["AA", "AA", "AA"]
        assert await run.caught_up(3, timeout=60)
        assert run.applied == 1
        encounter = run.services.reader.search("Encounter", None)
        assert len(encounter) == 1 and encounter[0]["meta"]["versionId"] == "1"


async def raw_records_then_an_adt(
    bootstrap: str, mllp_port: int | None, records: list[tuple[str, bytes, list[tuple[str, bytes]]]]
) -> None:
    """Records produced as they are (topic, value, headers), then an ADT over MLLP, accepted (AA)."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        for topic, value, headers in records:
            await producer.send_and_wait(topic, value, key=b"someone", headers=headers)
    finally:
        await producer.stop()
    client = await MllpClient.connect("127.0.0.1", mllp_port or 0)
    assert msa(await client.send(an_adt(trigger="A01", nhs_number="9434765919", control_id="AFTER")))[1] == "AA"
    await client.close()


async def test_a_record_that_is_not_a_carehub_event_is_dead_lettered_once(tmp_path: Path, kafka_bootstrap: str) -> None:
    # three consumer groups read the events topic; only the record consumer speaks for what none can decode
    settings = hub_settings(tmp_path, kafka_bootstrap)
    async with running(settings) as run:
        await raw_records_then_an_adt(run.bootstrap, run.mllp_port, [(EVENTS.name, b"not an event", [])])
        deadline = time.perf_counter() + 30
        while (run.coordinated < 2 or not run.services.dead_letters.recent(10)) and time.perf_counter() < deadline:
            await asyncio.sleep(0.05)
        assert run.coordinated >= 2, "the coordination consumer did not read both records"
        await asyncio.sleep(2)  # time for a second dead letter to arrive, were one sent
        kept = run.services.dead_letters.recent(10)
        assert [k["payload"] for k in kept] == [b"not an event"]


@pytest.mark.parametrize("database", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
async def test_records_whose_headers_lie_are_kept_whole_and_nothing_after_them_stalls(
    tmp_path: Path, database: str, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    # FastStream parsed each body as its content-type header said: a CSV file rejected by an adapter,
    # dead-lettered whole as application/json, failed every batch before a handler saw it, for ever
    if database == "postgresql":  # (whose text and jsonb refuse NULs)
        monkeypatch.setenv("CAREHUB_DATABASE_URL", request.getfixturevalue("postgres_url"))
        on_a_server(monkeypatch)
    csv = b"nhs_number,referrer\r\n9434765919,LA123\r\n"

    def event(time: bytes, source: bytes, n: int) -> tuple[str, bytes, list[tuple[str, bytes]]]:
        """An event in every other way: a CloudEvent whose time or source cannot be read."""
        said = {"ce_specversion": b"1.0", "ce_id": f"lie-{n}".encode(), "ce_type": b"uk.nhs.carehub.patient.updated.v1"}
        said |= {
            "ce_source": source,
            "ce_time": time,
            "ce_subject": b"someone",
            "content-type": b"application/fhir+json",
        }
        return EVENTS.name, b'{"resourceType": "Patient", "id": "someone%d"}' % n, list(said.items())

    lies = [
        event(b"yesterday", b"urn:ods:RXX", 1),
        event(b"2026-11-02T09:00:00+00:00", b"urn:ods:\xffRXX", 2),  # (live applied it, replay skipped it)
        (EVENTS.name, csv, [("content-type", b"application/json")]),
        (EVENTS.name, b"\xff\xfe\x00 not text", [("content-type", b"text/plain")]),
        (
            DEAD_LETTER.name,
            csv + b"9990000018,LA123\r\n",
            [
                ("content-type", b"application/json"),
                ("ce_time", b"yesterday"),
                ("ce_source", b"urn:ods:\xffLA\x00123"),
                (OUTCOME_HEADER, b"{not json"),
            ],
        ),
    ]
    async with running(hub_settings(tmp_path, "")) as run:
        await raw_records_then_an_adt(run.bootstrap, run.mllp_port, lies)
        deadline = time.perf_counter() + 30
        while time.perf_counter() < deadline and not (
            len(run.services.dead_letters.recent(10)) == len(lies) and run.services.reader.search("Patient", None)
        ):
            await asyncio.sleep(0.1)
        kept = {bytes(k["payload"]): k for k in run.services.dead_letters.recent(10)}
        assert set(kept) == {value for _, value, _ in lies}, "a dead letter was lost, or the consumer stalled"
        assert [p["id"] for p in run.services.reader.search("Patient", None)] != [], (
            "the ADT after them was not applied"
        )
        assert not [p for p in run.services.reader.search("Patient", None) if p["id"].startswith("someone")]
        unreadable = kept[lies[-1][1]]
        assert "not a JSON object: {not json" in unreadable["reason"]["issue"][0]["diagnostics"]
        assert unreadable["source"] == "urn:ods:\ufffdLA\ufffd123"


async def test_unparseable_frame_gets_a_well_formed_AR(tmp_path: Path) -> None:
    settings = hub_settings(tmp_path, "")
    async with running(settings, http=False) as run:
        client = await MllpClient.connect("127.0.0.1", run.mllp_port or 0)
        ack = await client.send(b"\x00\xffthis is not HL7 at all")
        await client.close()
        assert ack.startswith(b"MSH|^~\\&|")
        assert msa(ack)[1] == "AR"
        assert err(ack)


@pytest.mark.postgres
async def test_the_record_lives_in_postgresql_when_carehub_database_url_names_it(
    tmp_path: Path, postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CAREHUB_DATABASE_URL", postgres_url)
    on_a_server(monkeypatch)
    settings = Settings(
        data_dir=tmp_path,
        kafka=KafkaSettings(group_id=f"t{uuid.uuid4().hex[:8]}-record"),
        mllp=MllpSettings(port=0),
        http=HttpSettings(port=0),
    )
    assert settings.database() == postgres_url
    async with running(settings, http=False) as run:
        client = await MllpClient.connect("127.0.0.1", run.mllp_port or 0)
        for n, trigger in enumerate(["A01", "A03"]):
            ack = await client.send(an_adt(trigger=trigger, control_id=f"PG{n}", visit="V5"))
            assert msa(ack)[1] == "AA"
        await client.close()
        assert await run.caught_up(2, timeout=60)
    import sqlalchemy as sa

    engine = sa.create_engine(postgres_url)
    with engine.connect() as conn:
        statuses = (
            conn.execute(sa.text("select content->>'status' from record_resource where resource_type = 'Encounter'"))
            .scalars()
            .all()
        )
        processed = conn.execute(sa.text("select count(*) from processed_event where consumer = 'record'")).scalar_one()
    engine.dispose()
    assert statuses == ["finished"]
    assert processed == 2
    assert not (tmp_path / "carehub.db").exists()
