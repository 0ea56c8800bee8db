"""GET /metrics' text: label values escaped as the Prometheus text format (0.0.4) says, the number of
sender labels capped, and what the MLLP intake tells it (every ACK's code, by MSH-4)."""

from __future__ import annotations

import asyncio
import logging
import re
import time
from datetime import UTC, datetime

import pytest

from adapters.hl7v2.service import HospitalIntake
from adapters.hl7v2.transport import RefusedFrame
from hub.api.metrics import Metrics, escape
from tests.builders import an_adt
from tests.fakes import RecordingBroker

NOW = datetime(2026, 12, 7, 18, 30, tzinfo=UTC)
# one sample line of the text format: name, optional {label="value",...}, a number
SAMPLE = re.compile(r'^[a-z_]+(\{[a-z]+="(?:[^"\\\n]|\\\\|\\"|\\n)*"(?:,[a-z]+="(?:[^"\\\n]|\\\\|\\"|\\n)*")*\})? \S+$')


def samples(text: str) -> dict[str, str]:
    return {line.rsplit(" ", 1)[0]: line.rsplit(" ", 1)[1] for line in text.splitlines() if not line.startswith("#")}


def test_backslash_quote_and_line_feed_in_a_label_value_are_escaped() -> None:
    assert escape('a\\b"c\nd') == 'a\\\\b\\"c\\nd'
    assert escape("RXX") == "RXX"


async def test_a_sender_with_quotes_and_line_feeds_cannot_break_the_exposition() -> None:
    metrics = Metrics(clock=lambda: 1_000.5)
    metrics.record('R"X\\X\n} 99\ncarehub_up 0', ["AE"])
    text = await metrics.exposition()
    assert text.endswith("\n")
    assert all(SAMPLE.match(line) for line in text.splitlines() if not line.startswith("#")), text
    assert samples(text)['carehub_mllp_acks_total{sender="R\\"X\\\\X\\n} 99\\nCAREHUB_UP 0",ack="AE"}'] == "1"
    assert samples(text)["carehub_up"] == "1"


async def test_senders_past_the_cap_are_counted_as_other_and_known_ones_still_as_themselves() -> None:
    metrics = Metrics(clock=lambda: 1_000.0, max_senders=3)
    metrics.record("", ["AR"])  # (no MSH-4 the hub could read: unknown, which takes no sender's place)
    for sender in ["RXX", "RCB", "RYJ", "R01", "R02", "RXX", "R01"]:
        metrics.record(sender, ["AA"])
    metrics.record("R" * 65, ["AR"])  # (longer than any ODS code: never a label of its own)
    said = samples(await metrics.exposition())
    counts = {k: v for k, v in said.items() if k.startswith("carehub_mllp_acks_total")}
    assert counts == {
        'carehub_mllp_acks_total{sender="RCB",ack="AA"}': "1",
        'carehub_mllp_acks_total{sender="RXX",ack="AA"}': "2",
        'carehub_mllp_acks_total{sender="RYJ",ack="AA"}': "1",
        'carehub_mllp_acks_total{sender="other",ack="AA"}': "3",
        'carehub_mllp_acks_total{sender="other",ack="AR"}': "1",
        'carehub_mllp_acks_total{sender="unknown",ack="AR"}': "1",
    }
    lasts = [k for k in said if k.startswith("carehub_mllp_last_message_timestamp_seconds")]
    assert len(lasts) == 5  # RCB RXX RYJ other unknown


async def test_twenty_thousand_invented_senders_hold_no_more_labels_than_the_cap() -> None:
    metrics = Metrics(max_senders=1_000)
    for n in range(20_000):
        metrics.record(f"X{n}", ["AA"])
    said = samples(await metrics.exposition())
    assert sum(k.startswith("carehub_mllp_last_message_timestamp_seconds") for k in said) == 1_001
    assert said['carehub_mllp_acks_total{sender="other",ack="AA"}'] == "19000"


async def test_the_last_message_gauge_is_when_each_sender_was_last_answered() -> None:
    now = [100.0]
    metrics = Metrics(clock=lambda: now[0])
    metrics.record("RXX", ["AA"])
    now[0] = 250.25
    metrics.record("RCB", ["AE"])
    now[0] = 300.0
    metrics.record("RCB", [])  # (enhanced mode, MSH-15/16 NE: no ACK sent, the feed is still heard)
    said = samples(await metrics.exposition())
    assert said['carehub_mllp_last_message_timestamp_seconds{sender="RXX"}'] == "100"
    assert said['carehub_mllp_last_message_timestamp_seconds{sender="RCB"}'] == "300"
    assert said['carehub_mllp_acks_total{sender="RCB",ack="AE"}'] == "1"


async def test_dead_letters_are_read_when_scraped_and_left_out_when_the_store_does_not_answer() -> None:
    counted = [(3, 7)]
    metrics = Metrics(lambda: counted[0])
    said = samples(await metrics.exposition())
    assert (said["carehub_dead_letters_outstanding"], said["carehub_dead_letters_resolved"]) == ("3", "7")
    assert said["carehub_dead_letter_store_up"] == "1"
    counted[0] = (0, 10)
    assert samples(await metrics.exposition())["carehub_dead_letters_outstanding"] == "0"

    def hung() -> tuple[int, int]:
        time.sleep(0.5)
        return (1, 1)

    slow = Metrics(hung, timeout=0.05)
    said = samples(await slow.exposition())
    assert said["carehub_dead_letter_store_up"] == "0"
    assert "carehub_dead_letters_outstanding" not in said
    await asyncio.sleep(0.6)  # (the read on its thread finishes)


async def test_the_intake_tells_every_ack_it_sends_by_msh_4() -> None:
    told: list[tuple[str, list[str]]] = []
    hub = HospitalIntake(
        RecordingBroker(),  # type: ignore[arg-type]
        key_secret=b"metrics",
        clock=lambda: NOW,
        enhanced_ack_senders=("RCB",),
        on_answered=lambda sender, codes: told.append((sender, list(codes))),
    )
    await hub.receive(an_adt(sender="RXX", control_id="G1"), "mllp:test")
    await hub.receive(an_adt(sender="RXX", control_id="B1", nhs_number="9434765910", mrn=None), "mllp:test")
    await hub.receive(an_adt(sender="RCB", control_id="E1"), "mllp:test")  # (enhanced, MSH-15 AL: CA)
    await hub.receive(b"not hl7 at all", "mllp:test")
    head = an_adt(sender="RYJ")[:60]
    await hub.refuse(RefusedFrame("too big", head, 10_000, "mllp:test", oversize=True, ended=True, digest="0" * 64))
    assert told == [("RXX", ["AA"]), ("RXX", ["AE"]), ("RCB", ["CA"]), ("", ["AR"]), ("RYJ", ["AR"])]


async def test_a_sender_is_one_series_in_any_case_and_the_hubs_own_buckets_are_not_a_senders(
    caplog: pytest.LogCaptureFixture,
) -> None:
    metrics = Metrics(clock=lambda: 1_000.0, max_senders=2)
    for sender in ["rcb", "RCB", " Rcb ", "other", "UNKNOWN", "RXX"]:
        metrics.record(sender, ["AA"])
    with caplog.at_level(logging.WARNING, logger="hub.api.metrics"):
        metrics.record("RYJ", ["AA"])  # (past the cap of 2: other, said once)
        metrics.record("R01", ["AA"])
    said = samples(await metrics.exposition())
    counts = {k: v for k, v in said.items() if k.startswith("carehub_mllp_acks_total")}
    assert counts == {
        'carehub_mllp_acks_total{sender="RCB",ack="AA"}': "3",
        'carehub_mllp_acks_total{sender="RXX",ack="AA"}': "1",
        'carehub_mllp_acks_total{sender="other",ack="AA"}': "4",
    }
    assert [r.getMessage().count('sender="other"') for r in caplog.records] == [1]
