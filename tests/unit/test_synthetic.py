"""The synthetic locality: deterministic, plausible, and every non-fault message accepted by the adapter."""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from datetime import UTC, datetime, timedelta
from itertools import pairwise

import hl7
import pytest

from adapters.hl7v2.synthetic import adt_traffic, make_locality
from adapters.hl7v2.to_fhir import map_message
from hub.core.errors import InvalidMessageError, UnsupportedMessageError
from hub.core.nhs_number import is_valid

START = datetime(2026, 10, 1, tzinfo=UTC)


def trigger(message: bytes) -> str:
    return message.split(b"|")[8].split(b"^")[1].decode()


def field(message: bytes, segment: str, n: int) -> str:
    return str(hl7.parse(message.decode()).segment(segment)(n))


def test_the_locality_is_one_hospital_five_practices_and_unique_test_range_nhs_numbers() -> None:
    locality = make_locality(people=500, seed=3)
    assert locality.hospital_ods == "RZZ"
    assert [p.ods for p in locality.practices] == ["Y90001", "Y90002", "Y90003", "Y90004", "Y90005"]
    assert {p.practice for p in locality.people} == set(locality.practices)
    numbers = [p.nhs_number for p in locality.people]
    assert len(set(numbers)) == 500
    assert all(is_valid(n) and n.startswith("999") for n in numbers)
    assert len({p.mrn for p in locality.people}) == 500


def test_the_same_seed_gives_the_same_traffic_and_another_seed_does_not() -> None:
    locality = make_locality(people=100, seed=1)
    first = adt_traffic(locality, start=START, seed=7)
    assert first == adt_traffic(make_locality(people=100, seed=1), start=START, seed=7)
    assert first != adt_traffic(locality, start=START, seed=8)
    assert make_locality(people=100, seed=1) != make_locality(people=100, seed=2)


def test_a_month_for_500_people_is_two_thousand_or_so_messages_in_time_order_all_accepted() -> None:
    started = time.perf_counter()
    traffic = adt_traffic(make_locality(people=500, seed=1), start=START, days=30, seed=1)
    assert time.perf_counter() - started < 1.0
    assert 1500 <= len(traffic) <= 3000
    times = [t for t, _ in traffic]
    assert times == sorted(times)
    assert times[0] >= START and times[-1] < datetime(2026, 10, 31, tzinfo=UTC)
    kinds = Counter(trigger(m) for _, m in traffic)
    assert {"A01", "A02", "A03", "A08", "A11", "A13", "A40"} <= set(kinds)
    assert kinds["A01"] > kinds["A02"] > kinds["A08"] > kinds["A11"] + kinds["A13"] + kinds["A40"]
    control_ids = [m.split(b"|")[9] for _, m in traffic]
    assert len(set(control_ids)) == len(control_ids)
    for _, message in traffic:
        assert map_message(message, key_secret=b"x"), message


def test_messages_carry_the_itk_header_identifiers_and_uk_local_times() -> None:
    locality = make_locality(people=50, seed=6)
    nhs_numbers = {p.nhs_number for p in locality.people}
    for when, message in adt_traffic(locality, start=datetime(2026, 7, 1, 12, 0, tzinfo=UTC), seed=6):
        assert message.endswith(b"\r") and b"\n" not in message
        assert field(message, "MSH", 4) == "RZZ"
        assert field(message, "MSH", 12) == "2.4"
        assert field(message, "MSH", 18) == "UNICODE UTF-8"
        local = (when + timedelta(hours=1)).strftime("%Y%m%d%H%M")  # British Summer Time, sent without offset
        assert field(message, "EVN", 2) == field(message, "MSH", 7) == local
        nhs, mrn = field(message, "PID", 3).split("~")
        assert nhs.split("^")[0] in nhs_numbers and nhs.endswith("^^^NHS^NH")
        assert mrn.startswith("RZZ") and mrn.endswith("^^^RZZ^MR")
        assert field(message, "PID", 32) == "NSTS01"
        assert field(message, "PD1", 3).split("^")[-1].startswith("Y9")


def test_each_stay_is_admitted_first_and_discharged_after_its_admission() -> None:
    traffic = adt_traffic(make_locality(people=200, seed=2), start=START, seed=2)
    stays: dict[str, list[tuple[datetime, str, bytes]]] = defaultdict(list)
    for when, message in traffic:
        if trigger(message) != "A40":
            stays[field(message, "PV1", 19)].append((when, trigger(message), message))
    assert len(stays) > 200
    for events in stays.values():
        triggers = [t for _, t, _ in events]
        assert triggers[0] == "A01" and triggers.count("A01") == 1
        if "A11" in triggers:
            assert triggers == ["A01", "A11"]
        admitted = field(events[0][2], "PV1", 44)
        for _, kind, message in events:
            assert field(message, "PV1", 44) == admitted
            if kind == "A03":
                assert field(message, "PV1", 45) > admitted and field(message, "PV1", 36)
        for before, after in pairwise(triggers):
            assert (before, after) != ("A03", "A03")
            assert after != "A13" or before == "A03"


def test_an_a08_brings_a_new_address_and_later_messages_keep_it() -> None:
    traffic = adt_traffic(make_locality(people=200, seed=2), start=START, seed=2)
    addresses: dict[str, list[str]] = defaultdict(list)
    moved = set()
    for _, message in traffic:
        nhs = field(message, "PID", 3).split("^")[0]
        address = field(message, "PID", 11)
        if trigger(message) == "A08":
            assert address != addresses[nhs][-1]
            moved.add(nhs)
        elif addresses[nhs]:
            assert address == addresses[nhs][-1]
        addresses[nhs].append(address)
    assert moved


def test_a_merge_names_a_duplicate_mrn_of_the_same_hospital() -> None:
    traffic = adt_traffic(make_locality(people=500, seed=1), start=START, seed=1)
    merges = [m for _, m in traffic if trigger(m) == "A40"]
    assert merges
    for message in merges:
        duplicate = field(message, "MRG", 1)
        assert duplicate.endswith("^^^RZZ^MR")
        assert duplicate.split("^")[0] not in field(message, "PID", 3)
        assert len(map_message(message, key_secret=b"x")) >= 1


def test_faults_come_only_when_asked_and_each_is_refused_for_its_own_reason() -> None:
    locality = make_locality(people=300, seed=4)
    clean = adt_traffic(locality, start=START, seed=4)
    faulty = adt_traffic(locality, start=START, seed=4, include_faults=True)
    clean_messages = {c for _, c in clean}
    assert clean_messages <= {m for _, m in faulty}
    extra = [m for _, m in faulty if m not in clean_messages]
    assert 3 <= len(extra) <= len(faulty) // 50
    reasons: Counter[tuple[str, tuple[str, ...]]] = Counter()
    for message in extra:
        with pytest.raises(InvalidMessageError) as refused:
            map_message(message, key_secret=b"x")
        unsupported = isinstance(refused.value, UnsupportedMessageError)
        reasons["AR" if unsupported else "AE", refused.value.expression] += 1
    assert set(reasons) == {("AE", ("PID-3",)), ("AR", ("MSH-9.2",)), ("AE", ("PV1",))}


def test_traffic_from_different_seeds_never_shares_a_control_id_or_visit_number() -> None:
    locality = make_locality(people=50, seed=1)
    runs = [adt_traffic(locality, start=START, seed=s) for s in (1, 2)]
    ids = [{m.split(b"|")[9] for _, m in run} for run in runs]
    assert not ids[0] & ids[1]
    visits = [{field(m, "PV1", 19) for _, m in run if trigger(m) != "A40"} for run in runs]
    assert not visits[0] & visits[1]


def test_a_discharge_as_died_says_the_death_in_pid_29_and_30_and_is_the_persons_last_message() -> None:
    traffic = adt_traffic(make_locality(people=300, seed=4), start=datetime(2026, 11, 1, tzinfo=UTC), seed=4)
    mapped = [(when, e) for when, raw in traffic for e in map_message(raw, key_secret=b"synthetic")]
    died = {
        e.person_key: when
        for when, e in mapped
        for entry in e.payload["entry"]
        if entry["resource"]["resourceType"] == "Patient" and entry["resource"].get("deceasedDateTime")
    }
    assert len(died) > 5  # (about one discharge in ten)
    assert all(when <= died[e.person_key] for when, e in mapped if e.person_key in died)  # none after it
