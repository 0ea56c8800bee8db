"""Who each person key names now in the coordination engine's state store: a key an A40 retired keeps
only a pointer to its survivor (`merged_into`, hub.core.merges), followed here as the engine follows
it (hub.core.coordination), for the claims that count people (hub.store.coordination)."""

from __future__ import annotations

from collections.abc import Collection

import sqlalchemy as sa

from hub.core.identity import MAX_HOPS
from hub.core.merges import MERGED, MERGED_INTO
from hub.core.ports import Json
from hub.store.tables import coordination_state

S = coordination_state


def people_now(conn: sa.Connection, person_keys: Collection[str]) -> tuple[dict[str, str], dict[str, Json]]:
    """The person each key names now, as the rules engine follows A40 merges (hub.core.coordination:
    a retired key's state points at its survivor, through merges of merges, at most MAX_HOPS), and the
    states read on the way."""
    asked = set(person_keys)
    states = states_of(conn, asked)
    for _ in range(MAX_HOPS):
        wanted = {str(s[MERGED_INTO]) for s in states.values() if s.get(MERGED_INTO)} - asked
        if not wanted:
            break
        asked |= wanted
        states.update(states_of(conn, wanted))
    return {key: survivor(states, key) for key in person_keys}, states


def survivor(states: dict[str, Json], key: str) -> str:
    """The last key of `key`'s chain of pointers in `states` (never round a loop, at most MAX_HOPS)."""
    chain = [key]
    for _ in range(MAX_HOPS):
        into = (states.get(chain[-1]) or {}).get(MERGED_INTO)
        if not into or into in chain:
            break
        chain.append(str(into))
    return chain[-1]


def identities(conn: sa.Connection, person_key: str) -> list[str]:
    """Every key the person `person_key` names now goes by in the rules engine: their survivor first,
    then the keys merged into them (and `person_key` itself), each of which still leads to them."""
    people, states = people_now(conn, [person_key])
    into = people[person_key]
    merged = [str(k) for k in (states.get(into) or {}).get(MERGED) or ()]
    candidates = sorted({person_key, *merged} - {into})
    leads, _ = people_now(conn, candidates)
    return [into, *(k for k in candidates if leads[k] == into)]


def states_of(conn: sa.Connection, person_keys: Collection[str]) -> dict[str, Json]:
    """The engine's states of these keys (those it has), 500 keys a query."""
    keys, found = sorted(set(person_keys)), dict[str, Json]()
    for start in range(0, len(keys), 500):
        query = sa.select(S.c.person_key, S.c.state).where(S.c.person_key.in_(keys[start : start + 500]))
        found.update({str(p): dict(s) for p, s in conn.execute(query)})
    return found
