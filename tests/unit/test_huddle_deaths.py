"""The huddle agenda of a practice one of whose people died (hub.core.huddle, read and rendered by
hub.web.views): never a new referral or newly eligible; where still on it, each item says they died,
when, and that their episode should be closed, on the page, in the FHIR List and in what the CLI prints.

The meeting is on Thursday 26 November 2026 (window 19 to 25 November, Europe/London = UTC)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, cast

import pytest
from fhir.resources.R4B.list import List as FhirList

from hub.core.huddle import agenda, disclosed, to_fhir_list, withhold
from hub.core.policy import Decision
from hub.core.ports import RecordReader
from hub.web.views import decided_agenda, render_page
from tests.unit.test_huddle import HERE, MEETING, a_flag, a_patient, a_referral, a_stay, a_task

Json = dict[str, Any]
CLOSE = "Died Tue 24 Nov 2026 23:00; their episode of care should be closed"


def an_episode(eid: str, key: str, status: str = "active") -> Json:
    return {"resourceType": "EpisodeOfCare", "id": eid, "status": status, "patient": {"reference": f"Patient/{key}"}}


def the_week() -> list[Json]:
    """p1 referred, found eligible, on a caseload, died in hospital on 24 Nov with the GP letter overdue;
    p2, alive, referred and found eligible the same week."""
    dead = a_patient("p1") | {"deceasedDateTime": "2026-11-24T23:00:00+00:00"}
    letter = a_task("t1", "p1", status="requested")
    return [
        dead,
        a_patient("p2", nhs="9990000018"),
        a_referral("r1", "p1", "2026-11-20T09:00:00+00:00"),
        a_referral("r2", "p2", "2026-11-20T10:00:00+00:00"),
        a_flag("f1", "p1", "2026-11-20T09:00:00+00:00"),
        a_flag("f2", "p2", "2026-11-20T10:00:00+00:00"),
        a_stay("e1", "p1", "2026-11-24T23:00:00+00:00"),
        letter,
        an_episode("ep1", "p1"),
        an_episode("ep0", "p1", status="finished"),
    ]


def test_a_person_who_died_is_no_new_referral_nor_newly_eligible_and_their_other_items_say_so() -> None:
    found = agenda(HERE, MEETING, the_week())

    assert [i.reference for i in found.referrals] == ["ServiceRequest/r2"]
    assert [i.reference for i in found.eligible] == ["Flag/f2"]
    assert [(i.reference, i.what) for i in found.discharges] == [
        ("Encounter/e1", f"Discharged from RXX (inpatient). {CLOSE}")
    ]
    assert [(i.died, i.episode) for i in found.overdue] == [(CLOSE, "EpisodeOfCare/ep1")]
    listed = to_fhir_list(found)
    FhirList.model_validate(listed)
    assert {"text": f"Patient/p1: {CLOSE}"} in listed["note"]


def test_a_person_who_died_off_any_caseload_is_said_to_have_died_with_nothing_to_close() -> None:
    week = [r for r in the_week() if r["id"] != "ep1"]
    week[0] = a_patient("p1") | {"deceasedBoolean": True}

    found = agenda(HERE, MEETING, week)

    assert [i.what for i in found.discharges] == ["Discharged from RXX (inpatient). Died date not recorded"]
    assert found.overdue[0].episode is None


def test_the_episode_to_close_is_disclosed_with_the_item_and_withheld_takes_the_note_with_it() -> None:
    found = agenda(HERE, MEETING, the_week())

    assert "EpisodeOfCare/ep1" in {f"{r['resourceType']}/{r['id']}" for r in disclosed(found, the_week())}
    shown = withhold(found, lambda ref: not ref.startswith("EpisodeOfCare/"))
    assert [i.what for i in shown.discharges] == ["Discharged from RXX (inpatient). Died Tue 24 Nov 2026 23:00"]
    assert shown.withheld_items == 0


class Record:
    """The record as the huddle reads it (hub.core.ports.RecordReader), over a list of resources."""

    def __init__(self, resources: list[Json]) -> None:
        self.resources = resources

    def registered_with(self, practice_ods: str) -> list[Json]:
        return [r for r in self.resources if r["resourceType"] == "Patient"]

    def read(self, resource_type: str, id: str) -> Json | None:
        return None

    def search_many(self, resource_type: str, patient_ids: Sequence[str]) -> list[Json]:
        return [r for r in self.resources if r["resourceType"] == resource_type]


def test_the_page_read_from_the_record_marks_the_rows_of_a_person_who_died() -> None:
    judged: list[tuple[Json, Decision]] = []
    reader = cast(RecordReader, Record(the_week()))
    shown = decided_agenda(
        reader,
        HERE,
        MEETING,
        lambda r: Decision("permit", ()),
        judged.extend,
        viewer=(HERE, "coordinator"),
        refuse=pytest.fail,
    )

    html = render_page(shown, generated=datetime(2026, 11, 25, 9, tzinfo=UTC), viewer="Dr A")

    assert html.count('class="died"') == 2 and html.count(CLOSE) == 2
    assert 'data-ref="ServiceRequest/r1"' not in html and 'data-ref="ServiceRequest/r2"' in html
    assert "EpisodeOfCare/ep1" in {f"{r['resourceType']}/{r['id']}" for r, _ in judged}  # in the ledger


def test_the_huddle_reads_a_death_as_the_rules_engine_does() -> None:
    from hub.core.deaths import death_said
    from hub.core.huddle import describe_death

    for patient in ({"deceasedDateTime": 123}, {"deceasedBoolean": "yes"}, {"deceasedDateTime": ""}, {}):
        assert (describe_death(patient), death_said(patient)) == (None, None), patient
    assert describe_death({"deceasedBoolean": True}) == "Died date not recorded"
