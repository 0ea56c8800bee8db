"""A council withdraws a referral it sent, through the referrals adapter's service on the embedded
Kafka-protocol broker (Tansu) with the real consumers and a SQLite record: the record's ServiceRequest
is revoked and the rules engine cancels the referral's triage and first-visit tasks; in the same file,
a withdrawal of another council's referral is refused naming row and field and kept in the
dead-letter store, and that referral and its tasks stand."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from adapters.referrals.service import ACCEPTED, REJECTED, KeptInputs, ReferralIntake
from consumers.app import build_broker
from hub.bootstrap import build, running
from hub.core.identity import person_key
from tests.e2e.test_referral_order import hub_settings, tasks, until
from tests.unit.test_referral_adapters import ASC_HEADER, NHS, OTHER_NHS, asc_referral, csv_of
from tests.unit.test_referral_withdrawals import withdrawal, withdrawals

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(120)]
BOTH = ("referral-triage", "first-visit")


def statuses(found: dict[tuple[str, str], str]) -> dict[str, str]:
    return {rule: status for (rule, _), status in found.items()}


async def test_a_council_withdraws_its_referral_and_not_another_councils(tmp_path: Path) -> None:
    settings = hub_settings(tmp_path)
    services = build(settings)
    secret = services.secrets.key
    ours, theirs = person_key(secret, NHS, None), person_key(secret, OTHER_NHS, None)
    another_councils = asc_referral(referral_id="ASC-7", nhs_number=OTHER_NHS, referrer="E10000099")
    referrals = csv_of([asc_referral(), another_councils], ASC_HEADER)
    async with running(settings, services=services, mllp=False, http=False) as run:
        broker = build_broker(run.bootstrap, client_id="withdrawal-test")
        await broker.start()
        try:
            kept = services.dead_letters
            council = ReferralIntake(
                broker,
                key_secret=secret,
                kept=kept if isinstance(kept, KeptInputs) else None,
                record=services.reader,
            )
            sent = await council.ingest(referrals, "file:referrals.csv")
            assert [o.status for o in sent] == [ACCEPTED, ACCEPTED]
            waiting = dict.fromkeys(BOTH, "requested")
            await until(lambda: statuses(tasks(services, ours)) == waiting, 60, "our referral's tasks")
            await until(lambda: statuses(tasks(services, theirs)) == waiting, 30, "their referral's tasks")

            raw = withdrawals(withdrawal(referral_id="ASC-7", nhs_number=OTHER_NHS), withdrawal())
            answered = await council.ingest(raw, "file:withdrawals.csv")
            assert [(o.row, o.status) for o in answered] == [(2, REJECTED), (3, ACCEPTED)]
            assert answered[0].dead_lettered
            assert answered[0].reason and answered[0].reason.startswith(
                "row 2, field referral_id: E10000023 has sent no referral 'ASC-7' that the hub holds"
            )
            cancelled = dict.fromkeys(BOTH, "cancelled")
            await until(lambda: statuses(tasks(services, ours)) == cancelled, 60, "our referral's tasks cancelled")
            await until(lambda: bool(services.dead_letters.recent(10)), 30, "the refused row kept")
        finally:
            await broker.stop()

    (withdrawn,) = services.reader.search("ServiceRequest", ours)
    assert withdrawn["status"] == "revoked"
    assert withdrawn["note"] == [{"text": "Moved out of the area"}]
    (standing,) = services.reader.search("ServiceRequest", theirs)
    assert (standing["status"], standing["requester"]["identifier"]["value"]) == ("active", "E10000099")
    assert statuses(tasks(services, theirs)) == dict.fromkeys(BOTH, "requested")
    (letter,) = services.dead_letters.recent(10)
    assert letter["reason"]["issue"][0]["expression"] == ["row 2", "referral_id"]
    assert letter["payload"].endswith(
        f"\nASC-7,E10000023,{OTHER_NHS},withdrawn,2026-11-20,Moved out of the area\n".encode()
    )
    assert OTHER_NHS not in json.dumps(letter["reason"])  # the reason never echoes an NHS number
