"""The library logs through ``logging`` under ``morag_jobs.*`` and never prints on stdout.

Version 0 logged with an unconfigured structlog, which prints every line (debug too) on
stdout: ``JOB=$(python submit.py)`` captured "[debug] job created ...", and neither
``logging.basicConfig`` nor ``MORAG_LOG_LEVEL`` could stop it.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from log_helpers import capture_logs

from morag_jobs.handler import ProgressHandler
from morag_jobs.logs import configure_logging
from morag_jobs.store import JobStore

SCRIPT = """
import sys
{setup}
from morag_jobs import JobStore, ProgressEvent, ProgressHandler
store = JobStore("sqlite:///" + sys.argv[1])          # migrates a new file: logged at INFO
handler = ProgressHandler(store)
job = handler.create_job(name="talk.mp3")              # logged at DEBUG
handler.apply(ProgressEvent(percent=150.0), job.id)   # clamped: a WARNING
handler.handle_job_completion(job.id, True, "done")
handler.close()
print(job.id)
"""


def run_script(tmp_path: Path, setup: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", SCRIPT.format(setup=setup),
                           str(tmp_path / "jobs.db")], capture_output=True, text=True,
                          timeout=60, check=False)


def test_a_script_using_the_library_prints_only_what_it_prints(tmp_path: Path) -> None:
    done = run_script(tmp_path)
    assert done.returncode == 0, done.stderr
    assert len(done.stdout.split()) == 1 and len(done.stdout.strip()) == 32, (
        f"stdout must hold the job id alone, got {done.stdout!r}")
    assert "job created" not in done.stderr and "migrated" not in done.stderr, (
        "nothing below WARNING is shown when the host configured nothing")
    assert "percentage above 100 clamped to 100" in done.stderr, (
        "a warning still reaches stderr (Python's last-resort handler)")


def test_the_host_decides_with_the_standard_logging_module(tmp_path: Path) -> None:
    quiet = run_script(tmp_path, "import logging; logging.basicConfig(level=logging.ERROR)")
    assert quiet.returncode == 0 and quiet.stderr == "", quiet.stderr
    loud = run_script(tmp_path, "import logging\nlogging.basicConfig(level=logging.DEBUG, "
                      "format='%(levelname)s %(name)s %(message)s')")
    assert loud.returncode == 0, loud.stderr
    assert "DEBUG morag_jobs.store.jobs job created job_id=" in loud.stderr, loud.stderr
    assert len(loud.stdout.split()) == 1, "the host's handler writes to stderr, not stdout"


def test_records_carry_their_fields_for_structured_formatters(tmp_path: Path) -> None:
    with JobStore(f"sqlite:///{tmp_path / 'jobs.db'}") as store, capture_logs() as logs:
        handler = ProgressHandler(store)
        job = handler.create_job(name="x", job_type="audio")
        handler.close()
    created = [entry for entry in logs if entry["event"] == "job created"]
    assert created == [{"event": "job created", "log_level": "debug",
                        "logger": "morag_jobs.store.jobs", "job_id": job.id,
                        "job_type": "audio"}], logs


def test_the_command_line_logs_to_stderr_at_its_own_level(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-c", "from morag_jobs.logs import configure_logging, get_logger\n"
         "configure_logging('INFO')\nget_logger('morag_jobs.x').info('hello', n=1)\n"
         "get_logger('morag_jobs.x').debug('hidden')"],
        capture_output=True, text=True, timeout=60, check=False)
    assert done.stdout == "" and "[INFO] morag_jobs.x: hello n=1" in done.stderr, done
    assert "hidden" not in done.stderr
    try:
        configure_logging("LOUD")
    except ValueError as error:
        assert "unknown log level 'LOUD'" in str(error)
    else:
        raise AssertionError("an unknown level must be refused")
