"""``ProgressStream``: the state one stream of output needs to be read as progress.

A parser reads one line at a time, but some programs spread their progress across
lines: ffmpeg prints the input's ``Duration:`` once and then ``time=`` positions;
scikit-learn says "totalling 20 fits" and then prints one line per fit; a byte counter
needs a total that only the caller knows. And some draw several bars at once (tqdm's
nested ``position=1`` bars, rich's per-file tasks, "Fetching 3 files" around per-file
downloads) where the job must follow the outer bar, not whichever bar drew last.

One :class:`ProgressStream` belongs to one source: a followed file, a subprocess (its
stdout and stderr are two channels of one stream, since ffmpeg prints its duration on
one and its ``-progress`` on the other), or a task's log. It replays the raw output as
a terminal would (:mod:`morag_jobs.terminal`), hands every visible update to the
parser, applies what earlier lines said, and returns the events the job should follow.
It is thread-safe, so a subprocess's two pipe readers can share it.
"""

from __future__ import annotations

import codecs
import re
import threading
from dataclasses import asdict, dataclass
from typing import Any

from morag_jobs.events import ProgressEvent, utc_now
from morag_jobs.packs import Context
from morag_jobs.parser import ProgressEventParser
from morag_jobs.terminal import MAX_UPDATE_CHARS, RedrawSplitter, Update, redraws
from morag_jobs.values import seconds

__all__ = ["ProgressStream", "StreamStats"]

_SWITCH_AFTER = 3
"""Another bar that finishes this many times while the followed one stands still takes over."""
_LABEL_NOISE = re.compile(r"[\W\d_]+")
_LEAD = re.compile(r"[^\d%|\[(#=━─█▉▊▋▌▍▎▏╸╺]*+")


@dataclass(slots=True)
class StreamStats:
    """What a stream has seen: updates read, events given, and why others gave none."""

    updates: int = 0
    events: int = 0
    inner: int = 0
    rejected: int = 0
    context: int = 0
    cut: int = 0
    """Log records longer than ``MAX_UPDATE_CHARS``: only their head and tail were read."""

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


class _Channel:
    """One byte source of a stream (a pipe, a file): its decoder and its screen."""

    __slots__ = ("decoder", "splitter")

    def __init__(self) -> None:
        self.decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self.splitter = RedrawSplitter()


class ProgressStream:
    """Reads one source's output as progress, with the state that needs.

    ``total`` is the number of items (or bytes) the caller knows the work has, for
    output that counts without saying of how many; ``duration`` (seconds) is the length
    of a media file, for output that reports a position in time. ``follow_outer``
    keeps the job on the first bar while it runs, so nested or per-file bars drawn
    inside it are counted in :attr:`stats` as ``inner`` instead of moving the job.
    """

    def __init__(
        self,
        parser: ProgressEventParser | None = None,
        *,
        total: int | float | None = None,
        duration: float | None = None,
        follow_outer: bool = True,
    ) -> None:
        self.parser = parser if parser is not None else ProgressEventParser()
        self.total = total
        self.duration = duration
        self.follow_outer = follow_outer
        self.stats = StreamStats()
        self._contexts = self.parser.patterns.contexts
        self._channels: dict[str, _Channel] = {}
        self._lock = threading.Lock()
        self._counter: tuple[Context, float] | None = None
        self._counted = 0
        self._followed: tuple[Any, ...] | None = None
        self._followed_percent = 0.0
        self._finishes_elsewhere = 0
        self._overall: tuple[Any, ...] | None = None
        self._records = 0
        self._followed_label = ""  # the words the followed bar's line starts with
        self._followed_line = 0  # and the line it was last drawn on
        self._followed_closed = False
        self._last_percent: float | None = None
        self._last_current: int | None = None

    # -- input -----------------------------------------------------------------------------

    def feed(self, data: str | bytes, channel: str = "output") -> list[ProgressEvent]:
        """Take the next piece of output (any size, split anywhere); return its events."""
        with self._lock:
            source = self._channel(channel)
            text = source.decoder.decode(data) if isinstance(data, bytes) else data
            return self._events(source.splitter.feed(text))

    def close(self, channel: str | None = None) -> list[ProgressEvent]:
        """End of output (of one channel, or all): the update still drawn counts too."""
        with self._lock:
            names = [channel] if channel is not None else list(self._channels)
            updates: list[Update] = []
            for name in names:
                source = self._channels.pop(name, None)
                if source is not None:
                    tail = source.decoder.decode(b"", final=True)
                    updates.extend(source.splitter.feed(tail) if tail else [])
                    updates.extend(source.splitter.close())
            return self._events(updates)

    def feed_line(self, line: str) -> list[ProgressEvent]:
        """One complete log line (a logging record's message): every update in it counts.

        The log tap calls this for every record a task logs, so a line without redraws
        goes straight to the parser's cheap test, with no screen replayed for it. A record
        longer than ``MAX_UPDATE_CHARS`` (a task that logs a whole document) is read by its
        head and its tail only, where a progress figure would be, so no record costs more
        than a bounded parse whatever its length (counted in ``stats.cut``).
        """
        texts = redraws(line) if len(line) <= MAX_UPDATE_CHARS else self._cut(line)
        with self._lock:
            self._records += 1  # each record is a line of its own
            return self._events([Update(text, self._records) for text in texts])

    def _cut(self, line: str) -> list[str]:
        self.stats.cut += 1
        half = MAX_UPDATE_CHARS // 2
        return [*redraws(line[:half]), *redraws(line[-half:])]

    def peek(self, line: str | bytes) -> ProgressEvent | None:
        """The latest update of a line still being drawn, if the job follows it.

        Changes no state: the whole line is fed later, once its newline arrives.
        """
        text = line.decode("utf-8", "replace") if isinstance(line, bytes) else line
        updates = redraws(text)
        if not updates:
            return None
        with self._lock:
            fields, message = self.parser.envelope(updates[-1])
            try:
                found = self.parser.match_update(message)
            except ValueError:
                return None
            values = self._complete(found[1]) if found is not None else None
            if found is None or values is None:
                return None
            key = self._key(found[0], values)
            if self.follow_outer and self._followed not in (None, key):
                return None
            return self._event((found[0], values), fields, updates[-1])

    # -- state -----------------------------------------------------------------------------

    def _channel(self, name: str) -> _Channel:
        source = self._channels.get(name)
        if source is None:
            source = self._channels[name] = _Channel()
        return source

    def _events(self, updates: list[Update]) -> list[ProgressEvent]:
        events = []
        for update in updates:
            self.stats.updates += 1
            event = self._update(update.text)
            if event is None:
                # The followed bar redrawn in place with words instead of a figure
                # ("Reading package lists... Done"): it has ended, even short of 100%.
                if update.line == self._followed_line and self._followed_label \
                        and _label(update.text).startswith(self._followed_label):
                    self._followed_closed = True
                continue
            if event.percent is not None:
                self._followed_label = _label(update.text)
                self._followed_line = update.line
            if event.percent is not None and event.percent == self._last_percent \
                    and event.current == self._last_current:
                continue  # the same figure drawn again: nothing new to report
            self._last_percent, self._last_current = event.percent, event.current
            self.stats.events += 1
            events.append(event)
        return events

    def _update(self, text: str) -> ProgressEvent | None:
        parser = self.parser
        if not parser.may_hold_progress(text):
            return None
        fields, message = parser.envelope(text)
        if self._contexts and self._learn(message):
            self.stats.context += 1
        counted = self._count(message)
        if counted is not None:
            return self._event(counted, fields, text)
        if message.lstrip()[:1] == "{":
            event = parser.parse_line(text)
            return event if event is None or self._follows(("json", event.total), event) else None
        try:
            found = parser.match_update(message)
        except ValueError:  # the parser's _Rejected: numbers that break the rules
            self.stats.rejected += 1
            return None
        if found is None:
            return None
        name, values = found
        values = self._complete(values)
        if values is None:
            return None
        key = self._key(name, values)
        event = self._event((name, values), fields, text)
        if values.get("overall"):  # the tool's own whole-run counter: follow only it
            self._overall = key
            self._adopt(key, event.percent or 0.0)
            return event
        return event if self._follows(key, event) else None

    @staticmethod
    def _key(name: str, values: dict[str, Any]) -> tuple[Any, ...]:
        """What tells one bar from another: its format and total, else a drawn bar's name.

        The total comes first because descriptions change while a bar runs (Lightning
        renames "Training" to "Epoch 0"); nested bars almost always count different things.
        """
        total = values.get("total")
        if total is not None:
            return (name, total)
        return (name, None, _label(values.get("label") or "") if values.get("bar") else "")

    def _learn(self, message: str) -> bool:
        """Remember what a context line says (a duration, a total to count toward)."""
        for context in self._contexts:
            if not context.prefilter.found_in(message):
                continue
            match = context.regex.search(message)
            if match is None:
                continue
            groups = match.groupdict()
            if groups.get("duration"):
                self.duration = seconds(groups["duration"])
            if groups.get("total"):
                total = float(groups["total"])
                if context.count is not None:
                    self._counter, self._counted = (context, total), 0
                else:
                    self.total = total
            return True
        return False

    def _count(self, message: str) -> tuple[str, dict[str, Any]] | None:
        """One more item done, when a counting context is open and the line is one."""
        if self._counter is None:
            return None
        context, total = self._counter
        if context.count is None or context.count.search(message) is None:
            return None
        self._counted += 1
        done = min(self._counted, int(total))
        return context.name, {"percent": done / total * 100.0, "current": done,
                              "total": int(total), "message": message.strip()[:200]}

    def _complete(self, values: dict[str, Any]) -> dict[str, Any] | None:
        """Fill in a percent from what the stream knows: the duration, the caller's total."""
        if values.get("percent") is not None:
            return values
        position = values.get("time")
        if position is not None:
            if not self.duration:
                return None
            return {**values, "percent": min(100.0, max(0.0, position / self.duration * 100.0))}
        current = values.get("current")
        if current is None:
            return None
        if values.get("total") is None and self.total:
            total = self.total
            return {**values, "total": int(total), "percent": min(100.0, current / total * 100.0)}
        return values

    def _follows(self, key: tuple[Any, ...], event: ProgressEvent) -> bool:
        """Whether the job follows this bar: the first one, until it finishes or stalls."""
        if event.percent is None:  # a count without a total: no bar to follow yet
            return True
        if self._overall is not None and key != self._overall:
            self.stats.inner += 1
            return False
        percent = event.percent
        if not self.follow_outer or self._followed is None or key == self._followed:
            self._adopt(key, percent)
            return True
        if self._followed_percent >= 100.0 or self._followed_closed \
                or self._finishes_elsewhere >= _SWITCH_AFTER:
            self._adopt(key, percent)
            return True
        if percent >= 100.0:
            self._finishes_elsewhere += 1
        self.stats.inner += 1
        return False

    def _adopt(self, key: tuple[Any, ...], percent: float) -> None:
        self._followed = key
        self._followed_percent = percent
        self._finishes_elsewhere = 0
        self._followed_closed = False

    def _event(
        self, found: tuple[str, dict[str, Any]], fields: dict[str, Any], raw: str
    ) -> ProgressEvent:
        name, values = found
        get = fields.get
        return ProgressEvent(
            percent=values.get("percent"),
            current=values.get("current"),
            total=values.get("total"),
            message=values.get("message") or "",
            stage=values.get("stage"),
            timestamp=utc_now(),
            logger=get("logger"),
            level=get("level"),
            task_id=get("task_id"),
            process=get("process"),
            format=name,
            raw=raw,
        )


def _label(text: str) -> str:
    """A bar's name: the words it starts with, before its first figure or glyph."""
    lead = _LEAD.match(text)
    return _LABEL_NOISE.sub(" ", lead.group() if lead else "").strip().lower()[:40]
