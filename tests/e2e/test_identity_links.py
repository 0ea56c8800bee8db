"""I tell my story once: a person registered in ED by their hospital number alone, then traced on PDS
(an A08 with the verified NHS number and the same hospital number), is one person in the record and in
the rules engine, whichever of the two messages the hub applies first. HL7 in over MLLP to a running hub
(embedded broker, real consumers); the GP's referral under the NHS number opens the person's tasks, and
the discharge the ward still sends under the hospital number alone is theirs. A replay of the log
rebuilds the same record, the link read from the log, not found again."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from adapters.hl7v2.transport import MllpClient
from hub.bootstrap import build, running
from hub.core.identity import person_key
from hub.core.ports import RecordEvent
from hub.replay import replay
from hub.store.database import open_engine
from hub.store.hashing import record_hash
from schemas.events.patient import PATIENT_MERGED
from tests import locality_month as month
from tests.builders import an_adt
from tests.e2e.test_coordination import settings_for, until
from tests.kafka_log import header, produce, read_all

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(120)]


def referred_by_gp(who: str, key: str) -> RecordEvent:
    """The locality month's GP referral of `who` (a practice's, under their NHS number) as the hub keys it."""
    event = month.referral(who, month.at(2, 9), "gp")
    payload = orjson.loads(orjson.dumps(event.payload).replace(month.PEOPLE[who].encode(), key.encode()))
    return RecordEvent(event.id, event.type, event.source, event.time, key, payload)


def adt(trigger: str, mrn: str, control_id: str, event_time: str, nhs_number: str | None = None) -> bytes:
    return an_adt(
        trigger=trigger, nhs_number=nhs_number, mrn=mrn, control_id=control_id, event_time=event_time,
        visit=f"V{mrn}", admit="202611030930", discharge="202611041100",
    )  # fmt: skip


def tasks(services: Any, key: str) -> set[str]:
    return {t["code"]["coding"][0]["code"] for t in services.reader.search("Task", key)}


async def test_an_ed_registration_and_its_traced_nhs_number_are_one_person_in_either_order(tmp_path: Path) -> None:
    settings = settings_for(tmp_path / "hub")
    services = build(settings)
    secret = services.secrets.key
    people = {who: month.NHS_NUMBERS[who] for who in ("P1", "P2")}  # P1: ED first; P2: the trace first
    nhs_key = {who: person_key(secret, nhs, None) for who, nhs in people.items()}
    mrn_key = {who: person_key(secret, None, ("RXX", f"M{who}")) for who in people}

    def linked(who: str) -> bool:
        held = services.reader.read("Patient", mrn_key[who]) or {}
        return services.reader.filed_under([mrn_key[who]]) == {mrn_key[who]: nhs_key[who]} and "link" in held

    async with running(settings, services=services, http=False) as run:
        await produce(run.bootstrap, [(referred_by_gp(who, nhs_key[who]), None) for who in people])
        await until(lambda: all(tasks(services, nhs_key[w]) for w in people), 60, "the referrals' tasks")
        client = await MllpClient.connect("127.0.0.1", run.mllp_port or 0)
        try:
            ed, trace = adt("A01", "MP2", "E2", "202611030930"), adt("A08", "MP2", "T2", "202611031200", people["P2"])
            firsts = [adt("A01", "MP1", "E1", "202611030930"), trace]  # each applied before the other comes
            for raw in firsts:
                assert b"MSA|AA" in await client.send(raw)
            await until(lambda: services.reader.read("Patient", mrn_key["P1"]) is not None, 60, "P1's ED admission")
            traced = services.reader.patients_by_identifier
            await until(lambda: traced("https://fhir.nhs.uk/Id/MRN/RXX", "MP2"), 60, "P2's trace")
            for raw in (adt("A08", "MP1", "T1", "202611031200", people["P1"]), ed):
                assert b"MSA|AA" in await client.send(raw)
            await until(lambda: all(linked(w) for w in people), 60, "each hospital number linked to the NHS number")
            for who in people:  # the ward's discharge, still by the hospital number alone
                assert b"MSA|AA" in await client.send(adt("A03", f"M{who}", f"D{who}", "202611041105"))
        finally:
            await client.close()

        def discharge_follow_ups() -> bool:
            return all("discharge-follow-up" in tasks(services, nhs_key[w]) for w in people)

        await until(discharge_follow_ups, 60, "a discharge follow-up for each person under their NHS number")
        for who in people:
            assert services.coordination.state(mrn_key[who]) == {"merged_into": nhs_key[who]}
            assert services.reader.search("Task", mrn_key[who]) == []
            [stay] = services.reader.search("Encounter", nhs_key[who])
            assert stay["subject"] == {"reference": f"Patient/{nhs_key[who]}"} and stay["status"] == "finished"
            assert services.reader.search("Encounter", mrn_key[who]) == []
            assert {p["id"] for p in services.reader.search("Patient", nhs_key[who])} == {nhs_key[who], mrn_key[who]}

        log = await read_all(run.bootstrap)
        links = [
            (header(r, "ce_subject"), header(r, "ce_id")) for r in log if header(r, "ce_type") == PATIENT_MERGED.type
        ]
        assert sorted({s for s, _ in links}) == sorted(nhs_key.values())
        assert len({i for _, i in links}) == 2  # one link a person (published again, the same id)
        rebuilt = open_engine(f"sqlite:///{tmp_path / 'replayed.db'}")
        await replay(run.bootstrap, rebuilt, workers=1)
        assert record_hash(rebuilt) == record_hash(services.engine)
        rebuilt.dispose()
        assert [header(r, "ce_id") for r in await read_all(run.bootstrap)] == [header(r, "ce_id") for r in log]
