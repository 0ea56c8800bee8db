"""Two accepts of one referral on a log written before accepts were claimed (random EpisodeOfCare and
event ids, perhaps two coordinators): the shared care record (hub.core.record), the rules engine
(hub.core.tasks over hub.core.coordination) and the commissioners' KPIs (hub.core.kpis) agree that the
first in log order opened the person's episode and the later one opened nothing. So does a stay
opened while the person is on a caseload already. The engine's derived events go back on the log,
as the hub puts them, and all three folds read the same log."""

from __future__ import annotations

import copy
from collections import Counter
from datetime import datetime

import pytest

from hub.core.identity import stable_id
from hub.core.kpis import KpiFold
from hub.core.ports import Json, RecordEvent
from hub.core.record import apply_events
from hub.core.tasks import Engine
from hub.replay_fold import FoldUnitOfWork
from hub.rules import load_rules
from hub.store.memory import MemoryCoordinationStore
from tests import locality_month as month
from tests.locality_month import at
from tests.unit.test_coordination_order import Hub

ENGINE = Engine(load_rules())
WHO = "P3"
PERSON = month.PEOPLE[WHO]
REVIEWS = {"review-6-weeks", "review-12-weeks"}


def referral(n: int = 1) -> RecordEvent:
    """A GP's referral of P3 to the service; the n-th has its own id."""
    event = month.referral(WHO, at(2 + n, 10), "gp")
    if n == 1:
        return event
    payload = copy.deepcopy(event.payload)
    payload["entry"][0]["resource"]["id"] = referral_id(n)
    return RecordEvent(stable_id("referral-event", str(n)), event.type, event.source, event.time, PERSON, payload)


def referral_id(n: int = 1) -> str:
    return month.referral_id(WHO) if n == 1 else stable_id("referral", WHO, str(n))


def accept(n: int, when: datetime, coordinator: str, of: int = 1) -> tuple[RecordEvent, RecordEvent]:
    """An accept as the API made it before claims: the referral's outcome and an EpisodeOfCare with
    an id of its own (random then; the n-th accept's here)."""
    outcome = month.outcome(WHO, when, "accepted")
    outcome.payload["entry"][0]["resource"]["id"] = referral_id(of)
    opened = month.episode(WHO, when, coordinator)
    episode = opened.payload["entry"][0]["resource"]
    episode["id"] = episode_id(n)
    episode["referralRequest"] = [{"reference": f"ServiceRequest/{referral_id(of)}"}]
    return outcome, opened


def episode_id(n: int) -> str:
    return stable_id("old-accept", WHO, str(n))


def close(n: int, opened: datetime, when: datetime, coordinator: str, of: int = 1) -> RecordEvent:
    closed = month.episode(WHO, when, coordinator, closed=True)
    episode = closed.payload["entry"][0]["resource"]
    episode["id"] = episode_id(n)
    episode["referralRequest"] = [{"reference": f"ServiceRequest/{referral_id(of)}"}]
    episode["period"] = {"start": opened.isoformat(), "end": when.isoformat()}
    return closed


class Folds(Hub):
    """The record, the rules engine and the KPIs over one log; the engine's events go back onto it."""

    coordination: MemoryCoordinationStore  # (Hub's default: its states and clocks are read here)

    def send(self, *events: RecordEvent) -> Folds:  # type: ignore[override]  # (chains, for one-line tests)
        super().send(*events)
        return self

    def recorded(self) -> dict[str, tuple[str, str]]:
        """EpisodeOfCare id -> (coordinator, status), as the record holds them."""
        found = self.record.reader().search("EpisodeOfCare", PERSON)
        return {e["id"]: (e["careManager"]["identifier"]["value"], e["status"]) for e in found}

    def stay(self) -> Json | None:
        """The person's open episode, as the engine holds it."""
        episode: Json | None = self.coordination.states[PERSON]["episode"]
        return episode

    def caseloads(self) -> dict[str, int]:
        """Coordinator -> people on their caseload, as the engine's states say (the caseload API)."""
        open_ = (s.get("episode") for k, s in self.coordination.states.items() if k == PERSON)
        return dict(Counter(e["coordinator"] for e in open_ if e))

    def kpi_caseloads(self) -> dict[str, float | None]:
        fold = KpiFold(month.SERVICE)
        for event in self.log:
            fold.add(event)
        return {r.breakdown: r.value for r in fold.report("2026-11") if r.kpi == "caseload at month end"}

    def reviews(self) -> set[tuple[str, str, str]]:
        """(task id, what it is about, status) of the review tasks, as the engine holds them; the
        record holds the same."""
        held = self.coordination.states[PERSON]["tasks"].items()
        engine = {(tid, t["focus"], t["status"]) for tid, t in held if t["rule"] in REVIEWS}
        recorded = {
            (t["id"], t["focus"]["reference"], t["status"])
            for t in self.record.reader().search("Task", PERSON)
            if t["code"]["coding"][0]["code"] in REVIEWS
        }
        assert recorded == engine
        return engine

    def long_stay_clocks(self) -> list[str]:
        return sorted(c for c in self.coordination.clocks if c.startswith("long-stay:"))


@pytest.mark.parametrize(("first", "second"), [("c-ann", "c-bob"), ("c-bob", "c-ann"), ("c-ann", "c-ann")])
def test_two_accepts_of_one_referral_open_one_episode_the_firsts_in_the_record_engine_and_kpis(
    first: str, second: str
) -> None:
    folds = Folds().send(referral(), *accept(1, at(6, 9), first), *accept(2, at(6, 9, 5), second))

    assert folds.recorded() == {episode_id(1): (first, "active")}
    stay = folds.stay()
    assert stay is not None and (stay["id"], stay["coordinator"]) == (episode_id(1), first)
    assert folds.caseloads() == {first: 1}
    assert folds.kpi_caseloads() == {first: 1}
    assert {focus for _, focus, _ in folds.reviews()} == {f"EpisodeOfCare/{episode_id(1)}"}
    assert len(folds.reviews()) == 2
    assert folds.long_stay_clocks() == [f"long-stay:{episode_id(1)}"]


def test_an_accept_of_a_referral_whose_episode_has_closed_opens_nothing() -> None:
    folds = Folds().send(
        referral(),
        *accept(1, at(6, 9), "c-ann"),
        close(1, at(6, 9), at(20, 9), "c-ann"),
        *accept(2, at(21, 9), "c-bob"),
    )

    assert folds.recorded() == {episode_id(1): ("c-ann", "finished")}
    assert folds.stay() is None
    assert folds.caseloads() == {}
    assert folds.kpi_caseloads() == {"c-ann": 0}
    assert {status for _, _, status in folds.reviews()} == {"cancelled"}
    assert folds.long_stay_clocks() == []


def test_another_referral_accepted_while_the_person_is_on_a_caseload_opens_nothing() -> None:
    folds = Folds().send(referral(1), referral(2), *accept(1, at(6, 9), "c-ann"), *accept(2, at(7, 9), "c-bob", of=2))

    assert folds.recorded() == {episode_id(1): ("c-ann", "active")}
    stay = folds.stay()
    assert stay is not None and stay["id"] == episode_id(1)
    assert folds.caseloads() == {"c-ann": 1}
    assert folds.kpi_caseloads() == {"c-ann": 1}
    assert len(folds.reviews()) == 2


def test_after_a_close_another_referrals_accept_opens_a_new_episode() -> None:
    folds = Folds().send(
        referral(1),
        *accept(1, at(6, 9), "c-ann"),
        close(1, at(6, 9), at(10, 9), "c-ann"),
        referral(2),
        *accept(2, at(12, 9), "c-bob", of=2),
    )

    assert folds.recorded() == {episode_id(1): ("c-ann", "finished"), episode_id(2): ("c-bob", "active")}
    stay = folds.stay()
    assert stay is not None and (stay["id"], stay["coordinator"]) == (episode_id(2), "c-bob")
    assert folds.caseloads() == {"c-bob": 1}
    assert folds.kpi_caseloads() == {"c-ann": 0, "c-bob": 1}
    assert len(folds.reviews()) == 4
    assert folds.long_stay_clocks() == [f"long-stay:{episode_id(2)}"]


def test_the_same_episode_sent_again_in_another_event_is_the_one_episode_as_before() -> None:
    outcome, opened = accept(1, at(6, 9), "c-ann")
    again = RecordEvent(stable_id("again", opened.id), opened.type, opened.source, opened.time, PERSON, opened.payload)
    folds = Folds().send(referral(), outcome, opened, again)

    assert folds.recorded() == {episode_id(1): ("c-ann", "active")}
    assert folds.caseloads() == {"c-ann": 1}
    assert folds.kpi_caseloads() == {"c-ann": 1}
    assert len(folds.reviews()) == 2


def test_a_replay_fold_keeps_the_first_episode_and_takes_the_person_for_no_merged_away_one() -> None:
    # (a replay's unit of work notes whom a merge read the resources of: reading a person's episodes is no merge)
    log = Folds().send(referral(), *accept(1, at(6, 9), "c-ann"), *accept(2, at(6, 9, 5), "c-bob")).log
    fold = FoldUnitOfWork()
    apply_events(fold, log)
    assert {key for key in fold.by_person[PERSON] if key[0] == "EpisodeOfCare"} == {("EpisodeOfCare", episode_id(1))}
    assert fold.merged_away == set()
