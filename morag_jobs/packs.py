"""Pattern packs: log formats as data (``parsers/*.toml``), compiled and checked at load time.

A pack holds ``[[prefix]]`` entries (a log line's envelope, e.g. Celery's
``[time: LEVEL/Process] task[id]:``, stripped before the message is matched),
``[[pattern]]`` entries (what progress looks like in a message) and at most one
``[json]`` table (which JSON fields carry progress). Every entry may carry
``examples`` that the test suite runs, so a pack documents and proves itself.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import regex

from morag_jobs.errors import PatternPackError
from morag_jobs.linearity import HEADS, heads_of, superlinear
from morag_jobs.recognise import RecogniserRules

__all__ = [
    "Context",
    "Ignore",
    "JsonRules",
    "Pattern",
    "PatternSet",
    "Prefix",
    "builtin_pack_dir",
    "load_packs",
]

PATTERN_GROUPS = frozenset(
    {"percent", "current", "remaining", "total", "message", "stage", "time"}
)
CONTEXT_GROUPS = frozenset({"total", "duration"})
PREFIX_GROUPS = frozenset({"timestamp", "level", "process", "logger", "task_id", "message"})
_PATTERN_KEYS = frozenset(
    {"name", "regex", "prefilter", "trigger", "priority", "stage", "percent", "bar", "overall",
     "examples"}
)
_CONTEXT_KEYS = frozenset({"name", "regex", "prefilter", "count", "priority", "examples"})
_IGNORE_KEYS = frozenset({"name", "regex", "prefilter", "priority", "examples"})
_PREFIX_KEYS = frozenset({"name", "regex", "priority", "examples"})
Regex = re.Pattern[str] | regex.Pattern[str]
_META = set(".^$*+?{}[]\\|()")
_ESCAPED_PUNCTUATION = re.compile(r"\\([^\w\s])")


def builtin_pack_dir() -> Path:
    """The packs shipped with morag-jobs: inside the wheel, or ``parsers/`` in a checkout."""
    here = Path(__file__).resolve().parent
    installed = here / "parsers"
    return installed if installed.is_dir() else here.parent / "parsers"


@dataclass(frozen=True, slots=True)
class Prefilter:
    """What every line a pattern matches must contain; cheap to test, and what chunks scan for.

    A prefilter without regex metacharacters is a literal and is tested with ``in``;
    otherwise it is a regex, compiled with the stdlib ``re`` when it can be (its literal
    scans are the fastest here) and with ``regex`` when it needs that module's syntax.
    """

    source: str
    literal: str | None
    scanner: Regex

    @classmethod
    def build(cls, source: str) -> Prefilter:
        plain = _ESCAPED_PUNCTUATION.sub("", source)
        literal = _ESCAPED_PUNCTUATION.sub(r"\1", source) if _META.isdisjoint(plain) else None
        return cls(source, literal, compile_regex(re.escape(literal) if literal else source))

    def found_in(self, text: str) -> bool:
        if self.literal is not None:
            return self.literal in text
        return self.scanner.search(text) is not None


@dataclass(frozen=True, slots=True)
class Pattern:
    """One progress format: a regex with named groups, tried in priority order.

    ``prefilter`` is checked before the regex runs, so it may be specific
    ("Processing progress:"); ``trigger`` is what whole blocks are scanned for, so it
    should be coarse and shared by many patterns ("%"). Each defaults to the other.
    """

    name: str
    regex: Regex
    prefilter: Prefilter | None
    trigger: Prefilter | None
    priority: int
    stage: str | None
    examples: tuple[Mapping[str, Any], ...]
    origin: str
    percent: float | None = None
    """A fixed percent for a line that means "done" without a number (``progress=end``)."""
    bar: bool = False
    """The pattern draws a bar named by its message, so a stream can tell bars apart."""
    overall: bool = False
    """The tool's whole-run counter (rsync's ``to-chk``): a stream follows it over any bar."""

    streams_only: bool = False
    """``trigger = false``: only streams read this format; lone lines are not scanned for it."""

    stream_keys: bool = False
    """Its values carry something only a stream uses (a time, a bar's name, ``overall``)."""


@dataclass(frozen=True, slots=True)
class Context:
    """A line that tells a stream what later lines are measured against.

    ``total`` (an item count) or ``duration`` (a length of time, e.g. ffmpeg's
    ``Duration: 00:03:20.00``) is remembered by the stream; with ``count``, every later
    line matching that regex is one more item done (scikit-learn's "totalling 20 fits"
    followed by one ``[CV] END`` line per fit).
    """

    name: str
    regex: Regex
    prefilter: Prefilter
    count: Regex | None
    examples: tuple[Mapping[str, Any], ...]
    origin: str


@dataclass(frozen=True, slots=True)
class Ignore:
    """Lines the general recogniser must leave alone (a fold index that looks like n/N)."""

    name: str
    regex: Regex
    prefilter: Prefilter
    examples: tuple[Mapping[str, Any], ...]
    origin: str


@dataclass(frozen=True, slots=True)
class Prefix:
    """A log line's envelope (timestamp, level, task id) around the message."""

    name: str
    regex: Regex
    priority: int
    examples: tuple[Mapping[str, Any], ...]
    origin: str


_JSON_ROLES = ("message", "percent", "fraction_or_percent", "current", "total", "stage",
               "timestamp", "level", "logger", "task_id", "job_id", "worker_id")


@dataclass(frozen=True, slots=True)
class JsonRules:
    """Which JSON fields carry the message, the progress and the line's identity."""

    message: tuple[str, ...] = ("event", "message", "msg")
    percent: tuple[str, ...] = ("percent", "percentage")
    fraction_or_percent: tuple[str, ...] = ("progress",)
    current: tuple[str, ...] = ("current",)
    total: tuple[str, ...] = ("total",)
    stage: tuple[str, ...] = ("stage",)
    timestamp: tuple[str, ...] = ("timestamp", "time", "asctime", "@timestamp")
    level: tuple[str, ...] = ("level", "levelname", "severity")
    logger: tuple[str, ...] = ("logger", "name", "logger_name")
    task_id: tuple[str, ...] = ("task_id",)
    job_id: tuple[str, ...] = ("job_id",)
    worker_id: tuple[str, ...] = ("worker_id",)
    examples: tuple[Mapping[str, Any], ...] = ()
    origin: str = "<defaults>"

    @property
    def progress_keys(self) -> tuple[str, ...]:
        return self.percent + self.fraction_or_percent + self.current

    def roles(self) -> dict[str, tuple[str, int]]:
        """Field name -> (what it carries, rank among that role's names; lower wins)."""
        roles: dict[str, tuple[str, int]] = {}
        for role in _JSON_ROLES:
            for rank, name in enumerate(getattr(self, role)):
                roles.setdefault(name, (role, rank))
        return roles

    def trigger(self) -> Prefilter:
        """What every JSON line whose fields carry progress contains."""
        keys = "|".join(re.escape(key) for key in self.progress_keys)
        return Prefilter.build(rf'"(?:{keys})"\s*:')


@dataclass(slots=True)
class PatternSet:
    """Everything the parser needs, merged from all packs."""

    patterns: list[Pattern] = field(default_factory=list)
    prefixes: list[Prefix] = field(default_factory=list)
    contexts: list[Context] = field(default_factory=list)
    ignores: list[Ignore] = field(default_factory=list)
    json: JsonRules = field(default_factory=JsonRules)
    recogniser: RecogniserRules = field(default_factory=RecogniserRules)
    sources: list[str] = field(default_factory=list)


def load_packs(directories: Iterable[Path], files: Iterable[Path] = ()) -> PatternSet:
    """Load every ``*.toml`` in ``directories`` (in name order) and then ``files``.

    A later pattern or prefix with the same name replaces an earlier one, which is how a
    user's pack overrides a built-in format without copying the whole pack. Every
    expression of a pack that is not built in must run in linear time on hostile lines
    (see ``morag_jobs.linearity``); one that does not is refused with its file and name.
    """
    paths: list[Path] = []
    for directory in directories:
        if not directory.is_dir():
            raise PatternPackError(directory, "is not a directory of *.toml pattern packs")
        paths.extend(sorted(directory.glob("*.toml")))
    paths.extend(files)
    patterns: dict[str, Pattern] = {}
    prefixes: dict[str, Prefix] = {}
    contexts: dict[str, Context] = {}
    ignores: dict[str, Ignore] = {}
    result = PatternSet()
    builtin = builtin_pack_dir().resolve()
    for path in paths:
        data = _read_toml(path)
        built: list[Pattern | Prefix | Context | Ignore] = []
        for item in data.pop("pattern", []):
            pattern = _build_pattern(path, item)
            patterns[pattern.name] = pattern
            built.append(pattern)
        for item in data.pop("prefix", []):
            prefix = _build_prefix(path, item)
            prefixes[prefix.name] = prefix
            built.append(prefix)
        for item in data.pop("context", []):
            context = _build_context(path, item)
            contexts[context.name] = context
            built.append(context)
        for item in data.pop("ignore", []):
            ignore = _build_ignore(path, item)
            ignores[ignore.name] = ignore
            built.append(ignore)
        if "json" in data:
            result.json = _build_json(path, data.pop("json"))
        if "recogniser" in data:
            before = result.recogniser.cues
            result.recogniser = result.recogniser.merged(path, data.pop("recogniser"))
            cues = [(cue.name, cue.regex) for cue in result.recogniser.cues if cue not in before]
        else:
            cues = []
        if path.resolve().parent != builtin:
            _require_linear(path, built, cues)
        data.pop("pack", None)
        if data:
            raise PatternPackError(path, f"unknown top-level keys {sorted(data)}")
        result.sources.append(str(path))
    order = {name: i for i, name in enumerate(patterns)}
    result.patterns = sorted(patterns.values(), key=lambda p: (-p.priority, order[p.name]))
    result.prefixes = sorted(prefixes.values(), key=lambda p: -p.priority)
    result.contexts = list(contexts.values())
    result.ignores = list(ignores.values())
    return result


def _require_linear(
    path: Path,
    built: list[Pattern | Prefix | Context | Ignore],
    cues: list[tuple[str, Regex]],
) -> None:
    """Refuse a user pack with an expression that a long hostile line makes super-linear."""
    checks: list[tuple[str, Regex, list[str]]] = [(name, regex, []) for name, regex in cues]
    for item in built:
        lines = [str(example.get("line", "")) for example in item.examples]
        checks.append((item.name, item.regex, lines))
        if isinstance(item, Pattern | Context | Ignore) and item.prefilter is not None:
            checks.append((item.name, item.prefilter.scanner, lines))
        if isinstance(item, Context) and item.count is not None:
            checks.append((item.name, item.count, lines))
    for name, expression, lines in checks:
        line = superlinear(expression.search, heads_of(lines) + list(HEADS))
        if line is not None:
            raise PatternPackError(
                path, f"regex {expression.pattern[:60]!r} takes super-linear time on long lines "
                      f"such as {line!r}...; use possessive quantifiers or atomic groups "
                      "(\\s++, (?>...)) and no two quantifiers that can match the same text",
                name)


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except OSError as error:
        raise PatternPackError(path, f"cannot be read: {error}") from error
    except tomllib.TOMLDecodeError as error:
        raise PatternPackError(path, f"is not valid TOML: {error}") from error


def compile_regex(source: str) -> Regex:
    """Compile with the stdlib ``re`` (3.11 has atomic groups and possessive quantifiers,
    and it is about twice as fast here); fall back to ``regex`` for syntax only it knows
    (``\\p{L}``, ``\\X``, fuzzy matching...)."""
    try:
        return re.compile(source)
    except re.error:
        return regex.compile(source, regex.VERSION0)


def _compile(path: Path, name: str, source: Any, allowed: frozenset[str]) -> Regex:
    if not isinstance(source, str) or not source:
        raise PatternPackError(path, "needs a non-empty 'regex' string", name)
    try:
        compiled = compile_regex(source)
    except regex.error as error:
        raise PatternPackError(path, f"regex does not compile: {error}", name) from error
    unknown = set(compiled.groupindex) - allowed
    if unknown:
        raise PatternPackError(
            path, f"unknown named groups {sorted(unknown)}; allowed: {sorted(allowed)}", name
        )
    return compiled


def _common(path: Path, item: Any, keys: frozenset[str]) -> tuple[str, int, tuple[Any, ...]]:
    if not isinstance(item, dict) or not isinstance(item.get("name"), str):
        raise PatternPackError(path, "every entry needs a 'name' string")
    name = item["name"]
    unknown = set(item) - keys
    if unknown:
        raise PatternPackError(path, f"unknown keys {sorted(unknown)}", name)
    priority = item.get("priority", 0)
    if not isinstance(priority, int):
        raise PatternPackError(path, "'priority' must be an integer", name)
    examples = item.get("examples", [])
    if not isinstance(examples, list) or not all(isinstance(e, dict) for e in examples):
        raise PatternPackError(path, "'examples' must be a list of tables", name)
    if not all(isinstance(e.get("line"), str) for e in examples):
        raise PatternPackError(path, "every example needs a 'line' string", name)
    if not all(isinstance(e.get("context", ""), str) for e in examples):
        raise PatternPackError(path, "an example's 'context' is the line before it", name)
    return name, priority, tuple(examples)


def _build_pattern(path: Path, item: Any) -> Pattern:
    name, priority, examples = _common(path, item, _PATTERN_KEYS)
    compiled = _compile(path, name, item.get("regex"), PATTERN_GROUPS)
    fixed = item.get("percent")
    if fixed is not None and (not isinstance(fixed, int | float) or not 0 <= fixed <= 100):
        raise PatternPackError(path, "'percent' must be a number from 0 to 100", name)
    if fixed is None and not {"percent", "current", "remaining", "time"} & set(compiled.groupindex):
        raise PatternPackError(
            path, "regex needs a 'percent', 'current' or 'time' group (or a fixed 'percent')", name
        )
    # trigger = false: a lone line of this format says nothing worth an event (bytes with
    # no total, ffmpeg's progress=end); only streams read it, so blocks are not scanned.
    streams_only = item.get("trigger") is False
    prefilter = _prefilter(path, name, item, "prefilter")
    if streams_only and prefilter is None:
        raise PatternPackError(path, "trigger = false needs a 'prefilter'", name)
    trigger = None if streams_only else _prefilter(path, name, item, "trigger") or prefilter
    stage = item.get("stage")
    if stage is not None and not isinstance(stage, str):
        raise PatternPackError(path, "'stage' must be a string", name)
    return Pattern(name, compiled, prefilter or trigger, trigger, priority, stage, examples,
                   str(path), None if fixed is None else float(fixed), item.get("bar") is True,
                   item.get("overall") is True, streams_only,
                   item.get("bar") is True or item.get("overall") is True
                   or "time" in compiled.groupindex)


def _required_prefilter(path: Path, name: str, item: dict[str, Any]) -> Prefilter:
    prefilter = _prefilter(path, name, item, "prefilter")
    if prefilter is None:
        raise PatternPackError(path, "needs a 'prefilter' (what every line it matches holds)",
                               name)
    return prefilter


def _build_context(path: Path, item: Any) -> Context:
    name, _, examples = _common(path, item, _CONTEXT_KEYS)
    compiled = _compile(path, name, item.get("regex"), CONTEXT_GROUPS)
    if not CONTEXT_GROUPS & set(compiled.groupindex):
        raise PatternPackError(path, "a context regex needs a 'total' or 'duration' group", name)
    count = item.get("count")
    counter = None if count is None else _compile(path, name, count, frozenset())
    return Context(name, compiled, _required_prefilter(path, name, item), counter, examples,
                   str(path))


def _build_ignore(path: Path, item: Any) -> Ignore:
    name, _, examples = _common(path, item, _IGNORE_KEYS)
    compiled = _compile(path, name, item.get("regex"), frozenset())
    return Ignore(name, compiled, _required_prefilter(path, name, item), examples, str(path))


def _prefilter(path: Path, name: str, item: dict[str, Any], key: str) -> Prefilter | None:
    source = item.get(key)
    if source is None or source is False:
        return None
    if not isinstance(source, str) or not source:
        raise PatternPackError(path, f"'{key}' must be a non-empty string", name)
    try:
        return Prefilter.build(source)
    except regex.error as error:
        raise PatternPackError(path, f"{key} does not compile: {error}", name) from error


def _build_prefix(path: Path, item: Any) -> Prefix:
    name, priority, examples = _common(path, item, _PREFIX_KEYS)
    compiled = _compile(path, name, item.get("regex"), PREFIX_GROUPS)
    if "message" not in compiled.groupindex:
        raise PatternPackError(path, "a prefix regex needs a 'message' group", name)
    return Prefix(name, compiled, priority, examples, str(path))


def _build_json(path: Path, table: Any) -> JsonRules:
    if not isinstance(table, dict):
        raise PatternPackError(path, "[json] must be a table", "json")
    defaults = JsonRules()
    values: dict[str, Any] = {}
    for key, value in table.items():
        if key == "examples":
            continue
        if key not in JsonRules.__dataclass_fields__ or key == "origin":
            raise PatternPackError(path, f"unknown [json] key {key!r}", "json")
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise PatternPackError(path, f"[json] {key} must be a list of field names", "json")
        values[key] = tuple(value)
    _, _, examples = _common(path, {"name": "json", "examples": table.get("examples", [])},
                             frozenset({"name", "examples"}))
    merged = {name: values.get(name, getattr(defaults, name)) for name in values}
    return JsonRules(**merged, examples=examples, origin=str(path))
