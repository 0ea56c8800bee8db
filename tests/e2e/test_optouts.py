"""The national data opt-out end to end: `carehub optouts load` puts each person's opt-out on the log
(embedded broker, real record), bad lines are refused by number and dead-lettered, and the policy then
withholds the person's data through an agreement that applies the opt-out while direct care goes on."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

from adapters.hl7v2.to_fhir import map_message
from hub.bootstrap import build
from hub.core.identity import person_key
from hub.core.policy import Asker, decide
from hub.core.ports import RecordEvent
from hub.core.record import apply_events
from hub.settings import Settings
from tests.builders import an_adt, an_agreement

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(180)]
OPTED_OUT, STAYED_IN = "9434765919", "9990000018"


def test_loaded_opt_outs_withhold_data_only_where_the_agreement_applies_the_opt_out(tmp_path: Path) -> None:
    services = build(Settings(data_dir=tmp_path))
    secret = services.secrets.key
    adt = [
        an_adt(trigger="A01", nhs_number=OPTED_OUT, control_id="N1", visit="V1"),
        an_adt(trigger="A01", nhs_number=STAYED_IN, control_id="N2", visit="V2", mrn="M2"),
    ]
    events = [
        RecordEvent(m.event_id, m.event_type, m.source, m.event_time, m.person_key, m.payload)
        for raw in adt
        for m in map_message(raw, key_secret=secret)
    ]
    with services.uow_factory() as uow:
        apply_events(uow, events)
        uow.commit()
    services.engine.dispose()
    listing = tmp_path / "opt-outs.csv"
    listing.write_text(f"nhs_number\n{OPTED_OUT}\n943 476 5918\n")

    env = {k: v for k, v in os.environ.items() if not k.startswith("CAREHUB_") and k != "KAFKA_BOOTSTRAP_SERVERS"}
    carehub = str(Path(sys.executable).with_name("carehub"))
    args = [carehub, "optouts", "load", str(listing), "--source", "Y00001", "--data-dir", str(tmp_path)]
    done = subprocess.run(args, env=env | {"COLUMNS": "200"}, capture_output=True, text=True, timeout=150, check=False)

    assert done.returncode == 1, done.stdout + done.stderr  # one line refused
    assert "line 3, field nhs_number" in done.stdout
    assert "1 national data opt-out(s) recorded, 1 line(s) refused" in done.stdout
    assert OPTED_OUT not in done.stdout + done.stderr
    again = build(Settings(data_dir=tmp_path))
    kept = again.dead_letters.recent(10)
    assert len(kept) == 1 and "line 3" in str(kept[0])
    opted, stayed = (person_key(secret, n, None) for n in (OPTED_OUT, STAYED_IN))
    consents = again.policy.consents(opted) if again.policy else []
    assert [c.national_opt_out for c in consents] == [True]
    assert again.policy is not None and again.policy.consents(stayed) == []

    planning = an_agreement("RXX", "Y00001", id="planning", purposes=("care-coordination",))
    planning = planning.model_copy(update={"national_data_opt_out": True})
    direct = an_agreement("RXX", "Y00001", id="direct", purposes=("direct-care",))
    now = datetime.now(UTC)
    [encounter] = again.reader.search("Encounter", opted)
    [other] = again.reader.search("Encounter", stayed)
    coordinator, clinician = Asker("Y00001", "coordinator", now), Asker("Y00001", "clinician", now)
    assert decide(coordinator, encounter, [planning], consents).outcome == "deny"
    assert decide(coordinator, other, [planning], []).outcome == "permit"
    assert decide(clinician, encounter, [direct], consents).outcome == "permit"
    again.engine.dispose()
