"""``ProgressEventParser``: log lines in, ``ProgressEvent`` out.

The formats are data (see :mod:`morag_jobs.packs`); this module is the engine that
applies them. It is on the hot path of every log line a worker writes, so it is
built around one observation: almost no line is progress. Each pattern names a
cheap *prefilter* that every line it matches contains; a line with none of them is
dismissed after a few substring tests, and :meth:`ProgressEventParser.parse_chunk`
goes further and scans a whole block for the prefilters at C speed, so the lines
without any never reach Python code at all.

The parser never raises on its input: lines it cannot use are counted in
:attr:`ProgressEventParser.stats`.
"""

from __future__ import annotations

import json
import operator
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from morag_jobs import settings
from morag_jobs.events import ProgressEvent, utc_now
from morag_jobs.logs import get_logger
from morag_jobs.packs import (
    Pattern,
    PatternSet,
    Prefilter,
    builtin_pack_dir,
    compile_regex,
    load_packs,
)
from morag_jobs.recognise import TRIGGERS, Recogniser
from morag_jobs.terminal import redraws
from morag_jobs.values import (
    Rejected,
    event_from,
    is_progress,
    json_progress,
    pick,
    values_of,
)

__all__ = ["ParserStats", "ProgressEventParser"]

log = get_logger(__name__)



@dataclass(slots=True)
class ParserStats:
    """What the parser has seen; every line lands in exactly one of the four counters."""

    lines: int = 0
    events: int = 0
    no_match: int = 0
    rejected: int = 0
    malformed: int = 0

    @property
    def skipped(self) -> int:
        """Lines that gave no event, for whatever reason."""
        return self.lines - self.events

    def to_dict(self) -> dict[str, int]:
        return {
            "lines": self.lines,
            "events": self.events,
            "skipped": self.skipped,
            "no_match": self.no_match,
            "rejected": self.rejected,
            "malformed": self.malformed,
        }


class ProgressEventParser:
    """Turns log lines (JSON or plain text, in any loaded format) into progress events.

    ``pattern_dirs`` adds directories of ``*.toml`` packs after the built-in ones and
    those named by ``MORAG_PATTERN_DIRS``; ``pattern_files`` adds single packs last.
    A pattern with the name of an earlier one replaces it.
    """

    def __init__(
        self,
        pattern_dirs: Iterable[str | Path] = (),
        *,
        pattern_files: Iterable[str | Path] = (),
        include_builtin: bool = True,
        use_environment: bool = True,
    ) -> None:
        directories = [builtin_pack_dir()] if include_builtin else []
        if use_environment:
            directories.extend(settings.pattern_dirs())
        directories.extend(Path(d) for d in pattern_dirs)
        self.patterns: PatternSet = load_packs(directories, [Path(f) for f in pattern_files])
        self.stats = ParserStats()
        self._prefixes = tuple(prefix.regex for prefix in self.patterns.prefixes)
        self._rules = self.patterns.json
        self._json_roles = self._rules.roles()
        # "progressDetail.current": a role inside a nested object (docker pull's JSON).
        self._json_nested: dict[str, dict[str, tuple[str, int]]] = {}
        for name, role in self._json_roles.items():
            if "." in name:
                outer, inner = name.split(".", 1)
                self._json_nested.setdefault(outer, {})[inner] = role
        self._table = tuple(
            (
                p.prefilter.literal if p.prefilter else None,
                p.prefilter.scanner.search if p.prefilter and p.prefilter.literal is None
                else None,
                p.regex.search,
                p,
            )
            for p in self.patterns.patterns
        )
        self._recogniser = Recogniser(self.patterns.recogniser)
        self._ignores = tuple((i.prefilter, i.regex) for i in self.patterns.ignores)
        triggers = _minimal_triggers(
            [p.trigger for p in self.patterns.patterns if p.trigger and not _needs_stream(p)]
            + [self._rules.trigger(), Prefilter.build("\x1b")]
            + [Prefilter.build(source) for source in TRIGGERS]
        )
        self._literals = tuple(t.literal for t in triggers if t.literal is not None)
        self._scanners = tuple(t.scanner for t in triggers if t.literal is None)
        # What a stream's update must hold to be worth parsing: the triggers, and every
        # pattern's and context line's prefilter (streams read formats lone lines skip).
        stream_only = _minimal_triggers(
            [p.prefilter for p in self.patterns.patterns if p.prefilter]
            + [c.prefilter for c in self.patterns.contexts]
        )
        self._stream_literals = self._literals + tuple(
            t.literal for t in stream_only if t.literal is not None)
        self._stream_scanners = self._scanners + tuple(
            t.scanner for t in stream_only if t.literal is None)
        self._chunk_scanners = tuple(
            compile_regex(f"(?:{t.scanner.pattern})[^\n]*+") for t in triggers
        )
        # A pattern without a prefilter could match any line, so nothing may be skipped.
        self._scan_everything = any(
            p.trigger is None and not _needs_stream(p) for p in self.patterns.patterns
        )
        if self._scan_everything:
            log.warning("pattern without prefilter: every line will be fully parsed")

    # -- the one entry point -------------------------------------------------------------

    def parse_line(self, line: str | bytes) -> ProgressEvent | None:
        """The progress event in ``line``, or None. Never raises; see :attr:`stats`."""
        stats = self.stats
        stats.lines += 1
        if line.__class__ is not str:
            line = _decode(line)
        if not self._scan_everything and not self._triggered(line):  # type: ignore[arg-type]
            stats.no_match += 1
            return None
        return self._parse_counted(line, None)  # type: ignore[arg-type]

    def parse_chunk(self, text: str | bytes) -> list[ProgressEvent]:
        """Every event in a block of complete lines, in line order.

        Much faster than calling :meth:`parse_line` per line: the block is scanned for
        the patterns' prefilters first and only lines that contain one are parsed. A
        trailing line without its newline is parsed too; callers that read a growing
        file keep a partial last line back until its newline arrives.
        """
        if text.__class__ is not str:
            text = _decode(text)
        assert isinstance(text, str)
        lines = text.count("\n") + (1 if text and not text.endswith("\n") else 0)
        self.stats.lines += lines
        if self._scan_everything:
            starts: Iterable[int] = _line_starts(text)
        else:
            starts = sorted(_candidate_starts(text, self._chunk_scanners))
        now = utc_now()
        events: list[ProgressEvent] = []
        find = text.find
        parse = self._parse_counted
        for start in starts:
            end = find("\n", start)
            event = parse(text[start:end] if end >= 0 else text[start:], now)
            if event is not None:
                events.append(event)
        self.stats.no_match += lines - len(starts) if not self._scan_everything else 0
        return events

    # -- the seed's API ------------------------------------------------------------------

    def parse_json_log(self, line: str | bytes) -> ProgressEvent | None:
        """The event in a JSON log line; None for anything that is not a JSON object."""
        self.stats.lines += 1
        return self._parse_counted(_decode(line), None, _JSON_ONLY)

    def parse_plain_text_log(self, line: str | bytes) -> ProgressEvent | None:
        """The event in a plain-text line (prefix and patterns, no JSON)."""
        self.stats.lines += 1
        return self._parse_counted(_decode(line), None, _TEXT_ONLY)

    def parse_fields(self, data: Mapping[str, Any]) -> ProgressEvent | None:
        """The event in a structured log call's fields (a structlog ``event_dict``).

        The same ``[json]`` rules as for JSON lines: progress from the fields, else from
        the message text. Never raises.
        """
        self.stats.lines += 1
        return self._counted(self._parse_mapping, data, {}, "", None)

    def parse_log_stream(self, lines: Iterable[str | bytes]) -> list[ProgressEvent]:
        """Every event in ``lines``, in order."""
        parse = self.parse_line
        return [event for event in map(parse, lines) if event is not None]

    def get_latest_progress(
        self, lines: Iterable[str | bytes | ProgressEvent]
    ) -> ProgressEvent | None:
        """The event with the latest timestamp (the later line wins a tie).

        Timestamps are compared as aware UTC: a line whose time has no zone is read as
        UTC, so naive and aware timestamps never meet in a comparison.
        """
        latest: ProgressEvent | None = None
        for item in lines:
            event = item if isinstance(item, ProgressEvent) else self.parse_line(item)
            if event is not None and (latest is None or event.timestamp >= latest.timestamp):
                latest = event
        return latest

    # -- internals -----------------------------------------------------------------------

    def may_hold_progress(self, text: str) -> bool:
        """A cheap test a stream runs on each update: False means nothing here can matter
        (no trigger, no stream-only format, no context line)."""
        return self._scan_everything or _holds_any(
            text, self._stream_literals, self._stream_scanners)

    def _triggered(self, line: str) -> bool:
        return _holds_any(line, self._literals, self._scanners)

    def _parse_counted(
        self, line: str, now: datetime | None, only: str | None = None
    ) -> ProgressEvent | None:
        return self._counted(self._parse_text, line, now, only)

    def _counted(self, parse: Any, *args: Any) -> ProgressEvent | None:
        """Run one parse, counting its outcome; the parser never raises on input."""
        stats = self.stats
        try:
            event: ProgressEvent | None = parse(*args)
        except Rejected:
            stats.rejected += 1
            return None
        except Exception:
            stats.malformed += 1
            log.debug("input could not be parsed", exc_info=True, input=repr(args[0])[:200])
            return None
        if event is None:
            stats.no_match += 1
        else:
            stats.events += 1
        return event

    def _parse_text(
        self, line: str, now: datetime | None, only: str | None = None
    ) -> ProgressEvent | None:
        redrawn = "\r" in line or "\x1b" in line or "\x08" in line
        updates = redraws(line) if redrawn else (line,)
        if not updates:
            return None
        envelope = None
        first = updates[0]
        for prefix in self._prefixes:
            envelope = prefix.match(first)
            if envelope is not None:
                first = first[envelope.start("message") :]
                updates = (first,) if len(updates) == 1 else (first, *updates[1:])
                break
        is_json = first[:1] == "{" or first.lstrip()[:1] == "{"
        if only is _JSON_ONLY and not is_json:
            return None
        if is_json and only is not _TEXT_ONLY and len(updates) == 1:
            fields = envelope.groupdict() if envelope is not None else {}
            return self._parse_json(first.strip(), fields, line, now)
        for update in reversed(updates):
            found = self.match_update(update)
            if found is not None:
                values = found[1]
                if values["percent"] is not None or values["current"] is not None:
                    fields = envelope.groupdict() if envelope is not None else _NO_FIELDS
                    return event_from(found, fields, line, now)
        return None

    def envelope(self, text: str) -> tuple[dict[str, Any], str]:
        """A line's envelope fields (time, level, task id...) and the message inside it."""
        for prefix in self._prefixes:
            match = prefix.match(text)
            if match is not None:
                return match.groupdict(), text[match.start("message") :]
        return _NO_FIELDS, text

    def match_update(self, text: str) -> tuple[str, dict[str, Any]] | None:
        """The format and values of one visible update (no redraws in it), or None.

        The values may lack a percent: a ``time`` position or a count without total is
        for a :class:`~morag_jobs.streams.ProgressStream`, which knows what they are
        measured against. Raises ``Rejected`` for numbers that break the rules.
        """
        found = self._match(text)
        if found is not None:
            return found
        for prefilter, ignore in self._ignores:
            if prefilter.found_in(text) and ignore.search(text) is not None:
                return None
        values = self._recogniser.find(text)
        return ("generic", values) if values is not None else None

    def _match(self, text: str) -> tuple[str, dict[str, Any]] | None:
        """The first pattern (by priority) that matches: its name and checked values.

        A match that needs a stream's context (a bare time position) gives way to a later
        pattern that reads the line on its own, and is returned only when none does.
        """
        waiting = None
        for literal, prefiltered, search, pattern in self._table:
            if literal is not None:
                if literal not in text:
                    continue
            elif prefiltered is not None and prefiltered(text) is None:
                continue
            match = search(text)
            if match is not None:
                values = values_of(pattern, match.groupdict(), text)
                if is_progress(values):
                    return pattern.name, values
                waiting = waiting or (pattern.name, values)
        return waiting

    def _parse_json(
        self, text: str, fields: dict[str, Any], raw: str, now: datetime | None
    ) -> ProgressEvent | None:
        try:
            data = json.loads(text)
        except (ValueError, RecursionError):
            # Not JSON after all ("{x} 50%"): the text patterns may still know it.
            found = self.match_update(text.rsplit("\r", maxsplit=1)[-1])
            return event_from(found, fields, raw, now) if found and is_progress(found[1]) else None
        if not isinstance(data, dict):
            return None
        return self._parse_mapping(data, fields, raw, now)

    def _parse_mapping(
        self, data: Mapping[str, Any], fields: dict[str, Any], raw: str, now: datetime | None
    ) -> ProgressEvent | None:
        found = pick(data, self._json_roles)
        for outer, roles in self._json_nested.items():
            nested = data.get(outer)
            if isinstance(nested, dict):
                for key, value in pick(nested, roles).items():
                    found.setdefault(key, value)
        merged = dict(fields)
        for key in _JSON_IDENTITY:
            value = found.get(key)
            if value is not None:
                merged[key] = value if key == "timestamp" else str(value)
        message = found.get("message")
        message = message if isinstance(message, str) else ""
        values = json_progress(found, message)
        if values is None:
            found = self.match_update(message.split("\r")[-1]) if message else None
            if found is None or not is_progress(found[1]):
                return None
            found = (f"json+{found[0]}", found[1])
        else:
            found = ("json", values)
        return event_from(found, merged, raw, now)


_NO_FIELDS: dict[str, Any] = {}
_START = operator.methodcaller("start")
_JSON_ONLY = "json"
_TEXT_ONLY = "text"
_JSON_IDENTITY = ("timestamp", "level", "logger", "task_id", "job_id", "worker_id")


def _decode(data: Any) -> str:
    if data.__class__ is str:
        return data  # type: ignore[no-any-return]
    if isinstance(data, (bytes, bytearray, memoryview)):
        return bytes(data).decode("utf-8", "replace")
    return str(data)


def _holds_any(text: str, literals: Sequence[str], scanners: Sequence[Any]) -> bool:
    """Whether ``text`` holds one of the literals (tested first: ``in`` is cheapest) or
    matches one of the scanners."""
    for literal in literals:
        if literal in text:
            return True
    return any(scanner.search(text) for scanner in scanners)


def _needs_stream(pattern: Pattern) -> bool:
    """A pattern that reads only a time position: a lone line can never make it progress,
    so blocks are not scanned for it (streams try every pattern on every update)."""
    return pattern.streams_only or (
        pattern.percent is None and not _ALONE_GROUPS & set(pattern.regex.groupindex)
    )


_ALONE_GROUPS = frozenset({"percent", "current", "remaining"})


def _line_starts(text: str) -> list[int]:
    starts = [0]
    find = text.find
    position = find("\n")
    while position >= 0:
        if position + 1 < len(text):
            starts.append(position + 1)
        position = find("\n", position + 1)
    return starts if text else []


def _candidate_starts(text: str, scanners: Sequence[Any]) -> set[int]:
    """Start offsets of the lines that contain any prefilter.

    Each scanner consumes the rest of the line after a hit, so it reports a line once.
    """
    rfind = text.rfind
    starts: set[int] = set()
    for scanner in scanners:
        starts.update(rfind("\n", 0, start) + 1 for start in map(_START, scanner.finditer(text)))
    return starts


def _minimal_triggers(prefilters: Iterable[Prefilter]) -> list[Prefilter]:
    """The prefilters worth scanning for: a literal that contains another is redundant."""
    unique = {p.source: p for p in prefilters}.values()
    literals = [p.literal for p in unique if p.literal is not None]
    return [
        p
        for p in unique
        if p.literal is None or not any(o != p.literal and o in p.literal for o in literals)
    ]
