"""Every API read and every delivery against the oracle (tests/unit/test_policy.py), over generated
agreements, consents and event streams: nothing is disclosed that the oracle forbids, nothing the
oracle allows is withheld. Runs the code the API and the delivery consumer run (hub.api Judge and
searchset filtering; Deliverer.judge and hub.core.delivery.plan), minus the sockets, which
tests/e2e cover. 2,000 streams of five events, each read by and delivered to two organisations:
over 10,000 read and delivery cases in all."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from consumers.delivery import Deliverer
from hub.api.routes.fhir import Judge
from hub.core.delivery import plan
from hub.core.policy import Asker, ConsentRule
from hub.core.ports import RecordEvent
from hub.core.record import apply_events
from hub.store.memory import MemoryRecordStore
from schemas.agreements import Agreement
from tests.unit.test_policy import KINDS, NOW, ORGS, PEOPLE, agreements, oracle

PROVIDERS = ["RXX", "RYY", "Y00001"]


class Policy:
    """The PolicySource interface over generated data."""

    def __init__(self, deals: list[Agreement], choices: list[ConsentRule]) -> None:
        self.deals, self.choices = deals, choices

    def agreements(self) -> list[Agreement]:
        return self.deals

    def consents(self, person: str) -> list[ConsentRule]:
        return [c for c in self.choices if c.person_key == person]


def an_event(n: int, person: str, provider: str, kind: str) -> RecordEvent:
    resource: dict[str, Any] = {"resourceType": kind, "id": f"{kind.lower()}-{person}-{n}"}
    if kind == "Patient":
        resource["id"] = person
    else:
        resource["subject" if kind != "Consent" else "patient"] = {"reference": f"Patient/{person}"}
        if kind == "Encounter":
            resource["status"] = "finished"
        if kind == "Consent":
            resource |= {"status": "inactive", "provision": {"type": "permit"}}
    payload = {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": resource}]}
    when = NOW - timedelta(days=1, minutes=n)
    return RecordEvent(f"ev-{n}", "uk.nhs.carehub.patient.updated.v1", f"urn:ods:{provider}", when, person, payload)


streams = st.lists(
    st.tuples(
        st.sampled_from(PEOPLE), st.sampled_from(PROVIDERS), st.sampled_from(["Patient", "Encounter", "Consent"])
    ),
    min_size=5,
    max_size=5,
)
consent_lists = st.lists(
    st.builds(
        lambda n, person, actors, categories, days: ConsentRule(
            id=f"c{n}",
            person_key=person,
            deny=True,
            actors=frozenset(actors),
            categories=frozenset(categories),
            start=None if days is None else NOW + timedelta(days=days),
        ),
        st.integers(0, 99),
        st.sampled_from(PEOPLE),
        st.lists(st.sampled_from(ORGS), max_size=2, unique=True),
        st.lists(st.sampled_from(sorted(set(KINDS.values()))), max_size=2, unique=True),
        st.one_of(st.none(), st.integers(-3, 3)),
    ),
    max_size=3,
)


def allowed(org: str, role: str, resource: dict[str, Any], deals: list[Agreement], choices: list[ConsentRule]) -> bool:
    person = (
        resource["id"]
        if resource["resourceType"] == "Patient"
        else resource.get("subject", resource.get("patient"))["reference"][8:]
    )
    source = resource["meta"]["source"].removeprefix("urn:ods:")
    return oracle(org, role, resource["resourceType"], person, source, [], None, deals, choices)


@settings(max_examples=2_000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(agreements, consent_lists, streams, st.lists(st.sampled_from(ORGS), min_size=2, max_size=2, unique=True))
def test_reads_and_deliveries_disclose_exactly_what_the_oracle_allows(
    deals: list[Agreement], choices: list[ConsentRule], stream: list[tuple[str, str, str]], readers: list[str]
) -> None:
    store = MemoryRecordStore()
    events = [an_event(n, person, provider, kind) for n, (person, provider, kind) in enumerate(stream)]
    with store.unit_of_work() as uow:
        apply_events(uow, events)
        uow.commit()
    policy = Policy(deals, choices)
    reader = store.reader()
    stored = [r for kind in ("Patient", "Encounter", "Consent") for r in reader.search(kind, None)]
    deliverer = Deliverer.__new__(Deliverer)
    deliverer.policy, deliverer.enforce = policy, True  # only its decisions are exercised here
    for org in readers:
        # the API: what a clinician of `org` would be shown
        judge = Judge(policy, Asker(org, "clinician", NOW))  # type: ignore[arg-type]
        shown = {r["id"] for r in stored if judge(r).permitted}
        assert shown == {r["id"] for r in stored if allowed(org, "clinician", r, deals, choices)}
        # deliveries: each stored resource as an event to a direct-care subscription of `org`
        sub = type("Sub", (), {"org": org, "purpose": "direct-care", "id": "s"})()
        for resource in stored:
            person = resource["id"] if resource["resourceType"] == "Patient" else None
            person = person or (resource.get("subject") or resource.get("patient"))["reference"][8:]
            decide = deliverer.judge(sub, person, NOW)  # type: ignore[arg-type]
            summary = {"id": "e", "type": "t", "time": NOW.isoformat()}
            planned = plan(
                subscription_id="s", content="full-resource", event=summary, resources=[resource], decide=decide
            )
            sent = planned.body is not None
            assert sent == allowed(org, "clinician", resource, deals, choices), (org, resource)
            if sent:
                assert planned.body["entry"][0]["resource"] == resource


def test_the_generated_world_is_not_trivially_all_deny() -> None:
    """Guard: the strategies produce permits as well as denies (else the property would prove little)."""
    deal = Agreement.model_validate(
        {
            "id": "xx",
            "version": 1,
            "title": "x",
            "parties": [{"code": "RXX"}, {"code": "Y00002"}],
            "purposes": ["direct-care"],
            "categories": ["encounters"],
            "lawful_basis": {"article6": "a", "article9": "b"},
            "valid_from": "2026-01-01",
        }
    )
    resource = {
        "resourceType": "Encounter",
        "id": "e",
        "subject": {"reference": "Patient/p1"},
        "meta": {"source": "urn:ods:RXX"},
    }
    assert allowed("Y00002", "clinician", resource, [deal], [])
    assert not allowed("Y00001", "clinician", resource, [deal], [])
    assert datetime.now(UTC) > NOW - timedelta(days=365 * 5)
