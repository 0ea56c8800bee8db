"""`carehub audit export --out F --force` where F, or the public key file it writes beside F
(F.pub.pem), is a folder: one line naming it, exit 2, and nothing written, made or read (the
configured broker is never reached), rather than a traceback after the export."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from hub.bootstrap import build
from hub.export import KEY_FILE
from hub.settings import Settings

pytestmark = pytest.mark.timeout(120)
CAREHUB = str(Path(sys.executable).with_name("carehub"))


def export(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    data = tmp_path / "hub"
    if not data.exists():
        build(Settings(data_dir=data)).engine.dispose()
    env = {"PATH": "/usr/bin:/bin", "COLUMNS": "250", "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:9"}
    command = [CAREHUB, "audit", "export", *args, "--data-dir", str(data)]
    return subprocess.run(command, capture_output=True, text=True, timeout=100, env=env, check=False)


def test_a_folder_where_the_public_key_goes_is_one_line_and_exit_2_with_nothing_written(tmp_path: Path) -> None:
    out = tmp_path / "log.ndjson"
    out.write_text("yesterday's export\n")
    key = tmp_path / "log.ndjson.pub.pem"
    key.mkdir()
    for args in (["--out", str(out), "--force"], ["--out", str(out)]):
        refused = export(tmp_path, *args)
        assert refused.returncode == 2, refused.stdout + refused.stderr
        assert refused.stderr == ""
        assert " ".join(refused.stdout.split()) == (
            f"--out {out}: {key}, where its public key goes, is a folder: move it, or give another --out"
        )
        assert out.read_text() == "yesterday's export\n"
        assert key.is_dir() and not any(key.iterdir())
        assert not (tmp_path / "hub" / KEY_FILE).exists()  # (no signing key made for an export refused)


def test_an_out_that_is_a_folder_is_one_line_and_exit_2_even_with_force(tmp_path: Path) -> None:
    out = tmp_path / "exports"
    out.mkdir()
    refused = export(tmp_path, "--out", str(out), "--force")
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert refused.stderr == ""
    assert " ".join(refused.stdout.split()) == (
        f"--out {out} is a folder: give the file to write, e.g. {out / 'log.ndjson'}"
    )
    assert not any(out.iterdir()) and not (tmp_path / "exports.pub.pem").exists()
    assert not (tmp_path / "hub" / KEY_FILE).exists()
