"""When a coordinator's command says something happened (hub.api.routes.coordination_input.at_time):
ISO 8601 with its offset, or a day alone (a FHIR dateTime may be one: its start, UK time); never
later than now beyond the clock skew; each refusal names the field."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from hub.api.routes.coordination_input import at_time
from hub.core.errors import InvalidMessageError

NOW = datetime(2026, 7, 6, 12, tzinfo=UTC)  # 13:00 BST


def test_a_day_alone_is_its_start_in_the_uk() -> None:
    assert at_time("2026-07-06", NOW, "ServiceRequest.authoredOn") == datetime(2026, 7, 5, 23, tzinfo=UTC)
    assert at_time("2026-01-06", NOW) == datetime(2026, 1, 6, tzinfo=UTC)


@pytest.mark.parametrize(
    ("value", "said"),
    [
        ("2026-07-07", "is in the future"),
        ("2026-07-06T12:06:00Z", "is in the future"),
        ("2026-07-06T10:00", "needs its UTC offset"),
        ("6 July", "is not an ISO 8601 date and time"),
    ],
)
def test_a_time_in_the_future_or_without_its_offset_is_refused_naming_the_field(value: str, said: str) -> None:
    with pytest.raises(InvalidMessageError) as refused:
        at_time(value, NOW, "ServiceRequest.authoredOn")
    assert said in refused.value.diagnostics
    assert refused.value.expression == ("ServiceRequest.authoredOn",)
