"""`carehub audit verify`, run as an operator runs it, is honest about what a chain shows: someone with
write access to the database can rewrite an entry and recompute every hash after it, so a consistent
chain proves nothing was changed only against a head kept outside the hub. The verdict says so, prints
the head and how to check it later; only `--head` with a head kept earlier catches the rewrite."""

from __future__ import annotations

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
