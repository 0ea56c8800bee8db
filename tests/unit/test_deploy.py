"""deploy/ stays true to the code: manifests parse, and every CAREHUB_ variable they set is a real setting."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from hub.settings import Settings

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


@pytest.mark.parametrize("path", sorted(DEPLOY.rglob("*.y*ml")), ids=lambda p: p.name)
def test_manifests_parse(path: Path) -> None:
    assert [d for d in yaml.safe_load_all(path.read_text()) if d]


def test_every_carehub_variable_in_deploy_is_read_by_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    text = "\n".join(p.read_text() for p in DEPLOY.rglob("*") if p.is_file())
    names = set(re.findall(r"\bCAREHUB_[A-Z_]+\b", text)) - {
        "CAREHUB_DB_PASSWORD",
        "CAREHUB_KEY_SECRET",
        "CAREHUB_TOKEN_SECRET",
    }
    assert names
    lists = {  # (list settings: JSON, of their own codes)
        "CAREHUB_MLLP__PROCESSING_IDS": ('["T"]', ("T",)),
        "CAREHUB_MLLP__ENHANCED_ACK_SENDERS": ('["rzz"]', ("RZZ",)),
    }
    for name in sorted(names):
        said = lists[name][0] if name in lists else None
        monkeypatch.setenv(name, said or ("5" if name.endswith(("PORT", "FACTOR", "_S")) else "x-value"))
    settings = Settings()
    dumped = settings.model_dump()
    for name in sorted(names):
        path = name.removeprefix("CAREHUB_").lower().split("__")
        value = dumped.get(path[0]) if len(path) == 1 else dumped[path[0]][path[1]]
        if name == "CAREHUB_DATABASE_URL":
            value = settings.database_url
        shown = value.get_secret_value() if hasattr(value, "get_secret_value") else value
        if name in lists:
            assert shown == lists[name][1], f"{name} is not read by Settings"
            continue
        assert str(shown) in {"x-value", "5", "5.0"}, f"{name} is not read by Settings"


def test_the_example_agreement_and_subscription_validate() -> None:
    from schemas.agreements import Agreement
    from schemas.subscriptions import Subscription

    examples = DEPLOY.parent / "schemas" / "examples"
    agreement = Agreement.model_validate(yaml.safe_load((examples / "agreement.example.yaml").read_text()))
    subscription = Subscription.model_validate(yaml.safe_load((examples / "subscription.example.yaml").read_text()))
    assert subscription.org in agreement.party_codes
