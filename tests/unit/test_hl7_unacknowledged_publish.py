"""Kafka not acknowledging in time does not mean the message was not written: the AE says it may have
been accepted and asks for it again unchanged, which is safe because a resend is the same event."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import orjson

from adapters.hl7v2.service import HospitalIntake
from hub.core.ports import RecordEvent
from hub.core.record import ApplyResult, apply_events
from hub.store.memory import MemoryRecordStore
from schemas.envelope import Envelope
from schemas.topics import EVENTS
from tests.builders import an_adt
from tests.fakes import RecordingBroker

NOW = datetime(2026, 11, 25, 9, 30, tzinfo=UTC)


class SlowBroker(RecordingBroker):
    """Takes every record, but acknowledges only after the hub has stopped waiting (while `slow`)."""

    slow = True

    async def publish(self, value: bytes, topic: str, *, key: bytes, headers: dict[str, str]) -> None:
        await super().publish(value, topic, key=key, headers=headers)
        if self.slow:
            await asyncio.sleep(5)


def err_8(reply: bytes) -> str:
    [err] = [line.split("|") for line in reply.decode().split("\r") if line.startswith("ERR")]
    return err[8]


def on_the_log(broker: RecordingBroker) -> list[RecordEvent]:
    found = []
    for _, value, _, headers in broker.on(EVENTS.name):
        e = Envelope.from_kafka(value, headers)
        found.append(RecordEvent(e.id, e.type, e.source, e.time, e.subject, orjson.loads(value)))
    return found


async def test_a_timeout_is_answered_ae_saying_it_may_have_been_accepted_and_to_send_it_again_unchanged() -> None:
    broker = SlowBroker()
    hub = HospitalIntake(broker, key_secret=b"slow", clock=lambda: NOW, publish_timeout=0.05)  # type: ignore[arg-type]
    message = an_adt(trigger="A01", control_id="SLOW1")
    outcome, reply = await hub.accept(message, "mllp:test")
    assert outcome.code == "AE"
    said = err_8(reply)
    assert "not accepted" not in said
    assert "may have been accepted" in said and "send it again unchanged" in said
    assert len(broker.on(EVENTS.name)) == 1  # written all the same


async def test_the_resend_it_asks_for_is_the_same_event_so_the_record_applies_it_once() -> None:
    broker = SlowBroker()
    hub = HospitalIntake(broker, key_secret=b"slow", clock=lambda: NOW, publish_timeout=0.05)  # type: ignore[arg-type]
    message = an_adt(trigger="A01", control_id="SLOW2")
    await hub.accept(message, "mllp:test")
    broker.slow = False
    later = HospitalIntake(broker, key_secret=b"slow", clock=lambda: NOW.replace(minute=45))  # type: ignore[arg-type]
    again, _ = await later.accept(message.replace(b"|202611031105||ADT", b"|202611031107||ADT", 1), "mllp:test")
    assert again.code == "AA"
    first, resent = on_the_log(broker)
    assert first.id == resent.id  # from the sender, the control ID and the content (MSH-7 aside)
    store = MemoryRecordStore()
    with store.unit_of_work() as uow:
        assert apply_events(uow, [first, resent]) == ApplyResult(applied=1, duplicates=1, stale=0)
        uow.commit()
