"""The contracts in schemas/: envelope binary mode, the topic catalogue, the event registry."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from schemas.envelope import Envelope, EnvelopeError, header_value
from schemas.registry import REGISTRY, lookup
from schemas.topics import CATALOGUE, EVENTS


def an_envelope(**changes: object) -> Envelope:
    fields: dict[str, object] = {
        "id": "e1",
        "source": "urn:ods:RXX",
        "type": "uk.nhs.carehub.encounter.discharged.v1",
        "time": datetime(2026, 11, 1, 10, 30, tzinfo=UTC),
        "subject": "k" * 32,
        "data": b'{"resourceType":"Bundle"}',
    }
    return Envelope(**(fields | changes))  # type: ignore[arg-type]


def test_envelope_round_trips_through_kafka_binary_mode_headers() -> None:
    envelope = an_envelope()
    headers = [(k, v.encode()) for k, v in envelope.kafka_headers().items()]
    back = Envelope.from_kafka(envelope.data, headers)
    assert back == envelope
    assert back.data == envelope.data
    assert header_value(headers, "content-type") == "application/fhir+json"
    assert header_value(headers, "ce_missing") is None


def test_envelope_from_a_dict_of_headers() -> None:
    envelope = an_envelope()
    assert Envelope.from_kafka(envelope.data, envelope.kafka_headers()).id == "e1"


def test_record_without_cloudevents_headers_names_what_is_missing() -> None:
    with pytest.raises(EnvelopeError, match=r"ce_id|id, "):
        Envelope.from_kafka(b"{}", [("ce_specversion", b"1.0")])


@pytest.mark.parametrize("bad", ["encounter.discharged", "uk.nhs.carehub.Encounter.x.v1", "uk.nhs.carehub.a.b"])
def test_event_types_must_be_versioned_carehub_names(bad: str) -> None:
    with pytest.raises(ValueError, match="type"):
        an_envelope(type=bad)


def test_event_time_must_carry_an_offset() -> None:
    with pytest.raises(ValueError, match="timezone"):
        an_envelope(time=datetime(2026, 11, 1, 10, 30))


def test_every_registered_type_is_a_valid_envelope_type() -> None:
    for type_ in REGISTRY:
        assert an_envelope(type=type_).type == type_
        assert lookup(type_) is REGISTRY[type_]
    assert lookup("uk.nhs.carehub.unknown.thing.v1") is None


def test_topic_catalogue_names_are_unique_and_the_log_is_kept_forever() -> None:
    names = [t.name for t in CATALOGUE]
    assert len(names) == len(set(names))
    assert EVENTS.configs["retention.ms"] == "-1"
    assert all(t.partitions >= 1 for t in CATALOGUE)
