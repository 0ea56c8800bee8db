"""The disclosure ledger in the database: appended under a lock so the chain has one order."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence

import sqlalchemy as sa

from hub.core.ledger import Disclosure, Entry, seal
from hub.store.sql import store_errors
from hub.store.tables import disclosure_ledger, processed_event

L = disclosure_ledger
_LOCK = 0x4361_7265_4C65_64  # "CareLed": PostgreSQL advisory lock for appends


class SqlLedger:
    """Append-only; entries are never updated or deleted by CareHub."""

    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine

    def append(self, disclosures: Sequence[Disclosure], *, once: str | None = None) -> bool:
        """Add entries to the end of the chain, in one transaction. With `once` (a key naming the
        decision, such as one event for one subscription) they are added only the first time that
        key is seen, in the same transaction, so a consumer redoing a batch after a crash records
        each decision once. False when `once` was seen before."""
        if not disclosures:
            return True
        with store_errors(), self.engine.connect().execution_options(immediate=True) as conn:
            conn.begin()
            if conn.dialect.name == "postgresql":
                conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": _LOCK})
            if once is not None:
                key = {"consumer": "ledger", "event_id": hashlib.sha256(once.encode()).hexdigest()}
                seen = sa.select(processed_event.c.event_id).filter_by(**key)
                if conn.execute(seen).first() is not None:
                    return False
                conn.execute(sa.insert(processed_event), [key])
            last = conn.execute(sa.select(L.c.seq, L.c.hash).order_by(L.c.seq.desc()).limit(1)).first()
            seq = last.seq if last else 0
            bodies = [d.body() for d in disclosures]
            rows = [
                {"seq": seq + n, "body": body, "person_key": d.person_key, "prev_hash": prev, "hash": digest}
                for n, (d, body, (prev, digest)) in enumerate(
                    zip(disclosures, bodies, seal([last.hash] if last else [], bodies), strict=True), start=1
                )
            ]
            conn.execute(sa.insert(L), rows)
            conn.commit()
        return True

    def entries(self, batch: int = 5000) -> Iterator[Entry]:
        """Every entry in chain order, read in batches."""
        after = 0
        while True:
            query = sa.select(L).where(L.c.seq > after).order_by(L.c.seq).limit(batch)
            with store_errors(), self.engine.connect() as conn:
                rows = conn.execute(query).all()
            if not rows:
                return
            for row in rows:
                yield Entry(row.seq, row.body, row.prev_hash, row.hash, filed_under=(row.person_key,))
            after = rows[-1].seq

    def about(self, *person_keys: str) -> list[Entry]:
        """Entries about one person, under any of these keys (hub.core.identity.identities), oldest
        first (a subject-access request)."""
        query = sa.select(L).where(L.c.person_key.in_(person_keys)).order_by(L.c.seq)
        with store_errors(), self.engine.connect() as conn:
            return [Entry(r.seq, r.body, r.prev_hash, r.hash, filed_under=(r.person_key,)) for r in conn.execute(query)]
