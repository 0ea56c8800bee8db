"""Ports: what the core and the edges need from storage, as Protocols. Implementations in hub.store."""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from types import TracebackType
from typing import Any, Protocol, Self

import orjson

from schemas.envelope import Envelope

Json = dict[str, Any]


@dataclass(frozen=True, init=False)
class RecordEvent:
    """One event as the record consumer sees it: envelope attributes plus the FHIR payload.

    `payload` is the validated FHIR JSON (a `collection` Bundle for ADT events); consumers trust
    the topic contract and never re-validate it.
    """

    id: str
    type: str
    source: str
    time: datetime
    subject: str
    payload: Json

    def __init__(self, id: str, type: str, source: str, time: datetime, subject: str, payload: Json) -> None:
        # what dataclass's own __init__ does, without its object.__setattr__ for every field (as the
        # class is frozen): a replay makes a million of these, and StoredResources more
        self.__dict__.update(id=id, type=type, source=source, time=time, subject=subject, payload=payload)

    def envelope(self) -> Envelope:
        """The CloudEvent this event travels in (the inverse of decoding one from Kafka)."""
        return Envelope(
            id=self.id,
            source=self.source,
            type=self.type,
            time=self.time,
            subject=self.subject,
            data=orjson.dumps(self.payload),
        )


@dataclass(frozen=True, init=False)
class StoredResource:
    """The current version of one FHIR resource in the shared care record."""

    resource_type: str
    id: str
    person_key: str | None
    version_id: int
    event_time: datetime
    source_event_id: str
    content: Json

    def __init__(
        self,
        resource_type: str,
        id: str,
        person_key: str | None,
        version_id: int,
        event_time: datetime,
        source_event_id: str,
        content: Json,
    ) -> None:
        self.__dict__.update(  # (as RecordEvent's)
            resource_type=resource_type,
            id=id,
            person_key=person_key,
            version_id=version_id,
            event_time=event_time,
            source_event_id=source_event_id,
            content=content,
        )


class RecordUnitOfWork(Protocol):
    """One transaction over the record: resource writes and processed-event rows commit together."""

    def __enter__(self) -> Self: ...

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...

    def processed(self, event_ids: Collection[str]) -> set[str]:
        """Those of `event_ids` already applied by this consumer."""
        ...

    def get(self, resource_type: str, id: str) -> StoredResource | None: ...

    def find_by_identifier(self, resource_type: str, system: str, value: str) -> list[StoredResource]:
        """Current resources of that type carrying identifier system|value."""
        ...

    def of_person(self, person_key: str, kind: str | None = None) -> list[StoredResource]:
        """Every current resource filed under that person key (of that resource type, if `kind`)."""
        ...

    def put(self, resource: StoredResource) -> None:
        """Insert or replace the current version (and its identifier index rows)."""
        ...

    def mark_processed(self, event_id: str) -> None: ...

    def commit(self) -> None: ...


class RecordReader(Protocol):
    """Read side of the record for the API, the CLI and pages (cosmicpython views)."""

    def read(self, resource_type: str, id: str) -> Json | None: ...

    def patients_by_identifier(self, system: str, value: str) -> list[Json]: ...

    def search(self, resource_type: str, patient_id: str | None) -> list[Json]:
        """Resources of a type, optionally only those whose subject/patient is that Patient."""
        ...

    def filed_under(self, patient_ids: Collection[str]) -> dict[str, str]:
        """The person key the record files each of these Patients under (those it holds): their own
        id, or for one merged away (A40) the person it was merged into."""
        ...

    def search_many(self, resource_type: str, patient_ids: Sequence[str]) -> list[Json]:
        """Resources of a type about any of these patients (one query, for batches)."""
        ...

    def everything(self, patient_id: str) -> list[Json]:
        """The Patient and every resource about them (Patient/$everything)."""
        ...

    def registered_with(self, practice_ods: str) -> list[Json]:
        """Current Patients registered with that GP practice (generalPractitioner names its ODS code,
        or an Organization carrying it), by id."""
        ...

    def counts(self) -> dict[str, int]:
        """How many current resources of each type the record holds."""
        ...


class DeadLetters(Protocol):
    """Where rejected input is kept whole, with its reason, for an operator to see and replay."""

    def keep(
        self,
        *,
        received_at: datetime,
        source: str,
        origin: str,
        reason: Json,
        payload: bytes,
    ) -> None: ...

    def recent(self, limit: int) -> Sequence[Json]: ...


class Registrations(Protocol):
    """Whom each person is registered with, as the delivery consumer has read it in log order
    (hub.core.delivery.Registration, rules in hub.core.delivery.note_registrations). A row a batch
    beginning at `starts` (each partition's first offset) changed before is read as it stood before
    that, so a batch redone after a crash decides as its first run did (hub.store.registrations)."""

    def of(self, person_keys: Collection[str], starts: Mapping[int, int] | None = None) -> dict[str, Any]: ...

    def save(
        self,
        registrations: Mapping[str, Any],
        before: Mapping[str, Any],
        starts: Mapping[int, int] | None = None,
        revived: Collection[str] = (),
    ) -> None: ...


class Ledger(Protocol):
    """The disclosure ledger: append-only, hash-chained (rules in hub.core.ledger)."""

    def append(self, disclosures: Sequence[Any], *, once: str | None = None) -> bool: ...

    def entries(self) -> Iterator[Any]: ...

    def about(self, *person_keys: str) -> list[Any]: ...


class CoordinationUnitOfWork(Protocol):
    """One transaction over the coordination service's state: each person's tasks and episode, the
    deadline clocks, and the processed-event rows, committed together."""

    def __enter__(self) -> Self: ...

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...

    def processed(self, event_ids: Collection[str]) -> set[str]: ...

    def mark_processed(self, event_id: str) -> None: ...

    def state(self, person_key: str) -> Json | None:
        """The person's coordination state, or None if the service has not heard of them."""
        ...

    def save(self, person_key: str, state: Json) -> None: ...

    def set_clock(self, clock_id: str, person_key: str, due: datetime, kind: str, partition: int) -> None: ...

    def clear_clock(self, clock_id: str) -> None: ...

    def due_clocks(self, partition: int, until: datetime) -> list[tuple[str, str, datetime, str]]:
        """(clock id, person key, due, kind) of the partition's clocks due at or before `until`,
        in due order then id."""
        ...

    def commit(self) -> None: ...


class CoordinationReader(Protocol):
    """The read side of the coordination service, for commands that must check its rules."""

    def caseloads(self) -> dict[str, int]:
        """Coordinator -> people on their caseload now."""
        ...

    def state(self, person_key: str) -> Json | None: ...

    def person_state(self, person_key: str) -> Json | None:
        """The state of the person the key names now: for a key an A40 retired, its survivor's."""
        ...


@dataclass(frozen=True)
class Decline:
    """A referral's decline as its claim keeps it: the ServiceRequest as it left it, and when it says
    it happened (the event's time)."""

    referral: Json
    at: datetime


@dataclass(frozen=True)
class Withdrawal:
    """A referral's withdrawal by its referrer as its claim keeps it: the ServiceRequest as it left it,
    and when it says it happened (the event's time)."""

    referral: Json
    at: datetime


@dataclass(frozen=True)
class CaseloadFull:
    """What an accept's claim found: its coordinator has `people` on their caseload, the cap or more
    (open episodes the rules engine knows, and those claimed and not known closed)."""

    coordinator: str
    people: int


@dataclass(frozen=True)
class Closure:
    """The close that claimed an episode: the EpisodeOfCare as it finished it (period.end: when),
    the PIC summary Composition it wrote, and what it was asked (its parameters, as given)."""

    episode: Json
    summary: Json
    asked: Json


class CoordinationStore(CoordinationReader, Protocol):
    """The coordination read side, and the writes the API makes itself: the claims that let exactly
    one decision of a referral (an accept, a decline or its referrer's withdrawal), and one close of an
    episode, win, whichever worker each reaches (hub.store.coordination). Each claim is made before
    anything is published."""

    def acceptance(self, referral_id: str) -> Json | None:
        """The EpisodeOfCare of the accept that claimed the referral, if one has."""
        ...

    def declined(self, referral_id: str) -> Decline | None:
        """The decline that claimed the referral, if one has."""
        ...

    def claim_acceptance(
        self,
        referral_id: str,
        person_key: str,
        coordinator: str,
        episode: Json,
        at: datetime,
        is_open: Callable[[Json], bool],
        cap: int,
    ) -> Json | Decline | Withdrawal | CaseloadFull | None:
        """None if this call claimed the referral for `episode`; else what holds it: the episode of the
        accept that did, or of another referral's accept for the person whose episode `is_open`; the
        decline, or the withdrawal, that did; or the coordinator's caseload at `cap`."""
        ...

    def sent(self, referral_id: str) -> bool:
        """Whether Kafka acknowledged the events of the decision (accept, decline, withdrawal) that claimed it."""
        ...

    def mark_sent(self, referral_id: str, at: datetime) -> None:
        """Record that Kafka acknowledged the events of the decision that claimed the referral."""
        ...

    def unsent_acceptances(self, coordinator: str) -> list[Json]:
        """The episodes of the coordinator's accepts not known sent that the rules engine has not
        applied (nor known closed): counted against the cap from their claims alone."""
        ...

    def claim_decline(
        self, referral_id: str, person_key: str, decline: Decline, at: datetime
    ) -> Json | Decline | Withdrawal | None:
        """None if this call claimed the referral for `decline`; else the episode of the accept, the
        decline or the withdrawal that did."""
        ...

    def withdrawn(self, referral_id: str) -> Withdrawal | None:
        """The withdrawal (by its referrer) that claimed the referral, if one has."""
        ...

    def claim_withdrawal(
        self, referral_id: str, person_key: str, withdrawal: Withdrawal, at: datetime
    ) -> Json | Decline | Withdrawal | None:
        """None if this call claimed the referral for `withdrawal`; else the episode of the accept, the
        decline or the withdrawal that did."""
        ...

    def closure(self, episode_id: str) -> Closure | None:
        """The close that claimed the episode, if one has."""
        ...

    def claim_closure(self, person_key: str, closure: Closure, at: datetime) -> Closure | None:
        """None if this call claimed the episode (closure.episode) for `closure`; else the close that did."""
        ...
