"""What the coordination commands (hub.api.routes.coordination) read from a request, and the
checks on it: each refusal an InvalidMessageError naming the field, answered as an OperationOutcome.

No `from __future__ import annotations` here, as in the routes that use it.
"""

import copy
import re
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

import orjson
from pydantic import ValidationError

from hub.api.routes.fhir import check_shape
from hub.core import nhs_number
from hub.core.errors import InvalidMessageError
from hub.core.fhir_read import ODS_CODE, ODS_SYSTEM, referral_source
from hub.core.huddle import UK
from hub.core.identity import stable_id
from hub.core.kpi_reading import fhir_time
from hub.core.policy import Asker, decide
from hub.core.ports import Json
from hub.core.skew import CLOCK_SKEW
from hub.core.tasks import FIND_PRACTICE
from schemas.agreements import Agreement
from schemas.events import coordination as co
from schemas.subscriptions import Subscription

_DATE_ONLY = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
_YEAR_OR_MONTH = re.compile(r"[0-9]{4}(-(0[1-9]|1[0-2]))?")  # ISO 8601 (and a FHIR dateTime), too coarse for a time


_COORDINATOR = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@'-]{0,99}")


def coordinator_id(said: str, known: Iterable[str] = ()) -> str:
    """A coordinator as `$accept` names them: one word of letters, digits and . _ @ ' -, at most 100,
    kept as given (ids are compared exactly, as claims and caseloads made before hold them). One that
    differs only in case from a coordinator `known` to have a caseload is refused, naming them: `C-Ben`
    beside `c-ben` opened a second caseload past the cap, and took tasks nobody would look for."""
    coordinator = said.strip()
    if _COORDINATOR.fullmatch(coordinator) is None:
        raise InvalidMessageError(
            f"coordinator {said[:40]!r} is not a coordinator's id: one word of letters, digits and . _ @ ' - "
            "(at most 100), such as c-amara",
            ("Parameters.parameter[coordinator]",),
            code="value",
        )
    twin = next((k for k in sorted(known) if k != coordinator and k.casefold() == coordinator.casefold()), None)
    if twin is not None:
        raise InvalidMessageError(
            f"coordinator {coordinator!r} differs only in case from {twin!r}, who has a caseload: give their id "
            "as it is (a second spelling would be a second caseload, past the cap)",
            ("Parameters.parameter[coordinator]",),
            code="value",
        )
    return coordinator


def business_identifier(request: Json) -> tuple[str, str] | None:
    """The referrer's own identifier for the referral (the first with a system and a value), if any."""
    for ident in request.get("identifier") or []:
        system, value = (ident.get("system"), ident.get("value")) if isinstance(ident, dict) else (None, None)
        if isinstance(system, str) and isinstance(value, str) and system.strip() and value.strip():
            return system.strip(), value.strip()
    return None


def source_of(request: Json) -> str:
    """Who refers, as the referral says it, in lower case (the code is case-insensitive, as in the
    referral files); refused where it does not (a source taken for granted would count in the
    commissioner's KPIs under the wrong one, and a partner taken for a GP would become the person's
    practice, where the PIC summary goes)."""
    codes = ", ".join(co.REFERRAL_SOURCES)
    given = any(isinstance(e, dict) and e.get("url") == co.SOURCE_EXTENSION for e in request.get("extension") or [])
    if not given:
        raise InvalidMessageError(
            f"the referral must say who refers: an extension {co.SOURCE_EXTENSION} whose valueCodeableConcept "
            f"is coded in {co.REFERRAL_SOURCE_SYSTEM} ({codes})",
            ("ServiceRequest.extension",),
            code="required",
        )
    said = referral_source(request)
    if said is None or said.lower() not in co.REFERRAL_SOURCES:
        shown = f"{said!r} is not" if said is not None else f"no coding in {co.REFERRAL_SOURCE_SYSTEM} is"
        raise InvalidMessageError(
            f"the referral's source: {shown} one of {codes} (in any case)",
            (f"ServiceRequest.extension('{co.SOURCE_EXTENSION}').valueCodeableConcept",),
            code="code-invalid",
        )
    return said.lower()


def with_source(request: Json, source: str) -> Json:
    """The referral with the coding source_of read (the first in REFERRAL_SOURCE_SYSTEM of the first
    source extension) set to `source`, its canonical code, so that the record and the KPIs by source
    hold one code however a sender cased it. The request itself is left as it was."""
    extensions = copy.deepcopy(request.get("extension") or [])
    for ext in extensions:
        if ext.get("url") == co.SOURCE_EXTENSION:
            concept = ext.get("valueCodeableConcept")
            for coding in (concept.get("coding") or []) if isinstance(concept, dict) else []:
                if coding.get("system") == co.REFERRAL_SOURCE_SYSTEM and isinstance(coding.get("code"), str):
                    coding["code"] = source
                    return {**request, "extension": extensions}
            break
    return request


def found_practice(params: Json, task: Json, status: str) -> str | None:
    """The GP practice a coordinator names on completing a find-the-practice task (or None); refused
    with a reason anywhere else, so that a practice named is never silently dropped, and required
    there: completed with none, the summary would stay held with no task left to chase it."""
    practice = param(params, "practice")
    kind = ((task.get("code") or {}).get("coding") or [{}])[0].get("code")
    if practice is None:
        if kind == FIND_PRACTICE and status == "completed":
            raise InvalidMessageError(
                "completing a find-gp-practice task names the practice found (parameter practice, its ODS "
                "code), so that the held PIC summary goes to it; a practice that cannot be found: status cancelled",
                ("Parameters.parameter[practice]",),
                code="required",
            )
        return None
    code = practice.upper()
    if kind != FIND_PRACTICE:
        raise InvalidMessageError(
            f"practice is given only on completing a {FIND_PRACTICE} task; this one is {kind}",
            ("Parameters.parameter[practice]",),
        )
    if status != "completed":
        raise InvalidMessageError(
            "practice is given only with status completed: the practice found completes the task",
            ("Parameters.parameter[practice]",),
        )
    if not ODS_CODE.fullmatch(code):
        raise InvalidMessageError(
            f"practice {practice!r} is not an ODS code (3 to 10 letters and digits)",
            ("Parameters.parameter[practice]",),
            code="code-invalid",
        )
    return code


def refuse_unless_shared(
    practice: str,
    service: str,
    agreements: Callable[[], Sequence[Agreement]] | None,
    subscriptions: Callable[[], Sequence[Subscription]] | None = None,
) -> None:
    """A practice the PIC summary can go to: not the service itself, and (where sharing is enforced)
    one with a subscription that takes PIC summaries (not scope `addressed`: a letter is addressed to
    no one by a referral) under whose purpose an agreement in force lets the service share a care
    plan (the summary's category) with it, as delivery will decide it (without subscriptions to
    look at: for direct care). A code mistyped, another organisation's, one whose only agreement with
    the service is for audit, or one that takes no PIC summaries, is refused here, before the summary
    goes: once sent, a letter cannot be called back, and one delivery withholds reaches no one. (The
    person's consent is decided at delivery, as for every disclosure: it can change before then.)"""
    if practice == service:
        raise InvalidMessageError(
            f"practice {practice} is the coordination service itself: name the person's GP practice",
            ("Parameters.parameter[practice]",),
            code="business-rule",
        )
    if agreements is None:
        return
    purposes: list[str | None] = ["direct-care"]
    if subscriptions is not None:
        taking = [
            s
            for s in subscriptions()
            if s.org == practice and co.PIC_SUMMARY_SENT.type in s.events and s.scope != "addressed"
        ]
        if not taking:
            raise InvalidMessageError(
                f"practice {practice} has no subscription that takes PIC summaries ({co.PIC_SUMMARY_SENT.type}), "
                "so the summary would reach no one: check the code, or load the practice's subscription first",
                ("Parameters.parameter[practice]",),
                code="business-rule",
            )
        purposes = [s.purpose for s in taking]
    now = datetime.now(UTC)
    letter = {"resourceType": "Composition", "meta": {"source": f"urn:ods:{service}"}}
    in_force = list(agreements())
    decisions = [decide(Asker(practice, "system", now, purpose=p), letter, in_force, []) for p in purposes]
    if not any(d.permitted for d in decisions):
        raise InvalidMessageError(
            f"practice {practice}: {decisions[0].reasons[0]}, so the PIC summary could not be shared with it: "
            "check the code, or load the practice's agreement (care-plans, for its subscription's purpose) first",
            ("Parameters.parameter[practice]",),
            code="business-rule",
        )


def json_body(body: bytes, what: str) -> Json:
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidMessageError(f"the body is not JSON: {exc}", (what,)) from exc
    if not isinstance(data, dict):
        raise InvalidMessageError(f"the body must be a FHIR {what}", (what,))
    check_shape(data, what)
    return data


def validate(model: Any, body: Json, what: str) -> None:
    try:
        model.model_validate(body)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise InvalidMessageError(f"not a valid FHIR R4 {what}: {where}: {first['msg']}", (f"{what}.{where}",)) from exc


def parameters(body: bytes) -> Json:
    data = json_body(body or b"{}", "Parameters") if body else {"resourceType": "Parameters"}
    if data.get("resourceType") != "Parameters":
        raise InvalidMessageError("the body must be a FHIR Parameters resource", ("Parameters.resourceType",))
    return data


def param(params: Json, name: str, *, required: bool = False) -> str | None:
    for p in params.get("parameter") or []:
        if isinstance(p, dict) and p.get("name") == name:
            for key in ("valueString", "valueCode", "valueDateTime", "valueId"):
                if isinstance(p.get(key), str) and p[key].strip():
                    return str(p[key]).strip()
    if required:
        raise InvalidMessageError(f"parameter {name} is required", (f"Parameters.parameter[{name}]",), code="required")
    return None


def at_time(value: str | None, now: datetime, where: str = "Parameters.at") -> datetime:
    """A time the caller says something happened (ISO 8601 with its offset), in UTC; refused when it
    is later than `now` by more than CLOCK_SKEW, as it would count in the KPIs of a time yet to come.
    A year or a month alone is ISO 8601 too, but says no day: refused as too coarse, not as malformed."""
    if _YEAR_OR_MONTH.fullmatch(str(value)):
        raise InvalidMessageError(
            f"{where} {value!r} is only a year or a month: give a date (YYYY-MM-DD, e.g. 2026-11-25) or a date "
            "and time with its UTC offset (e.g. 2026-11-25T10:00:00Z)",
            (where,),
        )
    try:
        parsed = datetime.fromisoformat(str(value))
        if _DATE_ONLY.fullmatch(str(value)):  # a FHIR dateTime may be a day: its start, UK time
            parsed = parsed.replace(tzinfo=UK)
        if parsed.tzinfo is not None:
            parsed = parsed.astimezone(UTC)
    except (ValueError, OverflowError) as exc:
        raise InvalidMessageError(f"{value!r} is not an ISO 8601 date and time", (where,)) from exc
    if parsed.tzinfo is None:
        raise InvalidMessageError(
            "a date and time needs its UTC offset (e.g. 2026-11-25T10:00:00Z; a day alone, 2026-11-25, is its start)",
            (where,),
        )
    if parsed > now + CLOCK_SKEW:
        minutes = int(CLOCK_SKEW.total_seconds() // 60)
        raise InvalidMessageError(
            f"{where} {value} is in the future (later than now, {now.astimezone(UTC):%Y-%m-%dT%H:%M:%SZ}, by more "
            f"than the {minutes} minutes allowed for clock skew): give the time it happened, not a time yet to come",
            (where,),
            code="value",
        )
    return parsed


def at_param(params: Json, now: datetime) -> datetime:
    """When a command says its event happened (parameter at, never in the future), else now."""
    given = param(params, "at")
    return at_time(given, now) if given else now


def not_before(params: Json, at: datetime, began: object, what: str, acted_on: Json | None = None) -> datetime:
    """`at` (at_param's) for a command on something that began at `began` (a FHIR dateTime: an
    episode's period.start, a referral's authoredOn; none or unreadable: nothing to hold it to) and
    that writes onto `acted_on` (the record's resource, whose meta.lastUpdated is the latest time it
    holds for it). Given, and earlier than either, it is refused: it cannot have happened, or the
    record would skip the event as older than what it holds (its reordering rule) while the rules
    engine and the KPIs took it. A date alone on the day it is held to means that time. Not given,
    it is now, or the time held to where a sender's clock, fast within CLOCK_SKEW, put that later."""
    start = fhir_time(began, at)
    meta = (acted_on or {}).get("meta") or {}
    last = fhir_time(meta.get("lastUpdated"), start)
    bound = max(start, last)
    if at >= bound:
        return at
    given = param(params, "at")
    if given is None and bound - at <= CLOCK_SKEW:
        return bound
    if isinstance(given, str) and len(given) == len("YYYY-MM-DD") and bound.astimezone(UK).date().isoformat() == given:
        return bound
    shown = at.isoformat() if given is not None else f"(not given: now, {at.isoformat()})"
    if at >= start:  # after it began, but the record holds a later version, which it would keep
        ref = f"{(acted_on or {}).get('resourceType')}/{(acted_on or {}).get('id')}"
        what = f"the record's latest version of {ref}, which it would keep"
    raise InvalidMessageError(
        f"Parameters.at {shown} is before {what} ({bound.isoformat()}): give the time it happened, at or after that",
        ("Parameters.at",),
        code="value",
    )


def no_earlier_than_held(at: datetime, acted_on: Json) -> datetime:
    """When an event written onto the record's `acted_on` is dated: `at`, or the time of the version the
    record holds (meta.lastUpdated) where that is later. A decision completed after the command that
    claimed it (Kafka did not take it: 503) may meet a newer version (a corrected referral), and the
    record skips an event dated before what it holds (its reordering rule)."""
    return max(at, fhir_time(((acted_on.get("meta") or {}).get("lastUpdated")), at))


def nhs_number_of(body: Json) -> str:
    subject = body.get("subject") or {}
    ident = subject.get("identifier") or {}
    value = str(ident.get("value") or "").replace(" ", "")
    if ident.get("system") != nhs_number.NHS_NUMBER_SYSTEM or not value:
        raise InvalidMessageError(
            "subject.identifier must carry the person's NHS number (system https://fhir.nhs.uk/Id/nhs-number)",
            ("ServiceRequest.subject.identifier",),
            code="required",
        )
    why = nhs_number.why_invalid(value)
    if why is not None:  # (it never echoes the number)
        raise InvalidMessageError(f"subject.identifier: {why}", ("ServiceRequest.subject.identifier",))
    return value


def person_of(resource: Json) -> str:
    return str((resource.get("subject") or {}).get("reference", "")).removeprefix("Patient/")


def accept_ids(referral_id: str) -> tuple[str, str, str]:
    """The EpisodeOfCare id and the ids of the two events (referral outcome, episode opened) of an
    accept of this referral: the same for every accept of it, from any worker, so that where two
    reach the log (a repeat, a redelivery) every consumer applies the first and drops the rest as
    the duplicate it is, and the record holds one EpisodeOfCare for it whatever happens."""
    episode, outcome, opened = (stable_id("api-accept", referral_id, part) for part in ("episode", "outcome", "opened"))
    return episode, outcome, opened


def episode_for(referral_id: str, person: str, coordinator: str, service: str, at: datetime) -> Json:
    """The EpisodeOfCare an accept of the referral opens: on `coordinator`'s caseload from `at`."""
    return {
        "resourceType": "EpisodeOfCare",
        "id": accept_ids(referral_id)[0],
        "status": "active",
        "patient": {"reference": f"Patient/{person}"},
        "managingOrganization": {"identifier": {"system": ODS_SYSTEM, "value": service}},
        "careManager": {"identifier": {"system": co.COORDINATOR_SYSTEM, "value": coordinator}},
        "referralRequest": [{"reference": f"ServiceRequest/{referral_id}"}],
        "period": {"start": at.isoformat()},
    }


def opened_for(episodes: Sequence[Json], referral_id: str) -> Json | None:
    """The first of a person's episodes (from the record) opened for this referral, if any."""
    named = f"ServiceRequest/{referral_id}"
    for episode in episodes:
        if any(isinstance(r, dict) and r.get("reference") == named for r in episode.get("referralRequest") or []):
            return episode
    return None


def with_outcome(referral: Json, outcome: str, status: str) -> Json:
    updated = {k: v for k, v in referral.items() if k != "meta"}
    updated["status"] = status
    others = [e for e in updated.get("extension") or [] if e.get("url") != co.OUTCOME_EXTENSION]
    updated["extension"] = [*others, {"url": co.OUTCOME_EXTENSION, "valueCode": outcome}]
    return updated
