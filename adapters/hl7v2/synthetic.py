"""A synthetic locality and its hospital's ADT traffic, for `carehub demo` and the benchmarks.

Deterministic for a seed, no I/O. Everyone is invented: NHS numbers are Modulus-11 valid numbers
from the 999 range that is never issued, names come from short built-in lists, postcodes are in
the YO (York) area. One hospital (RZZ) and five GP practices (Y90001 to Y90005).

Traffic is ITK-style HL7 v2.4 inpatient flow: admissions (A01), ward transfers (A02), address
changes (A08), discharges (A03 with PV1-36 and PV1-45), now and then an admission or discharge in
error (A11, A13) and a duplicate registration merged (A40). About four messages a person a month.
With `include_faults`, about one message in a hundred is one a real PAS sends now and then and the
hub must refuse: an NHS number that fails Modulus 11 (AE), an ADT^A24 link (AR), a discharge
without its PV1 (AE).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace
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
# PV1-36 as English PASes fill it: Data Dictionary discharge destination. 19 usual residence, 29 temporary
# residence, 54 NHS care home, 65 local authority residential accommodation, 85 non-NHS care home, 79 died.
_DISPOSITIONS = ("19", "19", "19", "19", "19", "29", "54", "65", "85", "79")
DIED = "79"  # (the A03 also carries PID-29 and PID-30, and the person has no more stays)


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
                mrn=f"{HOSPITAL}{100000 + n}",
                family=rng.choice(_FAMILY),
                given=rng.choice(_FEMALE if sex == "F" else _MALE),
                sex=sex,
                birth_date=date(1925, 1, 1) + timedelta(days=rng.randrange(365 * 30)),
                address=f"{rng.randrange(1, 120)} {rng.choice(_STREETS)}^^{town}",
                postcode=_postcode(rng),
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
        self.merges = 0

    def visit_number(self) -> str:
        return f"V{self.prefix.removeprefix(self.hospital)}{self.sequence + 1:07d}"

    def duplicate_mrn(self) -> str:
        self.merges += 1
        return f"{self.prefix}D{self.merges:04d}"

    def message(
        self,
        trigger: str,
        when: datetime,
        person: Person,
        *,
        nhs_number: str | None = None,
        pv1: str | None = None,
        extra: tuple[str, ...] = (),
        died: datetime | None = None,
    ) -> bytes:
        self.sequence += 1
        stamp = _stamp(when)
        structure = {"A40": "ADT_A39", "A03": "ADT_A03", "A24": "ADT_A24"}.get(trigger, "ADT_A01")
        ids = f"{nhs_number or person.nhs_number}^^^NHS^NH~{person.mrn}^^^{self.hospital}^MR"
        segments = [
            f"MSH|^~\\&|PAS|{self.hospital}|CAREHUB|CAREHUB|{stamp}||ADT^{trigger}^{structure}"
            f"|{self.prefix}{self.sequence:07d}|P|2.4|||AL|NE|GBR|UNICODE UTF-8",
            f"EVN|{trigger}|{stamp}",
            f"PID|1||{ids}||{person.family}^{person.given}||{person.birth_date:%Y%m%d}|{person.sex}"
            f"|||{person.address}^^{person.postcode}|{_life(died)}|NSTS01",
            f"PD1|||{person.practice.name}^^{person.practice.ods}",
        ]
        if pv1 is not None:
            segments.append(pv1)
        segments += list(extra)
        return "\r".join(segments).encode() + b"\r"


def _life(died: datetime | None) -> str:
    """PID-12 to PID-31, empty but for PID-29 and PID-30 (date and indicator of death) when the person died."""
    fields = [""] * 20  # fields[n - 12] is PID-n
    if died is not None:
        fields[29 - 12], fields[30 - 12] = _stamp(died), "Y"
    return "|".join(fields)


def _stamp(when: datetime) -> str:
    """HL7 TS as UK PASes send it: local time, to the minute, no offset."""
    return when.astimezone(UK).strftime("%Y%m%d%H%M")


def _pv1(visit: str, ward: str, admitted: datetime, discharged: datetime | None = None, disposition: str = "") -> str:
    fields = ["PV1", "1", "I", f"{ward}^^", *[""] * 42]  # fields[n] is PV1-n
    fields[19], fields[36], fields[44] = visit, disposition, _stamp(admitted)
    fields[45] = _stamp(discharged) if discharged else ""
    return "|".join(fields)


def _moved(rng: random.Random, person: Person) -> Person:
    """The person with a new address in the same town (an A08's usual news)."""
    town = person.address.rsplit("^", 1)[-1]
    address = f"{rng.randrange(1, 120)} {rng.choice(_STREETS)}^^{town}"
    return replace(person, address=address, postcode=_postcode(rng))


def _postcode(rng: random.Random) -> str:
    letters = "ABDEFGHJLNPQRSTUWXYZ"
    return f"YO{rng.randrange(10, 62)} {rng.randrange(1, 9)}{rng.choice(letters)}{rng.choice(letters)}"


Traffic = list[tuple[datetime, bytes]]


@dataclass
class _Stay:
    """One inpatient stay being written: its visit number, ward and admission time."""

    writer: _Writer
    rng: random.Random
    person: Person
    visit: str
    ward: str
    admitted: datetime
    out: Traffic

    def send(self, trigger: str, when: datetime, discharged: datetime | None = None, disposition: str = "") -> None:
        pv1 = _pv1(self.visit, self.ward, self.admitted, discharged, disposition)
        died = discharged if disposition == DIED else None  # (the PAS records the death with the discharge)
        self.out.append((when, self.writer.message(trigger, when, self.person, pv1=pv1, died=died)))


def _stay(stay: _Stay, horizon: datetime) -> datetime | None:
    """Admit, maybe transfer, update and discharge; the time the person left, or None if still in."""
    rng, now = stay.rng, stay.admitted
    stay.send("A01", now)
    if rng.random() < 0.04:  # admitted in error
        now += timedelta(minutes=rng.randrange(20, 180))
        stay.send("A11", now)
        return now
    if rng.random() < 0.01:  # the admitting clerk finds a duplicate registration: merge it
        now += timedelta(minutes=rng.randrange(5, 60))
        mrg = f"MRG|{stay.writer.duplicate_mrn()}^^^{stay.writer.hospital}^MR"
        stay.out.append((now, stay.writer.message("A40", now, stay.person, extra=(mrg,))))
    for _ in range(rng.choices((0, 1, 2), weights=(45, 40, 15))[0]):
        now += timedelta(hours=rng.randrange(4, 48))
        stay.ward = rng.choice(_WARDS)
        stay.send("A02", now)
    if rng.random() < 0.25:  # the ward clerk records a new address
        now += timedelta(hours=rng.randrange(1, 24))
        stay.person = _moved(rng, stay.person)
        stay.send("A08", now)
    left = now + timedelta(hours=rng.randrange(6, 24 * 7))
    if left >= horizon:
        return None
    disposition = rng.choice(_DISPOSITIONS)
    stay.send("A03", left, left, disposition)
    if disposition == DIED:
        return None  # no more stays, nor a discharge undone: the person died
    if rng.random() < 0.03:  # discharged in error, then discharged for real
        undone = left + timedelta(minutes=rng.randrange(10, 120))
        stay.send("A13", undone)
        left = undone + timedelta(hours=rng.randrange(12, 72))
        if left >= horizon:
            return None
        stay.send("A03", left, left, disposition)
    return left


def _person_traffic(writer: _Writer, rng: random.Random, person: Person, start: datetime, days: int) -> Traffic:
    out: Traffic = []
    horizon = start + timedelta(days=days)
    at = start + timedelta(minutes=rng.randrange(days * 24 * 60 // 2))
    for _ in range(rng.choices((0, 1, 2, 3, 4), weights=(20, 30, 27, 15, 8))[0]):
        if at >= horizon:
            break
        stay = _Stay(writer, rng, person, writer.visit_number(), rng.choice(_WARDS), at, out)
        left = _stay(stay, horizon)
        if left is None:
            break
        person = stay.person
        at = left + timedelta(days=rng.randrange(2, 12), minutes=rng.randrange(24 * 60))
    return [(when, message) for when, message in out if when < horizon]  # a stay still open at the end


def adt_traffic(
    locality: Locality, *, start: datetime, days: int = 30, seed: int = 0, include_faults: bool = False
) -> Traffic:
    """A month (or `days`) of the hospital's ADT for the locality, in time order."""
    rng = random.Random(seed)
    writer = _Writer(locality.hospital_ods, seed)
    out: Traffic = []
    for person in locality.people:
        out += _person_traffic(writer, rng, person, start, days)
    if include_faults:
        out += _faults(locality, writer, rng, start, days, count=max(3, len(out) // 100))
    out.sort(key=lambda pair: pair[0])
    return out


def _faults(
    locality: Locality, writer: _Writer, rng: random.Random, start: datetime, days: int, *, count: int
) -> Traffic:
    faults = []
    for n in range(count):
        person = rng.choice(locality.people)
        when = start + timedelta(minutes=rng.randrange(days * 24 * 60))
        kind = n % 3
        if kind == 0:  # a transcription slip: last digit wrong, fails Modulus 11
            wrong = person.nhs_number[:-1] + str((int(person.nhs_number[-1]) + 1) % 10)
            pv1 = _pv1(f"F{n:07d}", "AMU", when)
            faults.append((when, writer.message("A01", when, person, nhs_number=wrong, pv1=pv1)))
        elif kind == 1:  # a link message this hub does not take
            faults.append((when, writer.message("A24", when, person)))
        else:  # a discharge that lost its visit segment
            faults.append((when, writer.message("A03", when, person)))
    return faults
