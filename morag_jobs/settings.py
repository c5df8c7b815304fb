"""Every environment variable morag-jobs reads is read here, and nowhere else."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = [
    "DEFAULT_DATABASE_URL",
    "database_url",
    "demo_broker",
    "demo_directory",
    "log_level",
    "pattern_dirs",
    "webhook_secret",
]

DEFAULT_DATABASE_URL = "sqlite:///morag_jobs.db"


def database_url() -> str:
    """``MORAG_DATABASE_URL``, else a SQLite file in the working directory."""
    return os.environ.get("MORAG_DATABASE_URL") or DEFAULT_DATABASE_URL


def pattern_dirs() -> list[Path]:
    """``MORAG_PATTERN_DIRS``: extra pattern-pack directories, separated like ``PATH``."""
    raw = os.environ.get("MORAG_PATTERN_DIRS", "")
    return [Path(part) for part in raw.split(os.pathsep) if part.strip()]


def log_level() -> str:
    """``MORAG_LOG_LEVEL``: the lowest level the morag-jobs programs log (default WARNING)."""
    return os.environ.get("MORAG_LOG_LEVEL") or "WARNING"


def webhook_secret() -> str | None:
    """``MORAG_WEBHOOK_SECRET``: the ``whsec_<base64>`` key webhooks are signed with."""
    return os.environ.get("MORAG_WEBHOOK_SECRET") or None


def demo_directory() -> Path | None:
    """``MORAG_DEMO_DIR``: where ``morag-jobs demo`` keeps its embedded broker and results."""
    raw = os.environ.get("MORAG_DEMO_DIR")
    return Path(raw) if raw else None


def demo_broker() -> str | None:
    """``MORAG_DEMO_BROKER``: a broker URL for the demo instead of the embedded one."""
    return os.environ.get("MORAG_DEMO_BROKER") or None
