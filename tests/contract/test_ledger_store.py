"""The SQL ledger on SQLite and PostgreSQL: tampering with rows in the database is caught by verify,
and the `carehub audit verify` command, run as an operator runs it, names the first bad entry and
exits 1 whether a row was altered, deleted or swapped."""

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
CAREHUB = str(Path(sys.executable).with_name("carehub"))


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest) -> str:
    return str(request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "postgres_url"))


@pytest.fixture
def engine(database_url: str) -> Iterator[sa.Engine]:
    engine = open_engine(database_url)
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


def alter(engine: sa.Engine, seq: int) -> None:
    """Rewrite one entry's decision, as someone with write access to the database could."""
    with engine.begin() as conn:
        table = sa.Table("disclosure_ledger", sa.MetaData(), autoload_with=conn)
        body = conn.execute(sa.select(table.c.body).where(table.c.seq == seq)).scalar_one()
        body = json.loads(body) if isinstance(body, str) else body
        conn.execute(table.update().where(table.c.seq == seq).values(body={**body, "decision": "deny"}))


def delete(engine: sa.Engine, seq: int) -> None:
    with engine.begin() as conn:
        conn.execute(sa.text("delete from disclosure_ledger where seq = :seq"), {"seq": seq})


def swap(engine: sa.Engine, first: int, second: int) -> None:
    """Exchange two entries' places in the chain."""
    with engine.begin() as conn:
        move = sa.text("update disclosure_ledger set seq = :to where seq = :seq")
        conn.execute(move, {"seq": first, "to": 1000})
        conn.execute(move, {"seq": second, "to": first})
        conn.execute(move, {"seq": 1000, "to": second})


def audit_verify(database_url: str, data_dir: Path) -> subprocess.CompletedProcess[str]:
    """`carehub audit verify` as an operator runs it: the installed command, in its own process."""
    env = {"PATH": "/usr/bin:/bin", "COLUMNS": "200", "CAREHUB_DATABASE_URL": database_url}
    command = [CAREHUB, "audit", "verify", "--data-dir", str(data_dir)]
    return subprocess.run(command, capture_output=True, text=True, timeout=60, check=False, env=env)


def test_appends_form_one_verified_chain(engine: sa.Engine) -> None:
    ledger = filled(engine)
    assert verify(ledger.entries()) == (6, None)
    assert [e.seq for e in ledger.about("p1")] == [2, 5]


def test_a_decision_appended_once_is_recorded_once_however_often_it_is_redone(engine: sa.Engine) -> None:
    ledger = filled(engine, 2)
    decision = Disclosure(T0, "Y90001", "subscription:s1", "topic", "p1", ("Encounter/e1/_history/1#h",), "permit")
    key = "topic|s1|" + "e" * 40  # longer than the processed-event column: stored as its hash
    assert ledger.append([decision], once=key) is True
    assert ledger.append([decision], once=key) is False  # a consumer redoing its batch after a crash
    assert ledger.append([decision], once=key.replace("s1", "s2")) is True
    assert [e.body["recipient_user"] for e in ledger.entries()] == ["u0", "u1", "subscription:s1", "subscription:s1"]
    assert verify(ledger.entries()) == (4, None)


def test_an_updated_row_is_caught(engine: sa.Engine) -> None:
    ledger = filled(engine)
    alter(engine, 4)
    _, broken = verify(ledger.entries())
    assert broken is not None
    assert broken.seq == 4


def test_a_deleted_row_is_caught(engine: sa.Engine) -> None:
    ledger = filled(engine)
    delete(engine, 3)
    _, broken = verify(ledger.entries())
    assert broken is not None
    assert broken.seq == 3


def test_swapped_rows_are_caught(engine: sa.Engine) -> None:
    ledger = filled(engine)
    swap(engine, 2, 5)
    _, broken = verify(ledger.entries())
    assert broken is not None
    assert broken.seq == 2


def test_an_entry_filed_under_another_person_is_caught_and_named_by_audit_verify(
    engine: sa.Engine, database_url: str, tmp_path: Path
) -> None:
    # the person column is outside the hash (it is what a subject-access request searches by): moved,
    # it would hide the entry from the person's request while the chain still verified
    ledger = filled(engine)
    assert [e.seq for e in ledger.about("p1")] == [2, 5]
    with engine.begin() as conn:
        table = sa.Table("disclosure_ledger", sa.MetaData(), autoload_with=conn)
        conn.execute(sa.update(table).where(table.c.seq == 5).values(person_key="p0"))
    assert [e.seq for e in ledger.about("p1")] == [2]

    _, broken = verify(ledger.entries())

    assert broken is not None
    assert broken.seq == 5
    said = audit_verify(database_url, tmp_path)
    assert said.returncode == 1, said.stdout + said.stderr
    assert "entry 5 is filed under another person than it names" in said.stdout


def test_audit_verify_says_an_untouched_ledger_is_intact_and_exits_0(
    engine: sa.Engine, database_url: str, tmp_path: Path
) -> None:
    filled(engine)
    intact = audit_verify(database_url, tmp_path)
    assert intact.returncode == 0, intact.stdout + intact.stderr
    assert "ledger chain consistent: 6 entries" in intact.stdout


def test_audit_verify_names_an_altered_entry_and_exits_1(engine: sa.Engine, database_url: str, tmp_path: Path) -> None:
    filled(engine)
    alter(engine, 4)
    broken = audit_verify(database_url, tmp_path)
    assert broken.returncode == 1, broken.stdout + broken.stderr
    assert "ledger broken at entry 4: entry 4 was altered" in broken.stdout


def test_audit_verify_names_the_entry_after_a_deleted_one_as_missing_and_exits_1(
    engine: sa.Engine, database_url: str, tmp_path: Path
) -> None:
    filled(engine)
    delete(engine, 3)
    broken = audit_verify(database_url, tmp_path)
    assert broken.returncode == 1, broken.stdout + broken.stderr
    assert "ledger broken at entry 3: entry 3 is missing (removed); found 4" in broken.stdout


def test_audit_verify_names_the_first_of_two_swapped_entries_and_exits_1(
    engine: sa.Engine, database_url: str, tmp_path: Path
) -> None:
    filled(engine)
    swap(engine, 3, 4)
    broken = audit_verify(database_url, tmp_path)
    assert broken.returncode == 1, broken.stdout + broken.stderr
    assert "ledger broken at entry 3: entry 3 does not follow entry 2" in broken.stdout
