"""The synthetic locality: deterministic, plausible, and every non-fault message accepted by the adapter."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime

import pytest

from adapters.hl7v2.synthetic import adt_traffic, make_locality
from adapters.hl7v2.to_fhir import map_message
from hub.core.errors import InvalidMessageError, UnsupportedMessageError
from hub.core.nhs_number import is_valid

START = datetime(2026, 10, 1, tzinfo=UTC)


def trigger(message: bytes) -> str:
    return message.split(b"|")[8].split(b"^")[1].decode()


def test_the_locality_is_one_hospital_five_practices_and_unique_test_range_nhs_numbers() -> None:
    locality = make_locality(people=500, seed=3)
    assert locality.hospital_ods == "RZZ"
    assert [p.ods for p in locality.practices] == ["Y90001", "Y90002", "Y90003", "Y90004", "Y90005"]
    numbers = [p.nhs_number for p in locality.people]
    assert len(set(numbers)) == 500
    assert all(is_valid(n) and n.startswith("999") for n in numbers)


def test_the_same_seed_gives_the_same_traffic_and_another_seed_does_not() -> None:
    locality = make_locality(people=100, seed=1)
    first = adt_traffic(locality, start=START, seed=7)
    assert first == adt_traffic(make_locality(people=100, seed=1), start=START, seed=7)
    assert first != adt_traffic(locality, start=START, seed=8)


def test_a_month_for_500_people_is_about_a_thousand_messages_in_time_order_all_accepted() -> None:
    traffic = adt_traffic(make_locality(people=500, seed=1), start=START, days=30, seed=1)
    assert 800 <= len(traffic) <= 3000
    times = [t for t, _ in traffic]
    assert times == sorted(times)
    kinds = Counter(trigger(m) for _, m in traffic)
    assert {"A01", "A02", "A03", "A08", "A11", "A13", "A40"} <= set(kinds)
    control_ids = [m.split(b"|")[9] for _, m in traffic]
    assert len(set(control_ids)) == len(control_ids)
    for _, message in traffic:
        assert map_message(message, key_secret=b"x"), message


def test_each_stay_is_admitted_before_it_is_discharged() -> None:
    traffic = adt_traffic(make_locality(people=200, seed=2), start=START, seed=2)
    admitted: dict[str, datetime] = {}
    for when, message in traffic:
        events = map_message(message, key_secret=b"x")
        for entry in events[0].payload["entry"]:
            resource = entry["resource"]
            if resource["resourceType"] != "Encounter":
                continue
            if trigger(message) == "A01":
                admitted[resource["id"]] = when
            elif trigger(message) == "A03":
                assert admitted[resource["id"]] < when


def test_faults_come_only_when_asked_and_each_is_refused_for_its_own_reason() -> None:
    locality = make_locality(people=300, seed=4)
    clean = adt_traffic(locality, start=START, seed=4)
    faulty = adt_traffic(locality, start=START, seed=4, include_faults=True)
    extra = [m for _, m in faulty if m not in {c for _, c in clean}]
    assert len(extra) >= 3
    reasons = Counter()
    for message in extra:
        with pytest.raises(InvalidMessageError) as refused:
            map_message(message, key_secret=b"x")
        unsupported = isinstance(refused.value, UnsupportedMessageError)
        reasons["AR" if unsupported else "AE", refused.value.expression] += 1
    assert set(reasons) == {("AE", ("PID-3",)), ("AR", ("MSH-9.2",)), ("AE", ("PV1",))}


def test_traffic_from_different_seeds_never_shares_a_control_id() -> None:
    locality = make_locality(people=50, seed=1)
    ids = [{m.split(b"|")[9] for _, m in adt_traffic(locality, start=START, seed=s)} for s in (1, 2)]
    assert not ids[0] & ids[1]
