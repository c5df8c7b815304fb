"""A match's values: typed, checked against the rules of progress, made into an event.

The parser finds; this module turns what it found (a pattern's named groups, a JSON
line's fields) into the values a ``ProgressEvent`` carries, refusing what breaks the
rules (a percent above 100, a count beyond its total) with ``Rejected``, which the
parser counts instead of raising.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from morag_jobs.events import ProgressEvent, utc_now
from morag_jobs.packs import Pattern

__all__ = ["Rejected", "checked", "event_from", "is_progress", "json_progress", "pick",
           "seconds", "values_of"]

_NUMBER_TYPES = (int, float)


class Rejected(ValueError):
    """A line that looks like progress but breaks a rule (e.g. 150%); counted, not raised."""


def pick(data: Mapping[str, Any], roles: Mapping[str, tuple[str, int]]) -> dict[str, Any]:
    """Role -> value in one pass over the fields; of two names for a role, the [json]
    rules' earlier one wins (``event`` before ``message``)."""
    found: dict[str, Any] = {}
    ranks: dict[str, int] = {}
    get = roles.get
    for key, value in data.items():
        role = get(key) if key.__class__ is str else None
        if role is None or value is None:
            continue
        name, rank = role
        if rank < ranks.get(name, 1 << 30):
            found[name] = value
            ranks[name] = rank
    return found


def _number(value: Any, name: str) -> float:
    if value.__class__ not in _NUMBER_TYPES:
        if isinstance(value, str):
            try:
                value = float(value.rstrip("% "))
            except ValueError:
                raise Rejected(name) from None
        else:
            raise Rejected(name)
    return float(value)


def _is_number(value: Any) -> bool:
    try:
        _number(value, "value")
    except Rejected:
        return False
    return True


def json_progress(found: Mapping[str, Any], message: str) -> dict[str, Any] | None:
    """Progress carried by the fields themselves, or None when the fields carry none."""
    values: dict[str, Any] = {}
    percent = found.get("percent")
    if percent is not None:
        values["percent"] = _number(percent, "percent")
    else:
        progress = found.get("fraction_or_percent")
        # A "progress" that is no number (docker pull's drawn bar, "[=>  ] 3.3MB/152MB")
        # gives way to the counts beside it; alone, it is rejected.
        if progress is not None and not (
            found.get("current") is not None and not _is_number(progress)
        ):
            number = _number(progress, "progress")
            values["percent"] = number * 100.0 if number <= 1.0 else number
    current = found.get("current")
    if current is not None:
        values["current"] = int(_number(current, "current"))
        total = found.get("total")
        if total is not None:
            values["total"] = int(_number(total, "total"))
    stage = found.get("stage")
    if isinstance(stage, str) and stage:
        values["stage"] = stage
    if "percent" not in values and "current" not in values:
        return None
    values["message"] = message
    return checked(values)


def values_of(pattern: Pattern, groups: dict[str, Any], text: str) -> dict[str, Any]:
    """A pattern's named groups as typed values; no ``message`` group means the whole text."""
    get = groups.get
    percent = get("percent")
    current = get("current")
    total = get("total")
    if "remaining" in groups and total is not None:  # rsync's to-chk=R/T: T - R are done
        current = str(max(0, int(total) - int(groups["remaining"])))
    message = get("message") if "message" in groups else text
    if percent is None and pattern.percent is not None:
        percent = pattern.percent

    values = {
        "percent": None if percent is None else float(percent),
        "current": None if current is None else int(current),
        "total": None if total is None or current is None else int(total),
        "message": message.strip() if message else "",
        "stage": get("stage") or pattern.stage,
    }
    if pattern.stream_keys:  # what only a stream uses: a time position, a bar's name
        position = get("time")
        if position is not None:
            values["time"] = seconds(position)
        if pattern.bar:
            values["bar"] = True
            values["label"] = values["message"]
        if pattern.overall:
            values["overall"] = True
    return checked(values)


def seconds(text: str) -> float:
    """A time position as seconds: ``00:01:02.50``, ``1:02`` or ``62.5``."""
    total = 0.0
    for part in text.split(":"):
        total = total * 60.0 + float(part)
    return total


def is_progress(values: dict[str, Any]) -> bool:
    """Whether values alone make an event (a bare time position needs a stream)."""
    return values.get("percent") is not None or values.get("current") is not None


def checked(values: dict[str, Any]) -> dict[str, Any]:
    """Apply the rules of what counts as progress; raise Rejected for what does not."""
    percent = values.get("percent")
    current = values.get("current")
    total = values.get("total")
    if total is not None and (total <= 0 or current is None or current > total or current < 0):
        raise Rejected("current/total")
    if percent is None:
        if current is not None and current < 0:
            raise Rejected("current")
        return values
    # check_percent(percent, over_100=False) inlined: this runs for every progress line
    # (a test keeps the two in agreement); also false for NaN.
    if not 0.0 <= percent <= 100.0:
        raise Rejected("percent")
    return values


def _timestamp(value: Any, now: datetime | None) -> datetime:
    if value is None:
        return now or utc_now()
    if value.__class__ is str:
        try:
            if value[-1:] == "Z" or value[-6:-5] in ("+", "-"):
                parsed = datetime.fromisoformat(value)
            else:  # zone-less, read as UTC; one parse is cheaper than parse + replace
                return datetime.fromisoformat(value + "+00:00")
        except ValueError:
            try:
                parsed = datetime.fromisoformat(value)
            except ValueError:
                return now or utc_now()
        return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)
    if value.__class__ in _NUMBER_TYPES:
        try:
            return datetime.fromtimestamp(value, UTC)
        except (OverflowError, OSError, ValueError):
            return now or utc_now()
    return now or utc_now()


def event_from(
    found: tuple[str, dict[str, Any]], fields: dict[str, Any], raw: str, now: datetime | None
) -> ProgressEvent:
    name, values = found
    get = values.get
    return ProgressEvent._checked_by_parser(
        get("percent"), get("current"), get("total"), get("message") or "", get("stage"),
        _timestamp(fields.get("timestamp"), now) if fields else now or utc_now(),
        fields, name, raw,
    )
