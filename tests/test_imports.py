"""What an import costs, and what a missing extra says, checked in a fresh interpreter.

The parser is used inside tasks and log shippers that have no use for the database or
the web stack; ``import morag_jobs`` loads names on first use. The adapters and the
command line name the extra to install when theirs is missing.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import morag_jobs

HEAVY = ("sqlalchemy", "alembic", "fastapi", "starlette", "httpx", "httpcore", "celery",
         "kombu", "uvicorn", "typer", "pydantic")
"""What the parser must not load: the database, web and task-queue stacks."""


def python(code: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                          timeout=60, check=False)


def loaded_after(statement: str) -> list[str]:
    result = python(f"import json, sys\n{statement}\nprint(json.dumps(sorted(sys.modules)))")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.mark.parametrize("statement", [
    "import morag_jobs",
    "import morag_jobs.parser",
    "from morag_jobs import ProgressEventParser",
    "from morag_jobs import ProgressEvent, InvalidProgress, PatternPackError",
])
def test_the_parser_loads_no_database_no_web_no_celery(statement: str) -> None:
    heavy = sorted({name.partition(".")[0] for name in loaded_after(statement)} & set(HEAVY))
    assert not heavy, f"{statement!r} should load none of {HEAVY}, loaded {heavy}"


def test_the_handler_loads_on_first_use() -> None:
    loaded = loaded_after("import morag_jobs\nmorag_jobs.ProgressHandler")
    assert "morag_jobs.handler" in loaded and "sqlalchemy" in loaded


def test_every_public_name_resolves_and_is_listed() -> None:
    for name in morag_jobs.__all__:
        assert getattr(morag_jobs, name) is not None, f"morag_jobs.{name} should resolve"
    assert set(morag_jobs.__all__) <= set(dir(morag_jobs))
    assert isinstance(morag_jobs.__version__, str)


def test_an_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="has no attribute 'Nope'"):
        morag_jobs.Nope  # noqa: B018 (the look-up is the test)


def test_a_submodule_still_imports_by_from_import() -> None:
    result = python("from morag_jobs import webhooks; print(webhooks.__name__)")
    assert result.stdout.strip() == "morag_jobs.webhooks", result.stderr


@pytest.mark.parametrize(("package", "absent", "extra"), [
    ("morag_jobs.api", "fastapi", "api"),
    ("morag_jobs.celery", "celery", "celery"),
])
def test_an_adapter_without_its_extra_names_it(package: str, absent: str, extra: str) -> None:
    result = python(f"import sys\nsys.modules[{absent!r}] = None\nimport {package}")
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last == (f"morag_jobs._extras.MissingExtra: {package} needs the [{extra}] extra "
                    f"({absent} not installed): pip install 'morag-jobs[{extra}]'")


def run_command_without(absent: tuple[str, ...], *args: str) -> subprocess.CompletedProcess[str]:
    """``morag-jobs ARGS`` in an interpreter where the modules ``absent`` cannot be imported."""
    return python("import sys\n"
                  f"for name in {absent!r}: sys.modules[name] = None\n"
                  "from morag_jobs.__main__ import main\n"
                  "sys.argv = ['morag-jobs', *sys.argv[1:]]\n"
                  "main()", *args)


@pytest.mark.parametrize(("absent", "args", "feature", "extra"), [
    ("typer", ["--help"], "the command line", "cli"),
    ("tqdm", ["demo"], "morag-jobs demo", "all"),
    ("uvicorn", ["serve", "--database", "sqlite:///{tmp}/jobs.db"], "this command", "api"),
], ids=["cli", "demo", "serve"])
def test_a_command_without_its_extra_is_one_line_naming_it(
        absent: str, args: list[str], feature: str, extra: str, tmp_path: Path) -> None:
    result = run_command_without((absent,), *(arg.format(tmp=tmp_path) for arg in args))
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        f"morag-jobs: {feature} needs the [{extra}] extra ({absent} not installed): "
        f"pip install 'morag-jobs[{extra}]'"]


def test_the_command_line_works_without_the_other_extras() -> None:
    result = run_command_without(("celery", "fastapi", "uvicorn", "tqdm"), "--help")
    assert result.returncode == 0, result.stderr
    assert "parse" in result.stdout and "demo" in result.stdout


def test_the_celery_adapter_imports_after_kombu_replaced_its_module() -> None:
    result = python("import kombu, celery\nimport morag_jobs.celery")
    assert result.returncode == 0, result.stderr
