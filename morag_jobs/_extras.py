"""The optional parts of morag-jobs: which extra installs which module, and the error naming it.

``pip install morag-jobs`` holds the library core (parser, store, handler, webhooks);
the Celery adapter, the HTTP API, PostgreSQL and the command line are extras.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from importlib.util import find_spec

from morag_jobs.errors import MoragJobsError

PROVIDED_BY = {
    "celery": "celery",
    "kombu": "celery",
    "redis": "celery",
    "fastapi": "api",
    "starlette": "api",
    "pydantic": "api",
    "prometheus_client": "api",
    "uvicorn": "api",
    "psycopg": "postgres",
    "typer": "cli",
    "rich": "cli",
    "tqdm": "all",
}
"""Each optional top-level module and the extra (pyproject.toml) that installs it."""


class MissingExtra(MoragJobsError, ModuleNotFoundError):
    """A feature whose extra is not installed; the message says what to ``pip install``."""

    def __init__(self, feature: str, extra: str, missing: Sequence[str]) -> None:
        self.feature = feature
        self.extra = extra
        self.missing = tuple(missing)
        super().__init__(
            f"{feature} needs the [{extra}] extra ({', '.join(missing)} not installed): "
            f"pip install 'morag-jobs[{extra}]'", name=missing[0])


def missing(*modules: str) -> list[str]:
    """The modules of ``modules`` that are not installed (found without importing them)."""
    return [module for module in modules if not _installed(module)]


def _installed(module: str) -> bool:
    # A module already imported is installed (None there blocks it); asking find_spec about
    # it can raise, as kombu replaces its module object with one whose __spec__ is None.
    if module in sys.modules:
        return sys.modules[module] is not None
    return find_spec(module) is not None


def require(feature: str, *modules: str, extra: str | None = None) -> None:
    """Raise :class:`MissingExtra` when a module ``feature`` imports is not installed."""
    if absent := missing(*modules):
        raise MissingExtra(feature, extra or PROVIDED_BY[absent[0]], absent)


def explain(error: ModuleNotFoundError, feature: str) -> MissingExtra | None:
    """The extra behind a failed import of an optional module; None for any other module."""
    if isinstance(error, MissingExtra):
        return error
    top = (error.name or "").partition(".")[0]
    extra = PROVIDED_BY.get(top)
    return MissingExtra(feature, extra, [top]) if extra else None
