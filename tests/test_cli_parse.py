"""``morag-jobs parse`` through its real entry point."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "logs"


def run(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable, "-m", "morag_jobs", *args], input=stdin,
                          capture_output=True, timeout=60, check=False)


def test_parse_prints_one_event_per_line_and_a_summary() -> None:
    result = run("parse", str(FIXTURES / "morag_seed.log"))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.decode().splitlines()
    assert len(lines) == 11
    assert "52.00% Audio processing: Initializing" in lines[0]
    assert b"11 lines read, 11 events, 0 skipped" in result.stderr


def test_parse_json_reads_stdin() -> None:
    result = run("parse", "--json", "-", stdin=b"noise\nProgress: 45% - Converting video\n")
    assert result.returncode == 0, result.stderr
    (line,) = result.stdout.decode().splitlines()
    event = json.loads(line)
    assert (event["percent"], event["message"], event["format"]) == (
        45.0, "Converting video", "morag.progress_dash")
    assert b"2 lines read, 1 events, 1 skipped" in result.stderr


def test_parse_keeps_carriage_return_updates_on_one_line() -> None:
    result = run("parse", str(FIXTURES / "tqdm.log"))
    assert result.returncode == 0, result.stderr
    assert b"6 lines read, 6 events" in result.stderr


def test_parse_of_a_missing_file_is_one_line_on_stderr_and_exit_2(tmp_path: Path) -> None:
    result = run("parse", str(tmp_path / "missing.log"))
    assert result.returncode == 2
    assert result.stderr.decode().strip().splitlines() == [
        f"morag-jobs: cannot read {tmp_path / 'missing.log'}: No such file or directory"]


def test_parse_with_a_broken_pack_names_it(tmp_path: Path) -> None:
    (tmp_path / "bad.toml").write_text("[[pattern]]\nname = 'x'\n")
    result = run("parse", "--patterns", str(tmp_path), "-", stdin=b"")
    assert result.returncode == 2
    assert b"bad.toml [x]: needs a non-empty 'regex'" in result.stderr


def test_module_and_console_script_are_the_same_command() -> None:
    script = Path(sys.executable).with_name("morag-jobs")
    by_script = subprocess.run([str(script), "--help"], capture_output=True, check=False)
    assert by_script.returncode == 0
    assert by_script.stdout == run("--help").stdout


def test_parse_stream_reads_a_file_as_one_jobs_output() -> None:
    """Every redraw counts, and the nested inner bars are left out."""
    nested = FIXTURES / "real" / "tqdm-nested.log"
    lines = run("parse", str(nested)).stdout.decode().splitlines()
    streamed = run("parse", "--stream", "--json", str(nested))
    assert streamed.returncode == 0, streamed.stderr
    events = [json.loads(line) for line in streamed.stdout.decode().splitlines()]
    assert [e["percent"] for e in events] == [0.0, 25.0, 50.0, 75.0, 100.0]
    assert all(e["message"] == "outer" for e in events), "inner bars are not followed"
    assert len(lines) != len(events)


def test_parse_stream_takes_what_the_output_does_not_say() -> None:
    capture = str(FIXTURES / "real" / "ffmpeg-lavfi-stats.log")
    assert run("parse", "--stream", capture).stdout == b"", "no duration: no percent"
    result = run("parse", "--stream", "--duration", "20", capture)
    assert result.stdout.decode().splitlines()[-1].split()[1] == "100.00%"
    refused = run("parse", "--duration", "20", capture)
    assert refused.returncode == 2 and b"go with --stream" in refused.stderr
