"""The SQL ledger on SQLite and PostgreSQL: tampering with rows in the database is caught by verify,
and the `carehub audit verify` command names the entry and exits 1."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from hub.core.ledger import Disclosure, verify
from hub.store.database import open_engine
from hub.store.ledger import SqlLedger

T0 = datetime(2026, 11, 25, 9, 0, tzinfo=UTC)


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def engine(request: pytest.FixtureRequest) -> Iterator[sa.Engine]:
    url = request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "postgres_url")
    engine = open_engine(url)
    yield engine
    engine.dispose()


def filled(engine: sa.Engine, n: int = 6) -> SqlLedger:
    ledger = SqlLedger(engine)
    for i in range(n):  # one append per request, as the API does
        ledger.append(
            [
                Disclosure(
                    T0 + timedelta(seconds=i),
                    "Y90001",
                    f"u{i}",
                    "read",
                    f"p{i % 3}",
                    (f"Patient/p{i % 3}/_history/1#h",),
                    "permit",
                )
            ]
        )
    return ledger


def test_appends_form_one_verified_chain(engine: sa.Engine) -> None:
    ledger = filled(engine)
    assert verify(ledger.entries()) == (6, None)
    assert [e.seq for e in ledger.about("p1")] == [2, 5]


def test_an_updated_row_is_caught(engine: sa.Engine) -> None:
    ledger = filled(engine)
    with engine.begin() as conn:
        table = sa.Table("disclosure_ledger", sa.MetaData(), autoload_with=conn)
        body = conn.execute(sa.select(table.c.body).where(table.c.seq == 4)).scalar_one()
        body = json.loads(body) if isinstance(body, str) else body
        conn.execute(table.update().where(table.c.seq == 4).values(body={**body, "decision": "deny"}))
    _, broken = verify(ledger.entries())
    assert broken is not None
    assert broken.seq == 4


def test_a_deleted_row_is_caught(engine: sa.Engine) -> None:
    ledger = filled(engine)
    with engine.begin() as conn:
        conn.execute(sa.text("delete from disclosure_ledger where seq = 3"))
    _, broken = verify(ledger.entries())
    assert broken is not None
    assert broken.seq == 3


def test_swapped_rows_are_caught(engine: sa.Engine) -> None:
    ledger = filled(engine)
    with engine.begin() as conn:
        conn.execute(sa.text("update disclosure_ledger set seq = 1000 where seq = 2"))
        conn.execute(sa.text("update disclosure_ledger set seq = 2 where seq = 5"))
        conn.execute(sa.text("update disclosure_ledger set seq = 5 where seq = 1000"))
    _, broken = verify(ledger.entries())
    assert broken is not None
    assert broken.seq == 2


def test_the_cli_names_the_broken_entry_and_exits_1(tmp_path: Path) -> None:
    engine = open_engine(f"sqlite:///{tmp_path / 'carehub.db'}")
    filled(engine)
    carehub = [str(Path(sys.executable).with_name("carehub")), "audit", "verify", "--data-dir", str(tmp_path)]
    intact = subprocess.run(carehub, capture_output=True, text=True, timeout=60, check=False)
    assert intact.returncode == 0, intact.stdout + intact.stderr
    assert "6 entries" in intact.stdout
    with engine.begin() as conn:
        conn.execute(sa.text("delete from disclosure_ledger where seq = 5"))
    engine.dispose()
    broken = subprocess.run(carehub, capture_output=True, text=True, timeout=60, check=False)
    assert broken.returncode == 1
    assert "entry 5" in broken.stdout
