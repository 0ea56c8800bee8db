"""The policy time-travel report's rules (hub.core.timetravel): only a change of policy shows as one.
A break-glass read, a resource changed since, and a person merged since each once showed as a
change (or hid one) when the policy had not changed (or had)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hub.core.ledger import Disclosure, Entry, resource_ref
from hub.core.policy import Asker, ConsentRule, consent_rule, decide
from hub.core.ports import Json
from hub.core.timetravel import WITHHELD_WITH_EVENT, people_of, reconsider
from tests.builders import an_agreement, an_objection

THEN = datetime(2026, 9, 1, 10, 0, tzinfo=UTC)
NOW = THEN + timedelta(days=30)
AGREEMENTS = [an_agreement("RXX", "Y00001")]


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


def objection(person: str) -> ConsentRule:
    rule = consent_rule(
        an_objection("9434765919", "Y00001") | {"id": "c1", "patient": {"reference": f"Patient/{person}"}}
    )
    assert rule is not None
    return rule


def test_a_break_glass_read_is_the_same_today_when_the_policy_is() -> None:
    held = encounter("p1", 1, source="RZZ")  # a supplier outside any agreement: only an emergency shows it
    then = decide(Asker("Y00001", "clinician", THEN, "collapsed in clinic"), held, AGREEMENTS, [])
    assert then.outcome == "break-glass"
    [row] = reconsider(
        [entry(held, "break-glass", reasons=then.reasons)], {"Encounter/enc-1": held}, AGREEMENTS, [], NOW
    )
    assert (row.then, row.now, row.changed) == ("break-glass", "break-glass", False)


def test_a_resource_changed_since_is_decided_as_it_stands_and_says_so() -> None:
    disclosed, now = encounter("p1", 1), encounter("p1", 3, source="RZZ")  # its supplier changed, not the policy
    [row] = reconsider([entry(disclosed, "permit")], {"Encounter/enc-1": now}, AGREEMENTS, [], NOW)
    assert row.now == "deny"
    assert "decided on version 3: version 1 was disclosed" in row.now_basis
    [same] = reconsider([entry(disclosed, "permit")], {"Encounter/enc-1": disclosed}, AGREEMENTS, [], NOW)
    assert (same.now, same.changed) == ("permit", False)
    assert "version" not in same.now_basis


def test_the_consents_of_the_person_a_resource_was_merged_into_count() -> None:
    disclosed = encounter("retired", 1)
    now = encounter("survivor", 2)  # a merge since moved it
    entries = [entry(disclosed, "permit", person="retired")]
    resources = {"Encounter/enc-1": now}
    assert people_of(entries, resources) == {"retired", "survivor"}
    consents = {"survivor": [objection("survivor")], "retired": []}
    found = [rule for person in sorted(people_of(entries, resources)) for rule in consents[person]]
    [row] = reconsider(entries, resources, AGREEMENTS, found, NOW)
    assert (row.now, row.changed) == ("deny", True)
    assert "Consent/c1" in row.now_basis


def test_a_resource_an_export_withheld_only_with_its_event_differs_only_if_it_is_no_longer_permitted() -> None:
    # `carehub audit export --payloads` withholds a whole event when one resource in it is not covered;
    # the covered ones were permitted themselves, so today's permit is no change of policy
    held = encounter("p1", 1)
    withheld = entry(held, "deny", reasons=(WITHHELD_WITH_EVENT,))
    [row] = reconsider([withheld], {"Encounter/enc-1": held}, AGREEMENTS, [], NOW)
    assert (row.then, row.now, row.changed) == ("withheld", "permit", False)
    assert row.then_basis.startswith("permitted, but withheld")
    [objected] = reconsider([withheld], {"Encounter/enc-1": held}, AGREEMENTS, [objection("p1")], NOW)
    assert (objected.now, objected.changed) == ("deny", True)  # today it would not be let through itself
    [denied] = reconsider(
        [entry(held, "deny", reasons=("no agreement",))], {"Encounter/enc-1": held}, AGREEMENTS, [], NOW
    )
    assert (denied.then, denied.changed) == ("deny", True)  # a resource denied itself then still differs


def test_only_the_resources_own_persons_consents_bear_on_it() -> None:
    held = encounter("p1", 1)
    others = [objection(f"someone-{n}") for n in range(50)]
    [row] = reconsider([entry(held, "permit")], {"Encounter/enc-1": held}, AGREEMENTS, others, NOW)
    assert (row.now, row.changed) == ("permit", False)
    [mine] = reconsider([entry(held, "permit")], {"Encounter/enc-1": held}, AGREEMENTS, [*others, objection("p1")], NOW)
    assert (mine.now, mine.changed) == ("deny", True)


def test_content_disclosed_that_was_no_record_version_says_so_rather_than_version_unknown() -> None:
    held = encounter("p1", 2)
    unversioned = {k: v for k, v in held.items() if k != "meta"}  # as a delivery names an event's content
    [row] = reconsider([entry(unversioned, "permit")], {"Encounter/enc-1": held}, AGREEMENTS, [], NOW)
    assert row.resource == "Encounter/enc-1"  # (no /_history/: no record version was disclosed)
    assert "decided on version 2: the content disclosed was no record version" in row.now_basis
    assert "?" not in row.now_basis
