"""A row whose event Kafka refuses as too large is rejected and dead-lettered saying so, not reported
"not sent" with a request to ingest the file again (which could never succeed)."""

from __future__ import annotations

from datetime import UTC, datetime

from aiokafka.errors import MessageSizeTooLargeError

from adapters.referrals.service import REJECTED, ReferralIntake
from schemas.topics import DEAD_LETTER, EVENTS
from tests.unit.test_referral_adapters import SECRET, FakeBroker

NOW = datetime(2026, 12, 7, 12, tzinfo=UTC)
ROW = "WCC-1,9434765919,1944-07-02,Y90002,2026-12-02,E10000023,Y0PIC,Carer strain"
HEADER = "referral_id,nhs_number,birth_date,gp_practice_ods,referred_on,referrer,addressed_to,reason"


class SmallTopicBroker(FakeBroker):
    """Kafka with a topic whose max.message.bytes is below the events this hub writes."""

    async def publish(self, value: bytes, topic: str, *, key: bytes, headers: dict[str, str]) -> None:
        if topic == EVENTS.name:
            raise MessageSizeTooLargeError()
        await super().publish(value, topic, key=key, headers=headers)


async def test_a_row_whose_event_is_too_large_is_rejected_saying_its_size_not_asked_to_be_sent_again() -> None:
    broker = SmallTopicBroker()
    intake = ReferralIntake(broker, key_secret=SECRET, clock=lambda: NOW)  # type: ignore[arg-type]
    (outcome,) = await intake.ingest(f"{HEADER}\n{ROW}\n".encode(), "file:a.csv")
    assert (outcome.status, outcome.dead_lettered) == (REJECTED, True)
    assert outcome.reason and outcome.reason.startswith("the row is too large for Kafka: ")
    assert "against a limit of 1,048,576 bytes" in outcome.reason and "in time" not in outcome.reason
    (_, kept, _, _) = broker.on(DEAD_LETTER.name)[0]
    assert kept == f"{HEADER}\n{ROW}\n".encode()
