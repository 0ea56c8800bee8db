"""What a review of the coordinator's worklist found, over the real app on a socket (the worklist
tests' Hub, on SQLite and PostgreSQL):

* a referral whose person died, or that a stay on the caseload answered (its tasks ended by the
  close), is no longer listed: nobody can act on it, and an accept of it opened a stay for nothing;
* the stand-in the record keeps for an outcome that came before its referral is no referral waiting
  for the service (its referral may be addressed to someone else);
* a `$decline` answers with the decision, not the referral: the task list names a referral the policy
  withholds from the service, and its decline answered with the whole referral, its reason included,
  with nothing in the ledger.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from adapters.hl7v2.to_fhir import map_message
from adapters.referrals.rows import Format, Row
from adapters.referrals.to_fhir import map_row
from hub.core.identity import person_key
from hub.core.ports import RecordEvent
from schemas.envelope import Envelope
from tests.builders import an_adt, an_agreement
from tests.integration import test_coordination_worklist as worklist
from tests.integration.test_coordination_worklist import (
    NOW,
    PIC,
    PRACTICE,
    REFERRALS,
    SHARED,
    TRUST,
    Hub,
    bundle,
    listed,
)
from tests.integration.test_decision_claims import nhs_numbers

VCS = "VCS001"
database_url, hub = worklist.database_url, worklist.hub  # (the worklist tests' fixtures: SQLite and PostgreSQL)


def push(hub: Hub, *events: RecordEvent) -> None:
    for e in events:
        envelope = Envelope(
            id=e.id, source=e.source, type=e.type, time=e.time, subject=e.subject, data=orjson.dumps(e.payload)
        )
        hub.kafka.published.append(envelope)


def row(hub: Hub, fmt: Format, values: dict[str, Any]) -> RecordEvent:
    m = map_row(fmt, Row(2, values, b""), key_secret=hub.services.secrets.key, now=datetime.now(UTC))
    return RecordEvent(m.event_id, m.event_type, m.source, m.event_time, m.person_key, m.payload)


def test_a_referral_whose_person_died_leaves_the_list(hub: Hub) -> None:
    (nhs,) = nhs_numbers(1)
    referral = hub.refer(nhs, TRUST, "community-nursing", NOW - timedelta(days=2))
    hub.settle()
    assert f"ServiceRequest/{referral}" in listed(bundle(hub.get(REFERRALS)))
    raw = an_adt(
        trigger="A08",
        nhs_number=nhs,
        mrn=None,
        sender=TRUST,
        died="20261101",
        death_indicator="Y",
        event_time=(NOW - timedelta(days=1)).strftime("%Y%m%d%H%M"),
        control_id="DIED1",
    )
    for m in map_message(raw, key_secret=hub.services.secrets.key):
        push(hub, RecordEvent(m.event_id, m.event_type, m.source, m.event_time, m.person_key, m.payload))
    hub.settle()

    assert f"ServiceRequest/{referral}" not in listed(bundle(hub.get(REFERRALS)))


def test_a_referral_a_stay_answered_leaves_the_list_with_the_close(hub: Hub) -> None:
    (nhs,) = nhs_numbers(1)
    first = hub.refer(nhs, TRUST, "community-nursing", NOW - timedelta(days=10))
    second = hub.refer(nhs, PRACTICE, "gp", NOW - timedelta(days=9, hours=12))  # waiting when the stay began
    hub.settle()
    accepted = hub.command(
        f"/fhir/ServiceRequest/{first}/$accept", coordinator="c-amara", at=(NOW - timedelta(days=9)).isoformat()
    )
    assert accepted.status_code == 201, accepted.text
    hub.settle()
    assert f"ServiceRequest/{second}" in listed(bundle(hub.get(REFERRALS)))
    closed = hub.command(
        f"/fhir/EpisodeOfCare/{accepted.json()['id']}/$close",
        goals="met",
        interventions="visits",
        at=(NOW - timedelta(days=1)).isoformat(),
    )
    assert closed.status_code == 200, closed.text
    hub.settle()

    assert f"ServiceRequest/{second}" not in listed(bundle(hub.get(REFERRALS)))


def test_an_outcome_that_came_before_its_referral_is_not_listed(hub: Hub) -> None:
    (nhs,) = nhs_numbers(1)
    hub.services.agreements.load(an_agreement(VCS, PIC, id="vcs-pic", categories=SHARED), at=NOW - timedelta(days=1))
    time.sleep(1.2)  # (the agreement in force from the next second)
    day = (NOW - timedelta(days=1)).date().isoformat()
    outcome = {"referral_id": "VCS-77", "referrer": VCS, "nhs_number": nhs, "outcome": "contacted", "on": day}
    push(hub, row(hub, Format.VCSE_OUTCOME, outcome))
    hub.settle()
    held = [r for r in hub.services.reader.search("ServiceRequest", person_key(hub.services.secrets.key, nhs, None))]
    assert held, "the record keeps the outcome's stand-in"

    assert not any(f"ServiceRequest/{r['id']}" in listed(bundle(hub.get(REFERRALS))) for r in held)
    for command in ("$accept", "$decline"):  # nor taken for the referral by id: 409, naming what it is
        answer = hub.command(f"/fhir/ServiceRequest/{held[0]['id']}/{command}", coordinator="c-amara")
        assert answer.status_code == 409, answer.text
        assert "stands for an outcome that came before its referral" in answer.json()["issue"][0]["diagnostics"]


def test_a_decline_answers_with_the_decision_not_the_referral_it_may_not_read(hub: Hub) -> None:
    (nhs,) = nhs_numbers(1)
    hidden = hub.refer(  # (no agreement shares VCS001's referrals with the service)
        nhs, VCS, "voluntary-sector", NOW - timedelta(days=4), reasonCode=[{"text": "PRIVATE: lives alone, debts"}]
    )
    hub.settle()
    assert hub.get(f"/fhir/ServiceRequest/{hidden}").status_code == 403

    declined = hub.command(f"/fhir/ServiceRequest/{hidden}/$decline", reason="not ours", at=NOW.isoformat())
    again = hub.command(f"/fhir/ServiceRequest/{hidden}/$decline", reason="x", at=NOW.isoformat())

    for answer in (declined, again):
        assert answer.status_code == 200, answer.text
        assert "PRIVATE" not in answer.text and "reasonCode" not in answer.json()
        said = answer.json()
        assert (said["id"], said["status"], said["note"]) == (hidden, "revoked", [{"text": "not ours"}])
