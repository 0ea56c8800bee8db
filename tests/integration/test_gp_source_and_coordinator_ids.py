"""Two walkthrough findings, over a real socket (the real app over a real SQLite record, Kafka a list:
tests/integration/test_inputs_coordination_api.py's hub):

* A referral whose source is `gp` names the caller as the person's practice only when the caller is
  a GP practice. A hospital trust (RZZ) saying `gp` became the person's "GP": the PIC summary would
  have gone to the hospital, and no task asked anyone to find the real practice.
* `$accept` refuses a coordinator's id that differs only in case from one with a caseload: `C-Ben`
  beside `c-ben`, at the cap, opened a second caseload past it. Ids are kept as given (claims and
  caseloads made before hold them so). An id that is no id is refused 400, naming it.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from hub.bootstrap import build
from hub.core.identity import person_key
from hub.settings import Settings
from tests.integration.test_accept_race import consume
from tests.integration.test_inputs_coordination_api import Hub, bearer, coordinator, referral, served_hub

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hub]:
    with served_hub(build(Settings(data_dir=tmp_path_factory.mktemp("gp-source")))) as live:
        yield live


@pytest.fixture
def http(hub: Hub) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=hub.url, timeout=10) as client:
        yield client


def practice_named(hub: Hub, nhs: str) -> Any:
    hub.record()
    patient = hub.services.reader.read("Patient", person_key(hub.services.secrets.key, nhs, None))
    assert patient is not None
    return patient.get("generalPractitioner")


@pytest.mark.parametrize(
    ("org", "nhs", "named"),
    [("Y00001", "9434765919", "Y00001"), ("RZZ", "9990000018", None), ("U12345", "9990000026", None)],
)
def test_only_a_gp_practice_saying_gp_becomes_the_persons_practice(
    hub: Hub, http: httpx.Client, org: str, nhs: str, named: str | None
) -> None:
    made = http.post("/fhir/ServiceRequest", json=referral(nhs, "gp"), headers=bearer(hub, org, "clinician"))
    assert made.status_code == 201, made.text

    said = practice_named(hub, nhs)
    assert (said[0]["identifier"]["value"] if said else None) == named, org


def accept(hub: Hub, http: httpx.Client, referral_id: str, who: str) -> httpx.Response:
    body = {"resourceType": "Parameters", "parameter": [{"name": "coordinator", "valueString": who}]}
    return http.post(f"/fhir/ServiceRequest/{referral_id}/$accept", json=body, headers=coordinator(hub))


def referred(hub: Hub, http: httpx.Client, nhs: str) -> str:
    made = http.post("/fhir/ServiceRequest", json=referral(nhs, "gp"), headers=bearer(hub, "Y00001", "clinician"))
    assert made.status_code == 201, made.text
    hub.record()
    return str(made.json()["id"])


def test_a_coordinator_spelt_in_other_capitals_is_refused_naming_the_one_with_the_caseload(
    hub: Hub, http: httpx.Client
) -> None:
    cap = hub.services.rules.rules.caseload_cap
    numbers = [n for n in (f"{900000000 + i:09d}" for i in range(400)) if _check_digit(n) is not None][: cap + 2]
    nhs = [n + str(_check_digit(n)) for n in numbers]
    for n in nhs[:cap]:
        response = accept(hub, http, referred(hub, http, n), "c-ben")
        assert response.status_code == 201, response.text

    consume(hub.services, hub.events())  # (the engine's caseloads, which the check reads, as the consumers make them)
    twin = accept(hub, http, referred(hub, http, nhs[cap]), "C-Ben")

    assert twin.status_code == 400, twin.text
    issue = twin.json()["issue"][0]
    assert issue["expression"] == ["Parameters.parameter[coordinator]"]
    assert "'C-Ben' differs only in case from 'c-ben'" in issue["diagnostics"]
    assert accept(hub, http, referred(hub, http, nhs[cap]), "c-ben").status_code == 409  # (at the cap)
    caseloads = http.get("/coordination/caseloads", headers=coordinator(hub)).json()
    assert "C-Ben" not in str(caseloads)
    taken = accept(hub, http, referred(hub, http, nhs[cap + 1]), " C-Amara ")  # (no one else spelt so)
    assert taken.status_code == 201, taken.text
    assert taken.json()["careManager"]["identifier"]["value"] == "C-Amara"


@pytest.mark.parametrize("who", ["", "c ben", "c-ben\n2", "x" * 101, "<script>"])
def test_a_coordinator_id_that_is_no_id_is_refused_naming_the_parameter(hub: Hub, http: httpx.Client, who: str) -> None:
    response = accept(hub, http, referred(hub, http, "9990000034"), who)

    assert response.status_code == 400, response.text
    issue = response.json()["issue"][0]
    assert issue["expression"] == ["Parameters.parameter[coordinator]"], issue


def _check_digit(nine: str) -> int | None:
    """The NHS number check digit for nine digits (modulus 11), or None where there is none."""
    total = sum(int(d) * (10 - i) for i, d in enumerate(nine))
    digit = 11 - total % 11
    return 0 if digit == 11 else None if digit == 10 else digit


def test_a_status_moved_before_the_engine_hands_the_task_over_keeps_the_coordinator_as_owner(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """The accept's events reach the record a moment before the rules engine reads them; a coordinator
    moving the first visit in between moved the record's copy, which named the team, and the engine's
    hand-over that came after it was a move back, refused: the task was the team's for good."""
    from hub.core.coordination import Positioned, process
    from hub.core.ports import RecordEvent
    from hub.core.record import apply_events

    with served_hub(build(Settings(data_dir=tmp_path_factory.mktemp("owner-race")))) as live:
        read = 0

        def engine() -> list[RecordEvent]:
            """The rules engine reads what it has not yet, and derives (published, not yet on the record)."""
            nonlocal read
            events = live.events()[read:]
            read += len(events)
            with live.services.coordination.unit_of_work() as uow:
                derived = process(live.services.rules, uow, [Positioned(e, 0) for e in events])
                uow.commit()
            return derived

        def record(events: list[RecordEvent]) -> None:
            with live.services.uow_factory() as uow:
                apply_events(uow, events)
                uow.commit()

        with httpx.Client(base_url=live.url, timeout=10) as http:
            referral_id = referred(live, http, "9434765919")
            record(engine())
            [first_visit] = [
                t for t in live.services.reader.search("Task", None) if t["code"]["coding"][0]["code"] == "first-visit"
            ]
            assert accept(live, http, referral_id, "c-ann").status_code == 201
            live.record()
            handed_over = engine()  # on the log next; the record has not applied it yet
            body = {"resourceType": "Parameters", "parameter": [{"name": "status", "valueCode": "in-progress"}]}
            moved = http.post(f"/fhir/Task/{first_visit['id']}/$status", json=body, headers=coordinator(live))
            assert moved.status_code == 200, moved.text
            record(handed_over)  # in log order: the hand-over, then the move
            live.record()
            record(engine())

        on_record = live.services.reader.read("Task", first_visit["id"])
        assert on_record is not None
        assert (on_record["status"], on_record["owner"]["identifier"]["value"]) == ("in-progress", "c-ann")
