"""The policy time-travel report's rules (hub.core.timetravel): only a change of policy shows as one.
A break-glass read, a resource changed since, a person merged since, an export decided on an
event's own copy and a refused $everything each once showed as a change (or hid one) when the
policy had not changed (or had)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from hub.api.routes.fhir import refused_whole
from hub.core.ledger import Disclosure, Entry, resource_ref
from hub.core.policy import Asker, ConsentRule, Decision, consent_rule, decide, person_of
from hub.core.ports import Json
from hub.core.timetravel import WITHHELD_WITH_EVENT, WITHHELD_WITH_READ, people_of, reconsider
from hub.export import _decide, _entries
from tests.builders import an_agreement, an_objection

THEN = datetime(2026, 9, 1, 10, 0, tzinfo=UTC)
NOW = THEN + timedelta(days=30)
AGREEMENTS = [an_agreement("RXX", "Y00001")]
LOADED = [(THEN - timedelta(days=60), a) for a in AGREEMENTS]  # their history: the same agreements then


def encounter(person: str, version: int, source: str = "RXX") -> Json:
    return {
        "resourceType": "Encounter",
        "id": "enc-1",
        "status": "finished",
        "subject": {"reference": f"Patient/{person}"},
        "meta": {"versionId": str(version), "source": f"urn:ods:{source}"},
    }


def entry(
    resource: Json, decision: str, *, role: str = "clinician", person: str = "p1", reasons: tuple[str, ...] = ()
) -> Entry:
    body = Disclosure(
        at=THEN,
        recipient_org="Y00001",
        recipient_user="dr-jones",
        channel="read",
        person_key=person,
        resources=(resource_ref(resource),),
        decision=decision,
        reasons=tuple(reasons),
        basis={"role": role, "agreements": [], "consents": []},
    ).body()
    return Entry(1, body, "0" * 64, "0" * 64)


def objection(person: str, recipient: str = "Y00001") -> ConsentRule:
    rule = consent_rule(
        an_objection("9434765919", recipient) | {"id": "c1", "patient": {"reference": f"Patient/{person}"}}
    )
    assert rule is not None
    return rule


def test_a_break_glass_read_is_the_same_today_when_the_policy_is() -> None:
    held = encounter("p1", 1, source="RZZ")  # a supplier outside any agreement: only an emergency shows it
    then = decide(Asker("Y00001", "clinician", THEN, "collapsed in clinic"), held, AGREEMENTS, [])
    assert then.outcome == "break-glass"
    [row] = reconsider(
        [entry(held, "break-glass", reasons=then.reasons)],
        {"Encounter/enc-1": held},
        AGREEMENTS,
        [],
        NOW,
        history=LOADED,
    )
    assert (row.then, row.now, row.changed) == ("break-glass", "break-glass", False)


def test_a_resource_changed_since_is_decided_as_it_stands_and_says_so() -> None:
    disclosed, now = encounter("p1", 1), encounter("p1", 3, source="RZZ")  # its supplier changed, not the policy
    [row] = reconsider([entry(disclosed, "permit")], {"Encounter/enc-1": now}, AGREEMENTS, [], NOW, history=LOADED)
    assert (row.now, row.changed) == ("cannot tell", False)  # a different answer on other content
    assert row.now_basis.startswith("today deny on no agreement in force shares")
    assert "decided on version 3: version 1 was disclosed" in row.now_basis
    [same] = reconsider(
        [entry(disclosed, "permit")], {"Encounter/enc-1": disclosed}, AGREEMENTS, [], NOW, history=LOADED
    )
    assert (same.now, same.changed) == ("permit", False)
    assert "version" not in same.now_basis


def test_the_agreements_history_must_be_given_by_name_as_without_it_a_change_of_agreement_hides() -> None:
    # the supplier changed since, and so did the agreement: RZZ was a party then, and is not today
    wider = an_agreement("RXX", "RZZ", "Y00001")
    today = an_agreement("RXX", "Y00001", version=2)
    history = [(THEN - timedelta(days=60), wider), (NOW - timedelta(days=1), today)]
    disclosed, now = encounter("p1", 1), encounter("p1", 3, source="RZZ")
    entries, record = [entry(disclosed, "permit")], {"Encounter/enc-1": now}
    with pytest.raises(TypeError, match="history"):
        reconsider(entries, record, [today], [], NOW)  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        reconsider(entries, record, [today], [], NOW, history)  # type: ignore[call-arg]
    [row] = reconsider(entries, record, [today], [], NOW, history=history)
    assert (row.now, row.changed) == ("deny", True)
    assert "the agreements then would say permit" in row.now_basis
    [blind] = reconsider(entries, record, [today], [], NOW, history=())  # what a caller that forgot it was told
    assert (blind.now, blind.changed) == ("cannot tell", False)


def test_the_consents_of_the_person_a_resource_was_merged_into_count() -> None:
    disclosed = encounter("retired", 1)
    now = encounter("survivor", 2)  # a merge since moved it
    entries = [entry(disclosed, "permit", person="retired")]
    resources = {"Encounter/enc-1": now}
    assert people_of(entries, resources) == {"retired", "survivor"}
    consents = {"survivor": [objection("survivor")], "retired": []}
    found = [rule for person in sorted(people_of(entries, resources)) for rule in consents[person]]
    [row] = reconsider(entries, resources, AGREEMENTS, found, NOW, history=LOADED)
    assert (row.now, row.changed) == ("deny", True)
    assert "Consent/c1" in row.now_basis


def test_a_resource_an_export_withheld_only_with_its_event_differs_only_if_it_is_no_longer_permitted() -> None:
    # `carehub audit export --payloads` withholds a whole event when one resource in it is not covered;
    # the covered ones were permitted themselves, so today's permit is no change of policy
    held = encounter("p1", 1)
    withheld = entry(held, "deny", reasons=(WITHHELD_WITH_EVENT,))
    [row] = reconsider([withheld], {"Encounter/enc-1": held}, AGREEMENTS, [], NOW, history=LOADED)
    assert (row.then, row.now, row.changed) == ("withheld", "permit", False)
    assert row.then_basis.startswith("permitted, but withheld")
    [objected] = reconsider([withheld], {"Encounter/enc-1": held}, AGREEMENTS, [objection("p1")], NOW, history=LOADED)
    assert (objected.now, objected.changed) == ("deny", True)  # today it would not be let through itself
    [denied] = reconsider(
        [entry(held, "deny", reasons=("no agreement",))], {"Encounter/enc-1": held}, AGREEMENTS, [], NOW, history=LOADED
    )
    assert (denied.then, denied.changed) == ("deny", True)  # a resource denied itself then still differs


def test_only_the_resources_own_persons_consents_bear_on_it() -> None:
    held = encounter("p1", 1)
    others = [objection(f"someone-{n}") for n in range(50)]
    [row] = reconsider([entry(held, "permit")], {"Encounter/enc-1": held}, AGREEMENTS, others, NOW, history=LOADED)
    assert (row.now, row.changed) == ("permit", False)
    [mine] = reconsider(
        [entry(held, "permit")], {"Encounter/enc-1": held}, AGREEMENTS, [*others, objection("p1")], NOW, history=LOADED
    )
    assert (mine.now, mine.changed) == ("deny", True)


def test_content_disclosed_that_was_no_record_version_says_so_rather_than_version_unknown() -> None:
    held = encounter("p1", 2)
    unversioned = {k: v for k, v in held.items() if k != "meta"}  # as a delivery names an event's content
    [row] = reconsider([entry(unversioned, "permit")], {"Encounter/enc-1": held}, AGREEMENTS, [], NOW, history=LOADED)
    assert row.resource == "Encounter/enc-1"  # (no /_history/: no record version was disclosed)
    assert "decided on version 2: the content disclosed was no record version" in row.now_basis
    assert "?" not in row.now_basis


# --- rows decided on the writers' own entries: an export's, and a refused $everything's ---

AUDIT = an_agreement("RXX", "AUD01", id="audit", purposes=("audit",), categories=("demographics", "encounters"))


def patient(version: int | None, source: str | None = None) -> Json:
    meta: Json = {} if version is None else {"versionId": str(version)}
    return {"resourceType": "Patient", "id": "p1", "meta": meta | ({"source": f"urn:ods:{source}"} if source else {})}


def exported(payload: Json, sender: str, consents: list[ConsentRule]) -> list[Entry]:
    """The ledger entries `carehub audit export --payloads --org AUD01` writes for one event."""
    asker = Asker("AUD01", "auditor", THEN)
    _, judged = _decide(payload, f"urn:ods:{sender}", lambda r: decide(asker, r, [AUDIT], consents))
    if not all(d.permitted for _, d in judged):
        judged = [(r, d if not d.permitted else Decision("deny", (WITHHELD_WITH_EVENT,))) for r, d in judged]
    bodies = [e.body() for e in _entries(judged, ("AUD01", "ms-audit"), THEN, event="ev-1")]
    return [Entry(n, body, "0" * 64, "0" * 64) for n, body in enumerate(bodies, start=1)]


def test_an_export_denial_on_the_events_own_copy_is_no_change_though_the_record_now_says_permit() -> None:
    # a referral's Patient stub came from practice Y90004, no party to the audit agreement; the
    # record's Patient now is the hospital's: re-exporting under the same policy still denies
    entries = exported(patient(None), "Y90004", [])
    assert entries[0].body["event"] == "ev-1"  # the ledger names the event whose copy was judged
    [row] = reconsider(entries, {"Patient/p1": patient(2, "RXX")}, [AUDIT], [], NOW, history=[(THEN, AUDIT)])
    assert (row.then, row.now, row.changed) == ("deny", "cannot tell", False)
    assert "the export decided on the event's own copy, which the record does not keep" in row.now_basis
    assert row.now_basis.startswith("today permit on audit@1")


def test_a_change_of_consent_or_agreement_still_shows_on_an_exported_copy() -> None:
    entries = exported(patient(None), "RXX", [])
    assert entries[0].body["decision"] == "permit"
    record = {"Patient/p1": patient(2, "RXX")}
    [objected] = reconsider(entries, record, [AUDIT], [objection("p1", "AUD01")], NOW, history=[(THEN, AUDIT)])
    assert (objected.now, objected.changed) == ("deny", True)  # the person objected since
    narrower = an_agreement("RXX", "AUD01", id="audit", version=2, purposes=("audit",), categories=("encounters",))
    history = [(THEN, AUDIT), (NOW - timedelta(days=1), narrower)]
    [dropped] = reconsider(entries, record, [narrower], [], NOW, history=history)
    assert (dropped.now, dropped.changed) == ("deny", True)  # version 2 no longer shares demographics
    assert "the agreements then would say permit" in dropped.now_basis
    [kept] = reconsider(entries, {"Patient/p1": patient(2, "RZZ")}, [AUDIT], [], NOW, history=[(THEN, AUDIT)])
    assert (kept.now, kept.changed) == ("cannot tell", False)  # only the record's copy changed supplier


def test_a_refused_everything_is_no_change_for_what_was_refused_only_with_it() -> None:
    practice = {"resourceType": "Organization", "id": "Y00001", "meta": {"versionId": "1"}}
    held = encounter("p1", 1)
    asker = Asker("Y00001", "clinician", THEN)
    refused = Decision("deny", ("the person objected to sharing demographics with Y00001",))
    judged = refused_whole(
        (patient(1, "RXX"), refused), [(r, decide(asker, r, AGREEMENTS, [])) for r in (practice, held)]
    )
    assert [d.reasons for _, d in judged[1:]] == [(WITHHELD_WITH_READ,), (WITHHELD_WITH_READ,)]
    entries = [entry_of(r, d) for r, d in judged]
    record = {"Patient/p1": patient(1, "RXX"), "Organization/Y00001": practice, "Encounter/enc-1": held}
    rows = reconsider(entries, record, AGREEMENTS, [], NOW, history=LOADED)
    assert [(r.resource.split("/")[0], r.then, r.now, r.changed) for r in rows] == [
        ("Patient", "deny", "permit", True),  # the objection is gone today: that is a change
        ("Organization", "withheld", "permit", False),
        ("Encounter", "withheld", "permit", False),
    ]


def test_an_organisation_an_older_ledger_denied_with_its_patient_is_no_change() -> None:
    practice = {"resourceType": "Organization", "id": "Y00001", "meta": {"versionId": "1"}}
    old = entry(practice, "deny", reasons=("no agreement in force shares demographics with Y00001",))
    [row] = reconsider([old], {"Organization/Y00001": practice}, AGREEMENTS, [], NOW, history=LOADED)
    assert (row.then, row.now, row.changed) == ("withheld", "permit", False)


def entry_of(resource: Json, decision: Decision) -> Entry:
    body = Disclosure(
        at=THEN,
        recipient_org="Y00001",
        recipient_user="dr-jones",
        channel="everything",
        person_key=person_of(resource),
        resources=(resource_ref(resource),),
        decision=decision.outcome,
        reasons=decision.reasons,
        basis={"role": "clinician", "agreements": list(decision.agreements), "consents": list(decision.consents)},
    ).body()
    return Entry(1, body, "0" * 64, "0" * 64)
