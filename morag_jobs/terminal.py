"""Lines as terminals draw them: one redrawn line becomes the updates it showed, in order.

Progress bars redraw a line in place: with ``\\r`` (tqdm, curl, git, ffmpeg), with
backspaces (``\\b``, old spinners and counters), or with ANSI cursor moves and erases
(rich's live display, apt's status line, tqdm's nested bars). A log file or a pipe keeps
every redraw, so one "line" may hold hundreds of updates and escape sequences between
them. :class:`RedrawSplitter` replays such bytes on a one-line screen model and hands
out each update that became visible, so that the parser sees what a person watching
the terminal saw, one update at a time.

The model is deliberately small: a carriage return or a cursor move to another line
ends the visible update and starts a fresh one; a backspace or a column move ends it
too, and what follows overwrites it in place; erase sequences clear what they clear;
colours and every other escape are dropped. It is incremental (an escape sequence split
across two reads is kept until it is complete), and linear in its input.
"""

from __future__ import annotations

import re

__all__ = ["RedrawSplitter", "Update", "has_redraws", "redraws"]

# One control token: newline, carriage return, a run of backspaces, or an escape sequence
# (CSI with its parameters and final byte, OSC up to BEL/ST, or a two-byte escape).
_CONTROL = re.compile(
    r"\n|\r++|\x08++"
    r"|\x1b(?:\[(?P<params>[0-9;:?<=>]*+)[ -/]*+(?P<final>[@-~])"
    r"|\][^\x07\x1b\n]*+(?:\x07|\x1b\\)"
    r"|(?P<short>[@-Z\\^_78=>]))"
)
# An escape sequence cut off at the end of what was read so far: wait for the rest.
_PARTIAL_ESCAPE = re.compile(r"\x1b(?:\[[0-9;:?<=>]*+[ -/]*+|\][^\x07\x1b\n]*+|)\Z")
_MAX_PARTIAL = 512
"""An 'escape sequence' still open after this many characters is taken as text."""
MAX_UPDATE_CHARS = 16384
"""A line drawn longer than this without a redraw keeps only its end (linear time)."""
_NEW_LINE_MOVES = frozenset("ABEFHfdu")  # cursor up/down/next/prev line, position, restore
_COLUMN_MOVES = frozenset("DG`")  # cursor back, to column: overwrite in place
_CONTROL_CHARS = ("\r", "\x08", "\x1b")


def has_redraws(text: str) -> bool:
    """True when ``text`` holds anything that redraws (``\\r``, backspace, escapes)."""
    return "\r" in text or "\x08" in text or "\x1b" in text


def redraws(line: str) -> list[str]:
    """The visible updates of one complete line, in the order they were drawn."""
    if not has_redraws(line):
        stripped = line.strip()
        return [stripped] if stripped else []
    splitter = RedrawSplitter()
    updates = [update.text for update in splitter.feed(line)]
    updates.extend(update.text for update in splitter.close())
    return updates


class Update:
    """One visible state of a line: its text and the 1-based number of the line it is on."""

    __slots__ = ("line", "text")

    def __init__(self, text: str, line: int) -> None:
        self.text = text
        self.line = line

    def __repr__(self) -> str:
        return f"Update({self.text!r}, line={self.line})"


class RedrawSplitter:
    """Replays terminal output, handing out every update as soon as it is complete.

    An update is complete when something ends it (a newline, a carriage return, a
    backspace, a cursor move); the text still being drawn stays back until then, or
    until :meth:`close`. ``line`` counts newlines, so each update knows its line.
    """

    def __init__(self) -> None:
        self.line = 1
        self._buffer = ""
        self._cursor = 0
        self._partial = ""
        self._last = ""

    @property
    def pending(self) -> str:
        """The update still being drawn (what :meth:`close` would hand out)."""
        return self._buffer.strip()

    def feed(self, text: str) -> list[Update]:
        """Take the next piece of output; return the updates it completed."""
        out: list[Update] = []
        if self._partial:
            text = self._partial + text
            self._partial = ""
        if not has_redraws(text) and "\n" not in text:
            self._write(text)
            return out
        partial = _PARTIAL_ESCAPE.search(text, max(0, len(text) - _MAX_PARTIAL))
        if partial is not None:
            self._partial = text[partial.start() :]
            text = text[: partial.start()]
        position = 0
        for token in _CONTROL.finditer(text):
            if token.start() > position:
                self._write(text[position : token.start()])
            position = token.end()
            self._control(token, out)
        if position < len(text):
            self._write(text[position:])
        return out

    def close(self) -> list[Update]:
        """End of output: the update still being drawn is complete now."""
        out: list[Update] = []
        if self._partial:
            self._write(self._partial)
            self._partial = ""
        self._emit(out)
        return out

    # -- the screen model ------------------------------------------------------------------

    def _write(self, text: str) -> None:
        buffer, cursor = self._buffer, self._cursor
        if len(buffer) + len(text) > MAX_UPDATE_CHARS:  # no update is this long: keep the end
            keep = MAX_UPDATE_CHARS // 2
            cut = max(0, len(buffer) + len(text) - keep)
            buffer = (buffer + text)[cut:] if cursor >= len(buffer) else buffer[-keep:]
            self._buffer, self._cursor = buffer, len(buffer)
            return
        if cursor >= len(buffer):
            self._buffer = buffer + " " * (cursor - len(buffer)) + text
        else:
            self._buffer = buffer[:cursor] + text + buffer[cursor + len(text) :]
        self._cursor = cursor + len(text)

    def _emit(self, out: list[Update]) -> None:
        text = self._buffer.strip()
        if text and text != self._last:
            out.append(Update(text, self.line))
            self._last = text

    def _restart(self, out: list[Update]) -> None:
        self._emit(out)
        self._buffer = ""
        self._cursor = 0

    def _control(self, token: re.Match[str], out: list[Update]) -> None:
        first = token.group()[0]
        if first == "\n":
            self._restart(out)
            self.line += 1
            self._last = ""
        elif first == "\r":
            self._restart(out)
        elif first == "\x08":
            self._emit(out)
            self._cursor = max(0, self._cursor - len(token.group()))
        else:
            self._escape(token, out)

    def _escape(self, token: re.Match[str], out: list[Update]) -> None:
        final = token.group("final")
        if final is None:
            if token.group("short") in ("8", "E", "M"):  # restore cursor, next line, up
                self._restart(out)
            return
        if final in _NEW_LINE_MOVES or final == "J":
            self._restart(out)
        elif final in _COLUMN_MOVES:
            self._emit(out)
            count = _first_number(token.group("params"), 1)
            self._cursor = max(0, count - 1 if final != "D" else self._cursor - count)
        elif final == "C":
            self._cursor += _first_number(token.group("params"), 1)
        elif final == "K":
            mode = _first_number(token.group("params"), 0)
            if mode == 0:
                self._buffer = self._buffer[: self._cursor]
            elif mode == 1:
                self._buffer = " " * self._cursor + self._buffer[self._cursor :]
            else:
                self._emit(out)
                self._buffer = ""


def _first_number(params: str | None, default: int) -> int:
    head = (params or "").split(";", 1)[0].lstrip("?")
    return int(head) if head.isdigit() else default
