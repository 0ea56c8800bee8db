"""The export verifier's command line (`python hub/export_verify.py EXPORT KEY`): a file it cannot read
is one line and exit 2, never a traceback; a failure says where, and how far reading got, without
reading as if the lines before were proven; counts agree with their nouns; piped into `head -1`, it
stops quietly when the reader leaves."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import pytest

from hub.export import Writer, public_pem
from hub.export_verify import main
from tests.unit.test_export_verify import AT, KEY, an_export

VERIFIER = Path(__file__).parents[2] / "hub" / "export_verify.py"


@pytest.fixture
def files(tmp_path: Path) -> tuple[Path, Path]:
    export, key = tmp_path / "export.ndjson", tmp_path / "key.pem"
    export.write_bytes(b"".join(an_export()))
    key.write_bytes(public_pem(KEY))
    return export, key


def test_a_missing_or_unreadable_file_is_one_line_and_exit_2_as_the_auditor_runs_it(
    files: tuple[Path, Path], tmp_path: Path
) -> None:
    export, key = files
    for args, named in [
        ((tmp_path / "missing.ndjson", key), f"{tmp_path / 'missing.ndjson'}: No such file or directory"),
        ((export, tmp_path / "missing.pem"), f"{tmp_path / 'missing.pem'}: No such file or directory"),
        ((tmp_path, key), f"{tmp_path}: Is a directory"),
    ]:
        done = subprocess.run(
            [sys.executable, "-I", str(VERIFIER), *map(str, args)], capture_output=True, text=True, check=False
        )
        assert done.returncode == 2, done.stdout + done.stderr
        assert done.stdout.splitlines()[-1] == f"NOT verified: cannot read {named}"
        assert done.stderr == ""


def test_a_failure_names_the_line_and_how_many_event_lines_came_before_it(
    files: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    export, key = files
    lines = an_export()
    lines[3] = lines[3].replace(b'"id":"e2"', b'"id":"e9"')  # the third event line, after a checkpoint
    export.write_bytes(b"".join(lines))
    assert main(["export_verify.py", str(export), str(key)]) == 1
    printed = capsys.readouterr().out.splitlines()
    assert printed[-1] == (
        "NOT verified: line 6: checkpoint does not match the lines before it: one of lines 4-5 was changed, "
        "removed or added (or one was removed or added next to them); 4 event lines read before the problem was found"
    )
    assert not any("after" in line for line in printed)


def test_counts_agree_with_their_nouns(files: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    export, key = files
    export.write_bytes(b"".join(an_export(events=1, every=10)))
    assert main(["export_verify.py", str(export), str(key)]) == 0
    printed = capsys.readouterr().out
    assert "verified: 1 event, 1 signed checkpoint\n" in printed
    export.write_bytes(b"".join(an_export()))
    assert main(["export_verify.py", str(export), str(key)]) == 0
    assert "verified: 5 events, 3 signed checkpoints\n" in capsys.readouterr().out


def test_a_checkpoint_that_fails_names_the_lines_it_covers_not_only_its_own(
    files: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    export, key = files
    lines = an_export()  # e e c e e c e F
    del lines[0]  # the first event line removed: the checkpoint (now line 2) covers line 1 only
    export.write_bytes(b"".join(lines))
    assert main(["export_verify.py", str(export), str(key)]) == 1
    assert "line 2: checkpoint does not match the lines before it: line 1 was changed, removed or added" in (
        capsys.readouterr().out
    )


def test_the_verifier_prints_when_the_export_was_made_and_for_whom_payloads_were_included(
    files: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    export, key = files
    assert main(["export_verify.py", str(export), str(key)]) == 0
    printed = capsys.readouterr().out
    assert "exported at 2026-11-03T12:00:00+00:00 (signed): the log as it stood then" in printed
    assert "payloads: none included (hashes only)" in printed
    export.write_bytes(b"".join(an_export(payloads_for="AUD01")))
    assert main(["export_verify.py", str(export), str(key)]) == 0
    assert "payloads: included for AUD01, where its agreements permit them" in capsys.readouterr().out


def test_piped_into_head_it_stops_quietly_with_no_traceback_when_the_reader_leaves(tmp_path: Path) -> None:
    # `python export_verify.py EXPORT KEY | head -1`: head reads the fingerprint line and leaves
    out = io.BytesIO()
    writer = Writer(out, KEY, every=10, exported_at=AT)
    writer.event({"partition": 0, "offset": 0, "id": "e0"})
    writer.topic_partitions = 100_000  # a line printed for each: far more than a pipe holds
    writer.checkpoint(final=True)
    export, key = tmp_path / "export.ndjson", tmp_path / "key.pem"
    export.write_bytes(out.getvalue())
    key.write_bytes(public_pem(KEY))
    command = [sys.executable, "-I", str(VERIFIER), str(export), str(key)]
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE) as verifier:
        assert verifier.stdout is not None and verifier.stderr is not None
        first = verifier.stdout.readline()
        verifier.stdout.close()
        errors = verifier.stderr.read().decode()
        code = verifier.wait(timeout=60)
    assert first.startswith(b"public key fingerprint (SHA-256 of its DER): ")
    assert errors == ""  # (no BrokenPipeError traceback, and no "Exception ignored" at exit)
    assert code == 141  # as a tool killed by SIGPIPE: the shell's pipefail sees the output was cut
