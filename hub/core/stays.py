"""The 'one stay' rule: whether a new EpisodeOfCare opens a second stay on a caseload. The record
(hub.core.record), the rules engine (hub.core.tasks) and the KPIs (hub.core.kpi_facts) each ask it
of what they hold, so that all three agree on who is on whose caseload.

Closing is final for an EpisodeOfCare id: an episode.opened for one the caller holds as ended (the
record: a status `is_open` takes as ended; the engine and the KPIs: one an episode.closed named) opens
nothing either, whatever its time (a retry, a replayed command, an old duplicate under a new event id).
A person who comes back is referred and accepted again, under a new id (the API's accept_ids)."""

from __future__ import annotations

from collections.abc import Iterable, Set

ENDED = frozenset({"finished", "cancelled", "entered-in-error"})  # an EpisodeOfCare no longer open

Held = tuple[str, bool, Iterable[str]]  # (episode id, open, referrals it was opened for)


def is_open(status: object) -> bool:
    """Whether an EpisodeOfCare with this FHIR status is open: any status but finished, cancelled or
    entered-in-error (planned, waitlist, active, onhold, or none said)."""
    return status not in ENDED


def opens_another_stay(episode: str, referrals: Set[str], held: Iterable[Held]) -> bool:
    """Whether the EpisodeOfCare `episode`, opened for `referrals`, is a second stay, which opens
    nothing: the first in log order stands.

    It is one when another of the person's episodes (another id) is open, or was opened for one of
    the same referrals (EpisodeOfCare.referralRequest), open or closed: a second accept of a
    referral, on a log from before accepts were claimed, opens nothing even after the first stay
    closed. The same episode again (its id) is no other stay, whatever it says.

    `held` is what the caller knows of the person's stays so far, as (episode id, open, referrals it
    was opened for); "open" is the caller's: for the record, a status `is_open` takes as open; for
    the engine and the KPIs, opened and not yet closed. An episode may be named more than once and
    in part (open False where only its referrals are known; only the referrals that matter), so a
    caller that indexes the first stay each referral opened passes just the new one's referrals'.
    Referrals are compared as given: spell them alike on both sides (`ServiceRequest/<id>`)."""
    return any(other != episode and (open_ or not referrals.isdisjoint(theirs)) for other, open_, theirs in held)
