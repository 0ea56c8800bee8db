"""A synthetic locality and its hospital's ADT traffic, for `carehub demo` and the benchmarks.

Deterministic for a seed, no I/O. Everyone is invented: NHS numbers are Modulus-11 valid numbers
from the 999 range that is never issued, names come from short built-in lists, postcodes are in
the YO (York) area. One hospital (RZZ) and five GP practices (Y90001 to Y90005).

With `include_faults`, about one message in a hundred is one a real PAS sends now and then and the
hub must refuse: an NHS number that fails Modulus 11 (AE), an ADT^A24 link (AR), a discharge
without its PV1 (AE).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

from hub.core.nhs_number import check_digit

UK = ZoneInfo("Europe/London")
HOSPITAL = "RZZ"
_FAMILY = [
    "SMITH",
    "JONES",
    "TAYLOR",
    "BROWN",
    "WILLIAMS",
    "WILSON",
    "JOHNSON",
    "DAVIES",
    "ROBINSON",
    "WRIGHT",
    "THOMPSON",
    "EVANS",
    "WALKER",
    "WHITE",
    "ROBERTS",
    "GREEN",
    "HALL",
    "WOOD",
    "JACKSON",
    "CLARKE",
    "PATEL",
    "KHAN",
    "LEWIS",
    "JAMES",
    "PHILLIPS",
    "MASON",
    "MORGAN",
    "HUGHES",
    "PRICE",
    "OBRIEN",
]
_FEMALE = [
    "MARGARET",
    "JEAN",
    "JOAN",
    "PATRICIA",
    "DOROTHY",
    "ELSIE",
    "IRENE",
    "SHEILA",
    "BARBARA",
    "BRENDA",
    "EILEEN",
    "MAUREEN",
]
_MALE = [
    "JOHN",
    "WILLIAM",
    "GEORGE",
    "DAVID",
    "PETER",
    "RONALD",
    "KENNETH",
    "BRIAN",
    "DEREK",
    "ALAN",
    "FRANK",
    "ARTHUR",
]
_STREETS = [
    "HIGH STREET",
    "CHURCH LANE",
    "STATION ROAD",
    "MILL LANE",
    "THE GREEN",
    "PARK AVENUE",
    "VICTORIA ROAD",
    "MAIN STREET",
]
_TOWNS = ("MALTON", "PICKERING", "HELMSLEY", "KIRKBYMOORSIDE", "NORTON")
_PRACTICE_NAMES = (
    "DERWENT PRACTICE",
    "PICKERING MEDICAL PRACTICE",
    "HELMSLEY SURGERY",
    "BEDALE HOUSE",
    "NORTON SURGERY",
)
_WARDS = ("WARD 1", "WARD 3", "ELDERLY CARE", "STROKE UNIT", "AMU")
_DISPOSITIONS = ("19", "19", "19", "29", "54", "65", "79")  # usual residence, temporary, care home, hospice, died


@dataclass(frozen=True)
class Practice:
    """A GP practice in the locality."""

    ods: str
    name: str


@dataclass(frozen=True)
class Person:
    """Someone registered with one of the practices."""

    nhs_number: str
    mrn: str
    family: str
    given: str
    sex: str
    birth_date: date
    address: str
    postcode: str
    practice: Practice


@dataclass(frozen=True)
class Locality:
    """One hospital, its GP practices and the people registered with them."""

    hospital_ods: str
    practices: tuple[Practice, ...]
    people: tuple[Person, ...]


def _nhs_number(rng: random.Random, taken: set[str]) -> str:
    while True:
        nine = "999" + "".join(str(rng.randrange(10)) for _ in range(6))
        digit = check_digit(nine)
        if digit is not None and (number := nine + str(digit)) not in taken:
            taken.add(number)
            return number


def make_locality(people: int = 500, practices: int = 5, seed: int = 1) -> Locality:
    """A locality of `people` older people spread over `practices` practices."""
    rng = random.Random(seed)
    surgeries = tuple(
        Practice(f"Y9{n:04d}", _PRACTICE_NAMES[(n - 1) % len(_PRACTICE_NAMES)]) for n in range(1, practices + 1)
    )
    taken: set[str] = set()
    folk = []
    for n in range(people):
        sex = rng.choice("FM")
        town = rng.choice(_TOWNS)
        folk.append(
            Person(
                nhs_number=_nhs_number(rng, taken),
                mrn=f"RZZ{100000 + n}",
                family=rng.choice(_FAMILY),
                given=rng.choice(_FEMALE if sex == "F" else _MALE),
                sex=sex,
                birth_date=date(1925, 1, 1) + timedelta(days=rng.randrange(365 * 30)),
                address=f"{rng.randrange(1, 120)} {rng.choice(_STREETS)}^^{town}",
                postcode=f"YO{rng.randrange(10, 62)} {rng.randrange(1, 9)}{rng.choice('ABDEFGHJLNPQRSTUWXYZ')}"
                f"{rng.choice('ABDEFGHJLNPQRSTUWXYZ')}",
                practice=surgeries[n % len(surgeries)],
            )
        )
    return Locality(HOSPITAL, surgeries, tuple(folk))


class _Writer:
    """Builds HL7 v2.4 ADT messages with unique control ids."""

    def __init__(self, hospital: str, seed: int) -> None:
        self.hospital = hospital
        self.prefix = f"{hospital}{seed % 100:02d}"  # traffic from different seeds never shares a control id
        self.sequence = 0

    def message(
        self,
        trigger: str,
        when: datetime,
        person: Person,
        *,
        nhs_number: str | None = None,
        mrn: str | None = None,
        pv1: str | None = None,
        extra: tuple[str, ...] = (),
        family: str | None = None,
    ) -> bytes:
        self.sequence += 1
        stamp = when.astimezone(UK).strftime("%Y%m%d%H%M")
        structure = {"A40": "ADT_A39", "A03": "ADT_A03", "A24": "ADT_A24"}.get(trigger, "ADT_A01")
        ids = f"{nhs_number or person.nhs_number}^^^NHS^NH~{mrn or person.mrn}^^^{self.hospital}^MR"
        segments = [
            f"MSH|^~\\&|PAS|{self.hospital}|CAREHUB|CAREHUB|{stamp}||ADT^{trigger}^{structure}"
            f"|{self.prefix}{self.sequence:07d}|P|2.4|||AL|NE|GBR|UNICODE UTF-8",
            f"EVN|{trigger}|{stamp}",
            f"PID|1||{ids}||{family or person.family}^{person.given}||{person.birth_date:%Y%m%d}|{person.sex}"
            f"|||{person.address}^^{person.postcode}|||||||||||||||||||||NSTS01",
            f"PD1|||{person.practice.name}^^{person.practice.ods}",
        ]
        if pv1 is not None:
            segments.append(pv1)
        segments += list(extra)
        return "\r".join(segments).encode() + b"\r"


def _pv1(visit: str, ward: str, admitted: datetime, discharged: datetime | None, disposition: str = "") -> str:
    start = admitted.astimezone(UK).strftime("%Y%m%d%H%M")
    end = discharged.astimezone(UK).strftime("%Y%m%d%H%M") if discharged else ""
    fields = ["PV1", "1", "I", f"{ward}^^", *[""] * 15, visit, *[""] * 16, disposition, *[""] * 7, start, end]
    return "|".join(fields)


def adt_traffic(
    locality: Locality, *, start: datetime, days: int = 30, seed: int = 0, include_faults: bool = False
) -> list[tuple[datetime, bytes]]:
    """A month (or `days`) of the hospital's ADT for the locality, in time order."""
    rng = random.Random(seed)
    writer = _Writer(locality.hospital_ods, seed)
    out: list[tuple[datetime, bytes]] = []
    horizon = start + timedelta(days=days)
    duplicate_mrns = 0
    for person in locality.people:
        stays = rng.choices((0, 1, 2, 3), weights=(35, 40, 18, 7))[0]
        at = start + timedelta(minutes=rng.randrange(days * 24 * 60 // 3))
        for _ in range(stays):
            if at >= horizon:
                break
            visit = f"V{writer.sequence + 1:07d}{rng.randrange(10)}"
            ward = rng.choice(_WARDS)
            out.append((at, writer.message("A01", at, person, pv1=_pv1(visit, ward, at, None))))
            if rng.random() < 0.04:  # admitted in error
                when = at + timedelta(minutes=rng.randrange(20, 180))
                out.append((when, writer.message("A11", when, person, pv1=_pv1(visit, ward, at, None))))
                at = when + timedelta(days=rng.randrange(2, 9))
                continue
            now = at
            if rng.random() < 0.3:
                now += timedelta(hours=rng.randrange(4, 48))
                ward = rng.choice(_WARDS)
                out.append((now, writer.message("A02", now, person, pv1=_pv1(visit, ward, at, None))))
            if rng.random() < 0.2:
                now += timedelta(hours=rng.randrange(1, 24))
                out.append((now, writer.message("A08", now, person, pv1=_pv1(visit, ward, at, None))))
            discharged = now + timedelta(hours=rng.randrange(6, 24 * 9))
            if discharged >= horizon:
                break
            disposition = rng.choice(_DISPOSITIONS)
            pv1 = _pv1(visit, ward, at, discharged, disposition)
            out.append((discharged, writer.message("A03", discharged, person, pv1=pv1)))
            if rng.random() < 0.03:  # discharged in error, then discharged for real
                undone = discharged + timedelta(minutes=rng.randrange(10, 120))
                out.append((undone, writer.message("A13", undone, person, pv1=_pv1(visit, ward, at, None))))
                discharged = undone + timedelta(hours=rng.randrange(12, 72))
                if discharged < horizon:
                    pv1 = _pv1(visit, ward, at, discharged, disposition)
                    out.append((discharged, writer.message("A03", discharged, person, pv1=pv1)))
            at = discharged + timedelta(days=rng.randrange(3, 20))
        if rng.random() < 0.01:  # a duplicate registration found and merged
            duplicate_mrns += 1
            old_mrn = f"DUP{duplicate_mrns:05d}"
            when = start + timedelta(minutes=rng.randrange(days * 24 * 60))
            merge = writer.message("A40", when, person, extra=(f"MRG|{old_mrn}^^^{locality.hospital_ods}^MR",))
            out.append((when, merge))
    if include_faults:
        out += _faults(locality, writer, rng, start, days, count=max(3, len(out) // 100))
    out.sort(key=lambda pair: pair[0])
    return out


def _faults(
    locality: Locality, writer: _Writer, rng: random.Random, start: datetime, days: int, *, count: int
) -> list[tuple[datetime, bytes]]:
    faults = []
    for n in range(count):
        person = rng.choice(locality.people)
        when = start + timedelta(minutes=rng.randrange(days * 24 * 60))
        kind = n % 3
        if kind == 0:  # a transcription slip: last digit wrong, fails Modulus 11
            wrong = person.nhs_number[:-1] + str((int(person.nhs_number[-1]) + 1) % 10)
            visit = f"F{n:07d}"
            faults.append(
                (when, writer.message("A01", when, person, nhs_number=wrong, pv1=_pv1(visit, "AMU", when, None)))
            )
        elif kind == 1:  # a link message this hub does not take
            faults.append((when, writer.message("A24", when, person)))
        else:  # a discharge that lost its visit segment
            faults.append((when, writer.message("A03", when, person)))
    return faults
