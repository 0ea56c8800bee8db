"""What a `$close` of an episode (hub.api.routes.coordination) decides before and after its claim: what it
was asked (by which the same close sent again is known), that its PIC summary says something, the
refusal of a close of an episode closed already, and publishing the close that stands (a close Kafka
did not take is published by the next command that meets it: any close of the episode, however it is
worded, and an accept for its person refused because the episode holds them, unapplied_close).

A duplicate stay's close (`$close-duplicate`, coordination_duplicate) is claimed, answered and
published through the same functions: its Closure has the EpisodeOfCare entered-in-error and no PIC
summary (an empty `summary`), and its event carries the EpisodeOfCare alone."""

from __future__ import annotations

from datetime import datetime

from hub.api.auth import Principal
from hub.api.outcomes import FhirResponse
from hub.api.routes.coordination_commands import CoordinationApi, emit
from hub.api.routes.coordination_input import param
from hub.core.errors import (
    BrokerUnavailableError,
    InfrastructureError,
    InvalidMessageError,
    RuleRefusedError,
    UnfinishedError,
)
from hub.core.identity import stable_id
from hub.core.ports import Closure, Json
from hub.core.stays import is_open
from schemas.events import coordination as co

CLOSING = ("goals", "interventions", "onward-referrals", "follow-up")  # what a $close writes in the PIC summary


def closing_asked(params: Json, at: datetime) -> Json:
    """What a $close was asked, by which the same close sent again is known: the summary's content as
    given, and its `at` as given (the time it names; none given: none, whenever it is sent)."""
    asked: Json = {name: param(params, name) for name in CLOSING}
    asked["at"] = at.isoformat() if param(params, "at") else None
    return asked


def refuse_blank_summary(asked: Json) -> None:
    """Refuse (400) a close whose PIC summary would say nothing: the GP would be sent a letter with every
    section "None recorded", and the KPIs would count it a discharge letter sent in time."""
    if not any(str(asked.get(name) or "").strip() for name in CLOSING):
        raise InvalidMessageError(
            "the PIC summary this close sends to the GP would be empty: give at least one of goals, "
            "interventions, onward-referrals or follow-up (for someone the service could not help, say so "
            "in follow-up, with what the GP should know)",
            tuple(f"Parameters.{name}" for name in CLOSING),
        )


def closed_refusal(episode: Json) -> RuleRefusedError:
    """Why a close of an episode closed already is refused: closing is final, and the PIC summary the
    GP was sent is the first close's, which the record keeps."""
    end = (episode.get("period") or {}).get("end")
    when = f" at {end}" if end else ""
    if episode.get("status") == "entered-in-error":
        return RuleRefusedError(
            f"EpisodeOfCare/{episode['id']} was closed{when} as a duplicate stay a merge left open "
            "(entered-in-error): closing is final, and it was no discharge, so no PIC summary went to the GP",
            ("EpisodeOfCare.status",),
        )
    return RuleRefusedError(
        f"EpisodeOfCare/{episode['id']} was closed{when}: this episode is already closed, and closing is final; "
        "the PIC summary sent to the GP is that close's, and anything to add goes to the practice another way",
        ("EpisodeOfCare.status",),
    )


async def closed_already(
    api_: CoordinationApi, who: Principal, episode: Json, stands: Closure, asked: Json
) -> FhirResponse:
    """An episode a close has claimed. Until the record has it closed, the close that claimed it is
    published again, whatever this one says (Kafka may never have taken it, answered 503; under its own
    event id it is applied once): a close lost that way is never left claimed and unsent. The same close
    again (the same parameters: a double click, or the retry the 503 asked for) is then answered 200
    with the episode as that close finished it; any other close is refused 409, naming when it was
    closed and that its PIC summary is the one that goes to the GP. (No acknowledgement of a close is
    kept, so a close Kafka took is sent again too while the consumers catch up: the same event, which
    every consumer, the rules engine that sends the PIC summary among them, drops as a duplicate.)"""
    if is_open(episode.get("status")):
        person = str(episode["patient"]["reference"]).removeprefix("Patient/")
        await publish_closure(api_, who, person, stands)
    if stands.asked != asked or not is_open(episode.get("status")):
        raise closed_refusal(stands.episode)
    return FhirResponse(stands.episode)


async def publish_closure(api_: CoordinationApi, who: Principal, person: str, closure: Closure) -> None:
    """The close's event (the finished EpisodeOfCare and its PIC summary; a duplicate stay's: the
    EpisodeOfCare entered-in-error alone), under one id for every close
    of the episode, so that the same close published twice is applied once. The claim is made already,
    so one Kafka does not take is UnfinishedError: the 503 says the episode is closed, not that nothing was kept."""
    episode = closure.episode
    at = datetime.fromisoformat(str(episode["period"]["end"]))
    event_id = stable_id("api-close", str(episode["id"]))
    try:
        summary = (closure.summary,) if closure.summary else ()  # (none for a duplicate stay)
        await emit(api_, co.EPISODE_CLOSED.type, who, person, at, episode, *summary, event_id=event_id)
    except BrokerUnavailableError as lost:
        op = "$close-duplicate" if closure.asked.get("duplicate") else "$close"
        raise UnfinishedError(
            f"EpisodeOfCare/{episode['id']} is closed (held in the database, at {at.isoformat()}), but Kafka did "
            "not acknowledge the close, so the record, the rules engine and the PIC summary to the GP may not have "
            f"it yet. Send the same {op} again (the same parameters) to complete it; it is applied once. The close "
            "is not released: any other close of the episode, or an $accept refused because the episode holds the "
            "person, sends this one again, and is refused 409."
        ) from lost


async def unapplied_close(api_: CoordinationApi, who: Principal, episode_id: str) -> str | None:
    """For a command refused (409) because the episode holds its person or a caseload place: where a
    $close claimed the episode and the record does not have it finished, that close is published again
    first (perhaps Kafka never took it: 503; under its one event id it is applied once), best effort, and
    this is what the refusal says of it. None: no close claimed it, or the record has it."""
    try:
        stands = api_.coordination.closure(episode_id)
        if stands is None or not is_open((api_.reader.read("EpisodeOfCare", episode_id) or {}).get("status")):
            return None
    except InfrastructureError:
        return None
    said = f"its $close (at {stands.episode['period']['end']}) is not on the record or the rules engine yet"
    person = str(stands.episode["patient"]["reference"]).removeprefix("Patient/")
    try:
        await publish_closure(api_, who, person, stands)
    except InfrastructureError:
        return (
            f"{said}, and Kafka, which did not acknowledge it (that $close was answered 503), is not answering "
            "now: send that $close again (the same parameters) to complete it, then this command"
        )
    return f"{said}: it is sent again now (Kafka may never have taken it: a 503); send this command again shortly"
