"""The person-key fingerprint a replayed record is given: that of the key its log was written under (the
events carry person keys made with it), so a hub started on it with another secret is refused, as on
the record it rebuilds, instead of making each person it sees a second Patient.

A key is taken only once it is checked against the log: the secret CAREHUB_SECURITY__KEY_SECRET gives,
and that of --data-dir's secrets.json, are each the log's only if they give the person key of a
Patient on it from that Patient's NHS number (hub.core.identity.person_key). The first records on the
log are read for a few such people before the fold; a key that gives none of their keys is another
hub's (a folder holding another hub's var/, say), and no fingerprint is recorded rather than a wrong
one. A fingerprint kept in a database is never taken: it cannot be checked against the log."""

from __future__ import annotations

import contextlib
import hmac
from collections.abc import AsyncGenerator, Iterator
from dataclasses import dataclass, field
from typing import Any, cast

import orjson

from hub.core.nhs_number import NHS_NUMBER_SYSTEM
from hub.secret_keys import KEY_ENV
from hub.settings import Settings
from schemas.envelope import header_value

PEOPLE = 5  # people on the log (distinct NHS numbers) a key is checked against
WITHIN = 2_000  # records read for them at most (they are in the first few on any hub's log)


@dataclass(frozen=True)
class Candidate:
    """A person-key secret that may be the log's, and where it was found (never said: the secret)."""

    secret: bytes = field(repr=False)
    found_in: str


@dataclass(frozen=True)
class LogKey:
    """The fingerprint of the key the log was written under, where it was found, and how many people
    on the log it gave the person key of."""

    fingerprint: str
    found_in: str
    people: int = 0


@dataclass(frozen=True)
class KeyCheck:
    """What checking the candidates against the log found: the log's key (None: none of them is),
    where each candidate that did not give the log's person keys was found, and how many people on the
    log they were checked against (0: no record read carried a Patient with an NHS number)."""

    key: LogKey | None
    wrong: tuple[str, ...] = ()
    people: int = 0
    candidates: int = 0


def candidates(settings: Settings) -> list[Candidate]:
    """The person-key secrets that may be the log's: CAREHUB_SECURITY__KEY_SECRET's, then that of
    --data-dir's secrets.json (read, never made: a new one would key no one on the log)."""
    import json

    found = []
    if settings.security.key_secret is not None:
        found.append(Candidate(settings.security.key_secret.get_secret_value().encode(), KEY_ENV))
    path = settings.data_dir / "secrets.json"
    if path.is_file():
        try:
            secret = str(json.loads(path.read_text())["key"]).encode()
        except (ValueError, KeyError, TypeError, OSError):
            secret = b""
        if secret and all(c.secret != secret for c in found):
            found.append(Candidate(secret, str(path.resolve())))
    return found


async def people_on_the_log(bootstrap: str, *, want: int = PEOPLE, within: int = WITHIN) -> list[tuple[str, set[str]]]:
    """Up to `want` people on the log, from its first `within` records: each one's NHS number and the
    person keys the log files them under (the Patient's id, the event's subject)."""
    from hub.replay_read import read_log

    people: dict[str, set[str]] = {}
    read = 0
    reading = cast(AsyncGenerator[list[Any], None], read_log(bootstrap))  # (closed: its consumer stopped)
    async with contextlib.aclosing(reading) as records_read:
        async for records in records_read:
            for record in records:
                for nhs, keys in _people_in(record):
                    people.setdefault(nhs, set()).update(keys)
            read += len(records)
            if len(people) >= want or read >= within:
                break
    return list(people.items())[:want]


def check(found: list[Candidate], people: list[tuple[str, set[str]]]) -> KeyCheck:
    """The first candidate that gives the person key of any of these people from their NHS number (a
    key that gives one is the log's: another would by chance one time in 2**128), else none."""
    from hub.core.identity import person_key
    from hub.store.key_fingerprint import fingerprint

    wrong: list[str] = []
    for candidate in found:
        gives = sum(
            any(hmac.compare_digest(person_key(candidate.secret, nhs, None), k) for k in keys) for nhs, keys in people
        )
        if gives:
            key = LogKey(fingerprint(candidate.secret), candidate.found_in, gives)
            return KeyCheck(key, tuple(wrong), len(people), len(found))
        wrong.append(candidate.found_in)
    return KeyCheck(None, tuple(wrong) if people else (), len(people), len(found))


async def log_key(bootstrap: str, found: list[Candidate]) -> KeyCheck:
    """The candidates checked against the first people on the log (nothing read where there are none)."""
    if not found:
        return KeyCheck(None)
    return check(found, await people_on_the_log(bootstrap))


def _people_in(record: Any) -> Iterator[tuple[str, set[str]]]:
    """Each Patient with an NHS number in the record's payload, and the keys the record files it under."""
    subject = header_value(record.headers or (), "ce_subject")
    try:
        payload = orjson.loads(record.value) if record.value is not None else None
    except orjson.JSONDecodeError:
        return
    for patient in _patients(payload, 0):
        nhs = next(
            (
                i["value"]
                for i in patient.get("identifier") or ()
                if isinstance(i, dict)
                and i.get("system") == NHS_NUMBER_SYSTEM
                and isinstance(i.get("value"), str)
                and i["value"]
            ),
            None,
        )
        if nhs is not None:
            keys = {str(patient["id"])} if isinstance(patient.get("id"), str) else set()
            yield nhs, keys | ({subject} if subject else set())


def _patients(value: Any, depth: int) -> Iterator[dict[str, Any]]:
    """The Patient resources in a payload (a Bundle's entries, a resource's contained ones)."""
    if depth > 6:
        return
    if isinstance(value, dict):
        if value.get("resourceType") == "Patient":
            yield value
        for inner in value.values():
            if isinstance(inner, (dict, list)):
                yield from _patients(inner, depth + 1)
    elif isinstance(value, list):
        for inner in value:
            yield from _patients(inner, depth + 1)


def keyed_note(checked: KeyCheck, settings: Settings, held_before: str | None = None) -> str:
    """What replay's summary says of the rebuilt record's key: the secret it needs to be served."""
    key = checked.key
    if key is not None:
        if key.found_in == KEY_ENV:
            how = f"set the same {KEY_ENV} (or copy the secrets.json that holds it into the serving hub's --data-dir)"
        else:
            how = f"copy {key.found_in} into the serving hub's --data-dir, or set the same {KEY_ENV}"
        return (
            "the rebuilt record needs the person-key secret the log was written under to be served (that in "
            f"{key.found_in}, which gives the person keys the log holds for {_people(key.people)} checked: its "
            f"fingerprint is recorded in it, and a hub with another secret is refused): {how}"
        )
    kept = settings.data_dir / "secrets.json"
    if not checked.candidates:
        why = f"neither {KEY_ENV} nor {kept} gives a person-key secret to check against the log"
    elif not checked.people:
        why = (
            f"no Patient with an NHS number in the log's first {WITHIN:,} records to check a person-key secret against"
        )
    else:
        first, *rest = checked.wrong
        checked_against = (
            f"the person keys the log holds for {_people(checked.people)} checked (from their NHS numbers)"
        )
        if rest:
            others = "".join(f" nor that in {where}" for where in rest)
            why = f"neither the person-key secret in {first}{others} gives {checked_against}: each is another hub's"
        else:
            why = f"the person-key secret in {first} does not give {checked_against}: it is another hub's"
        why += ", not the one the log was written under"
    before = f"; {held_before}" if held_before else ""
    return (
        f"warning: no person-key fingerprint recorded in the rebuilt record: {why}{before}. Serve it only with "
        f"the secret of the hub whose log it is: copy that hub's secrets.json into the serving hub's --data-dir, "
        f"or set {KEY_ENV} as it has it (a hub with no secret is refused on a record, rather than make its own)"
    )


def _people(n: int) -> str:
    return f"{n:,} {'person' if n == 1 else 'people'}"
