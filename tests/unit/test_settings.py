"""Settings: defaults run embedded; the operator's variables are honoured."""

from __future__ import annotations

from pathlib import Path

import pytest

from hub.settings import Settings


def test_defaults_run_the_embedded_broker_and_a_sqlite_file_under_the_data_dir(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    assert settings.bootstrap_servers() == ""
    assert settings.database() == f"sqlite:///{tmp_path.resolve() / 'carehub.db'}"
    assert settings.mllp.port == 2575 and settings.http.port == 8000


def test_kafka_and_database_come_from_the_documented_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "kafka:9092")
    monkeypatch.setenv("CAREHUB_DATABASE_URL", "postgresql+psycopg://db/carehub")
    monkeypatch.setenv("CAREHUB_MLLP__PORT", "3000")
    settings = Settings()
    assert settings.bootstrap_servers() == "kafka:9092"
    assert settings.database() == "postgresql+psycopg://db/carehub"
    assert settings.mllp.port == 3000


def test_processing_ids_are_hl7s_own_codes_whatever_their_case_or_spaces(monkeypatch: pytest.MonkeyPatch) -> None:
    from pydantic import ValidationError

    assert Settings().mllp.processing_ids == ("P",)
    monkeypatch.setenv("CAREHUB_MLLP__PROCESSING_IDS", '["p", " T"]')
    assert Settings().mllp.processing_ids == ("P", "T")
    monkeypatch.setenv("CAREHUB_MLLP__PROCESSING_IDS", '["P", "TRAINING"]')
    with pytest.raises(ValidationError, match="TRAINING: a processing id is P"):
        Settings()
