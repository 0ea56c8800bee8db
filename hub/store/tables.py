"""The record's tables. Schema changes go through Alembic (hub/store/migrations), never create_all."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql


class UtcDateTime(sa.types.TypeDecorator[datetime]):
    """Timezone-aware UTC in, timezone-aware UTC out, on SQLite (naive storage) and PostgreSQL alike."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


JsonColumn: Any = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
metadata = sa.MetaData()

record_resource = sa.Table(
    "record_resource",
    metadata,
    sa.Column("resource_type", sa.String(64), primary_key=True),
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("person_key", sa.String(64), nullable=True, index=True),
    sa.Column("version_id", sa.Integer, nullable=False),
    sa.Column("event_time", UtcDateTime, nullable=False),
    sa.Column("source_event_id", sa.String(64), nullable=False),
    sa.Column("content", JsonColumn, nullable=False),
)

record_identifier = sa.Table(
    "record_identifier",
    metadata,
    sa.Column("resource_type", sa.String(64), primary_key=True),
    sa.Column("resource_id", sa.String(64), primary_key=True),
    sa.Column("system", sa.String(255), primary_key=True),
    sa.Column("value", sa.String(255), primary_key=True),
    sa.Index("ix_record_identifier_lookup", "system", "value"),
)

processed_event = sa.Table(
    "processed_event",
    metadata,
    sa.Column("consumer", sa.String(64), primary_key=True),
    sa.Column("event_id", sa.String(64), primary_key=True),
)

dead_letter = sa.Table(
    "dead_letter",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("received_at", UtcDateTime, nullable=False),
    sa.Column("source", sa.String(255), nullable=False),
    sa.Column("origin", sa.String(255), nullable=False),
    sa.Column("digest", sa.String(64), nullable=False),
    sa.Column("reason", JsonColumn, nullable=False),
    sa.Column("payload", sa.LargeBinary, nullable=False),
    # input is kept once per source and content (hub.store.sql.content_key); NULL in rows kept before 0015
    # but a file's rows (0007)
    sa.Column("content_key", sa.String(64), nullable=True),
    # what an operator did about it (hub.store.dead_letter_status); all NULL while outstanding
    sa.Column("resolved_at", UtcDateTime, nullable=True),
    sa.Column("resolved_by", sa.String(255), nullable=True),
    sa.Column("resolution", sa.Text, nullable=True),
    # the same input refused again is counted here, not kept again (hub.store.sql.SqlDeadLetters.keep)
    sa.Column("refused_times", sa.Integer, nullable=False, server_default="1"),
    sa.Column("last_received_at", UtcDateTime, nullable=True),  # NULL: refused once
    sa.UniqueConstraint("origin", "digest", "received_at", name="uq_dead_letter_once"),
    sa.Index("uq_dead_letter_content", "content_key", unique=True),
    sa.Index("ix_dead_letter_digest", "digest"),
)

disclosure_ledger = sa.Table(
    "disclosure_ledger",
    metadata,
    sa.Column("seq", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True, autoincrement=False),
    sa.Column("body", JsonColumn, nullable=False),
    sa.Column("person_key", sa.String(64), nullable=True, index=True),
    sa.Column("prev_hash", sa.String(64), nullable=False),
    sa.Column("hash", sa.String(64), nullable=False),
)

sharing_agreement = sa.Table(
    "sharing_agreement",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("version", sa.Integer, primary_key=True),
    sa.Column("document", JsonColumn, nullable=False),
    sa.Column("digest", sa.String(64), nullable=False),
    sa.Column("loaded_at", UtcDateTime, nullable=False),
)

subscription = sa.Table(
    "subscription",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("document", JsonColumn, nullable=False),
    sa.Column("active", sa.Boolean, nullable=False),
)

delivery_outbox = sa.Table(
    "delivery_outbox",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("subscription_id", sa.String(64), nullable=False),
    sa.Column("event_id", sa.String(64), nullable=False),
    sa.Column("person_key", sa.String(64), nullable=True),
    sa.Column("body", JsonColumn, nullable=False),
    sa.Column("status", sa.String(16), nullable=False),  # pending, delivered, failed, withheld
    sa.Column("attempts", sa.Integer, nullable=False),
    sa.Column("next_attempt_at", UtcDateTime, nullable=False),
    sa.Column("last_error", sa.String(500), nullable=True),
    sa.UniqueConstraint("subscription_id", "event_id", name="uq_delivery_once"),
    sa.Index("ix_delivery_outbox_due", "status", "next_attempt_at"),
    # each subscription's first pending delivery, one probe (SqlOutbox.due): no scan of a backlog
    sa.Index("ix_delivery_outbox_head", "status", "subscription_id", "id"),
)

coordination_state = sa.Table(
    "coordination_state",
    metadata,
    sa.Column("person_key", sa.String(64), primary_key=True),
    sa.Column("state", JsonColumn, nullable=False),
    sa.Column("coordinator", sa.String(64), nullable=True, index=True),
)

coordination_clock = sa.Table(
    "coordination_clock",
    metadata,
    sa.Column("id", sa.String(80), primary_key=True),
    sa.Column("person_key", sa.String(64), nullable=False),
    sa.Column("due", UtcDateTime, nullable=False),
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("partition", sa.Integer, nullable=False),
    sa.Index("ix_coordination_clock_due", "partition", "due"),
)

# one row per decided referral: the claim that lets exactly one decision of it win, across API
# workers (its primary key), accepted or declined (outcome, since 0010), or withdrawn by its referrer
# (since 0013); an accept's coordinator and the EpisodeOfCare it opened, a decline's (or a withdrawal's:
# the same columns) ServiceRequest as it left it and when it says it happened,
# for a repeat to answer with (and publish again); and whose (person_key: null on claims made before
# 0008), so a person has one open accept at a time
referral_acceptance = sa.Table(
    "referral_acceptance",
    metadata,
    sa.Column("referral_id", sa.String(64), primary_key=True),
    sa.Column("coordinator", sa.String(64), nullable=True),
    sa.Column("episode", JsonColumn, nullable=True),
    sa.Column("claimed_at", UtcDateTime, nullable=False),
    sa.Column("person_key", sa.String(64), nullable=True, index=True),
    sa.Column("outcome", sa.String(16), nullable=False, server_default="accepted"),
    sa.Column("declined", JsonColumn, nullable=True),
    sa.Column("declined_at", UtcDateTime, nullable=True),
    # when Kafka acknowledged the decision's events (since 0011); null: not known sent (a 503, or a claim
    # made before), so the next command that meets the claim publishes it where the record lacks it
    sa.Column("published_at", UtcDateTime, nullable=True),
    sa.CheckConstraint(
        "(outcome = 'accepted' AND coordinator IS NOT NULL AND episode IS NOT NULL) OR "
        "(outcome IN ('declined', 'withdrawn') AND declined IS NOT NULL AND declined_at IS NOT NULL)",
        name="ck_referral_acceptance_decided",
    ),
)

# one row per episode closed by `$close` (since 0010): the claim that lets its first close win across
# API workers (its primary key), with the EpisodeOfCare as it finished it, the PIC summary it wrote
# and the parameters it was given, for the same close again to answer with (and publish again)
episode_closure = sa.Table(
    "episode_closure",
    metadata,
    sa.Column("episode_id", sa.String(64), primary_key=True),
    sa.Column("person_key", sa.String(64), nullable=False),
    sa.Column("episode", JsonColumn, nullable=False),
    sa.Column("summary", JsonColumn, nullable=False),
    sa.Column("asked", JsonColumn, nullable=False),
    sa.Column("claimed_at", UtcDateTime, nullable=False),
)

# whom each person is registered with (PD1-3), as the delivery consumer read it in log order, for the
# `registered` scope of subscriptions: an event that names no practice (an A03 without PD1) still reaches
# theirs (hub.core.delivery.Registration; practices: a sorted list of ODS codes, empty when deleted;
# merged_into: merged away, so their survivor's; before: for each partition of the batches that changed
# it, the row as it stood before the last and where that batch began, so that a batch redone after a
# crash starts from the row as it was: hub.store.registrations)
person_registration = sa.Table(
    "person_registration",
    metadata,
    sa.Column("person_key", sa.String(64), primary_key=True),
    sa.Column("practices", JsonColumn, nullable=False),
    sa.Column("event_time", UtcDateTime, nullable=False),
    sa.Column("event_id", sa.String(64), nullable=False),
    sa.Column("merged_into", sa.String(64), nullable=True),
    sa.Column("before", JsonColumn, nullable=True),
)

# the person-key secret's fingerprint (an HMAC of a fixed label under it, never the secret): one row,
# recorded by the first process to open the database, compared by every later one (hub.store.key_fingerprint)
key_fingerprint = sa.Table(
    "key_fingerprint",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("fingerprint", sa.String(64), nullable=False),
    sa.Column("recorded_at", UtcDateTime, nullable=False),
)
