"""The mixed traffic the crash-safety tests stream, and what two runs over it must agree on.

The stream: a hospital's synthetic ADT (adapters/hl7v2/synthetic.py), and for some of the same
people what the coordination rules (hub/rules/croydon-pic.v4.yaml) act on, built by the adapters
and builders the other tests use:

  objections   FHIR Consents (tests/builders.an_objection) refusing the subscribing practice, each the
               person's first event on the log, so every later delivery about them is denied
  register     at-risk register rows (adapters/referrals, Format.REGISTER); most meet criterion
               croydon-a (case list), so their discharges open 48-hour follow-up tasks; half of
               those discharges get a follow-up contact (tests/locality_month.contact)
  referrals    voluntary-sector (case list) and adult social care referrals to the PIC service
               (adapters/referrals): triage (3 days) and first visit (28 days); some then get a first
               contact, an episode with a coordinator (caseloads, 6- and 12-week reviews, a long-stay
               clock) and a face-to-face visit, or are declined (adapters/referrals, Format.VCSE_OUTCOME)
  ticks        the hub's clock on every partition every 12 hours of event time, so the tasks nobody
               did go overdue (and to the team lead) while the log is read

all in event-time order, cut to the size asked for (a prefix in time, so nothing is there without
what caused it). Contacts and episodes are tests/locality_month's builders, moved from its person P1
onto the person concerned. A sharing agreement and two subscriptions in each run's database
(`prepare`) make the delivery consumer decide, and write to the disclosure ledger, every admission
and discharge of one practice's patients and every referral addressed to the PIC service.

`settled` waits until runs have applied every input and each of their consumer groups has
committed to the end of the log. `State.of(url)` reads what a run ended with; `differences(a, b)`
says how two runs differ: the record (its canonical hash), the coordination state (each person's
tasks with status, owner, due and overdue; pending clocks; caseloads), the disclosure ledger as a
multiset of decisions, and the events each consumer applied. Seq, time stamps and chain hashes are
left out of the ledger comparison: the chain's order legitimately depends on how the partitions
interleave; each chain is verified on its own instead. `log_problems` holds a run's processed-event
rows to the distinct event ids on the log.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import sqlalchemy as sa
from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition

from adapters.hl7v2.synthetic import Person, adt_traffic, make_locality
from adapters.hl7v2.to_fhir import map_message
from adapters.referrals.rows import Format, Row
from adapters.referrals.to_fhir import map_row
from hub.core.coordination import tick
from hub.core.delivery import in_scope
from hub.core.identity import person_key, stable_id
from hub.core.ledger import Entry, verify
from hub.core.ports import RecordEvent
from hub.core.record import resources_of
from hub.store.agreements import SqlAgreements
from hub.store.coordination import SqlCoordinationStore
from hub.store.database import open_engine
from hub.store.hashing import record_hash
from hub.store.ledger import SqlLedger
from hub.store.subscriptions import SqlSubscriptions
from hub.store.tables import coordination_clock, coordination_state, disclosure_ledger, processed_event
from schemas.events import coordination as co
from schemas.events.consent import CONSENT_RECORDED
from schemas.events.encounter import ENCOUNTER_ADMITTED, ENCOUNTER_DISCHARGED
from schemas.subscriptions import Subscription
from schemas.topics import EVENTS
from tests import locality_month as month
from tests.builders import an_agreement, an_objection
from tests.kafka_log import header, read_all

START = datetime(2026, 9, 1, tzinfo=UTC)
READ = START + timedelta(days=365)  # when the adapters read the rows: after all that they say happened
TICK_EVERY = timedelta(hours=12)
SUBSCRIBER = "Y90001"  # a practice of the synthetic locality: its patients' admissions and discharges
SERVICE = month.SERVICE  # the PIC service of the rules file
VCS, COUNCIL = "VCS001", "E10000023"
COORDINATORS = ("c-amara", "c-ben", "c-chloe")
AGREEMENT = an_agreement(
    "RZZ", SUBSCRIBER, SERVICE, VCS, categories=("demographics", "encounters", "provenance", "consents", "referrals")
)
# Subscribed: events from outside only, never the rules engine's own. Both runs derive onto the one
# log, so each sees every derived event at least twice, and would decide (and record) it each time.
SUBSCRIPTIONS = (
    Subscription(
        id="gp-admissions", org=SUBSCRIBER, events=(ENCOUNTER_ADMITTED.type, ENCOUNTER_DISCHARGED.type)
    ),  # registered patients, full resources
    Subscription(
        id="pic-referrals",
        org=SERVICE,
        purpose="care-coordination",
        events=(co.REFERRAL_RECEIVED.type,),
        scope="addressed",
        content="id-only",
    ),
)
CONSUMERS = ("record", "coordination", "delivery")  # the consumer groups on the events topic


# --- the stream ---------------------------------------------------------------------------------


def hospital(n: int, secret: str) -> tuple[list[RecordEvent], dict[str, Person]]:
    """n events of synthetic ADT (a locality as large as it takes, mapping no more than needed), and
    the locality's people by person key."""
    people = max(500, n // 2)
    while True:
        locality = make_locality(people=people, seed=5)
        traffic = adt_traffic(locality, start=START, seed=5)
        events: list[RecordEvent] = []
        for _, raw in traffic:
            events += [
                RecordEvent(m.event_id, m.event_type, m.source, m.event_time, m.person_key, m.payload)
                for m in map_message(raw, key_secret=secret.encode())
            ]
            if len(events) >= n:
                return events[:n], {person_key(secret.encode(), p.nhs_number, None): p for p in locality.people}
        people *= 2


@dataclass(frozen=True)
class Stream:
    """The events in log order; a tick carries the partition it goes to (the others go by key)."""

    items: list[tuple[RecordEvent, int | None]]

    @property
    def events(self) -> list[RecordEvent]:
        return [e for e, _ in self.items]

    def kinds(self) -> Counter[str]:
        return Counter(e.type.split(".")[3] if e.type.count(".") >= 5 else e.type for e in self.events)

    def describe(self) -> str:
        kinds = self.kinds()
        return f"{len(self.items)} events: " + ", ".join(f"{n} {kind}" for kind, n in sorted(kinds.items()))


class _Builder:
    def __init__(self, secret: str, people: dict[str, Person]) -> None:
        self.secret = secret.encode()
        self.people = people
        self.rows = 0

    def _row(self, fmt: Format, values: dict[str, Any], subject: str) -> RecordEvent:
        self.rows += 1
        m = map_row(fmt, Row(self.rows + 1, values, b""), key_secret=self.secret, now=READ)
        assert m.person_key == subject, "the adapters must key the person as the hospital does"
        return RecordEvent(m.event_id, m.event_type, m.source, m.event_time, m.person_key, m.payload)

    def objection(self, subject: str) -> RecordEvent:
        person = self.people[subject]
        consent = an_objection(person.nhs_number, SUBSCRIBER)
        consent |= {"id": stable_id("crash-objection", subject), "patient": {"reference": f"Patient/{subject}"}}
        return RecordEvent(
            stable_id("crash-consent", subject),
            CONSENT_RECORDED.type,
            f"urn:ods:{person.practice.ods}",
            START - timedelta(days=2),
            subject,
            consent,
        )

    def register_row(self, subject: str, admissions: int, conditions: int) -> RecordEvent:
        person = self.people[subject]
        values = {
            "nhs_number": person.nhs_number,
            "practice_ods": person.practice.ods,
            "non_elective_admissions_12m": str(admissions),
            "long_term_conditions": str(conditions),
            "frailty": "moderate",
            "extracted_on": (START - timedelta(days=1)).date().isoformat(),
        }
        return self._row(Format.REGISTER, values, subject)

    def referral(self, subject: str, n: int, at: datetime, *, voluntary: bool) -> RecordEvent:
        person = self.people[subject]
        values: dict[str, Any] = {
            "nhs_number": person.nhs_number,
            "gp_practice_ods": person.practice.ods,
            "referred_on": at.isoformat(),
            "addressed_to": SERVICE,
        }
        if voluntary:
            values |= {"referral_id": f"VCS-{n}", "referrer": VCS, "needs": ["social-isolation"]}
            return self._row(Format.VCSE_JSON, values, subject)
        values |= {"referral_id": f"ASC-{n}", "referrer": COUNCIL, "reason": "Lives alone after a fall"}
        return self._row(Format.ASC_JSON, values, subject)

    def declined(self, subject: str, n: int, at: datetime) -> RecordEvent:
        values = {
            "referral_id": f"VCS-{n}",
            "referrer": VCS,
            "nhs_number": self.people[subject].nhs_number,
            "outcome": "declined",
            "on": at.isoformat(),
        }
        return self._row(Format.VCSE_OUTCOME, values, subject)

    def contact(self, subject: str, at: datetime, kind: str) -> RecordEvent:
        return self._about(month.contact("P1", at, kind), subject)

    def episode(self, subject: str, at: datetime, coordinator: str, referral: RecordEvent) -> RecordEvent:
        event = self._about(month.episode("P1", at, coordinator), subject)
        request = next(
            e["resource"] for e in referral.payload["entry"] if e["resource"]["resourceType"] == "ServiceRequest"
        )
        event.payload["entry"][0]["resource"]["referralRequest"] = [{"reference": f"ServiceRequest/{request['id']}"}]
        return event

    def _about(self, event: RecordEvent, subject: str) -> RecordEvent:
        """A tests/locality_month event (built for its person P1) about `subject` instead."""
        person = self.people[subject]
        text = orjson.dumps(event.payload).decode()
        for entry in event.payload["entry"]:
            old = entry["resource"]["id"]
            text = text.replace(old, stable_id("crash", old, subject))
        text = text.replace(month.PEOPLE["P1"], subject).replace(month.NHS_NUMBERS["P1"], person.nhs_number)
        text = text.replace(f'"{month.PRACTICE}"', f'"{person.practice.ods}"')
        return RecordEvent(
            stable_id("crash", event.id, subject), event.type, event.source, event.time, subject, orjson.loads(text)
        )


def mixed_stream(total: int, secret: str, seed: int = 5) -> Stream:
    """`total` events: hospital ADT, coordination inputs for some of the same people, clock ticks."""
    adt, people = hospital(total, secret)
    rng = random.Random(seed)
    build = _Builder(secret, people)
    subjects = list(dict.fromkeys(e.subject for e in adt))
    discharges: dict[str, list[datetime]] = {}
    for e in adt:
        if e.type == ENCOUNTER_DISCHARGED.type:
            discharges.setdefault(e.subject, []).append(e.time)
    discharged = [s for s in subjects if s in discharges]
    extra: list[RecordEvent] = []

    registered = [s for s in discharged if people[s].practice.ods == SUBSCRIBER]
    extra += [build.objection(s) for s in rng.sample(registered, max(1, len(registered) // 25))]

    eligible = rng.sample(discharged, len(discharged) // 6)
    for s in eligible:
        extra.append(build.register_row(s, admissions=3, conditions=2))
        for left in discharges[s]:
            if rng.random() < 0.5:
                extra.append(build.contact(s, left + timedelta(hours=rng.randrange(4, 40)), "follow-up"))
    others = [s for s in subjects if s not in set(eligible)]
    extra += [build.register_row(s, admissions=1, conditions=4) for s in rng.sample(others, len(others) // 30)]

    for n, s in enumerate(rng.sample(subjects, len(subjects) // 12)):
        referred = START + timedelta(minutes=rng.randrange(14 * 24 * 60))
        voluntary = n % 2 == 0
        referral = build.referral(s, n, referred, voluntary=voluntary)
        extra.append(referral)
        roll = rng.random()
        if roll < 0.35:
            extra.append(build.contact(s, referred + timedelta(hours=rng.randrange(1, 60)), "first-contact"))
        elif roll < 0.6:
            opened = referred + timedelta(hours=rng.randrange(24, 72))
            extra.append(build.episode(s, opened, rng.choice(COORDINATORS), referral))
            if rng.random() < 0.5:
                extra.append(build.contact(s, opened + timedelta(hours=rng.randrange(24, 144)), "face-to-face"))
        elif roll < 0.7 and voluntary:
            extra.append(build.declined(s, n, referred + timedelta(hours=rng.randrange(24, 96))))

    last = max(e.time for e in adt) + timedelta(days=4)
    ticks = [(tick(p, t), p) for t in _every(START, last, TICK_EVERY) for p in range(EVENTS.partitions)]
    items: list[tuple[RecordEvent, int | None]] = [(e, None) for e in adt + extra] + list(ticks)
    items.sort(key=lambda item: item[0].time)  # stable: ties keep their order
    stream = Stream(items[:total])
    assert len({e.id for e in stream.events}) == len(stream.items), "every input event has its own id"
    return stream


def _every(start: datetime, end: datetime, step: timedelta) -> Iterable[datetime]:
    at = start
    while at <= end:
        yield at
        at += step


def deliveries(events: Iterable[RecordEvent]) -> int:
    """Events some subscription takes (each leaves at least one ledger decision)."""
    return sum(
        1
        for e in events
        if any(e.type in sub.events and in_scope(sub.scope, sub.org, resources_of(e)) for sub in SUBSCRIPTIONS)
    )


def prepare(url: str) -> None:
    """A run's database: migrated, with the sharing agreement and the subscriptions."""
    engine = open_engine(url)
    SqlAgreements(engine).load(AGREEMENT, at=datetime.now(UTC))
    subscriptions = SqlSubscriptions(engine)
    for sub in SUBSCRIPTIONS:
        subscriptions.save(sub)
    engine.dispose()


# --- how far a run has got ----------------------------------------------------------------------


def progress(url: str) -> dict[str, int]:
    """How far a run's consumers have got: events the record and the coordination consumers applied,
    decisions the delivery consumer wrote."""
    count = sa.select(sa.func.count()).select_from(processed_event)
    queries = {c: count.where(processed_event.c.consumer == c) for c in ("record", "coordination")}
    queries["delivery"] = sa.select(sa.func.count()).select_from(disclosure_ledger)
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return {c: int(conn.execute(q).scalar_one()) for c, q in queries.items()}
    except sa.exc.OperationalError:
        return dict.fromkeys(queries, 0)
    finally:
        engine.dispose()


def processed_ids(url: str, consumer: str) -> set[str]:
    """Event ids a consumer has applied (its processed-event rows); empty before the database exists."""
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            query = sa.select(processed_event.c.event_id).where(processed_event.c.consumer == consumer)
            return set(conn.scalars(query))
    except sa.exc.OperationalError:
        return set()
    finally:
        engine.dispose()


async def committed(bootstrap: str, group: str) -> dict[int, int]:
    """The committed offset of a consumer group on each partition of the events topic (0 if none)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    await consumer.start()
    try:
        return {p: (await consumer.committed(TopicPartition(EVENTS.name, p))) or 0 for p in range(EVENTS.partitions)}
    finally:
        await consumer.stop()


def log_ends(records: Sequence[ConsumerRecord[bytes, bytes]]) -> dict[int, int]:
    ends = dict.fromkeys(range(EVENTS.partitions), 0)
    for r in records:
        ends[r.partition] = max(ends[r.partition], r.offset + 1)
    return ends


async def lagging(bootstrap: str, groups: Collection[str], ends: dict[int, int]) -> list[str]:
    """'group pN at X of Y' for every group and partition not committed to the end of the log."""
    behind = []
    for group in groups:
        at = await committed(bootstrap, group)
        behind += [f"{group} p{p} at {at[p]} of {end}" for p, end in ends.items() if at[p] != end]
    return behind


async def settled(
    bootstrap: str, runs: dict[str, str], inputs: Sequence[RecordEvent], within: float
) -> list[ConsumerRecord[bytes, bytes]]:
    """Wait until every run (consumer-group prefix -> database URL) has applied every input event and
    each of its consumer groups has committed to the end of the log (so nothing is in flight: the
    rules engine publishes what it derives before it commits); the log as it then stands."""
    deadline = time.monotonic() + within
    wanted = {
        "record": {e.id for e in inputs if e.type not in co.NOT_RECORDED},  # a tick leaves no record row
        "coordination": {e.id for e in inputs},
    }
    while True:
        behind = [
            f"{prefix} {consumer}: {n} inputs not applied"
            for prefix, url in runs.items()
            for consumer, ids in wanted.items()
            if (n := len(ids - processed_ids(url, consumer)))
        ]
        if not behind:
            records = await read_all(bootstrap)
            groups = [f"{prefix}-{consumer}" for prefix in runs for consumer in CONSUMERS]
            behind = await lagging(bootstrap, groups, log_ends(records))
            if not behind:
                return records
        if time.monotonic() > deadline:
            raise AssertionError(f"not settled within {within}s: " + "; ".join(behind[:8]))
        await asyncio.sleep(1)


# --- what a run ended with ----------------------------------------------------------------------


def decision(entry: Entry) -> str:
    """A ledger entry as a decision: everything it records but when (canonical JSON)."""
    body = {k: v for k, v in entry.body.items() if k != "at"}
    return orjson.dumps(body, option=orjson.OPT_SORT_KEYS).decode()


Task = tuple[str, str, str, str, bool]


@dataclass
class State:
    """What one run's database holds, in the terms two runs are compared in."""

    record: tuple[str, int, int]
    tasks: dict[str, dict[str, Task]]  # person -> task id -> (rule, status, owner, due, overdue)
    states: dict[str, Any]  # person -> the rules engine's whole state
    clocks: set[tuple[str, str, str, str, int]]  # (id, person, due, kind, partition)
    caseloads: dict[str, int]
    ledger: Counter[str]
    chain: tuple[int, str | None]  # (entries checked, first break)
    processed: dict[str, set[str]]  # consumer -> event ids it applied

    @classmethod
    def of(cls, url: str) -> State:
        engine = open_engine(url)
        try:
            with engine.connect() as conn:
                states = {
                    k: dict(s)
                    for k, s in conn.execute(sa.select(coordination_state.c.person_key, coordination_state.c.state))
                }
                clocks = {
                    (r.id, r.person_key, r.due.isoformat(), r.kind, r.partition)
                    for r in conn.execute(sa.select(coordination_clock))
                }
            ledger = SqlLedger(engine)
            checked, broken = verify(ledger.entries())
            return cls(
                record=record_hash(engine),
                tasks={
                    person: {
                        tid: (t["rule"], t["status"], t["owner"], t["due"], bool(t.get("overdue")))
                        for tid, t in state["tasks"].items()
                    }
                    for person, state in states.items()
                    if state.get("tasks")
                },
                states=states,
                clocks=clocks,
                caseloads=SqlCoordinationStore(engine).caseloads(),
                ledger=Counter(decision(e) for e in ledger.entries()),
                chain=(checked, broken.problem if broken else None),
                processed={c: processed_ids(url, c) for c in ("record", "coordination")},
            )
        finally:
            engine.dispose()

    def summary(self) -> str:
        tasks = Counter(t[1] for person in self.tasks.values() for t in person.values())
        overdue = sum(t[4] for person in self.tasks.values() for t in person.values())
        decisions = Counter(orjson.loads(d)["decision"] for d in self.ledger.elements())
        return (
            f"record {self.record[0][:12]} ({self.record[1]} resources, {self.record[2]} events); "
            f"tasks {dict(tasks)}, {overdue} overdue; {len(self.clocks)} clocks pending; "
            f"caseloads {self.caseloads}; ledger {sum(self.ledger.values())} entries {dict(decisions)}"
        )


def differences(live: State, reference: State) -> list[str]:
    """How the state a run ended with differs from the reference run's (empty when it does not)."""
    found = []
    if live.record != reference.record:
        found.append(f"record hash {live.record} != reference {reference.record}")
    people = sorted(set(live.states) | set(reference.states))
    differing = [p for p in people if live.states.get(p) != reference.states.get(p)]
    if differing:
        shown = [f"{p}: {live.tasks.get(p)} != reference {reference.tasks.get(p)}" for p in differing[:5]]
        found.append(f"coordination state of {len(differing)} people differs, e.g. " + "; ".join(shown))
    if live.clocks != reference.clocks:
        found.append(
            f"pending clocks: {len(live.clocks - reference.clocks)} not in the reference "
            f"{sorted(live.clocks - reference.clocks)[:3]}, {len(reference.clocks - live.clocks)} missing "
            f"{sorted(reference.clocks - live.clocks)[:3]}"
        )
    if live.caseloads != reference.caseloads:
        found.append(f"caseloads {live.caseloads} != reference {reference.caseloads}")
    if live.ledger != reference.ledger:
        extra, missing = live.ledger - reference.ledger, reference.ledger - live.ledger
        found.append(
            f"ledger: {sum(extra.values())} decisions more than the reference ({len(extra)} distinct), "
            f"{sum(missing.values())} fewer ({len(missing)} distinct); "
            f"e.g. more: {_shown(extra)}; fewer: {_shown(missing)}"
        )
    for consumer, ids in live.processed.items():
        if ids != reference.processed[consumer]:
            found.append(
                f"{consumer} consumer: {len(ids - reference.processed[consumer])} events applied that the reference "
                f"did not, {len(reference.processed[consumer] - ids)} the reference applied that it did not"
            )
    return found


def _shown(decisions: Counter[str], n: int = 2) -> str:
    return "; ".join(f"{count}x {d}" for d, count in decisions.most_common(n)) or "none"


def log_problems(records: Sequence[ConsumerRecord[bytes, bytes]], inputs: Collection[str], state: State) -> list[str]:
    """What the log and a run's processed-event rows say about loss and doubling: every input event is on
    the log once; an id the rules engine derived again after a kill is the same event each time; each
    consumer applied each distinct event id on the log once (a row per id: no fewer, no more)."""
    found = []
    copies: dict[str, set[tuple[str, str, str, bytes]]] = {}
    seen: Counter[str] = Counter()
    types: dict[str, str] = {}
    for r in records:
        event_id = header(r, "ce_id")
        seen[event_id] += 1
        types[event_id] = header(r, "ce_type")
        copies.setdefault(event_id, set()).add(
            (header(r, "ce_type"), header(r, "ce_subject"), header(r, "ce_time"), r.value or b"")
        )
    twice = [i for i in inputs if seen[i] != 1]
    if twice:
        found.append(f"{len(twice)} input events are not on the log exactly once, e.g. {twice[:3]}")
    changed = [i for i, c in copies.items() if len(c) > 1]
    if changed:
        found.append(f"{len(changed)} event ids are on the log with different content, e.g. {changed[:3]}")
    on_log = set(seen)
    recorded = {i for i in on_log if types[i] not in co.NOT_RECORDED}
    for consumer, expected in (("record", recorded), ("coordination", on_log)):
        applied = state.processed[consumer]
        if applied != expected:
            found.append(
                f"{consumer} consumer: {len(expected - applied)} events on the log never applied "
                f"{sorted(expected - applied)[:3]}, {len(applied - expected)} applied that are not on the log"
            )
    return found


def repeats(records: Sequence[ConsumerRecord[bytes, bytes]]) -> Counter[str]:
    """How many times each event id is on the log."""
    return Counter(header(r, "ce_id") for r in records)
