"""Accepts' claims follow A40 merges as the rules engine does (hub.store.coordination), on SQLite and
PostgreSQL: an accept claimed under a key an A40 has since retired is its survivor's, counted once
against the caseload cap and closed by the survivor's close; an accept for either key of a merged
person is refused while the other key's episode holds them.

The person of tests.unit.test_engine_merges: RETIRED (an old hospital number) merged into SURVIVOR."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest
import yaml

from hub.api.routes.coordination_acceptance import refuse_allocation
from hub.api.routes.coordination_input import episode_for
from hub.core.coordination import Positioned, process
from hub.core.errors import RuleRefusedError
from hub.core.ports import CaseloadFull, Json, RecordEvent
from hub.core.tasks import Engine
from hub.rules import DEFAULT
from hub.store.coordination import SqlCoordinationStore
from hub.store.database import open_engine
from schemas.coordination_rules import CoordinationRules
from schemas.events import coordination as co
from tests import locality_month as month
from tests.unit import test_engine_merges as tm

ENGINE = Engine(CoordinationRules.model_validate(yaml.safe_load(DEFAULT.read_text())))
R, S = tm.RETIRED, tm.SURVIVOR
COUNT = itertools.count()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def store(request: pytest.FixtureRequest) -> Iterator[SqlCoordinationStore]:
    engine = open_engine(str(request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "postgres_url")))
    yield SqlCoordinationStore(engine)
    engine.dispose()


def as_(key: str, event: RecordEvent, who: str = "P1") -> RecordEvent:
    return tm.as_(key, event, who, event_id=f"ev-{next(COUNT)}-{key[:8]}")  # (fits processed_event.event_id)


def referred_under_old_number() -> RecordEvent:
    return as_(R, month.referral("P1", month.at(4, 10), "gp"))


def apply(store: SqlCoordinationStore, event: RecordEvent) -> None:
    """The event through the rules engine, read from its person's partition (the A40: the survivor's)."""
    with store.unit_of_work() as uow:
        process(ENGINE, uow, [Positioned(event, tm.partition_of(event))])
        uow.commit()


def accept(store: SqlCoordinationStore, referral: str, person: str, coordinator: str, cap: int = 28) -> Any:
    episode = episode_for(referral, person, coordinator, month.SERVICE, month.at(6, 9))
    return episode, store.claim_acceptance(referral, person, coordinator, episode, month.at(6, 9), lambda _: True, cap)


def opened(person: str, episode: Json) -> RecordEvent:
    """The episode.opened its accept publishes, under the key it was accepted for."""
    return as_(
        person, month._event(co.EPISODE_OPENED.type, "P1", month.at(6, 9), month._bundle(episode), source=month.SERVICE)
    )


def closed(person: str, episode: Json) -> RecordEvent:
    finished = episode | {"status": "finished", "period": {**episode["period"], "end": month.at(20, 9).isoformat()}}
    return as_(
        person,
        month._event(co.EPISODE_CLOSED.type, "P1", month.at(20, 9), month._bundle(finished), source=month.SERVICE),
    )


def refused(store: SqlCoordinationStore, person: str) -> str | None:
    """What refuse_allocation (the $accept's check of the engine's state) says for `person`."""
    api = SimpleNamespace(coordination=store, reader=SimpleNamespace(read=lambda *_: None))
    try:
        asyncio.run(refuse_allocation(api, None, person))  # type: ignore[arg-type]
    except RuleRefusedError as refusal:
        return refusal.diagnostics
    return None


def test_an_accept_claimed_under_a_key_since_merged_away_counts_once_against_the_cap(
    store: SqlCoordinationStore,
) -> None:
    apply(store, referred_under_old_number())
    episode, found = accept(store, "ref-r", R, "c-ann", cap=2)
    assert found is None
    apply(store, opened(R, episode))
    apply(store, tm.MERGE)  # the engine has the person (SURVIVOR) on c-ann's caseload; the claim names R

    assert store.caseloads() == {"c-ann": 1}
    assert store.unsent_acceptances("c-ann") == []
    assert accept(store, "ref-other", "someone-else", "c-ann", cap=2)[1] is None
    assert accept(store, "ref-third", "a-third", "c-ann", cap=2)[1] == CaseloadFull("c-ann", 2)


def test_an_accept_claimed_under_a_retired_key_is_closed_by_the_survivors_close(
    store: SqlCoordinationStore,
) -> None:
    apply(store, referred_under_old_number())
    episode, _ = accept(store, "ref-r", R, "c-ann", cap=1)
    apply(store, tm.MERGE)  # merged before the engine had the accept
    apply(store, opened(R, episode))  # (sent under the old number: the survivor's stay)
    apply(store, closed(S, episode))

    assert store.caseloads() == {}
    assert accept(store, "ref-other", "someone-else", "c-ann", cap=1)[1] is None


def test_an_accept_for_the_retired_key_is_refused_while_the_survivor_is_on_a_caseload(
    store: SqlCoordinationStore,
) -> None:
    episode, _ = accept(store, "ref-s", S, "c-bob")
    apply(store, opened(S, episode))
    apply(store, referred_under_old_number())
    assert refused(store, R) is None  # (two people until the A40)
    apply(store, tm.MERGE)

    for key in (R, S):
        said = refused(store, key)
        assert said is not None
        assert f"EpisodeOfCare/{episode['id']}" in said
        assert "c-bob" in said


def test_a_claim_under_either_key_of_a_merged_person_is_held_by_the_others_open_episode(
    store: SqlCoordinationStore,
) -> None:
    apply(store, referred_under_old_number())
    apply(store, tm.MERGE)
    episode, found = accept(store, "ref-s", S, "c-bob")
    assert found is None  # (not yet applied by the engine: held by its claim alone)

    assert accept(store, "ref-r", R, "c-ann")[1] == episode
    apply(store, opened(S, episode))
    assert accept(store, "ref-r", R, "c-ann")[1] == episode
    assert store.caseloads() == {"c-bob": 1}


def test_a_claim_for_the_survivor_is_held_by_an_episode_claimed_under_the_retired_key(
    store: SqlCoordinationStore,
) -> None:
    apply(store, referred_under_old_number())
    episode, _ = accept(store, "ref-r", R, "c-ann")
    apply(store, tm.MERGE)

    assert accept(store, "ref-s", S, "c-bob")[1] == episode
    apply(store, opened(R, episode))
    apply(store, closed(S, episode))
    assert accept(store, "ref-s", S, "c-bob")[1] is None  # (closed: the person may be accepted again)
