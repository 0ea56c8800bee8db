"""Coordination rule sets shipped with the hub (YAML, validated by schemas.coordination_rules)."""

from __future__ import annotations

from pathlib import Path

import yaml

from schemas.coordination_rules import CoordinationRules

DEFAULT = Path(__file__).with_name("croydon-pic.v4.yaml")  # the newest version
# earlier versions stay shipped: a hub pinned to one (CAREHUB_COORDINATION__RULES) keeps it, and a
# log replayed under it makes what it made (a change of meaning is a new version: hub.core.tasks)


def load_rules(path: Path | None = None) -> CoordinationRules:
    """A rule set from YAML; the shipped Croydon PIC rules when no path is given."""
    return CoordinationRules.model_validate(yaml.safe_load((path or DEFAULT).read_text()))
