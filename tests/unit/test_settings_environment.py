"""The environment as the CLI reads it: a CAREHUB_ variable that names no setting is refused (naming the
closest), a bad value is one line naming its variable, and an option that is a setting too defaults to it."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import pytest
import typer
from pydantic import ValidationError
from typer.testing import CliRunner

from hub.cli import app
from hub.cli_base import make_settings
from hub.settings import NOT_SETTINGS, Settings, setting_names, setting_problems, unknown_variables

ROOT = Path(__file__).resolve().parents[2]
# options that are settings too; a command that still passes a default of its own overrides the environment
SETTING_OPTIONS = {"data_dir", "mllp_port", "http_port"}


def test_what_kubernetes_sets_for_a_service_named_carehub_is_no_typo_but_a_port_misspelt_so_is() -> None:
    # every pod gets "service links" for each Service in its namespace: with the Service of
    # deploy/k8s/hub.yaml (carehub) and a database's (carehub-db), every pod of the hub was refused
    links = {
        "CAREHUB_SERVICE_HOST": "10.0.0.7",
        "CAREHUB_SERVICE_PORT": "2575",
        "CAREHUB_SERVICE_PORT_MLLP": "2575",
        "CAREHUB_SERVICE_PORT_HTTP": "8000",
        "CAREHUB_PORT": "tcp://10.0.0.7:2575",
        "CAREHUB_PORT_2575_TCP": "tcp://10.0.0.7:2575",
        "CAREHUB_PORT_2575_TCP_PROTO": "tcp",
        "CAREHUB_PORT_2575_TCP_PORT": "2575",
        "CAREHUB_PORT_8000_TCP_ADDR": "10.0.0.7",
        "CAREHUB_DB_SERVICE_HOST": "10.0.0.9",
        "CAREHUB_DB_PORT": "tcp://10.0.0.9:5432",
    }
    assert unknown_variables(links) == []
    said = unknown_variables({"CAREHUB_MLLP_PORT": "2575", "CAREHUB_PORT": "2575"})  # (not URLs: typos)
    assert [line.split(" ")[0] for line in said] == ["CAREHUB_MLLP_PORT", "CAREHUB_PORT"]


def test_a_misspelt_setting_is_named_with_the_setting_it_is_closest_to() -> None:
    said = unknown_variables({"CAREHUB_DATABSE_URL": "postgresql+psycopg://db/x", "CAREHUB_POLICY__ENFORCED": "0"})
    assert len(said) == 2
    assert said[0].startswith("CAREHUB_DATABSE_URL names no setting (did you mean CAREHUB_DATABASE_URL?)")
    assert said[1].startswith("CAREHUB_POLICY__ENFORCED names no setting (did you mean CAREHUB_POLICY__ENFORCE?)")
    assert all("\n" not in line for line in said)


def test_settings_in_any_case_aliases_groups_and_the_allow_list_are_not_refused() -> None:
    environ = {
        "carehub_mllp__port": "1",
        "CAREHUB_MLLP": "{}",
        "CAREHUB_DATA_DIR": "d",
        "CAREHUB_KAFKA_BOOTSTRAP_SERVERS": "k:9092",
        "KAFKA_BOOTSTRAP_SERVERS": "k:9092",
        "CAREHUB_DATABASE_URL": "sqlite://",
        "CAREHUB_SECURITY__KEY_SECRET": "s",
        "CAREHUB_WEBHOOK_SECRET_Y90001": "s",
        "CAREHUB_TEST_HOOK": "s",
        "PATH": "/bin",
    } | dict.fromkeys(NOT_SETTINGS, "1")
    assert unknown_variables(environ) == []


def test_every_carehub_variable_the_repository_names_is_a_setting_or_on_the_allow_list() -> None:
    """deploy/, the READMEs, tests and benchmarks: none of them would be refused (a hub deployed or
    tested as documented starts)."""
    names: set[str] = set()
    for folder in ("deploy", "tests", "bench", "schemas", "hub", "Makefile", "README.md"):
        for path in [ROOT / folder] if (ROOT / folder).is_file() else (ROOT / folder).rglob("*"):
            if path.is_file() and path.suffix in {"", ".md", ".py", ".yaml", ".yml", ".toml"}:
                names |= set(re.findall(r"\bCAREHUB_[A-Z0-9_]*[A-Z0-9]\b", path.read_text(errors="replace")))
    names -= {"CAREHUB_DATABSE_URL", "CAREHUB_POLICY__ENFORCED"}  # (this file's own misspellings)
    names -= {"CAREHUB_MLLP_PORT", "CAREHUB_PORT"}  # (and its typos that look like Kubernetes' service links)
    assert "CAREHUB_DB_PASSWORD" in names and "CAREHUB_MLLP__PORT" in names
    assert unknown_variables(dict.fromkeys(names, "tcp://10.0.0.7:1")) == []  # (a link's _PORT is a URL)
    assert "CAREHUB_MLLP__PORT" in setting_names()


def test_a_bad_value_is_one_line_naming_its_variable_and_what_is_wrong(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CAREHUB_MLLP__PORT", "25x75")
    monkeypatch.setenv("carehub_http__port", "abc")
    monkeypatch.setenv("CAREHUB_MLLP__PROCESSING_IDS", '["TRAINING"]')
    with pytest.raises(ValidationError) as raised:
        Settings()
    said = setting_problems(raised.value, os.environ)
    assert set(said) == {
        "CAREHUB_MLLP__PORT='25x75': Input should be a valid integer, unable to parse string as an integer",
        "carehub_http__port='abc': Input should be a valid integer, unable to parse string as an integer",
        "CAREHUB_MLLP__PROCESSING_IDS='[\"TRAINING\"]': TRAINING: a processing id is P (production), T (training) "
        "or D (debugging)",
    }
    monkeypatch.delenv("CAREHUB_MLLP__PORT")
    monkeypatch.delenv("carehub_http__port")
    monkeypatch.delenv("CAREHUB_MLLP__PROCESSING_IDS")
    monkeypatch.setenv("CAREHUB_KAFKA__DRAIN_TIMEOUT_S", "-1")
    with pytest.raises(ValidationError) as negative:
        Settings()
    shown = setting_problems(negative.value, os.environ)
    assert shown[0] == "CAREHUB_KAFKA__DRAIN_TIMEOUT_S='-1': Input should be greater than or equal to 0"


def test_make_settings_refuses_a_misspelt_setting_and_a_bad_value_with_exit_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("CAREHUB_DATABSE_URL", "postgresql+psycopg://db/x")
    with pytest.raises(typer.Exit) as refused:
        make_settings(None)
    assert refused.value.exit_code == 2
    monkeypatch.delenv("CAREHUB_DATABSE_URL")
    monkeypatch.setenv("CAREHUB_MLLP__PORT", "25x75")
    with pytest.raises(typer.Exit) as bad:
        make_settings(None)
    assert bad.value.exit_code == 2


def test_options_not_given_leave_the_environment_to_decide(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("CAREHUB_MLLP__PORT", "12575")
    monkeypatch.setenv("CAREHUB_HTTP__PORT", "18000")
    monkeypatch.setenv("CAREHUB_DATA_DIR", str(tmp_path))
    settings = make_settings(None, None, None)
    assert (settings.mllp.port, settings.http.port, settings.data_dir) == (12575, 18000, tmp_path)
    given = make_settings(tmp_path / "other", 1, 2)
    assert (given.mllp.port, given.http.port, given.data_dir) == (1, 2, tmp_path / "other")


def test_every_option_that_is_a_setting_defaults_to_none_and_says_where_its_default_comes_from() -> None:
    overriding = []

    def visit(command: Any, path: str) -> None:  # (Typer's click: a group has commands)
        for name, sub in getattr(command, "commands", {}).items():
            visit(sub, f"{path} {name}".strip())
        for param in command.params:
            if param.name in SETTING_OPTIONS and param.default is not None:
                overriding.append(f"{path} {param.opts[0]}")

    visit(typer.main.get_command(app), "")
    assert not overriding, overriding
    shown = CliRunner().invoke(app, ["up", "--help"], terminal_width=200).output
    assert "CAREHUB_MLLP__PORT, else 2575" in shown and "CAREHUB_DATA_DIR, else var" in shown
