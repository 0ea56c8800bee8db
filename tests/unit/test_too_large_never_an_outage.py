"""Input too large for Kafka is refused for good, never answered as an outage: a message's events are
measured before any is published (all or none), a head that cannot be kept either is refused AR/CR (not
CE, "send it again"), the API's publisher says too-long, and the dead-letter store knows a head by the
whole input's digest."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
from aiokafka.errors import MessageSizeTooLargeError

from adapters.hl7v2.service import HospitalIntake
from adapters.publishing import HEAD_BYTES
from adapters.referrals.service import REJECTED, ReferralIntake
from hub.bootstrap import _publisher
from hub.core.errors import InfrastructureError, InvalidMessageError, MessageTooLargeError, kept_in_part
from hub.store.memory import MemoryDeadLetters
from schemas.envelope import Envelope
from schemas.events.coordination import REFERRAL_RECEIVED
from schemas.events.rejected import OUTCOME_HEADER
from schemas.topics import DEAD_LETTER, EVENTS
from tests.builders import an_adt
from tests.unit.test_referral_adapters import SECRET, FakeBroker

NOW = datetime(2026, 12, 7, 12, tzinfo=UTC)


class LimitedBroker(FakeBroker):
    """Kafka taking records up to `limit` bytes (the producer's max_request_size, or a topic's
    max.message.bytes set lower)."""

    def __init__(self, limit: int = 1_048_576) -> None:
        super().__init__()
        self.limit = limit

    async def publish(self, value: bytes, topic: str, *, key: bytes, headers: dict[str, str]) -> None:
        if len(value) > self.limit:
            raise MessageSizeTooLargeError(f"{len(value)} > {self.limit}")
        await super().publish(value, topic, key=key, headers=headers)


def hospital(broker: FakeBroker, *enhanced: str) -> HospitalIntake:
    return HospitalIntake(broker, key_secret=SECRET, clock=lambda: NOW, enhanced_ack_senders=enhanced)  # type: ignore[arg-type]


def two_merges(family: str) -> bytes:
    segments = [
        "MSH|^~\\&|PAS|RXX|HUB|HUB|202612010900||ADT^A40^ADT_A39|MERGE1|P|2.4",
        "EVN|A40|202612010900",
        "PID|||9434765919^^^NHS^NH~M1^^^RXX^MR||SMITH^JANE",
        "MRG|M2^^^RXX^MR",
        f"PID|||9990000018^^^NHS^NH~M3^^^RXX^MR||{family}^JOHN",
        "MRG|M4^^^RXX^MR",
    ]
    return ("\r".join(segments) + "\r").encode()


async def test_a_message_whose_second_event_is_too_large_publishes_none_of_its_events() -> None:
    broker = LimitedBroker()
    (outcome,) = await hospital(broker).ingest(two_merges("X" * 1_200_000), "file:merge.hl7")
    assert (outcome.code, outcome.events, outcome.dead_lettered) == ("AE", 0, True)
    assert outcome.reason and outcome.reason.startswith("the message is too large for Kafka")
    assert broker.on(EVENTS.name) == []  # not the first merge either


async def test_a_message_whose_events_fit_publishes_them_all() -> None:
    broker = LimitedBroker()
    (outcome,) = await hospital(broker).ingest(two_merges("SMITH"), "file:merge.hl7")
    assert (outcome.code, outcome.events) == ("AA", 2)
    assert len(broker.on(EVENTS.name)) == 2


@pytest.mark.parametrize(("enhanced", "answer"), [((), b"MSA|AE|BIG1|"), (("RXX",), b"MSA|CR|BIG1|")])
async def test_a_message_whose_head_cannot_be_kept_either_is_refused_for_good_not_as_an_outage(
    enhanced: tuple[str, ...], answer: bytes
) -> None:
    broker = LimitedBroker(limit=20_000)  # (a topic whose max.message.bytes is below HEAD_BYTES)
    message = an_adt(control_id="BIG1", family="X" * 30_000).replace(b"|2.4", b"|2.4|||AL|NE", 1)
    (reply,) = await hospital(broker, *enhanced).receive(message, "mllp:test")
    assert answer in reply and b"MSA|CE" not in reply
    assert b"not kept in the dead-letter store" in reply and b"cannot succeed" in reply
    assert broker.sent == []


async def test_a_row_whose_head_cannot_be_kept_is_rejected_not_reported_not_sent() -> None:
    broker = LimitedBroker(limit=100)
    raw = b"referral_id,nhs_number,gp_practice_ods,referred_on,referrer,addressed_to,reason\n" + b"x" * 300
    intake = ReferralIntake(broker, key_secret=SECRET, clock=lambda: NOW)  # type: ignore[arg-type]
    outcomes = await intake.ingest(raw, "file:a.csv")
    assert [(o.status, o.dead_lettered) for o in outcomes] == [(REJECTED, False)]
    assert outcomes[0].reason and "not kept in the dead-letter store" in outcomes[0].reason


def test_too_large_is_invalid_content_never_infrastructure() -> None:
    error = MessageTooLargeError("too large")
    assert isinstance(error, InvalidMessageError) and not isinstance(error, InfrastructureError)
    assert error.code == "too-long"


class _Refusing:
    async def publish(self, value: bytes, topic: str, *, key: bytes, headers: dict[str, str]) -> None:
        raise MessageSizeTooLargeError("1,100,000 bytes")


async def test_the_api_publisher_says_too_large_not_send_it_again() -> None:
    publish = _publisher(_Refusing(), 1.0)
    envelope = Envelope(
        id="e-1", source="urn:ods:Y00001", type=REFERRAL_RECEIVED.type, time=NOW, subject="k", data=b"x" * 10
    )
    with pytest.raises(MessageTooLargeError) as refused:
        await publish(envelope)
    assert refused.value.code == "too-long" and "send it again" not in refused.value.diagnostics
    assert "cannot succeed" in refused.value.diagnostics


async def test_a_file_kept_as_its_head_is_kept_once_and_known_by_the_whole_files_digest() -> None:
    raw = b"nhs_number,practice_ods\n" + b"9434765919,Y90002\n" * 80_000 + b"caf\xe9\n"
    store = MemoryDeadLetters()
    outcomes: list[Any] = []
    for minute in range(2):
        broker = LimitedBroker()
        intake = ReferralIntake(broker, key_secret=SECRET, clock=lambda: NOW, kept=store)  # type: ignore[arg-type]
        outcomes += await intake.ingest(raw, "file:reg.csv")
        for _, value, _, headers in broker.on(DEAD_LETTER.name):  # (as the dead-letter consumer keeps them)
            reason = orjson.loads(headers[OUTCOME_HEADER])
            assert kept_in_part(reason) == (len(raw), hashlib.sha256(raw).hexdigest())
            assert value == raw[:HEAD_BYTES]
            at = NOW.replace(minute=minute)
            store.keep(received_at=at, source=headers["ce_source"], origin="file:reg.csv", reason=reason, payload=value)
    assert [(o.dead_lettered, o.already_kept) for o in outcomes] == [(True, False), (False, True)]
    assert len(store.kept) == 1
