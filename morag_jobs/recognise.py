"""The general progress recogniser: the shapes progress takes, and the cues around them.

Real programs print progress in a handful of shapes: a percent (``45%``, ``45.3 %``), a
count (``450/1000``, ``450 of 1000``, ``45 out of 100``) or an amount against a total
(``1.2/5.0 MB``, ``1.20M/5.00M``, ``256.0 KiB/1.0 MiB``). What tells progress from the
many other numbers a log holds (``CPU 45%``, ``accuracy 92.5%``, ``Retry 2 of 5``,
``3/4 replicas``, a coverage table) is the company it keeps: a bar, a rate (``MB/s``,
``it/s``, ``ms/step``), an ETA or elapsed time, a verb such as *Receiving* or *Building*,
a bracketed position at the start or end of the line; and, next to the number, no word
that says it measures something else.

This module finds the shapes and weighs the cues. The cue words, the refusal words and
the cue expressions are data (the ``[recogniser]`` table of the packs in ``parsers/``),
so a tool nobody listed is understood by its shape, and a user tunes the recogniser by
adding words to a pack of their own, without code. Every expression here is linear in
the length of its input.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path
from typing import Any

from morag_jobs.errors import PatternPackError

__all__ = ["Recogniser", "RecogniserRules", "Shape", "build_rules"]

# The shapes, found from their one literal character outward ("%", "/", " of "), so a
# line costs a few C-speed finds rather than a regex tried at every position. Numbers
# must stand alone: not glued to letters, other digits, a decimal point or a slash (so
# "%20" in a URL, "2026/11/29", "v1.2/3" and "x=3/5" are not shapes).
_UNIT = r"(?:[kKMGTPE]i?B?|[kKMGTPE]iB|B|bytes?|[kMG]b)"
_PERCENT_NUMBER = re.compile(r"(\d{1,3}+(?:[.,]\d{1,3}+)?)[ \t]?+\Z")
_BEFORE_SLASH = re.compile(rf"(\d++(?:[.,]\d++)?)[ \t]?+({_UNIT})?[ \t]*+\Z")
_AFTER_SLASH = re.compile(rf"[ \t]*+(\d++(?:[.,]\d++)?)(?:[ \t]?+({_UNIT})(?![\w/]))?")
_BEFORE_OF = re.compile(r"(\d++)(?:[ \t]++out)?\Z")
_AFTER_OF = re.compile(r" of[ \t]++(\d++)")
_NOT_BEFORE_PERCENT = frozenset("._,/%=+-")
_NOT_BEFORE_COUNT = frozenset("._,/:=+#-")
_NOT_AFTER_COUNT = frozenset("._,/%-")
TRIGGERS = ("%", r"/(?:(?<=[\dBbkKMGTPEi]/)|(?<=[\dBbkKMGTPEi)][ \t]/))[ \t]*+\d",
            r" of\s+\d")
"""What every line holding a shape contains: what :meth:`parse_chunk` scans blocks for.

Each starts with a literal character, so a block is scanned at C speed."""

_POWERS = "kmgtpe"
_BINARY = 1024.0
_WORD = re.compile(r"[^\W\d_]{2,}+")
_EDGE_BEFORE = re.compile(r"[\s\[(]*+\Z")
_EDGE_AFTER = re.compile(r"[\s\])]*+\Z")
# "A / B = 0.38", "=> 41.25%": the number is the result of a computation (a ratio).
_EQUATION_BEFORE = re.compile(r"=>?[ \t]*+\Z")
_EQUATION_AFTER = re.compile(r"[ \t]*+=(?!>)")
_FIELD_BREAK = re.compile(r"[|,;()\[\]{}\t]| - | — |\s{3,}")
WINDOW = 32
"""How many characters either side of a number its refusal words are looked for in."""
MAX_SHAPES = 16
"""A line with more numbers than this is a table or a dump: only its first ones are read."""
_SAME_QUANTITY = "the same quantity as a refused number"


@dataclass(frozen=True, slots=True)
class Cue:
    """Something in an update that makes its numbers more likely to be progress."""

    name: str
    regex: re.Pattern[str]
    weight: int


@dataclass(frozen=True, slots=True)
class RecogniserRules:
    """The recogniser's data, merged from every pack's ``[recogniser]`` table."""

    threshold: int = 2
    cues: tuple[Cue, ...] = ()
    cue_words: frozenset[str] = frozenset()
    cue_word_weight: int = 2
    refusal_words: frozenset[str] = frozenset()
    count_units: frozenset[str] = frozenset()
    count_unit_weight: int = 2
    bracket_weight: int = 1
    edge_weight: int = 1
    agreement_weight: int = 2
    examples: tuple[Mapping[str, Any], ...] = ()
    origins: tuple[str, ...] = ()

    def merged(self, path: Path, table: Any) -> RecogniserRules:
        """These rules with a pack's ``[recogniser]`` table added: lists grow, numbers replace."""
        if not isinstance(table, dict):
            raise PatternPackError(path, "[recogniser] must be a table", "recogniser")
        values: dict[str, Any] = {}
        for key, value in table.items():
            if key in _REMOVALS:
                continue
            if key in _WORD_LISTS:
                values[key] = getattr(self, key) | _words(path, key, value)
            elif key in _NUMBERS:
                if not isinstance(value, int) or isinstance(value, bool):
                    raise PatternPackError(path, f"[recogniser] {key} must be an integer",
                                           "recogniser")
                values[key] = value
            elif key == "cue":
                values["cues"] = self.cues + tuple(_cue(path, item) for item in _list(path, value))
            elif key == "examples":
                values["examples"] = self.examples + tuple(_list(path, value))
            else:
                raise PatternPackError(path, f"unknown [recogniser] key {key!r}", "recogniser")
        for key in ("cue_words", "refusal_words", "count_units"):
            remove = table.get(f"remove_{key}")
            if remove is not None:
                values[key] = values.get(key, getattr(self, key)) - _words(path, key, remove)
        values["origins"] = (*self.origins, str(path))
        return _replace(self, values)


_WORD_LISTS = frozenset({"cue_words", "refusal_words", "count_units"})
_NUMBERS = frozenset({"threshold", "cue_word_weight", "count_unit_weight", "bracket_weight",
                      "edge_weight", "agreement_weight"})
_REMOVALS = frozenset(f"remove_{key}" for key in _WORD_LISTS)


def _replace(rules: RecogniserRules, values: dict[str, Any]) -> RecogniserRules:
    current = {name: getattr(rules, name) for name in RecogniserRules.__dataclass_fields__}
    current.update(values)
    return RecogniserRules(**current)


def _list(path: Path, value: Any) -> list[Any]:
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise PatternPackError(path, "[recogniser] cue and examples are lists of tables",
                               "recogniser")
    return value


def _words(path: Path, key: str, value: Any) -> frozenset[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise PatternPackError(path, f"[recogniser] {key} must be a list of words", "recogniser")
    return frozenset(word.lower() for word in value)


def _cue(path: Path, item: dict[str, Any]) -> Cue:
    name, source, weight = item.get("name"), item.get("regex"), item.get("weight", 1)
    if not isinstance(name, str) or not isinstance(source, str) or not isinstance(weight, int):
        raise PatternPackError(path, "a cue needs a 'name', a 'regex' and an integer 'weight'",
                               "recogniser")
    try:
        return Cue(name, re.compile(source), weight)
    except re.error as error:
        raise PatternPackError(path, f"cue regex does not compile: {error}", name) from error


@dataclass(slots=True)
class Shape:
    """A number that may be progress, with what was found around it."""

    kind: str  # "percent", "count" or "amount"
    start: int
    end: int
    percent: float | None = None
    current: int | None = None
    total: int | None = None
    score: int = 0
    refused: str | None = None
    label: str = ""
    bar: bool = False
    unit: str = ""


class Recogniser:
    """Finds the progress in one visible update (no ``\\r``, no escapes) by shape and cues."""

    def __init__(self, rules: RecogniserRules) -> None:
        self.rules = rules
        self._cue_words = rules.cue_words
        self._refusals = rules.refusal_words
        self._units = rules.count_units

    def shapes(self, text: str) -> list[Shape]:
        """Every shape in ``text``, scored; refused ones carry the word that refused them."""
        found = _find_shapes(text)
        if not found:
            return []
        words = _WORD.findall(text.lower())
        if not self._refusals.isdisjoint(words) or '"' in text or "=" in text:
            for shape in found:
                self._refuse(text, shape)
            if all(shape.refused is not None for shape in found):
                return found  # every number here measures something else: no cue can help
        common, bar = self._common_score(text, words)
        for shape in found:
            if shape.refused is None:
                self._score(text, shape, common)
            shape.bar = bar
        agreeing = self.rules.agreement_weight
        # Two shapes that say one figure stand side by side, so only neighbours are
        # compared: "5.0MiB/5.7MiB(87%)", "45% (450/1000)" agree; "fill 75% (768/1024
        # entries)" is one quantity said twice, refused as a whole.
        for before, after in pairwise(found):
            for shape, other in ((before, after), (after, before)):
                if shape.refused is None and _agree(text, shape, other):
                    shape.score += agreeing
        for before, after in pairwise(found):
            for shape, other in ((before, after), (after, before)):
                if shape.refused is None and other.refused is not None \
                        and shape.percent is not None and other.percent is not None \
                        and abs(shape.percent - other.percent) <= 1.5 \
                        and other.refused != _SAME_QUANTITY:
                    shape.refused = _SAME_QUANTITY
        return found

    def find(self, text: str) -> dict[str, Any] | None:
        """The progress in ``text`` as parser values, or None when nothing passes."""
        best: Shape | None = None
        shapes = self.shapes(text)
        threshold = self.rules.threshold
        for shape in shapes:
            passes = shape.refused is None and shape.score >= threshold
            if passes and shape.percent is not None and (
                best is None or _RANK[shape.kind] < _RANK[best.kind]
            ):
                best = shape
        if best is None:
            return None
        current, total = best.current, best.total
        if best.kind == "percent":
            for other in shapes:
                if other.kind == "count" and other.refused is None and other.percent is not None \
                        and abs(other.percent - best.percent) <= 1.5:  # type: ignore[operator]
                    current, total = other.current, other.total
                    break
        message = best.label or text.strip()
        return {"percent": best.percent, "current": current, "total": total,
                "message": message[:200], "stage": None, "label": text,
                "bar": best.bar}

    # -- scoring -----------------------------------------------------------------------

    def _common_score(self, text: str, words: list[str]) -> tuple[int, bool]:
        """The weight of the cues anywhere in ``text``, and whether one was a drawn bar."""
        score = 0
        bar = False
        for cue in self.rules.cues:
            if cue.regex.search(text) is not None:
                score += cue.weight
                bar = bar or cue.name == "bar"
        if not self._cue_words.isdisjoint(words):
            score += self.rules.cue_word_weight
        return score, bar

    def _refuse(self, text: str, shape: Shape) -> None:
        """Refuse a number that its neighbours say measures something else."""
        before = text[max(0, shape.start - WINDOW) : shape.start]
        after = text[shape.end : shape.end + WINDOW]
        field_before = _FIELD_BREAK.split(before)[-1]
        field_after = _FIELD_BREAK.split(after, maxsplit=1)[0]
        words_after = _WORD.findall(field_after.lower())[:2]
        for word in (*_WORD.findall(field_before.lower())[-3:], *words_after):
            if word in self._refusals:
                shape.refused = word
                return
        if field_before.count('"') % 2 and '"' in field_after:
            shape.refused = "inside a quoted string"
        elif _EQUATION_BEFORE.search(before) or _EQUATION_AFTER.match(after):
            shape.refused = "a computed value (a ratio), not progress"

    def _score(self, text: str, shape: Shape, common: int) -> None:
        rules = self.rules
        before = text[max(0, shape.start - WINDOW) : shape.start]
        after = text[shape.end : shape.end + WINDOW]
        score = common
        if shape.kind != "percent" and _first_word(after) in self._units:
            score += rules.count_unit_weight
        at_start = _EDGE_BEFORE.fullmatch(text, 0, shape.start) is not None
        at_end = _EDGE_AFTER.fullmatch(text, shape.end) is not None
        score += rules.edge_weight * (at_start + at_end)  # a number alone on its line: both
        if shape.kind != "count" and before.rstrip(" \t")[-1:] in ("[", "(") \
                and after.lstrip(" \t")[:1] in ("]", ")"):  # "[ 45%]", "[ 17.1 KiB/ 17.1 KiB]"
            score += rules.bracket_weight
        shape.score = score
        shape.label = _label(text[: shape.start])


_RANK = {"percent": 0, "count": 1, "amount": 2}
_FIRST_WORD = re.compile(r"[ \t]*+([^\W\d_]{2,}+)")


def _first_word(after: str) -> str:
    """The word right after a number ("450/1000 items" -> "items"), lower-cased."""
    match = _FIRST_WORD.match(after)
    return match.group(1).lower() if match else ""
_BETWEEN = re.compile(r"[\s(\[,]*+")


def _agree(text: str, shape: Shape, other: Shape) -> bool:
    """Two shapes side by side that say the same figure (not 0 or 100, which any may say)."""
    if other is shape or other.kind == shape.kind or other.refused is not None:
        return False
    if shape.percent is None or other.percent is None or not 0 < shape.percent < 100:
        return False
    first, second = (shape, other) if shape.start < other.start else (other, shape)
    return abs(shape.percent - other.percent) <= 1.5 and \
        _BETWEEN.fullmatch(text, first.end, second.start) is not None


def _label(before: str) -> str:
    """The description before a number: "Receiving objects:  45%" -> "Receiving objects"."""
    parts = _FIELD_BREAK.split(before)
    for part in reversed(parts):
        cleaned = part.strip(" \t:.=-_>#")
        if _WORD.search(cleaned):
            return cleaned[-80:]
    return ""


def _alone(text: str, start: int, refused: frozenset[str]) -> bool:
    """Whether the number starting at ``start`` stands alone on its left."""
    if start == 0:
        return True
    before = text[start - 1]
    return not (before.isalnum() or before in refused)


def _find_shapes(text: str) -> list[Shape]:
    found = [*_percents(text), *_slashes(text), *_counts_of(text)]
    if len(found) > 1:
        found.sort(key=lambda shape: shape.start)
    return found[:MAX_SHAPES]


def _percents(text: str) -> list[Shape]:
    found = []
    size = len(text)
    index = text.find("%")
    while index >= 0:
        match = _PERCENT_NUMBER.search(text, max(0, index - 12), index)
        after = text[index + 1 : index + 2]
        if match is not None and _alone(text, match.start(), _NOT_BEFORE_PERCENT) and not (
            after.isalnum() or after in ("%", "_")
        ):
            value = float(match.group(1).replace(",", "."))
            found.append(Shape("percent", match.start(), min(index + 1, size),
                               percent=value if value <= 100.0 else None))
            if len(found) >= MAX_SHAPES:
                break
        index = text.find("%", index + 1)
    return found


def _slashes(text: str) -> list[Shape]:
    found = []
    index = text.find("/")
    while index >= 0:
        left = text[index - 1 : index] if index else ""
        if not (left.isalnum() or left in (" ", "\t")):  # "(/", "//": no number ends here
            index = text.find("/", index + 1)
            continue
        before = _BEFORE_SLASH.search(text, max(0, index - 24), index)
        after = _AFTER_SLASH.match(text, index + 1) if before is not None else None
        if before is not None and after is not None:
            shape = _slash_shape(text, before, after)
            if shape is not None:
                found.append(shape)
                if len(found) >= MAX_SHAPES:
                    break
        index = text.find("/", index + 1)
    return found


def _slash_shape(text: str, before: re.Match[str], after: re.Match[str]) -> Shape | None:
    start, end = before.start(), after.end()
    amount, amount_unit = before.group(1), before.group(2)
    whole, whole_unit = after.group(1), after.group(2)
    if whole_unit:  # an amount against a total: 1.2/5.0 MB, 1.20M/5.00M
        if not _alone(text, start, _NOT_BEFORE_COUNT):
            return None
        done, total = _bytes(amount, amount_unit or whole_unit), _bytes(whole, whole_unit)
        valid = total > 0 and done <= total * 1.0001
        return Shape("amount", start, end,
                     percent=min(100.0, done / total * 100.0) if valid else None)
    following = text[end : end + 2]
    if amount_unit or not amount.isdigit() or not whole.isdigit() \
            or not _alone(text, start, _NOT_BEFORE_COUNT) \
            or following[:1].isalnum() or following[:1] in _NOT_AFTER_COUNT \
            or (following[:1] == ":" and following[1:2].isdigit()):
        return None
    return _count(start, end, int(amount), int(whole))


def _counts_of(text: str) -> list[Shape]:
    found = []
    index = text.find(" of ")
    while index >= 0:
        before = _BEFORE_OF.search(text, max(0, index - 24), index)
        after = _AFTER_OF.match(text, index)
        if before is not None and after is not None and _alone(
            text, before.start(), _NOT_BEFORE_COUNT
        ):
            following = text[after.end() : after.end() + 1]
            if not (following.isalnum() or following in _NOT_AFTER_COUNT):
                found.append(_count(before.start(), after.end(), int(before.group(1)),
                                    int(after.group(1))))
                if len(found) >= MAX_SHAPES:
                    break
        index = text.find(" of ", index + 1)
    return found


def _count(start: int, end: int, done: int, whole: int) -> Shape:
    valid = whole > 0 and done <= whole
    return Shape("count", start, end, percent=done / whole * 100.0 if valid else None,
                 current=done, total=whole)


def _bytes(number: str, unit: str | None) -> float:
    if "," in number and ("." in number or len(number) - number.index(",") == 4):
        value = float(number.replace(",", ""))  # 1,024 or 1,234.5: thousands separators
    else:
        value = float(number.replace(",", "."))
    lowered = (unit or "").lower()
    if not lowered or lowered[0] not in _POWERS:
        return value
    base = _BINARY if lowered[1:2] == "i" else 1000.0
    return value * base ** (_POWERS.index(lowered[0]) + 1)


def build_rules(tables: Iterable[tuple[Path, Any]]) -> RecogniserRules:
    """Fold every pack's ``[recogniser]`` table, in load order, into one set of rules."""
    rules = RecogniserRules()
    for path, table in tables:
        rules = rules.merged(path, table)
    return rules
