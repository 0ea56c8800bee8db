"""An episode.opened sent again after its episode closed (a retry, a replayed API command, an old
duplicate under a new event id, at any event time): the shared care record (hub.core.record), the
rules engine (hub.core.tasks) and the KPIs (hub.core.kpi_facts) agree that closing is final for an
EpisodeOfCare id, so it reopens nothing: no stay, no long-stay clock, no task, no caseload. A person
who comes back is referred and accepted again, under a new id. Sent again while the episode is
open, the opening is the one episode, as before."""

from __future__ import annotations

import copy
from datetime import datetime

import pytest

from hub.core.identity import stable_id
from hub.core.kpis import KpiFold
from hub.core.ports import RecordEvent
from tests import locality_month as month
from tests.locality_month import at
from tests.unit.test_accept_once_in_the_folds import PERSON, WHO, Folds, accept, close, episode_id, referral

OPENED, CLOSED = at(6, 9), at(10, 9)


def again(opened: RecordEvent, when: datetime, coordinator: str | None = None) -> RecordEvent:
    """The same opening as a new event (an id of its own) at `when`; its careManager another, if named."""
    payload = copy.deepcopy(opened.payload)
    if coordinator:
        payload["entry"][0]["resource"]["careManager"]["identifier"]["value"] = coordinator
    event_id = stable_id("again", opened.id, when.isoformat())
    return RecordEvent(event_id, opened.type, opened.source, when, PERSON, payload)


def accepted_and_closed() -> tuple[Folds, RecordEvent]:
    """P3 referred, accepted onto c-ann's caseload, and closed; with the accept's episode.opened."""
    outcome, opened = accept(1, OPENED, "c-ann")
    return Folds().send(referral(), outcome, opened, close(1, OPENED, CLOSED, "c-ann")), opened


@pytest.mark.parametrize(
    ("when", "coordinator"),
    [
        (at(25, 9), None),  # a retry, later
        (at(25, 9), "c-bob"),  # a replayed command, naming another coordinator
        (OPENED, None),  # an old duplicate under a new event id, with its own time
    ],
)
def test_an_opening_sent_again_after_the_close_reopens_nothing_in_the_record_engine_or_kpis(
    when: datetime, coordinator: str | None
) -> None:
    folds, opened = accepted_and_closed()
    reviews, sent = folds.reviews(), len(folds.log)

    folds.send(again(opened, when, coordinator))

    assert folds.recorded() == {episode_id(1): ("c-ann", "finished")}
    assert folds.stay() is None
    assert folds.caseloads() == {}
    assert folds.kpi_caseloads() == {"c-ann": 0}
    assert folds.long_stay_clocks() == []
    assert folds.reviews() == reviews
    assert folds.log[sent:] == [folds.log[-1]]  # nothing derived from it: no task, no flag


def test_an_opening_sent_again_after_a_close_the_engine_applied_before_it_kept_closed_episodes_reopens_nothing() -> (
    None
):
    # a live hub upgraded in place: its people's engine states were written without the "closed" list
    folds, opened = accepted_and_closed()
    folds.coordination.states[PERSON].pop("closed")

    folds.send(again(opened, at(25, 9)))

    assert folds.recorded() == {episode_id(1): ("c-ann", "finished")}
    assert (folds.stay(), folds.caseloads(), folds.long_stay_clocks()) == (None, {}, [])
    assert folds.kpi_caseloads() == {"c-ann": 0}


def test_an_opening_sent_again_after_the_close_with_the_person_writes_the_person_not_the_episode() -> None:
    folds, opened = accepted_and_closed()
    event = again(opened, at(25, 9))
    event.payload["entry"].append({"resource": {**month.patient(WHO), "birthDate": "1940-03-02"}})  # (news)

    folds.send(event)

    assert folds.recorded() == {episode_id(1): ("c-ann", "finished")}
    provenance = folds.record.reader().read("Provenance", event.id)
    assert provenance is not None
    assert [t["reference"].split("/")[0] for t in provenance["target"]] == ["Patient"]
    assert (folds.record.reader().read("Patient", PERSON) or {}).get("birthDate") == "1940-03-02"
    assert folds.stay() is None
    assert folds.kpi_caseloads() == {"c-ann": 0}


def test_after_an_opening_sent_again_after_the_close_the_person_comes_back_under_a_new_episode() -> None:
    folds, opened = accepted_and_closed()

    folds.send(again(opened, at(11, 9)), referral(2), *accept(2, at(12, 9), "c-bob", of=2))

    assert folds.recorded() == {episode_id(1): ("c-ann", "finished"), episode_id(2): ("c-bob", "active")}
    stay = folds.stay()
    assert stay is not None and (stay["id"], stay["coordinator"]) == (episode_id(2), "c-bob")
    assert folds.caseloads() == {"c-bob": 1}
    assert folds.kpi_caseloads() == {"c-ann": 0, "c-bob": 1}
    assert folds.long_stay_clocks() == [f"long-stay:{episode_id(2)}"]


def test_a_referral_after_the_close_still_waits_for_its_visit_when_the_opening_is_sent_again() -> None:
    # (the re-sent opening is no stay begun after the new referral, so it does not end its wait)
    folds, opened = accepted_and_closed()

    folds.send(referral(2), again(opened, at(11, 9)), month.contact(WHO, at(15, 9), "face-to-face"))

    fold = KpiFold(month.SERVICE)
    for event in folds.log:
        fold.add(event)
    visits = {r.kpi: r.value for r in fold.report("2026-11") if r.kpi == "first visits"}
    assert visits == {"first visits": 1}
    assert folds.stay() is None
    assert folds.kpi_caseloads() == {"c-ann": 0}


@pytest.mark.parametrize("coordinator", ["c-ann", "c-bob"])
def test_an_opening_sent_again_while_the_episode_is_open_is_the_one_episode_as_before(coordinator: str) -> None:
    outcome, opened = accept(1, OPENED, "c-ann")
    folds = Folds().send(referral(), outcome, opened, again(opened, at(8, 9), coordinator))

    assert folds.recorded() == {episode_id(1): (coordinator, "active")}
    stay = folds.stay()
    assert stay is not None and (stay["id"], stay["coordinator"]) == (episode_id(1), coordinator)
    assert folds.caseloads() == {coordinator: 1}
    assert folds.kpi_caseloads() == {coordinator: 1}
    assert folds.long_stay_clocks() == [f"long-stay:{episode_id(1)}"]
    assert len(folds.reviews()) == 2

    folds.send(close(1, OPENED, CLOSED, coordinator))

    assert folds.recorded() == {episode_id(1): (coordinator, "finished")}
    assert folds.stay() is None
    assert folds.kpi_caseloads() == {coordinator: 0}
    assert folds.long_stay_clocks() == []
