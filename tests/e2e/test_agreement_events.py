"""Loading an agreement version is an event: with a Kafka log configured, `carehub agreements load`
puts each new version on the log as a FHIR Contract carrying the document, old versions included."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import orjson
import pytest
import yaml
from fhir.resources.R4B.contract import Contract

from hub.agreement_events import agreement_of
from schemas.agreements import Agreement
from schemas.events.agreement import AGREEMENT_LOADED
from tests.conftest import TansuProcess
from tests.kafka_log import header, read_all

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(120)]
EXAMPLE = Path(__file__).resolve().parents[2] / "schemas" / "examples" / "agreement.example.yaml"


async def loaded_on_the_log(bootstrap: str) -> list[dict[str, object]]:
    return [orjson.loads(r.value) for r in await read_all(bootstrap) if header(r, "ce_type") == AGREEMENT_LOADED.type]


async def test_each_new_agreement_version_goes_onto_the_log(tmp_path: Path, tansu: TansuProcess) -> None:
    document = yaml.safe_load(EXAMPLE.read_text())
    second = tmp_path / "v2.yaml"
    second.write_text(yaml.safe_dump(document | {"version": 2, "categories": ["demographics"]}))
    env = {k: v for k, v in os.environ.items() if not k.startswith("CAREHUB_")}
    env["KAFKA_BOOTSTRAP_SERVERS"] = tansu.bootstrap
    carehub = str(Path(sys.executable).with_name("carehub"))
    args = [carehub, "agreements", "load", str(EXAMPLE), str(second), "--data-dir", str(tmp_path)]
    done = await asyncio.to_thread(
        subprocess.run, args, env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "2 agreement version(s) on the log" in done.stdout

    contracts = await loaded_on_the_log(tansu.bootstrap)
    assert sorted(str(c["id"]) for c in contracts) == ["example-locality-pisa-v1", "example-locality-pisa-v2"]
    for contract in contracts:
        Contract.model_validate(contract)
    carried = sorted((a for a in map(agreement_of, contracts) if a), key=lambda a: a.version)
    assert carried == [Agreement.model_validate(document), Agreement.model_validate(yaml.safe_load(second.read_text()))]
