"""Care coordination rules: case finding, coordinator tasks, deadline clocks, long stays on a caseload.

Pure: one person's state (plain JSON, kept by the caller) and one event in; the state changed in
place, derived events and clock changes out. No clock reads: a task is due a duration after the
event that opened it (a discharge's: after the discharge itself, which the event carries), and a
clock runs out only when a clock tick (the hub's clock, written onto the log) reaches its due time,
so a replay of the log opens, closes and escalates exactly the same tasks at exactly the same times.

Order of work for each event (Engine.handle; the steps live here unless another module is named):
    person      a Patient's registered practice is remembered: the newest word on it by event time, a
                register row's or a hospital's Patient naming one, as the record takes it (hub.core.practices)
    release     once an event names the practice (an ADT, a register row, a GP's referral, or the
                coordinator completing the find-the-practice task with the practice as its output), held
                PIC summaries go to it and their find-the-practice tasks complete (hub.core.caseload)
    death       a Patient for the person saying they died (or taking it back) is kept; news of the death
                cancels their open tasks that ask someone to contact or visit them, and none opens
                while the engine knows it (hub.core.deaths)
    manual      a task.updated from a coordinator (the API) moves the task's status if the move is
                allowed (hub.core.task_status); a final status stops its clock. Then release again (the
                coordinator may have named the practice); a task.updated goes no further
    one stay    an episode.opened changes nothing when the person is on a caseload under another
                EpisodeOfCare, or one of its referrals opened another, open or closed (a second accept,
                on a log from before accepts were claimed): the first in log order stands; nor when an
                episode.closed has named its EpisodeOfCare (closing is final: a re-sent opening, at any
                time, reopens no stay and starts no clock or task). The rule is hub.core.stays, as the
                record (hub.core.record) and the KPIs (hub.core.kpi_facts) take it; the engine asks it
                in hub.core.caseload
    fulfil      open tasks whose rule names this event (and contact kind or referral outcome, and not
                earlier than `not_before` after the task opened; but a referral's task counts its answers
                from the referral's date as the record holds it, its latest authoredOn in log order, and
                is answered by an answer dated by day alone on that day: hub.core.days; and a stay's
                task ends only with an episode.closed naming that stay, from rules version 3,
                OWN_STAY_CLOSE) complete; `cancelled_by` cancels. A referral's outcomes and date are
                remembered, for tasks it opens later and for its corrections (hub.core.referral_moves);
                an outcome the record skips as it comes (dated before the referral, or older than an
                outcome it took) answers nothing, then or after a correction, move or merge
    case-find   a register row meeting a criterion, or a referral from a listed source, puts the person
                on their practice's case list once (caselist.added)
    episode     episode.opened starts a caseload stay and its long-stay clock; episode.closed ends both
                (its EpisodeOfCare is remembered as closed, for good) and issues the PIC summary to the
                person's practice, or, when no practice is known, holds it and gives the coordinator a
                task to find the practice (due when the letter is) (hub.core.caseload)
    open        every task rule triggered by this event (and its condition) opens a task with a clock,
                once per referral, stay or discharge (a correction opens none; a referral's corrected
                date moves the clock of its task still open and not overdue, due from that date, and
                the outcomes said of it answer its open tasks, overdue ones too, from that date)
Before a referral re-sent for another person is handled, the caller has Engine.move cancel the open
tasks the first person has for it and take its outcomes to the new one (hub.core.referral_moves).
Before an A40 is handled, the caller has Engine.merge fold the retired identity's state into the
survivor's (hub.core.merges, which opens the `duplicate-stay` rule's task when both were on a
caseload), and it hands every later event and clock of the retired key to the survivor's state
(hub.core.coordination).

A clock that runs out (Engine.fire) marks its task overdue, hands it to the team lead and emits one
task.overdue; a long-stay clock emits one caseload.long-stay flag (hub.core.caseload). What derived
events carry: hub.core.derived_events.
"""

from __future__ import annotations

from datetime import datetime, time, timedelta

from hub.core.caseload import FIND_PRACTICE as FIND_PRACTICE
from hub.core.caseload import Caseload, closes_in_error, opens_nothing
from hub.core.days import UK, answers_that_day
from hub.core.deaths import cancel_contacts, contact_rules, learn
from hub.core.derived_events import Clock, DerivedEvents, Outcome
from hub.core.fhir_read import (
    addressed_to,
    bundle_resources,
    care_manager,
    contact_kind,
    extension,
    focus_of,
    of_kind,
    referral_source,
    referrals_of,
    register_measures,
)
from hub.core.identity import stable_id
from hub.core.kpi_reading import fhir_time
from hub.core.merges import Rules as MergeRules
from hub.core.merges import close_stay_rule, fold
from hub.core.pic_summary import LETTER_DUE, by_its_practice, letter_practice, practice_found, receipt_names
from hub.core.ports import Json, RecordEvent
from hub.core.practices import remember
from hub.core.referral_moves import (
    forget_made,
    made_on,
    move,
    outcome_said,
    remember_made,
    remember_outcomes,
    remember_said,
    says_moved,
    taken,
)
from hub.core.task_status import FINAL, may_move
from schemas.coordination_rules import CoordinationRules, Fulfilment, TaskRule
from schemas.events import coordination as co
from schemas.events.encounter import ENCOUNTER_DISCHARGED
from schemas.events.patient import PATIENT_MERGED

_OWN = frozenset(
    {
        co.TASK_CREATED.type,
        co.TASK_OVERDUE.type,
        co.CASELIST_ADDED.type,
        co.CASELOAD_LONG_STAY.type,
        co.CLOCK_TICK.type,
        co.HUDDLE_AGENDA.type,
    }
)


def short_name(event_type: str) -> str:
    """`uk.nhs.carehub.referral.received.v1` -> `referral.received`."""
    parts = event_type.split(".")
    return ".".join(parts[3:-1]) if len(parts) >= 6 else event_type


OUTCOME_EVENT = short_name(co.REFERRAL_OUTCOME.type)
OWN_STAY_CLOSE = 3  # the rules version from which a stay's close ends only the tasks of the stay it names
# the rules version from which a discharge's tasks run from the discharge itself (_began), no one who
# died is case-listed, and only the practice's receipt answers its letter's task (_fulfil)
FROM_DISCHARGE = 4


def new_state() -> Json:
    """A person the coordination service has not heard of."""
    return {"practice": None, "eligible": None, "episode": None, "tasks": {}}


class Engine:
    """One version of a locality's rules, applied event by event."""

    def __init__(self, rules: CoordinationRules) -> None:
        self.rules = rules
        self.events = DerivedEvents(rules)
        closed, receipt = short_name(co.EPISODE_CLOSED.type), short_name(co.PIC_SUMMARY_RECEIPT.type)
        letters = (r for r in rules.tasks if r.trigger == closed and any(f.event == receipt for f in r.done_by))
        self.caseload = Caseload(rules, self.events, min((r.due for r in letters), default=LETTER_DUE))
        self._contacts = contact_rules(rules, short_name(co.CONTACT_RECORDED.type))  # (hub.core.deaths)
        close_stay = close_stay_rule(rules, short_name(PATIENT_MERGED.type))
        self._merges = MergeRules(self.events, self._contacts, rules.long_stay, close_stay)
        # (versions 1 and 2: any stay's close ends the person's stay tasks, as a replay under them always did)
        self._own_stay = rules.version >= OWN_STAY_CLOSE
        self._from_discharge = rules.version >= FROM_DISCHARGE  # (before: from the event, and the dead listed)

    def handle(self, state: Json, event: RecordEvent) -> Outcome:
        """Apply one event to one person's state."""
        if event.type in _OWN:
            return Outcome()
        name = short_name(event.type)
        resources = bundle_resources(event.payload)
        said = event.type != co.PIC_SUMMARY_SENT.type  # (the hub's own letter says only what it was told)
        if said:
            remember(state, event, resources)  # (before learn: hub.core.practices)
        out = self.caseload.release(state, event)
        if said and learn(state, event, resources):
            out.extend(cancel_contacts(self.events, self._contacts, state, event))
        if name == "task.updated":
            out.extend(self._manual(state, event, resources))
            out.extend(self.caseload.release(state, event))  # (the coordinator may have named the practice)
            return out
        if name == "episode.opened" and opens_nothing(state, resources):
            return out
        if name == OUTCOME_EVENT and remember_outcomes(state, event, resources):
            # the record skipped it (dated before the referral, or older than an outcome it took): so do we
            resources = [r for r in resources if r.get("resourceType") != "ServiceRequest"]
        elif event.type == co.REFERRAL_RECEIVED.type:
            remember_made(state, event, resources)  # (before its tasks are answered or re-timed)
        remember_said(state, event, resources)  # (the record's ServiceRequest, as it writes it)
        self._fulfil(state, event, name, resources, out)
        self._case_find(state, event, name, resources, out)
        self.caseload.apply_episode(state, event, name, resources, out)
        for rule in () if closes_in_error(resources) else self.rules.tasks:  # (a duplicate stay's: no discharge)
            if rule.trigger == name and self._condition(rule, state, resources):
                self._open(state, event, rule, resources, out)
        return out

    def fire(self, state: Json, clock: Clock) -> Outcome:
        """A clock ran out (a tick at or after its due time reached the person's partition)."""
        if clock.kind == "long-stay":
            return self.caseload.flag_long_stay(state, clock)
        out = Outcome(cleared=[clock.id])
        task = state["tasks"].get(clock.id)
        if task is None or task["status"] in FINAL or task.get("overdue"):
            return out
        task["overdue"] = True
        task["escalated_from"] = task["owner"]
        task["owner"] = self.rules.service.team_lead
        out.events.append(self.events.task_event(co.TASK_OVERDUE.type, clock.id, clock.person_key, clock.due, task))
        return out

    # --- the steps -------------------------------------------------------------------------

    def _fulfil(self, state: Json, event: RecordEvent, name: str, resources: list[Json], out: Outcome) -> None:
        if event.type == co.PIC_SUMMARY_SENT.type and self._from_discharge:  # the practice each letter is for
            for letter in of_kind(resources, "Composition"):
                state.setdefault("letters", {})[str(letter.get("id"))] = letter_practice(resources)
        if event.type == co.PIC_SUMMARY_RECEIPT.type and self._from_discharge:
            # only the practice's receipt: one from another subscriber, on a log from before only the
            # practice's delivery was a receipt, answers nothing, as the KPIs count none (hub.core.kpi_facts)
            named = next((receipt_names(c) for c in of_kind(resources, "Communication")), (None, None))
            if not by_its_practice(*named, state.get("letters") or {}):
                return
        rules = {r.id: r for r in self.rules.tasks}
        for task_id, task in sorted(state["tasks"].items(), key=lambda kv: (kv[1]["due"], kv[0])):
            rule = rules.get(task["rule"])
            if rule is not None and task["status"] not in FINAL:
                said = (name, event.time, resources)
                self._answer(task_id, task, rule, said, (event.subject, made_on(state, task.get("focus"))), out)

    def _answer(
        self,
        task_id: str,
        task: Json,
        rule: TaskRule,
        said: tuple[str, datetime, list[Json]],
        of: tuple[str, datetime | None],
        out: Outcome,
    ) -> None:
        """Complete or cancel an open task if what was said (event name, time, resources) is what its rule
        names; `of` is whose task it is and when its referral was made, as the record holds it (if one)."""
        (name, at, resources), (person, made) = said, of
        mine = (task, made, self._own_stay or closes_in_error(resources))  # (a duplicate stay's close: any version)
        if any(_matches(f, name, at, resources, mine) for f in rule.done_by):
            status = "completed"
        elif any(_matches(f, name, at, resources, mine) for f in rule.cancelled_by):
            status = "cancelled"
        else:
            return
        task["status"] = status
        task["closed"] = at.isoformat()
        out.cleared.append(task_id)
        out.events.append(self.events.task_event(co.TASK_UPDATED.type, task_id, person, at, task))

    def _case_find(self, state: Json, event: RecordEvent, name: str, resources: list[Json], out: Outcome) -> None:
        if state.get("eligible"):
            return
        matched: str | None = None
        if name == "register.row":
            measures = register_measures(resources)
            for criterion in self.rules.case_finding:
                if criterion.at_least and all(measures.get(m, -1) >= n for m, n in criterion.at_least.items()):
                    matched = criterion.id
                    break
        elif name == "referral.received":
            source = _referral_source(resources)
            for criterion in self.rules.case_finding:
                if source and source in criterion.referral_sources:
                    matched = criterion.id
                    break
        if matched is None or (state.get("died") and self._from_discharge):
            return  # (no one who died is put on a case list: hub.core.deaths)
        state["eligible"] = matched
        out.events.append(self.events.case_listed(state, event, matched))

    def _condition(self, rule: TaskRule, state: Json, resources: list[Json]) -> bool:
        if state.get("died") and rule.id in self._contacts:
            return False  # no one is sent to contact or visit a person who died (hub.core.deaths)
        if rule.when == "on-caseload-or-case-list":
            return bool(state.get("episode") or state.get("eligible"))
        if rule.when == "duplicate-stay":
            return False  # (opened by the merge's fold, for the stay it left open: hub.core.merges)
        if rule.when == "addressed-to-service":
            return any(addressed_to(sr, self.rules.service.ods) for sr in of_kind(resources, "ServiceRequest"))
        return True

    def _open(self, state: Json, event: RecordEvent, rule: TaskRule, resources: list[Json], out: Outcome) -> None:
        task_id = stable_id("task", event.id, rule.id)
        focus = focus_of(resources)
        if task_id in state["tasks"] or (focus and any(_same_task(t, rule.id, focus) for t in state["tasks"].values())):
            # the event again, or the same referral, stay or discharge sent again (corrected, or a retry)
            if focus and event.type == co.REFERRAL_RECEIVED.type:
                self._retime(state, event, rule, focus, out)
            elif focus and event.type == ENCOUNTER_DISCHARGED.type and self._from_discharge:
                self._retime_discharge(state, event, rule, focus, _began(event, resources), out)
            return
        episode = state.get("episode") or {}
        closing = [c for c in map(care_manager, of_kind(resources, "EpisodeOfCare")) if c]  # episode.closed
        coordinator = episode.get("coordinator") or (closing[0] if closing else None)
        owner = coordinator if rule.owner == "coordinator" and coordinator else self.rules.service.ods
        began = _began(event, resources) if self._from_discharge else event.time
        task: Json = {
            "rule": rule.id,
            "title": rule.title,
            "status": "requested",
            "opened": began.isoformat(),
            "due": (began + rule.due).isoformat(),
            "owner": owner,
            "focus": focus,
            "version": self.rules.version,
        }
        state["tasks"][task_id] = task
        out.set.append(Clock(task_id, event.subject, began + rule.due, "task"))
        out.events.append(self.events.task_event(co.TASK_CREATED.type, task_id, event.subject, event.time, task))
        self._answer_remembered(state, event, task_id, task, rule, focus, out)

    def _answer_remembered(
        self, state: Json, event: RecordEvent, task_id: str, task: Json, rule: TaskRule, focus: str | None, out: Outcome
    ) -> None:
        """The outcomes said of the task's referral before it opened (or before its date was corrected)."""
        of = (event.subject, made_on(state, focus))
        for said in taken((state.get("outcomes") or {}).get(focus or "", [])):
            if task["status"] not in FINAL:
                at, resources = datetime.fromisoformat(said["at"]), [outcome_said(str(focus), said["outcome"])]
                self._answer(task_id, task, rule, (OUTCOME_EVENT, at, resources), of, out)

    def _retime(self, state: Json, event: RecordEvent, rule: TaskRule, focus: str, out: Outcome) -> None:
        """A corrected referral date moves the clock of the referral's task this rule opened: due as long
        after the date it now gives as the rule says, and answered by the outcomes already said of the
        referral, as if it had said so first (the KPIs measure from it too). A task finished keeps its
        dates; one already overdue and with the team lead keeps them too, but is answered as the others
        are, from the date the referral now gives (remember_made), as the record takes an outcome. (The
        record applies task events in log order, whatever their time: hub.core.record.)"""
        for task_id, task in sorted(state["tasks"].items()):
            if not _same_task(task, rule.id, focus) or task["status"] in FINAL:
                continue
            if task.get("overdue") or datetime.fromisoformat(task["opened"]) == event.time:
                # (overdue: with the team lead as it was; or a retry, or a correction of something else)
                self._answer_remembered(state, event, task_id, task, rule, focus, out)
                continue
            self._move_clock(task_id, task, rule, event.time, event, out)
            self._answer_remembered(state, event, task_id, task, rule, focus, out)

    def _retime_discharge(
        self, state: Json, event: RecordEvent, rule: TaskRule, focus: str, began: datetime, out: Outcome
    ) -> None:
        """A discharge sent again with another discharge time (an A03 after an A13 cancelled the first,
        correcting it) moves the clock of its task still open and not yet overdue: due as long after the
        discharge it now gives as the rule says. A retry, giving the same time, changes nothing."""
        for task_id, task in sorted(state["tasks"].items()):
            if not _same_task(task, rule.id, focus) or task["status"] in FINAL or task.get("overdue"):
                continue
            if datetime.fromisoformat(task["opened"]) == began:
                continue
            self._move_clock(task_id, task, rule, began, event, out)

    def _move_clock(
        self, task_id: str, task: Json, rule: TaskRule, began: datetime, event: RecordEvent, out: Outcome
    ) -> None:
        """A task's clock run again from `began` (a referral's corrected date, a discharge's corrected time):
        due as long after it as the rule says, the clock set again and the record told (task.updated)."""
        due = began + rule.due
        task |= {"opened": began.isoformat(), "due": due.isoformat()}
        out.set.append(Clock(task_id, event.subject, due, "task"))
        resource = self.events.task_resource(task_id, event.subject, task)
        key = f"retimed|{task_id}|{event.id}"
        out.events.append(self.events.derived(co.TASK_UPDATED.type, key, event.subject, event.time, resource))

    def _manual(self, state: Json, event: RecordEvent, resources: list[Json]) -> Outcome:
        out = Outcome()
        for resource in of_kind(resources, "Task"):
            task_id = resource.get("id")
            task = state["tasks"].get(task_id) if isinstance(task_id, str) else None
            status = resource.get("status")
            if task is None or not isinstance(status, str) or not may_move(task["status"], status):
                continue  # the record refuses the same moves (hub.core.task_status), so both agree
            task["status"] = status
            if status in FINAL:
                task["closed"] = event.time.isoformat()
                out.cleared.append(resource["id"])
                if says_moved(resource):  # (Engine.move said so)
                    task["moved"] = True
                    forget_made(state, task.get("focus"))  # (the referral is the other person's now)
            found = practice_found(resource) if task["rule"] == FIND_PRACTICE and status == "completed" else None
            if found:  # the coordinator found the practice: as good as a registration, until a newer one
                state["practice"], state["practice_from"] = found, "coordinator"
                state["practice_at"] = (
                    event.time.isoformat()
                )  # (a row extracted before it is stale: hub.core.practices)
                task["practice"] = found
        return out

    def merge(self, state: Json, theirs: Json, retired: str, event: RecordEvent) -> Outcome:
        """The person `retired` (whose state is `theirs`) merged into this one at `event` (an A40, its
        subject this person): hub.core.merges.fold."""
        return fold(self._merges, state, theirs, retired, event)

    def move(self, state: Json, event: RecordEvent, focus: str, held_by: str, theirs: Json) -> Outcome:
        """The referral `focus`, held until now by `held_by` (whose state is `theirs`), re-sent for this
        person (`event`, before it is handled): hub.core.referral_moves.move."""
        return move(self.events, state, event, focus, held_by, theirs)


def _matches(
    f: Fulfilment, name: str, at: datetime, resources: list[Json], mine: tuple[Json, datetime | None, bool]
) -> bool:
    """Whether what was said answers `f` for the task; `mine` is the task, when its referral was made (if
    one) and whether a stay's close ends only its own stay's tasks (rules version OWN_STAY_CLOSE on)."""
    task, made, own_stay = mine
    if f.event != name:
        return False
    if own_stay and name == "episode.closed" and str(task.get("focus") or "").startswith("EpisodeOfCare/"):
        # a stay's task ends with that stay's close, whatever end or status it gives (closing is final; an
        # entered-in-error close too), never with another's: a merged person's duplicate stay
        # (hub.core.merges) is closed on its own
        closed = {f"EpisodeOfCare/{e.get('id')}" for e in of_kind(resources, "EpisodeOfCare")}
        return task["focus"] in closed and not (f.not_before and _too_early(f, at, task, made))
    if _too_early(f, at, task, made):
        return False
    if f.contact and not ({contact_kind(e) for e in of_kind(resources, "Encounter")} & set(f.contact)):
        return False
    if f.outcome:
        requests = of_kind(resources, "ServiceRequest")
        focus = task.get("focus") or ""
        if focus.startswith("ServiceRequest/"):
            requests = [r for r in requests if f"ServiceRequest/{r.get('id')}" == focus]
        if not any(extension(r, co.OUTCOME_EXTENSION, "valueCode") in f.outcome for r in requests):
            return False
    if name == "episode.closed" and str(task.get("focus") or "").startswith("ServiceRequest/"):
        # a referral's task ends with the stay on the caseload that began while it waited (in log
        # order: hub.core.caseload marks it as the stay opens), or that was opened for it; one that
        # came during the stay still waits for its own answer
        stays = of_kind(resources, "EpisodeOfCare")
        for_it = {referral for e in stays for referral in referrals_of(e)}
        return task.get("stay") in {e.get("id") for e in stays} or task["focus"] in for_it
    return True


_LATE = timedelta(days=7)  # a discharge sent later than this is news of an old one: timed from the message


def _began(event: RecordEvent, resources: list[Json]) -> datetime:
    """When what a task is about began, from which its clock runs: the event's time, but a discharge's
    own time (the Encounter's period.end, PV1-45) when the hospital sent the A03 later (a Saturday's
    discharges sent on Monday: the follow-up is due 48 h after the person left, and a call made in
    between answers it). Only a discharge time to the minute (a bare date or month says too little: a
    ward call that morning would answer it; the hospital adapter writes one as that day's UK midnight,
    so midnight itself is taken as no time), not before the stay began, nor after the message, nor
    more than _LATE before it (a backlog of old discharges is not a pile of overdue follow-ups)."""
    if event.type != ENCOUNTER_DISCHARGED.type:
        return event.time
    found = [event.time]
    for encounter in of_kind(resources, "Encounter"):
        period = encounter.get("period") or {}
        end, start = period.get("end"), period.get("start")
        if not isinstance(end, str) or "T" not in end:
            continue
        left = fhir_time(end, event.time)
        if left.astimezone(UK).time() == time(0):  # the hospital adapter writes a bare date (PV1-45 20261121) so
            continue
        if event.time - _LATE <= left and (not isinstance(start, str) or fhir_time(start, left) <= left):
            found.append(left)
    return min(found)


def _too_early(f: Fulfilment, at: datetime, task: Json, made: datetime | None) -> bool:
    """Whether `at` is before the fulfilment may count: `not_before` after the task opened. But a
    referral's task with no `not_before` counts from when the referral was made as the record holds it
    (`made`, its latest authoredOn in log order; else when the task opened), whatever order a correction
    and the answer came in, and is answered by an answer dated by day alone on that UK day
    (hub.core.days), as the record and the KPIs take it."""
    opened = datetime.fromisoformat(task["opened"])
    if f.not_before or not str(task.get("focus") or "").startswith("ServiceRequest/"):
        return at < opened + f.not_before
    since = made or opened
    return at < since and not answers_that_day(at, since)


def _same_task(task: Json, rule: str, focus: str) -> bool:
    """Whether a task, in any status, is this rule's about this referral, stay or discharge: one task each,
    however often what opens it is sent (a corrected referral is a new event about the same referral).
    One cancelled because its referral moved to someone else does not count: moved back, it opens again."""
    return bool(task.get("rule") == rule and task.get("focus") == focus and not task.get("moved"))


def _referral_source(resources: list[Json]) -> str | None:
    return next((code for sr in of_kind(resources, "ServiceRequest") if (code := referral_source(sr))), None)
