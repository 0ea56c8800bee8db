"""What the coordination API takes, over a real socket: the real app (uvicorn on 127.0.0.1, httpx as
the client) over a real SQLite record built by `hub.bootstrap.build`; only Kafka is a list, whose
events the test applies to the record and folds into the commissioner's KPIs as the consumers would.

* A referral's source code is case-insensitive, as in the referral files: `GP` is taken as `gp`,
  stored as `gp` and counted with it in the KPIs by source.
* `at` given as a year or a month is ISO 8601, only not precise enough: the refusal says so and
  asks for a date or a date and time, naming the parameter; what was taken before still is.
* `at` is never before what the command acts on began: a `$close` before its episode's start, an
  `$accept` or `$decline` before the referral's authoredOn, a contact named as answering a referral
  before it was made, is refused 400 naming `at` and giving both times, and never reaches the log
  (the record would skip it as older than what it holds, while the rules engine and the KPIs took
  it). At the start itself, or after, it is taken; a contact naming no referral may be older than
  any. No `at` at all is now, or the start where a sender's fast clock dated it a little later.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import orjson
import pytest

from adapters.referrals.rows import Format, read_rows
from adapters.referrals.to_fhir import map_row
from hub.api.app import create_app
from hub.api.auth import TokenVerifier, issue_token
from hub.api.routes.coordination import CoordinationApi
from hub.bootstrap import Services, build
from hub.core.identity import person_key
from hub.core.kpis import KpiFold
from hub.core.ports import RecordEvent
from hub.core.record import apply_events
from hub.settings import Settings
from schemas.envelope import Envelope
from schemas.events import coordination as co
from tests.serving import served
from tests.unit.test_referral_adapters import ASC_HEADER, asc_referral, csv_of

pytestmark = pytest.mark.timeout(60)
NHS_SYSTEM = "https://fhir.nhs.uk/Id/nhs-number"
PRACTICE = "Y00001"
AUTHORED = "2026-11-10T10:00:00+00:00"


@dataclass
class Hub:
    """The served app, what stands behind it, and the events it published."""

    services: Services
    url: str = ""
    published: list[Envelope] = field(default_factory=list)

    def events(self) -> list[RecordEvent]:
        return [RecordEvent(e.id, e.type, e.source, e.time, e.subject, orjson.loads(e.data)) for e in self.published]

    def record(self) -> None:
        """Apply what was published to the record, as the record consumer does (each event once)."""
        with self.services.uow_factory() as uow:
            apply_events(uow, self.events())
            uow.commit()


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hub]:
    with served_hub(build(Settings(data_dir=tmp_path_factory.mktemp("inputs-api")))) as live:
        yield live


@contextmanager
def served_hub(services: Services) -> Iterator[Hub]:
    """The real app over `services`, served; Kafka a list."""
    live = Hub(services)

    async def publish(envelope: Envelope) -> None:
        live.published.append(envelope)

    commands = CoordinationApi(services.reader, services.coordination, services.rules, services.secrets.key, publish)
    tokens = TokenVerifier(services.secrets.token)
    app = create_app(services.reader, tokens, services.ledger, services.policy, publish, commands)
    try:
        with served(app, "inputs-api") as live.url:
            yield live
    finally:
        services.engine.dispose()


@pytest.fixture
def http(hub: Hub) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=hub.url, timeout=10) as client:
        yield client


def bearer(hub: Hub, org: str, role: str) -> dict[str, str]:
    token = issue_token(hub.services.secrets.token, org=org, role=role, now=datetime.now(UTC))
    return {"Authorization": f"Bearer {token}"}


def coordinator(hub: Hub) -> dict[str, str]:
    return bearer(hub, hub.services.rules.rules.service.ods, "coordinator")


def referral(nhs: str, source: str, **changes: Any) -> dict[str, Any]:
    coding = {"system": co.REFERRAL_SOURCE_SYSTEM, "code": source}
    return {
        "resourceType": "ServiceRequest",
        "status": "active",
        "intent": "order",
        "subject": {"identifier": {"system": NHS_SYSTEM, "value": nhs}},
        "authoredOn": AUTHORED,
        "extension": [{"url": co.SOURCE_EXTENSION, "valueCodeableConcept": {"coding": [coding]}}],
    } | changes


def source_code(request: dict[str, Any]) -> str:
    (ext,) = [e for e in request["extension"] if e["url"] == co.SOURCE_EXTENSION]
    return str(ext["valueCodeableConcept"]["coding"][0]["code"])


def refer(hub: Hub, http: httpx.Client, nhs: str, source: str, **changes: Any) -> dict[str, Any]:
    body = referral(nhs, source, **changes)
    response = http.post("/fhir/ServiceRequest", json=body, headers=bearer(hub, PRACTICE, "clinician"))
    assert response.status_code == 201, response.text
    return dict(response.json())


def test_a_source_code_in_capitals_is_taken_stored_lower_case_and_counted_with_it_by_source(
    hub: Hub, http: httpx.Client
) -> None:
    lower = refer(hub, http, "9434765919", "gp")
    upper = refer(hub, http, "9990000018", "GP")
    mixed = refer(hub, http, "9990000026", "Adult-Social-Care")

    assert [source_code(r) for r in (lower, upper, mixed)] == ["gp", "gp", "adult-social-care"]
    hub.record()
    stored = hub.services.reader.read("ServiceRequest", upper["id"])
    assert stored is not None and source_code(stored) == "gp"
    # treated as a GP's referral: the caller is the person's practice, as for `gp`
    key = person_key(hub.services.secrets.key, "9990000018", None)
    patient = hub.services.reader.read("Patient", key)
    assert patient is not None
    assert patient["generalPractitioner"][0]["identifier"]["value"] == PRACTICE
    fold = KpiFold(service=hub.services.rules.rules.service.ods)
    for event in hub.events():
        fold.add(event)
    by_source = {r.breakdown: r.value for r in fold.report("2026-11") if r.kpi == "referrals by source"}
    assert (by_source.get("gp"), by_source.get("adult-social-care")) == (2, 1)
    assert not {"GP", "Adult-Social-Care"} & set(by_source)


def test_a_source_code_that_is_none_of_them_in_any_case_is_still_refused(hub: Hub, http: httpx.Client) -> None:
    response = http.post(
        "/fhir/ServiceRequest", json=referral("9434765919", "G.P."), headers=bearer(hub, PRACTICE, "clinician")
    )

    assert response.status_code == 400, response.text
    issue = response.json()["issue"][0]
    assert issue["code"] == "code-invalid"
    assert "'G.P.' is not one of gp, risk-stratification" in issue["diagnostics"]


@pytest.fixture(scope="module")
def a_referral(hub: Hub) -> str:
    """A referral in the record, for the commands to decline (made in June: the `at` below are later)."""
    with httpx.Client(base_url=hub.url, timeout=10) as client:
        made = refer(hub, client, "9999000037", "huddle", authoredOn="2026-06-01T10:00:00+00:00")
    hub.record()
    return str(made["id"])


def decline(hub: Hub, http: httpx.Client, referral_id: str, at: str) -> httpx.Response:
    body = {"resourceType": "Parameters", "parameter": [{"name": "at", "valueDateTime": at}]}
    return http.post(f"/fhir/ServiceRequest/{referral_id}/$decline", json=body, headers=coordinator(hub))


@pytest.mark.parametrize("at", ["2026-11", "2026"])
def test_at_as_a_year_or_a_month_is_refused_for_want_of_a_day_naming_the_parameter(
    hub: Hub, http: httpx.Client, a_referral: str, at: str
) -> None:
    response = decline(hub, http, a_referral, at)

    assert response.status_code == 400, response.text
    issue = response.json()["issue"][0]
    assert issue["expression"] == ["Parameters.at"]
    assert issue["diagnostics"].startswith(f"Parameters.at {at!r} is only a year or a month: give a date (YYYY-MM-DD")
    assert "a date and time with its UTC offset" in issue["diagnostics"]
    assert "not an ISO 8601" not in issue["diagnostics"]


def test_authored_on_as_a_month_is_refused_for_want_of_a_day_naming_the_element(hub: Hub, http: httpx.Client) -> None:
    body = referral("9434765919", "gp", authoredOn="2026-11")
    response = http.post("/fhir/ServiceRequest", json=body, headers=bearer(hub, PRACTICE, "clinician"))

    assert response.status_code == 400, response.text
    issue = response.json()["issue"][0]
    assert issue["expression"] == ["ServiceRequest.authoredOn"]
    assert issue["diagnostics"].startswith("ServiceRequest.authoredOn '2026-11' is only a year or a month")


@pytest.mark.parametrize(
    ("at", "recorded"),
    [
        ("2026-11-25", "2026-11-25T00:00:00+00:00"),  # a day alone: its start, UK time (GMT in November)
        ("2026-07-06", "2026-07-05T23:00:00+00:00"),  # (BST)
        ("2026-11-25T10:00:00Z", "2026-11-25T10:00:00+00:00"),
        ("2026-11-25T10:00:00+01:00", "2026-11-25T09:00:00+00:00"),
        ("2026-11-25T10:00Z", "2026-11-25T10:00:00+00:00"),
    ],
)
def test_at_as_a_date_or_a_date_and_time_is_taken_as_before(
    hub: Hub, http: httpx.Client, at: str, recorded: str
) -> None:
    # (a referral each: a decline sent again is answered with the first, its date included)
    made = refer(hub, http, "9999000037", "huddle", authoredOn="2026-06-01T10:00:00+00:00")
    hub.record()
    response = decline(hub, http, str(made["id"]), at)

    assert response.status_code == 200, response.text
    assert hub.published[-1].time == datetime.fromisoformat(recorded)


@pytest.mark.parametrize(
    ("at", "said"),
    [("6 July", "'6 July' is not an ISO 8601 date and time"), ("2026-11-25T10:00", "needs its UTC offset")],
)
def test_what_at_refused_before_is_refused_as_before(
    hub: Hub, http: httpx.Client, a_referral: str, at: str, said: str
) -> None:
    response = decline(hub, http, a_referral, at)

    assert response.status_code == 400, response.text
    assert said in response.json()["issue"][0]["diagnostics"]


# --- `at` before what the command acts on began -------------------------------------------------------

START = "2026-11-12T10:00:00+00:00"  # when the episodes below began (their accept's `at`)


def params(**values: str) -> dict[str, Any]:
    return {"resourceType": "Parameters", "parameter": [{"name": k, "valueString": v} for k, v in values.items()]}


def command(hub: Hub, http: httpx.Client, path: str, **values: str) -> httpx.Response:
    return http.post(path, json=params(**values), headers=coordinator(hub))


def referred(hub: Hub, http: httpx.Client, nhs: str, **changes: Any) -> dict[str, Any]:
    """A referral (authored AUTHORED) on the record; from a huddle, not to move the counts by source above."""
    made = refer(hub, http, nhs, "huddle", **changes)
    hub.record()
    return made


def accepted(hub: Hub, http: httpx.Client, nhs: str) -> dict[str, Any]:
    """An EpisodeOfCare on the record, opened at START."""
    made = referred(hub, http, nhs)
    response = command(hub, http, f"/fhir/ServiceRequest/{made['id']}/$accept", coordinator="c-ann", at=START)
    assert response.status_code == 201, response.text
    hub.record()
    return dict(response.json())


def refused_as_before(response: httpx.Response, at: str, what: str, began: str) -> None:
    assert response.status_code == 400, response.text
    assert response.json()["resourceType"] == "OperationOutcome"
    issue = response.json()["issue"][0]
    assert (issue["code"], issue["expression"]) == ("value", ["Parameters.at"])
    assert issue["diagnostics"].startswith(f"Parameters.at {at} is before {what} ({began})"), issue["diagnostics"]


@pytest.mark.parametrize(
    ("nhs", "valid"),
    [("9990001006", "2026-11-20T10:00:00Z"), ("9990001014", START)],  # (the start itself: a stay of no time)
)
def test_a_close_dated_before_the_episode_began_is_refused_400_naming_at_and_one_dated_after_closes_it(
    hub: Hub, http: httpx.Client, nhs: str, valid: str
) -> None:
    episode = accepted(hub, http, nhs)
    sent = len(hub.published)

    early = command(hub, http, f"/fhir/EpisodeOfCare/{episode['id']}/$close", goals="Home", at="2026-11-11T10:00:00Z")

    refused_as_before(early, "2026-11-11T10:00:00+00:00", "the episode began", START)
    assert len(hub.published) == sent  # never an event: the record, the engine and the KPIs never saw it
    closed = command(hub, http, f"/fhir/EpisodeOfCare/{episode['id']}/$close", goals="Home", at=valid)
    assert closed.status_code == 200, closed.text
    hub.record()
    stored = hub.services.reader.read("EpisodeOfCare", episode["id"])
    assert stored is not None
    end = datetime.fromisoformat(valid).isoformat()
    assert (stored["status"], stored["period"]) == ("finished", {"start": START, "end": end})


def test_an_accept_dated_before_the_referral_was_made_is_refused_400_naming_at_and_one_at_its_time_accepts_it(
    hub: Hub, http: httpx.Client
) -> None:
    made = referred(hub, http, "9990001022")
    sent = len(hub.published)
    path = f"/fhir/ServiceRequest/{made['id']}/$accept"

    early = command(hub, http, path, coordinator="c-ann", at="2026-11-09T10:00:00Z")

    refused_as_before(early, "2026-11-09T10:00:00+00:00", "the referral was made", AUTHORED)
    assert len(hub.published) == sent
    on_time = command(hub, http, path, coordinator="c-ann", at=AUTHORED)
    assert on_time.status_code == 201, on_time.text
    assert on_time.json()["period"] == {"start": AUTHORED}
    hub.record()
    stored = hub.services.reader.read("ServiceRequest", made["id"])
    assert stored is not None
    assert {"url": co.OUTCOME_EXTENSION, "valueCode": "accepted"} in stored["extension"]


def test_a_decline_dated_before_the_referral_was_made_is_refused_400_naming_at(hub: Hub, http: httpx.Client) -> None:
    made = referred(hub, http, "9990001030")
    sent = len(hub.published)
    path = f"/fhir/ServiceRequest/{made['id']}/$decline"

    early = command(hub, http, path, reason="moved away", at="2026-11-10T09:59:00Z")

    refused_as_before(early, "2026-11-10T09:59:00+00:00", "the referral was made", AUTHORED)
    assert len(hub.published) == sent
    declined = command(hub, http, path, reason="moved away", at="2026-11-10T10:01:00Z")
    assert declined.status_code == 200, declined.text
    hub.record()
    stored = hub.services.reader.read("ServiceRequest", made["id"])
    assert stored is not None
    assert stored["status"] == "revoked"


def test_a_contact_answering_a_referral_before_it_was_made_is_refused_one_naming_none_is_taken(
    hub: Hub, http: httpx.Client
) -> None:
    made = referred(hub, http, "9990001049")
    person = made["subject"]["reference"].removeprefix("Patient/")
    sent = len(hub.published)
    path = f"/fhir/Patient/{person}/$record-contact"

    early = command(hub, http, path, kind="face-to-face", referral=made["id"], at="2026-11-01")

    refused_as_before(early, "2026-11-01T00:00:00+00:00", f"ServiceRequest/{made['id']} was made", AUTHORED)
    assert len(hub.published) == sent
    # a contact with the person before the referral (a follow-up from an earlier stay, say) answers no
    # referral: the KPIs and the rules engine count it for none, and the record holds it as it is
    earlier = command(hub, http, path, kind="follow-up", at="2026-11-01")
    assert earlier.status_code == 201, earlier.text
    answering = command(hub, http, path, kind="face-to-face", referral=made["id"], at=AUTHORED)
    assert answering.status_code == 201, answering.text


def test_a_command_without_at_on_a_referral_dated_a_little_ahead_by_a_fast_clock_takes_the_referrals_time(
    hub: Hub, http: httpx.Client
) -> None:
    ahead = (datetime.now(UTC) + timedelta(minutes=2)).replace(microsecond=0)  # within the clock skew allowed
    made = referred(hub, http, "9990001057", authoredOn=ahead.isoformat())

    response = command(hub, http, f"/fhir/ServiceRequest/{made['id']}/$accept", coordinator="c-ann")

    assert response.status_code == 201, response.text
    assert response.json()["period"] == {"start": ahead.isoformat()}
    hub.record()  # (not skipped by the record as older than the referral: it is accepted there too)
    stored = hub.services.reader.read("ServiceRequest", made["id"])
    assert stored is not None
    assert {"url": co.OUTCOME_EXTENSION, "valueCode": "accepted"} in stored["extension"]


def test_a_decline_of_a_referral_already_accepted_is_refused_409_naming_the_episode(
    hub: Hub, http: httpx.Client
) -> None:
    # the KPIs count a referral by its latest outcome: declined after its accept, it counted as declined
    # while its person was on a caseload; leaving the service is the episode's $close
    episode = accepted(hub, http, "9990001065")
    referral = episode["referralRequest"][0]["reference"].removeprefix("ServiceRequest/")
    sent = len(hub.published)

    refused = command(hub, http, f"/fhir/ServiceRequest/{referral}/$decline", reason="changed mind", at=START)

    assert refused.status_code == 409, refused.text
    diagnostics = refused.json()["issue"][0]["diagnostics"]
    assert f"EpisodeOfCare/{episode['id']}" in diagnostics and "c-ann" in diagnostics and "$close" in diagnostics
    assert len(hub.published) == sent
    hub.record()
    stored = hub.services.reader.read("ServiceRequest", referral)
    assert stored is not None
    assert {"url": co.OUTCOME_EXTENSION, "valueCode": "accepted"} in stored["extension"]


def _asc_row(hub: Hub, day: str) -> Envelope:
    """An adult social care referral file row referred on `day`, as the referral adapter publishes it."""
    ods = hub.services.rules.rules.service.ods
    doc = asc_referral(referral_id="ASC-R-1", nhs_number="9990002010", referred_on=day, addressed_to=ods)
    [row] = read_rows(csv_of([doc], ASC_HEADER), Format.ASC_CSV)
    m = map_row(Format.ASC_CSV, row, key_secret=hub.services.secrets.key, now=datetime.now(UTC))
    data = orjson.dumps(m.payload)
    return Envelope(
        id=m.event_id, source=m.source, type=m.event_type, time=m.event_time, subject=m.person_key, data=data
    )


def test_a_decline_the_record_would_keep_its_later_version_over_is_refused_and_one_after_it_declines(
    hub: Hub, http: httpx.Client
) -> None:
    # a row referred on the 20th, then corrected to the 10th: the record keeps the 20th as its version's
    # time (it never goes back), so a decline dated the 15th was answered 200, skipped by the record as
    # older than what it held (the referral stayed active there) and counted declined by the KPIs
    first, corrected = _asc_row(hub, "2026-11-20"), _asc_row(hub, "2026-11-10")
    hub.published += [first, corrected]
    hub.record()
    resources = orjson.loads(corrected.data)["entry"]
    rid = next(e["resource"]["id"] for e in resources if e["resource"]["resourceType"] == "ServiceRequest")
    path, sent = f"/fhir/ServiceRequest/{rid}/$decline", len(hub.published)

    early = command(hub, http, path, reason="moved away", at="2026-11-15T10:00:00Z")

    assert early.status_code == 400, early.text
    said = early.json()["issue"][0]["diagnostics"]
    assert said.startswith(
        f"Parameters.at 2026-11-15T10:00:00+00:00 is before the record's latest version of ServiceRequest/{rid}"
    )
    assert len(hub.published) == sent
    on_the_day = command(hub, http, path, reason="moved away", at="2026-11-20")  # a date alone: that day's version
    assert on_the_day.status_code == 200, on_the_day.text
    hub.record()
    stored = hub.services.reader.read("ServiceRequest", rid)
    assert stored is not None
    assert stored["status"] == "revoked"


def test_a_decline_after_the_episode_closed_says_the_referral_stands_as_accepted(hub: Hub, http: httpx.Client) -> None:
    episode = accepted(hub, http, "9990001073")
    referral = episode["referralRequest"][0]["reference"].removeprefix("ServiceRequest/")
    closed = command(hub, http, f"/fhir/EpisodeOfCare/{episode['id']}/$close", goals="Home", at="2026-11-20T10:00:00Z")
    assert closed.status_code == 200, closed.text
    hub.record()

    refused = command(hub, http, f"/fhir/ServiceRequest/{referral}/$decline", reason="changed mind")

    assert refused.status_code == 409, refused.text
    said = refused.json()["issue"][0]["diagnostics"]
    assert "that episode is closed already: the referral stands as accepted" in said and "$close" not in said


def test_a_decline_sent_again_changes_nothing_and_a_declined_referral_is_not_accepted(
    hub: Hub, http: httpx.Client
) -> None:
    # a second $decline (a retry with no `at`) moved the decline to the day it was sent, and an $accept
    # of the declined referral took the decline out of every month's KPIs, months later
    made = referred(hub, http, "9990001081")
    path = f"/fhir/ServiceRequest/{made['id']}/$decline"
    first = command(hub, http, path, reason="moved away", at="2026-11-11T10:00:00Z")
    assert first.status_code == 200, first.text
    again_before_the_record_has_it = command(hub, http, path, reason="moved away")
    assert again_before_the_record_has_it.status_code == 200, again_before_the_record_has_it.text
    declines = [
        e
        for e in hub.published
        if e.type == co.REFERRAL_OUTCOME.type and e.subject == made["subject"]["reference"].removeprefix("Patient/")
    ]
    assert len({e.id for e in declines}) == 1  # one event id: every consumer applies the first, drops the second
    hub.record()
    sent = len(hub.published)

    again = command(hub, http, path, reason="a different reason")
    accept = command(hub, http, f"/fhir/ServiceRequest/{made['id']}/$accept", coordinator="c-ann")

    assert again.status_code == 200, again.text
    assert again.json()["note"] == [{"text": "moved away"}]  # the decline that stands
    assert accept.status_code == 409, accept.text
    assert "was declined" in accept.json()["issue"][0]["diagnostics"]
    assert len(hub.published) == sent
    fold = KpiFold(service=hub.services.rules.rules.service.ods)
    for event in hub.events():
        fold.add(event)

    def declined_in(month: str) -> float:
        return sum(r.value or 0 for r in fold.report(month) if r.kpi == "declined by practice")

    assert declined_in("2026-11") >= 1
    assert declined_in(f"{datetime.now(UTC):%Y-%m}") == 0  # not again in the month the retry was sent


def test_a_close_whose_pic_summary_would_say_nothing_is_refused_and_never_reaches_the_gp(
    hub: Hub, http: httpx.Client
) -> None:
    episode = accepted(hub, http, "9990001081")
    path = f"/fhir/EpisodeOfCare/{episode['id']}/$close"
    sent = len(hub.published)

    blank = command(hub, http, path, at="2026-11-20T10:00:00Z")
    spaces = command(hub, http, path, goals="  ", **{"follow-up": " "}, at="2026-11-20T10:00:00Z")

    for refused in (blank, spaces):
        assert refused.status_code == 400, refused.text
        issue = refused.json()["issue"][0]
        assert issue["diagnostics"].startswith("the PIC summary this close sends to the GP would be empty")
        assert issue["expression"] == [
            "Parameters.goals",
            "Parameters.interventions",
            "Parameters.onward-referrals",
            "Parameters.follow-up",
        ]
    assert len(hub.published) == sent  # no letter, no close: the episode stays open for a real one
    said = command(
        hub, http, path, **{"follow-up": "Declined support after the first visit"}, at="2026-11-20T10:00:00Z"
    )
    assert said.status_code == 200, said.text
