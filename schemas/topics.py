"""The topic catalogue: every topic CareHub uses, with its key, partitions and configuration.

No topic name is spelled anywhere else; `carehub topics create` applies this list to any Kafka.
"""

from __future__ import annotations

from dataclasses import dataclass, field

FOREVER = "-1"


@dataclass(frozen=True)
class Topic:
    """One Kafka topic and how it is configured."""

    name: str
    key: str
    partitions: int
    description: str
    configs: dict[str, str] = field(default_factory=dict)


EVENTS = Topic(
    name="carehub.events.v1",
    key="person key",
    partitions=6,
    description="Every FHIR event from every adapter; the log of record that auditors replay",
    configs={"retention.ms": FOREVER, "cleanup.policy": "delete"},
)
DEAD_LETTER = Topic(
    name="carehub.deadletter.v1",
    key="sender",
    partitions=1,
    description="Rejected input, kept whole, with the reason as a FHIR OperationOutcome",
    configs={"retention.ms": FOREVER, "cleanup.policy": "delete"},
)
EVENTS_DEAD_LETTER = Topic(
    name="carehub.events.v1.deadletter",
    key="person key",
    partitions=1,
    description="Events a consumer could not apply, with topic:partition:offset and the reason",
    configs={"retention.ms": FOREVER, "cleanup.policy": "delete"},
)

CATALOGUE: tuple[Topic, ...] = (EVENTS, DEAD_LETTER, EVENTS_DEAD_LETTER)


def subscriber_topic(org: str) -> Topic:
    """The topic where one subscribing organisation's permitted events are delivered."""
    return Topic(
        name=f"carehub.subscriber.{org.lower()}.v1",
        key="person key",
        partitions=1,
        description=f"Events {org} subscribed to, as its agreements and each person's consent allow",
        configs={"retention.ms": str(30 * 24 * 3600 * 1000), "cleanup.policy": "delete"},
    )
