"""Whom each person key is now, for the commissioner KPIs (hub.core.kpi_facts): the A40 merges on the
log followed as the rules engine follows them, so a merged person counts once in every figure."""

from __future__ import annotations

from hub.core.identity import MAX_HOPS


def survivors_of(merges: list[tuple[str, str]]) -> tuple[dict[str, str], list[tuple[str, str | None]]]:
    """Follow `merges` ((retired, into), in the order they are taken) as the rules engine does
    (hub.core.coordination `_People`): a retired key, and the keys merged into it before, point at the
    survivor; a chain is followed at most MAX_HOPS (the key it ends at is a person again); a merge
    reversed (its survivor was merged into the key it now retires) makes the survivor it names a person
    again. Gives each key merged away -> the person it is now, and what the engine's state did, in
    order: (retired, person) a retired key's state folded into the person's, (key, None) a key's state
    begun again (new_state)."""
    into: dict[str, str] = {}
    merged: dict[str, list[str]] = {}  # a person -> the keys folded into them (their state's MERGED)
    done: list[tuple[str, str | None]] = []

    def chain(key: str) -> list[str]:
        keys = [key]
        for _ in range(MAX_HOPS):
            nxt = into.get(keys[-1])
            if nxt is None or nxt in keys:
                break
            keys.append(nxt)
        return keys

    def begin_again(key: str) -> None:
        del into[key]
        merged.pop(key, None)
        done.append((key, None))

    def survivor(key: str) -> str:
        last = chain(key)[-1]
        if last in into:  # (past MAX_HOPS: the chain ends here, and its state is new)
            begin_again(last)
        return last

    for retired, named in merges:
        if retired in chain(named) and named in into:
            begin_again(named)  # reversed: the survivor named is a person again
        person = survivor(named)
        if person == survivor(retired):
            continue  # (the same merge again, or one the chain holds already)
        before = [k for k in merged.get(retired, ()) if k != person]
        if retired not in into:  # (a key merged away before points on: its state went there)
            kept = merged.setdefault(person, [])
            kept += [k for k in [*merged.get(retired, ()), retired] if k not in kept and k != person]
            done.append((retired, person))
        for key in [retired, *(k for k in before if into.get(k) == retired)]:
            into[key] = person
            merged.pop(key, None)
    return {key: chain(key)[-1] for key in into}, done
