"""A person's stay on a caseload, as the coordination engine (hub.core.tasks) keeps it: the stay an
episode.opened starts, with its long-stay clock, and the episode.closed that ends both and issues
the PIC summary, or holds it, with a find-the-practice task, until the person's practice is known.
A close of a duplicate stay (its EpisodeOfCare entered-in-error: one a merge left open, closed by
`$close-duplicate`, hub.api.routes.coordination_duplicate) is no discharge: it ends that stay for good
and sends, holds and opens nothing (closes_in_error; left_by_merge says which stays it may close).

Whether an opening starts a stay at all is the 'one stay' rule of hub.core.stays, asked here of the
person's state, plus closing being final for an EpisodeOfCare id (a re-sent opening reopens nothing).
"""

from __future__ import annotations

from collections.abc import Collection
from datetime import datetime, timedelta

from hub.core.derived_events import Clock, DerivedEvents, Outcome
from hub.core.fhir_read import care_manager, of_kind, referrals_of
from hub.core.identity import stable_id
from hub.core.merges import MERGED
from hub.core.ports import Json, RecordEvent
from hub.core.stays import Held, opens_another_stay
from hub.core.task_status import FINAL
from schemas.coordination_rules import CoordinationRules
from schemas.events import coordination as co

HANDED_OVER = 4  # the rules version from which the hand-over of the team's tasks is said on the log
FIND_PRACTICE = "find-gp-practice"  # the engine's own task: a PIC summary waits for the person's practice
FIND_PRACTICE_TITLE = "Find the person's GP practice: their PIC summary is held until one is known"
IN_ERROR = "entered-in-error"  # an EpisodeOfCare that should never have been on the person's record


class Caseload:
    """One version of a locality's rules, applied to a person's stays on the caseload."""

    def __init__(self, rules: CoordinationRules, events: DerivedEvents, letter_due: timedelta) -> None:
        self.rules = rules
        self.events = events
        self._letter_due = letter_due  # when a held PIC summary's find-the-practice task is due

    def apply_episode(self, state: Json, event: RecordEvent, name: str, resources: list[Json], out: Outcome) -> None:
        """An episode.opened starts a stay (when it opens one); an episode.closed ends it for good, and
        a discharge's sends (or holds) its PIC summary; a duplicate stay's (entered-in-error) has none."""
        for episode in of_kind(resources, "EpisodeOfCare"):
            if name == "episode.opened" and _opens_a_stay(state, episode):
                self._open_stay(state, event, episode, out)
            elif name == "episode.closed":
                if episode["id"] not in state.setdefault("closed", []):
                    state["closed"].append(episode["id"])  # for good: a re-sent opening reopens nothing
                current = state.get("episode")
                if current and current.get("id") == episode["id"]:
                    state["episode"] = None
                    out.cleared.append(f"long-stay:{episode['id']}")
                    if current.get("long_stay"):  # the flag ends with the stay
                        out.events.append(self.events.long_stay_ended(state, event, current))
                for summary in [] if episode.get("status") == IN_ERROR else of_kind(resources, "Composition"):
                    if state.get("practice"):
                        out.events.append(self.events.pic_summary(state, event.subject, episode, summary, event.time))
                    else:
                        self._hold(state, event, episode, summary, out)

    def _open_stay(self, state: Json, event: RecordEvent, episode: Json, out: Outcome) -> None:
        start = datetime.fromisoformat(str((episode.get("period") or {}).get("start") or event.time.isoformat()))
        state["episode"] = {
            "id": episode["id"],
            "coordinator": care_manager(episode),
            "start": start.isoformat(),
            "long_stay": False,
        }
        for referral in sorted(referrals_of(episode)):  # the stay each referral opened: the first
            state.setdefault("episode_of", {}).setdefault(referral, episode["id"])
        out.set.append(Clock(f"long-stay:{episode['id']}", event.subject, start + self.rules.long_stay, "long-stay"))
        for task_id, task in sorted(state["tasks"].items()):  # the team's open tasks go to the new coordinator
            coordinator = state["episode"]["coordinator"]
            if task["status"] not in FINAL and task["owner"] == self.rules.service.ods and coordinator:
                task["owner"] = coordinator
                if self.rules.version >= HANDED_OVER:  # said on the log too, so the record's Task (and the
                    # worklist's ?owner=) names them now, not only once the task completes or goes overdue
                    said = self.events.task_event(co.TASK_UPDATED.type, task_id, event.subject, event.time, task)
                    out.events.append(said)
            if task["status"] not in FINAL and str(task.get("focus") or "").startswith("ServiceRequest/"):
                task["stay"] = episode["id"]  # a referral waiting when the stay began (log order)

    def _hold(self, state: Json, event: RecordEvent, episode: Json, summary: Json, out: Outcome) -> None:
        """No practice known to send the PIC summary to: it waits in the person's state, and the
        closing coordinator gets a task to find the practice, due when the letter is."""
        held = state.setdefault("held", {})
        if summary["id"] in held:
            return  # the same close, re-sent
        task_id = stable_id("task", FIND_PRACTICE, str(summary["id"]))
        held[summary["id"]] = {
            "episode": episode,
            "summary": summary,
            "closed": event.time.isoformat(),
            "task": task_id,
        }
        due = event.time + self._letter_due
        task: Json = {
            "rule": FIND_PRACTICE,
            "title": FIND_PRACTICE_TITLE,
            "status": "requested",
            "opened": event.time.isoformat(),
            "due": due.isoformat(),
            "owner": care_manager(episode) or self.rules.service.ods,
            "focus": f"Composition/{summary['id']}",
        }
        state["tasks"][task_id] = task
        out.set.append(Clock(task_id, event.subject, due, "task"))
        out.events.append(self.events.task_event(co.TASK_CREATED.type, task_id, event.subject, event.time, task))

    def release(self, state: Json, event: RecordEvent) -> Outcome:
        """Held PIC summaries go once the person's practice is known (never dated before their close);
        each one's find-the-practice task completes, unless a coordinator has finished it already."""
        out = Outcome()
        if not state.get("practice") or not state.get("held"):
            return out
        for held in sorted(state.pop("held").values(), key=lambda h: (h["closed"], h["summary"]["id"])):
            at = max(event.time, datetime.fromisoformat(held["closed"]))
            out.events.append(self.events.pic_summary(state, event.subject, held["episode"], held["summary"], at))
            task = state["tasks"].get(held["task"])
            if task is not None and task["status"] not in FINAL:
                task["status"] = "completed"
                task["closed"] = at.isoformat()
                task["practice"] = state["practice"]  # (the Task says where the summary went)
                out.cleared.append(held["task"])
                out.events.append(self.events.task_event(co.TASK_UPDATED.type, held["task"], event.subject, at, task))
        return out

    def flag_long_stay(self, state: Json, clock: Clock) -> Outcome:
        """A long-stay clock ran out: the stay it was set for, if the person is still on it, is flagged once."""
        out = Outcome(cleared=[clock.id])
        episode = state.get("episode")
        if episode and episode.get("id") == clock.id.removeprefix("long-stay:") and not episode.get("long_stay"):
            episode["long_stay"] = True
            out.events.append(self.events.long_stay_flag(clock, episode))
        return out


def closes_in_error(resources: list[Json]) -> bool:
    """Whether an episode.closed is a duplicate stay's close, no discharge: every EpisodeOfCare it
    carries is entered-in-error. The tasks a discharge opens (the PIC summary's) open for none of it."""
    episodes = of_kind(resources, "EpisodeOfCare")
    return bool(episodes) and all(e.get("status") == IN_ERROR for e in episodes)


def left_by_merge(state: Json | None, episode_id: str, duplicate_rules: Collection[str]) -> bool:
    """Whether the EpisodeOfCare `episode_id` is a duplicate stay an A40 left open (hub.core.merges), as
    the engine's state of the person (their survivor's) knows it: not their stay, not closed, and
    either a task of a `duplicate-stay` rule (`duplicate_rules`: their ids) names it, or (rules without
    one) the person has identities merged into them and the engine saw the episode open a stay
    (`episode_of`): by the one-stay rule only a merge leaves a stay seen open, not closed and not theirs."""
    if not state or episode_id in (state.get("closed") or ()):
        return False
    if (state.get("episode") or {}).get("id") == episode_id:
        return False  # the person's stay: leaving it is a discharge ($close)
    focus = f"EpisodeOfCare/{episode_id}"
    if any(t.get("focus") == focus and t.get("rule") in duplicate_rules for t in state["tasks"].values()):
        return True
    return bool(state.get(MERGED)) and episode_id in (state.get("episode_of") or {}).values()


def opens_nothing(state: Json, resources: list[Json]) -> bool:
    """An episode.opened none of whose EpisodeOfCare opens a stay (_opens_a_stay): it changes nothing."""
    episodes = of_kind(resources, "EpisodeOfCare")
    return bool(episodes) and not any(_opens_a_stay(state, e) for e in episodes)


def _opens_a_stay(state: Json, episode: Json) -> bool:
    """Whether an EpisodeOfCare opened opens a stay: not when an episode.closed has named it (closing
    is final: a re-sent opening reopens nothing), nor when it is a second stay (_another_stay)."""
    return not _closed(state, str(episode["id"])) and not _another_stay(state, episode)


def _closed(state: Json, episode_id: str) -> bool:
    """Whether an episode.closed has ended this EpisodeOfCare: named in `closed`, or (a state written
    before `closed` was kept) a stay one of its referrals opened that is not the person's stay now,
    which only a close can have ended: no second stay opens while one is open."""
    if episode_id in (state.get("closed") or ()):
        return True
    current = (state.get("episode") or {}).get("id")
    return episode_id != current and episode_id in (state.get("episode_of") or {}).values()


def _another_stay(state: Json, episode: Json) -> bool:
    """Whether an EpisodeOfCare opens a second stay (hub.core.stays), asked of the person's state:
    the stay they are on, and the stay each of the episode's referrals opened first."""
    named, opened, current = referrals_of(episode), state.get("episode_of") or {}, state.get("episode")
    held: list[Held] = [(opened[r], False, (r,)) for r in named if r in opened]
    if current:
        held.append((current.get("id"), True, ()))
    return opens_another_stay(episode["id"], named, held)
