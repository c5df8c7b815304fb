"""The package's boundaries, read from its source: who may import what.

ARCHITECTURE.md draws the layers; these tests keep the drawing true. Every ``import``
in the package is read with ``ast`` (function-level imports included, since a lazy import
is still a dependency), and each rule names the modules that break it.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "morag_jobs"

PARSING = ("parser", "packs", "recognise", "terminal", "streams", "values", "linearity",
           "counts", "events", "stages", "errors")
"""The parsing layer and the values below it: they know no jobs, no database, no web."""


def _module(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> Iterator[str]:
    module = _module(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                yield ".".join([*base, node.module] if node.module else base)
            elif node.module:
                yield node.module


def _graph() -> dict[str, set[str]]:
    return {_module(path): set(_imports(path)) for path in PACKAGE.rglob("*.py")}


GRAPH = _graph()


def _offenders(modules: list[str], forbidden: tuple[str, ...]) -> list[str]:
    return sorted(
        f"{module} imports {name}"
        for module in modules
        for name in GRAPH[module]
        if any(name == f or name.startswith(f + ".") for f in forbidden)
    )


def _in(*prefixes: str) -> list[str]:
    return [m for m in GRAPH if any(m == p or m.startswith(p + ".") for p in prefixes)]


def test_the_graph_was_read() -> None:
    assert "morag_jobs.store.jobs" in GRAPH and "sqlalchemy" in GRAPH["morag_jobs.store.jobs"]
    assert len(GRAPH) > 40


def test_only_the_store_speaks_sql() -> None:
    outside = [m for m in GRAPH if not m.startswith("morag_jobs.store")]
    assert not _offenders(outside, ("sqlalchemy", "alembic", "psycopg", "psycopg2")), (
        "SQLAlchemy outside morag_jobs/store/: give the store a method instead")


def test_the_store_does_not_import_the_layers_above_it() -> None:
    above = tuple(f"morag_jobs.{name}" for name in (
        "handler", "writer", "rules", "reaper", "celery", "api", "cli", "follow", "tailing",
        "webhooks", "webhook_delivery", "webhook_outbox", "demo", "parser", "streams"))
    assert not _offenders(_in("morag_jobs.store"), above)


@pytest.mark.parametrize("forbidden", [
    ("morag_jobs.store", "sqlalchemy"),
    ("morag_jobs.handler", "morag_jobs._writer", "morag_jobs.rules"),
    ("morag_jobs.celery", "celery", "kombu"),
    ("morag_jobs.api", "fastapi", "starlette", "uvicorn", "httpx"),
], ids=["store", "handler", "celery", "web"])
def test_parsing_knows_no_jobs_no_database_no_web(forbidden: tuple[str, ...]) -> None:
    parsing = [f"morag_jobs.{name}" for name in PARSING if f"morag_jobs.{name}" in GRAPH]
    assert len(parsing) >= 8
    assert not _offenders(parsing, forbidden)


def test_the_api_does_not_import_celery() -> None:
    assert not _offenders(_in("morag_jobs.api"), ("celery", "kombu", "morag_jobs.celery"))


def test_the_in_task_layer_does_not_import_celery() -> None:
    in_task = _in("morag_jobs.task")
    assert len(in_task) >= 5, f"expected morag_jobs/task/ to be read, found {in_task}"
    assert not _offenders(in_task, ("celery", "kombu", "morag_jobs.celery")), (
        "morag_jobs/task/ is for any task framework: Celery belongs in morag_jobs/celery/")


CORE = ("handler", "_writer", "rules", "reaper", "mappings", "outcomes")
"""The core: turns events into job state. It sits on the store and knows nothing above."""


def _targets(path: Path) -> Iterator[str]:
    """Like ``_imports``, but ``from package import submodule`` names the submodule, and
    imports only a type checker runs (``if TYPE_CHECKING:``) are left out."""
    module = _module(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    tree = ast.parse(path.read_text(), str(path))
    typing_only = {
        id(inner) for node in ast.walk(tree)
        if isinstance(node, ast.If) and ast.unparse(node.test).endswith("TYPE_CHECKING")
        for inner in ast.walk(node)
    }
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                parts = parts[: len(parts) - node.level + 1]
                base = ".".join([*parts, node.module] if node.module else parts)
            for alias in node.names:
                yield f"{base}.{alias.name}" if f"{base}.{alias.name}" in GRAPH else base


def test_the_core_imports_nothing_above_it() -> None:
    core = [f"morag_jobs.{name}" for name in CORE]
    assert all(module in GRAPH for module in core), core
    above = tuple(f"morag_jobs.{name}" for name in (
        "parser", "packs", "recognise", "celery", "task", "api", "cli", "compat", "demo",
        "follow", "tailing", "webhooks", "webhook_outbox", "webhook_delivery"))
    assert not _offenders(core, above), (
        "the core takes events and writes jobs: parsing, adapters and listeners are above it")


def test_only_the_layers_above_the_core_use_the_seed_names() -> None:
    users = sorted(m for m, names in GRAPH.items() if "morag_jobs.compat" in names)
    assert all(not m.startswith(tuple(f"morag_jobs.{n}" for n in CORE)) for m in users), users


def test_the_package_imports_have_no_cycle() -> None:
    """Module-level and lazy imports alike (the lazy top-level ``morag_jobs`` aside)."""
    edges = {
        _module(path): {t for t in _targets(path) if t in GRAPH and t != "morag_jobs"}
        for path in PACKAGE.rglob("*.py")
    }
    seen: dict[str, int] = {}  # 1: on the current path, 2: done
    cycles: list[list[str]] = []

    def visit(module: str, path: list[str]) -> None:
        seen[module] = 1
        for target in sorted(edges.get(module, ())):
            if seen.get(target) == 1:
                cycles.append([*path[path.index(target):], target])
            elif target not in seen:
                visit(target, [*path, target])
        seen[module] = 2

    for module in sorted(edges):
        if module not in seen:
            visit(module, [module])
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)
