"""Sharing agreements in the database (every version kept) and the policy's view of them."""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections import defaultdict
from collections.abc import Callable, Collection
from dataclasses import replace
from datetime import datetime

import sqlalchemy as sa

from hub.core.consents import ORGANISATION_SYSTEMS, ConsentRule, consent_rule
from hub.core.errors import InvalidMessageError
from hub.core.identity import survivors
from hub.core.policy import ORIGIN_KINDS, origins_held, origins_of, person_of
from hub.core.ports import Json, RecordReader
from hub.store.sql import store_errors
from hub.store.tables import sharing_agreement
from schemas.agreements import Agreement

A = sharing_agreement
_FHIR_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")


def _digest(agreement: Agreement) -> str:
    return hashlib.sha256(json.dumps(agreement.model_dump(mode="json"), sort_keys=True).encode()).hexdigest()


class SqlAgreements:
    """Versions in, the latest version of each agreement out."""

    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine

    def load(self, agreement: Agreement, *, at: datetime) -> bool:
        """Store a version; False if that exact version is already loaded; InvalidMessageError if the
        same id and version was loaded with different content (versions are immutable)."""
        digest = _digest(agreement)
        with store_errors(), self.engine.connect().execution_options(immediate=True) as conn:
            conn.begin()
            found = conn.execute(
                sa.select(A.c.digest).where(A.c.id == agreement.id, A.c.version == agreement.version)
            ).scalar_one_or_none()
            if found == digest:
                return False
            if found is not None:
                raise InvalidMessageError(
                    f"agreement {agreement.id} version {agreement.version} is already loaded with different "
                    "content; give the change a new version number",
                    ("version",),
                )
            conn.execute(
                sa.insert(A).values(
                    id=agreement.id,
                    version=agreement.version,
                    document=agreement.model_dump(mode="json"),
                    digest=digest,
                    loaded_at=at,
                )
            )
            conn.commit()
        return True

    def all_versions(self) -> list[Agreement]:
        with store_errors(), self.engine.connect() as conn:
            rows = conn.execute(sa.select(A.c.document).order_by(A.c.id, A.c.version)).scalars().all()
        return [Agreement.model_validate(r) for r in rows]

    def history(self) -> list[tuple[datetime, Agreement]]:
        """Every version with the time it was loaded (so what was current at a given time)."""
        query = sa.select(A.c.loaded_at, A.c.document).order_by(A.c.id, A.c.version)
        with store_errors(), self.engine.connect() as conn:
            rows = conn.execute(query).all()
        return [(r.loaded_at, Agreement.model_validate(r.document)) for r in rows]

    def current(self) -> list[Agreement]:
        """The newest version of each agreement (older versions stay stored, for audit)."""
        latest: dict[str, Agreement] = {}
        for agreement in self.all_versions():
            latest[agreement.id] = agreement
        return list(latest.values())


class PolicySource:
    """What decisions need: current agreements (re-read at most every `ttl` seconds, so a new version
    applies within that) and a person's consents, read from the record at decision time."""

    def __init__(
        self,
        agreements: SqlAgreements,
        reader: RecordReader,
        *,
        ttl: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._agreements = agreements
        self._reader = reader
        self._ttl = ttl
        self._clock = clock
        self._cached: tuple[float, list[Agreement]] | None = None

    def agreements(self) -> list[Agreement]:
        now = self._clock()
        if self._cached is None or now - self._cached[0] > self._ttl:
            self._cached = (now, self._agreements.current())
        return self._cached[1]

    def origins(self, resource: Json, held: dict[tuple[str, str], Json | None] | None = None) -> list[Json]:
        """The referrals and episodes `resource` reveals, as the record holds them now
        (hub.core.policy.origins_held): what `decide` bounds it by. `held`, what the caller has read
        already (one request's), is read from first and filled in."""
        held = {} if held is None else held

        def read(kind: str, id_: str) -> Json | None:
            if (kind, id_) not in held:
                held[(kind, id_)] = self._reader.read(kind, id_)
            return held[(kind, id_)]

        return origins_held(resource, read)

    def _codes_of(self, organisation_id: str) -> list[str]:
        """The ODS and local-authority codes of an organisation the record holds: what a Consent stored
        naming a recipient only as Organization/<id> (as the API once took them) is read as naming."""
        held = self._reader.read("Organization", organisation_id) if _FHIR_ID.fullmatch(organisation_id) else None
        return [
            str(i.get("value"))
            for i in (held or {}).get("identifier") or []
            if i.get("system") in ORGANISATION_SYSTEMS and i.get("value")
        ]

    def origins_of_page(self, resources: Collection[Json], held: dict[tuple[str, str], Json | None]) -> None:
        """Fill `held` with the referrals and episodes `resources` (one request's) may reveal, in one query
        of each kind for the people they are about, those among `resources` taken as they are: what
        `origins` then reads from (anything not found here, one by one)."""
        for resource in resources:
            if resource.get("resourceType") in ORIGIN_KINDS:
                held.setdefault((str(resource["resourceType"]), str(resource.get("id"))), resource)
        wanted = {ref for r in resources for ref in origins_of(r)} - held.keys()
        people = sorted({p for r in resources if (p := person_of(r)) is not None})
        kinds = {kind for kind, _ in wanted}
        for kind in sorted(kinds | ({"ServiceRequest"} if "EpisodeOfCare" in kinds else set())):  # (its referral)
            for found in self._reader.search_many(kind, people):
                held.setdefault((kind, str(found.get("id"))), found)

    def people_as(self, person_keys: Collection[str]) -> dict[str, str]:
        """Each person key as the person the record now knows them as (hub.core.identity.survivors)."""
        return survivors(self._reader.filed_under, person_keys)

    def consents(self, person_key: str) -> list[ConsentRule]:
        return self.consents_of([person_key])[person_key]

    def consents_of(self, person_keys: Collection[str]) -> dict[str, list[ConsentRule]]:
        """Each person's consents (for many people in two queries: a delivery batch). A person merged
        away (A40) has those of the person they were merged into, where the record keeps every Consent
        of theirs: their choice holds for each of their identities, the old one's late events and its
        retired Patient included. Each rule names the person key asked for (as decide compares it)."""
        known = survivors(self._reader.filed_under, person_keys)
        held: defaultdict[str, list[ConsentRule]] = defaultdict(list)
        for consent in self._reader.search_many("Consent", sorted(set(known.values()) | set(known))):
            rule = consent_rule(consent, self._codes_of)
            if rule is not None:
                held[rule.person_key].append(rule)
        # the person's own and those filed under whom they now are (a merge reversed may leave some
        # filed under the identity it retired: they still hold for it)
        return {
            key: [
                r if r.person_key == key else replace(r, person_key=key)
                for r in sorted({*held[key], *held[now]}, key=lambda r: (r.id, r.version))
            ]
            for key, now in known.items()
        }
