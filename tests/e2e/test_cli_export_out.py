"""`carehub audit export --out`: an existing file is refused unless --force, and so is a folder that
does not exist, and (even with --force) an --out, or the public key file it writes beside it
(F.pub.pem), that is a folder (one line, exit 2, nothing written or made). The refusals come
before the log is read, so no broker is needed: the configured one is never reached."""

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


def test_an_existing_out_file_is_refused_unless_force(tmp_path: Path) -> None:
    out = tmp_path / "log.ndjson"
    out.write_text("yesterday's export\n")
    refused = export(tmp_path, "--out", str(out))
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert " ".join(refused.stdout.split()) == f"--out: {out} exists: give a new file, or add --force to overwrite it"
    assert out.read_text() == "yesterday's export\n"


def test_an_existing_key_file_beside_out_is_refused_unless_force(tmp_path: Path) -> None:
    # the public key an auditor was given with yesterday's export is not replaced unasked
    out = tmp_path / "log.ndjson"
    key = tmp_path / "log.ndjson.pub.pem"
    key.write_text("yesterday's key\n")
    refused = export(tmp_path, "--out", str(out))
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert " ".join(refused.stdout.split()) == f"--out: {key} exists: give a new file, or add --force to overwrite it"
    assert key.read_text() == "yesterday's key\n" and not out.exists()


def test_an_out_file_in_a_folder_that_does_not_exist_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "no-such" / "folder" / "log.ndjson"
    refused = export(tmp_path, "--out", str(out), "--force")
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert " ".join(refused.stdout.split()) == (
        f"--out {out}: there is no folder {out.parent}: make it first, or give a file in an existing folder"
    )
    assert not (tmp_path / "no-such").exists()


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
