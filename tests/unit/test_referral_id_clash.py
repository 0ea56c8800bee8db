"""A referral_id its referrer already used for another person: moved when it is a correction of the NHS
number (the same date of birth), refused naming the row and the field when it is likely a stranger."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson
import pytest

from adapters.referrals.rows import Format
from adapters.referrals.service import ACCEPTED, REJECTED, ReferralIntake
from hub.core.identity import person_key
from hub.core.ports import Json, RecordEvent
from hub.core.record import apply_events
from hub.store.memory import MemoryRecordStore
from schemas.envelope import Envelope
from schemas.events.rejected import OUTCOME_HEADER
from schemas.topics import DEAD_LETTER, EVENTS
from tests.unit.test_referral_adapters import SECRET, FakeBroker

NOW = datetime(2026, 12, 7, 12, tzinfo=UTC)
FIRST, SECOND, THIRD = "9434765919", "9990000018", "9993103411"
REFERRAL = {
    "referral_id": "AC-5002",
    "nhs_number": FIRST,
    "birth_date": "1942-02-20",
    "gp_practice_ods": "Y90001",
    "referred_on": "2026-12-03",
    "referrer": "VCS001",
    "addressed_to": "Y0PIC",
    "needs": ["financial-support"],
}
ASC = (
    "referral_id,nhs_number,birth_date,gp_practice_ods,referred_on,referrer,addressed_to,reason\n"
    "WCC-2026-1004,{nhs},1941-06-30,Y90002,2026-12-04,E10000023,Y0PIC,Self-neglect concerns\n"
)


class RecordingBroker(FakeBroker):
    """Kafka and the record consumer in one: each event published is applied to a memory record."""

    def __init__(self) -> None:
        super().__init__()
        self.record = MemoryRecordStore()

    async def publish(self, value: bytes, topic: str, *, key: bytes, headers: dict[str, str]) -> None:
        await super().publish(value, topic, key=key, headers=headers)
        if topic == EVENTS.name:
            e = Envelope.from_kafka(value, headers)
            event = RecordEvent(e.id, e.type, e.source, e.time, e.subject, orjson.loads(e.data))
            with self.record.unit_of_work() as uow:
                apply_events(uow, [event])
                uow.commit()


def intake(broker: RecordingBroker) -> ReferralIntake:
    return ReferralIntake(broker, key_secret=SECRET, clock=lambda: NOW, record=broker.record.reader())  # type: ignore[arg-type]


def json_of(*docs: dict[str, Any]) -> bytes:
    return orjson.dumps(list(docs))


def holder(broker: RecordingBroker, referral_id: str = "AC-5002") -> str:
    """The person the referral is filed under in the record."""
    (request,) = [
        r
        for r in broker.record.reader().search("ServiceRequest", None)
        if r.get("identifier", [{}])[0].get("value") == referral_id
    ]
    return str(request["subject"]["reference"]).removeprefix("Patient/")


def key(nhs: str) -> str:
    return person_key(SECRET, nhs, None)


async def sent_first(broker: RecordingBroker, **changes: Any) -> None:
    (first,) = await intake(broker).ingest(json_of(REFERRAL | changes), "file:first.json", Format.VCSE_JSON)
    assert first.status == ACCEPTED
    assert holder(broker) == key(FIRST)


@pytest.mark.parametrize(
    ("changes", "says"),
    [
        ({}, "a correction of the NHS number must give the person's birth_date"),
        ({"birth_date": "1950-01-01"}, "their date of birth differs from birth_date here"),
    ],
)
async def test_a_referral_id_used_again_for_another_person_is_refused_naming_the_row_and_field(
    changes: dict[str, Any], says: str
) -> None:
    broker = RecordingBroker()
    await sent_first(broker)
    again = {k: v for k, v in REFERRAL.items() if k != "birth_date"} | {"nhs_number": SECOND} | changes
    (outcome,) = await intake(broker).ingest(json_of(again), "file:reused.json", Format.VCSE_JSON)

    assert outcome.status == REJECTED and outcome.dead_lettered
    assert outcome.reason is not None
    assert outcome.reason.startswith(
        "row 1, field referral_id: 'AC-5002' is already used by VCS001 for a different person (another NHS number)"
    )
    assert says in outcome.reason and "the first person's referral stays as it was" in outcome.reason
    assert "1942" not in outcome.reason and FIRST not in outcome.reason  # nothing of the first person told
    assert holder(broker) == key(FIRST)
    assert not broker.record.reader().search("ServiceRequest", key(SECOND))
    (_, kept, _, headers) = broker.on(DEAD_LETTER.name)[-1]
    assert orjson.loads(kept)["nhs_number"] == SECOND
    (issue,) = orjson.loads(headers[OUTCOME_HEADER])["issue"]
    assert issue["expression"] == ["row 1", "referral_id"]


async def test_a_correction_of_the_nhs_number_with_the_same_birth_date_moves_the_referral() -> None:
    broker = RecordingBroker()
    await sent_first(broker)
    (outcome,) = await intake(broker).ingest(
        json_of(REFERRAL | {"nhs_number": SECOND}), "file:corrected.json", Format.VCSE_JSON
    )
    assert outcome.status == ACCEPTED
    assert holder(broker) == key(SECOND)


async def test_an_adult_social_care_row_corrected_with_its_referral_id_still_moves_the_referral() -> None:
    broker = RecordingBroker()
    (wrong,) = await intake(broker).ingest(ASC.format(nhs=FIRST).encode(), "file:asc-03.csv")
    (right,) = await intake(broker).ingest(ASC.format(nhs=SECOND).encode(), "file:asc-04.csv")
    assert (wrong.status, right.status) == (ACCEPTED, ACCEPTED)
    assert holder(broker, "WCC-2026-1004") == key(SECOND)


async def test_without_a_birth_date_held_for_the_first_person_a_move_cannot_be_told_from_a_clash() -> None:
    broker = RecordingBroker()
    await sent_first(broker, birth_date=None)
    (outcome,) = await intake(broker).ingest(
        json_of(REFERRAL | {"nhs_number": SECOND}), "file:corrected.json", Format.VCSE_JSON
    )
    assert outcome.status == REJECTED
    assert outcome.reason and "the hub holds no date of birth for the person it was first sent for" in outcome.reason
    assert holder(broker) == key(FIRST)


async def test_a_move_to_an_nhs_number_the_hub_holds_with_another_birth_date_is_refused_on_birth_date() -> None:
    broker = RecordingBroker()
    await sent_first(broker)
    other = REFERRAL | {"referral_id": "AC-9", "nhs_number": SECOND, "birth_date": "1930-05-05"}
    (known,) = await intake(broker).ingest(json_of(other), "file:other.json", Format.VCSE_JSON)
    assert known.status == ACCEPTED
    (outcome,) = await intake(broker).ingest(
        json_of(REFERRAL | {"nhs_number": SECOND}), "file:corrected.json", Format.VCSE_JSON
    )
    assert outcome.status == REJECTED
    assert outcome.reason and outcome.reason.startswith("row 1, field birth_date: ")
    assert "the hub holds another date of birth for the NHS number given" in outcome.reason
    assert holder(broker) == key(FIRST)


async def test_two_rows_of_one_file_using_one_referral_id_for_two_people_refuse_the_second() -> None:
    broker = FakeBroker()  # (the record has applied neither: the intake remembers what it sent)
    same = ReferralIntake(broker, key_secret=SECRET, clock=lambda: NOW)  # type: ignore[arg-type]
    outcomes = await same.ingest(
        json_of(REFERRAL, REFERRAL | {"nhs_number": THIRD, "birth_date": "1960-01-01"}), "file:f.json"
    )
    assert [(o.row, o.status) for o in outcomes] == [(1, ACCEPTED), (2, REJECTED)]
    assert outcomes[1].reason and outcomes[1].reason.startswith("row 2, field referral_id: 'AC-5002' is already used")


async def test_an_outcome_naming_another_person_than_its_referral_is_refused_and_moves_nothing() -> None:
    broker = RecordingBroker()
    await sent_first(broker)
    update = {"referral_id": "AC-5002", "referrer": "VCS001", "nhs_number": SECOND, "outcome": "contacted"}
    (outcome,) = await intake(broker).ingest(json_of(update | {"on": "2026-12-05"}), "file:o.json")
    assert outcome.status == REJECTED
    assert outcome.reason and outcome.reason.startswith(
        "row 1, field nhs_number: referral_id 'AC-5002' of VCS001 is held for a different person"
    )
    assert holder(broker) == key(FIRST)
    fine = update | {"nhs_number": FIRST, "on": "2026-12-05"}
    (same,) = await intake(broker).ingest(json_of(fine), "file:o2.json")
    assert same.status == ACCEPTED


async def test_the_same_person_sent_again_with_other_content_is_a_correction_as_before() -> None:
    broker = RecordingBroker()
    await sent_first(broker)
    (outcome,) = await intake(broker).ingest(
        json_of({k: v for k, v in REFERRAL.items() if k != "birth_date"} | {"needs": ["carer-support"]}),
        "file:again.json",
        Format.VCSE_JSON,
    )
    assert outcome.status == ACCEPTED
    request: Json = broker.record.reader().search("ServiceRequest", key(FIRST))[0]
    assert request["reasonCode"] == [{"text": "Carer support"}]
