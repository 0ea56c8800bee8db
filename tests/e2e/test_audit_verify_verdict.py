"""`carehub audit verify`, run as an operator runs it, is honest about what a chain shows: someone with
write access to the database can rewrite an entry and recompute every hash after it, so a consistent
chain proves nothing was changed only against a head kept outside the hub. The verdict says so, prints
the head and how to check it later; only `--head` with a head kept earlier catches the rewrite."""

from __future__ import annotations

import csv
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from hub.bootstrap import build
from hub.core.ledger import Disclosure, chain_hash
from hub.settings import Settings
from hub.store.tables import disclosure_ledger

pytestmark = pytest.mark.timeout(120)
CAREHUB = str(Path(sys.executable).with_name("carehub"))
T0 = datetime(2026, 11, 25, 9, 0, tzinfo=UTC)


def verify(hub: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {"PATH": "/usr/bin:/bin", "COLUMNS": "250"}
    command = [CAREHUB, "audit", "verify", "--data-dir", str(hub), *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=60, check=False, env=env)


def a_hub_with_a_ledger(hub: Path) -> sa.Engine:
    services = build(Settings(data_dir=hub))
    for i in range(4):
        at, person = T0 + timedelta(seconds=i), f"p{i}"
        services.ledger.append([Disclosure(at, "Y90001", f"u{i}", "read", person, (f"Patient/{person}#h",), "permit")])
    return services.engine


def rewrite_and_rechain(engine: sa.Engine, seq: int) -> None:
    """Turn one permit into a deny and recompute the chain after it, as anyone who can write the database can."""
    with engine.begin() as conn:
        rows = conn.execute(
            sa.select(disclosure_ledger).where(disclosure_ledger.c.seq >= seq).order_by(disclosure_ledger.c.seq)
        ).all()
        prev = rows[0].prev_hash
        for row in rows:
            body = {**row.body, "decision": "deny"} if row.seq == seq else row.body
            digest = chain_hash(prev, body)
            conn.execute(
                disclosure_ledger.update()
                .where(disclosure_ledger.c.seq == row.seq)
                .values(body=body, prev_hash=prev, hash=digest)
            )
            prev = digest


def said(done: subprocess.CompletedProcess[str]) -> str:
    return " ".join(done.stdout.split())


def test_a_consistent_chain_is_not_called_intact_and_the_head_to_keep_is_printed(tmp_path: Path) -> None:
    engine = a_hub_with_a_ledger(tmp_path / "hub")
    kept = verify(tmp_path / "hub")
    assert kept.returncode == 0, kept.stdout + kept.stderr
    head = next(w for w in kept.stdout.split() if w.startswith("4:"))

    rewrite_and_rechain(engine, 2)
    rewritten = verify(tmp_path / "hub")
    assert rewritten.returncode == 0, rewritten.stdout + rewritten.stderr  # (the chain alone cannot tell)
    verdict = said(rewritten)
    assert "intact" not in verdict and "chain verified" not in verdict, verdict
    assert verdict.startswith("ledger chain consistent: 4 entries"), verdict
    assert "proves nothing was changed only against a head kept outside the hub" in verdict, verdict
    new_head = next(w for w in rewritten.stdout.split() if w.startswith("4:"))
    assert new_head != head
    assert f"carehub audit verify --head {new_head}" in verdict, verdict

    caught = verify(tmp_path / "hub", "--head", head)  # the head kept before the rewrite
    assert caught.returncode == 1, caught.stdout + caught.stderr
    assert "entry 4 is not the entry recorded earlier as the head" in said(caught)


def test_a_chain_that_leads_to_the_head_kept_is_said_to_be_unchanged_up_to_it(tmp_path: Path) -> None:
    a_hub_with_a_ledger(tmp_path / "hub")
    head = next(w for w in verify(tmp_path / "hub").stdout.split() if w.startswith("4:"))
    checked = verify(tmp_path / "hub", "--head", head)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"ledger intact: 4 entries, and entry 4 is the head kept ({head})" in said(checked)
    assert "nothing up to it was changed or cut since that head was kept" in said(checked)


def test_a_head_kept_before_later_entries_proves_only_the_entries_up_to_it(tmp_path: Path) -> None:
    engine = a_hub_with_a_ledger(tmp_path / "hub")
    kept = next(w for w in verify(tmp_path / "hub").stdout.split() if w.startswith("4:"))
    services = build(Settings(data_dir=tmp_path / "hub"))
    for i in range(4, 7):  # (decisions made since the head was kept)
        at, person = T0 + timedelta(seconds=i), f"p{i}"
        services.ledger.append([Disclosure(at, "Y90001", f"u{i}", "read", person, (f"Patient/{person}#h",), "permit")])
    services.engine.dispose()
    today = next(w for w in verify(tmp_path / "hub").stdout.split() if w.startswith("7:"))

    checked = verify(tmp_path / "hub", "--head", kept)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    verdict = said(checked)
    assert "ledger intact: 7 entries" not in verdict, verdict  # (it said so: 5-7 were never checked against a head)
    assert f"entries 1-4 intact against the head kept ({kept})" in verdict, verdict
    assert "entries 5-7 consistent only" in verdict, verdict
    assert f"(keep today's head: {today})" in verdict, verdict

    rewrite_and_rechain(engine, 6)  # (after the head kept: the chain alone cannot tell, and it is not called intact)
    rewritten = verify(tmp_path / "hub", "--head", kept)
    assert rewritten.returncode == 0, rewritten.stdout + rewritten.stderr
    assert "entries 5-7 consistent only" in said(rewritten), said(rewritten)


def test_the_report_csvs_call_a_chain_with_no_head_consistent_not_verified(tmp_path: Path) -> None:
    from hub.core.identity import person_key

    nhs = "9434765919"
    services = build(Settings(data_dir=tmp_path / "hub"))
    person = person_key(services.secrets.key, nhs, None)
    services.ledger.append([Disclosure(T0, "Y90001", "u1", "read", person, (f"Patient/{person}#h",), "permit")])
    services.engine.dispose()
    env = {"PATH": "/usr/bin:/bin", "COLUMNS": "250"}
    for report in (["disclosures", "--nhs-number", nhs], ["time-travel"]):
        sheet = tmp_path / f"{report[0]}.csv"
        command = [CAREHUB, "audit", *report, "--csv", str(sheet), "--data-dir", str(tmp_path / "hub")]
        done = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False, env=env)
        assert done.returncode == 0, done.stdout + done.stderr
        with sheet.open(newline="") as rows:
            assert {row["ledger"] for row in csv.DictReader(rows)} == {"consistent"}, report
