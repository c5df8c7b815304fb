"""Every environment variable morag-jobs reads is read here, and nowhere else."""

from __future__ import annotations

import os
import re
from pathlib import Path

__all__ = [
    "DEFAULT_DATABASE_URL",
    "api_max_streams_per_key",
    "database_url",
    "demo_broker",
    "demo_directory",
    "log_level",
    "parse_duration",
    "pattern_dirs",
    "prune_after",
    "redelivery_timeout",
    "webhook_allow_private",
    "webhook_concurrency",
    "webhook_secret",
    "webhook_timeout",
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


def api_max_streams_per_key() -> int:
    """``MORAG_API_MAX_STREAMS_PER_KEY``: event streams one key may hold open (default 8)."""
    return int(_positive("MORAG_API_MAX_STREAMS_PER_KEY", int, "8",
                         "the streams one key may hold open"))


def webhook_timeout() -> float:
    """``MORAG_WEBHOOK_TIMEOUT``: seconds one delivery attempt may take in all (default 10)."""
    return _positive("MORAG_WEBHOOK_TIMEOUT", float, "10", "the seconds one attempt may take")


def webhook_concurrency() -> int:
    """``MORAG_WEBHOOK_CONCURRENCY``: deliveries in flight at once, one per endpoint (default 8)."""
    return int(_positive("MORAG_WEBHOOK_CONCURRENCY", int, "8", "how many deliveries at once"))


def webhook_allow_private() -> bool:
    """``MORAG_WEBHOOK_ALLOW_PRIVATE=1``: deliver to loopback and private addresses too (SSRF)."""
    raw = os.environ.get("MORAG_WEBHOOK_ALLOW_PRIVATE") or "0"
    if raw.strip().lower() in ("1", "true", "yes", "on"):
        return True
    if raw.strip().lower() in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"MORAG_WEBHOOK_ALLOW_PRIVATE={raw!r} is neither 1 nor 0")


def _positive(name: str, kind: type[int] | type[float], default: str, meaning: str) -> float:
    raw = os.environ.get(name) or default
    try:
        value = float(kind(raw))
    except ValueError:
        value = 0.0
    if not 0 < value < float("inf"):  # NaN fails this too
        raise ValueError(f"{name}={raw!r} is not a positive {kind.__name__}; set it to {meaning}, "
                         f"e.g. {default}")
    return value


def redelivery_timeout() -> float:
    """``MORAG_REDELIVERY_TIMEOUT``: seconds a job the reaper sent back to PENDING waits for
    Celery to deliver its task again before it is FAILED (default 600)."""
    return _positive("MORAG_REDELIVERY_TIMEOUT", float, "600",
                     "the seconds a reaped job waits for its task to be delivered again")


def pending_timeout() -> float | None:
    """``MORAG_PENDING_TIMEOUT``: seconds a task sent to Celery may stay queued, never
    started, before the reaper fails its job as lost (default 86400, a day; ``none``
    never). Set it above the longest time a task may wait in a busy queue."""
    raw = (os.environ.get("MORAG_PENDING_TIMEOUT") or "86400").strip()
    if raw.lower() == "none":
        return None
    return _positive("MORAG_PENDING_TIMEOUT", float, "86400",
                     "the seconds a queued task may wait before its job is failed, or none")


_DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhd]?)", re.IGNORECASE)
_UNIT_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
_LONGEST = 36500 * 86400  # a hundred years: a cutoff any datetime can hold


def parse_duration(text: str) -> float:
    """Seconds in a duration such as ``30d``, ``12h``, ``90m``, ``45s`` or ``3600`` (seconds);
    ``ValueError`` with a one-line reason when it is not one (or not positive)."""
    found = _DURATION.fullmatch(text.strip())
    seconds = float(found[1]) * _UNIT_SECONDS[found[2].lower()] if found else 0.0
    if not 0 < seconds <= _LONGEST:
        raise ValueError(f"{text!r} is not a duration: use a positive number of seconds or "
                         "of m, h or d (e.g. 30d, 12h, 90m, 3600), at most 36500d")
    return seconds


def prune_after() -> float | None:
    """``MORAG_PRUNE_AFTER``: how long ended jobs (with their history) and settled webhook
    deliveries are kept before the reaper deletes them, as a duration (``30d``, ``12h``,
    ``3600``); unset, empty or ``none``: never."""
    raw = (os.environ.get("MORAG_PRUNE_AFTER") or "").strip()
    if raw.lower() in ("", "none"):
        return None
    try:
        return parse_duration(raw)
    except ValueError as error:
        raise ValueError(f"MORAG_PRUNE_AFTER={raw!r}: {error}") from None
