"""ProgressEventParser: formats, precision, robustness and the seed's API."""

from __future__ import annotations

import json
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from morag_jobs import PatternPackError, ProgressEvent, ProgressEventParser
from morag_jobs.packs import builtin_pack_dir, load_packs
from morag_jobs.streams import ProgressStream

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "logs"
BUILTIN = load_packs([builtin_pack_dir()])
EVENT_FIELDS = {"percent", "current", "total", "message", "stage", "timestamp", "logger",
                "level", "task_id", "worker_id", "process", "job_id", "format"}


@pytest.fixture
def parser() -> ProgressEventParser:
    return ProgressEventParser(use_environment=False)


def _examples() -> Iterator[Any]:
    for pattern in BUILTIN.patterns:
        for example in pattern.examples:
            yield pytest.param(example, id=f"{pattern.name}:{example['line'][:40]}")
    for prefix in BUILTIN.prefixes:
        for example in prefix.examples:
            yield pytest.param(example, id=f"{prefix.name}:{example['line'][:40]}")
    for example in BUILTIN.json.examples:
        yield pytest.param(example, id=f"json:{example['line'][:40]}")
    for example in BUILTIN.recogniser.examples:
        yield pytest.param(example, id=f"recogniser:{example['line'][:40]}")


def _parse_example(parser: ProgressEventParser, example: dict[str, Any]) -> ProgressEvent | None:
    """An example's event: a lone line through parse_line, one with a context line
    (what it is measured against) through a stream, as run_with_progress reads it."""
    if "context" not in example:
        return parser.parse_line(example["line"])
    stream = ProgressStream(parser)
    events = stream.feed(example["context"] + "\n" + example["line"] + "\n") + stream.close()
    return events[-1] if events else None


def _check_expected(event: ProgressEvent | None, expected: dict[str, Any]) -> None:
    if expected.get("match") is False:
        assert event is None, f"{expected['line']!r} is not progress, got {event}"
        return
    assert event is not None, f"{expected['line']!r} should give an event"
    for key, value in expected.items():
        if key in ("line", "match", "context"):
            continue
        actual = getattr(event, key)
        if key == "timestamp":
            actual = actual.isoformat()
        assert actual == value, f"{expected['line']!r}: {key} is {actual!r}, expected {value!r}"


class TestPatternPacks:
    @pytest.mark.parametrize("example", list(_examples()))
    def test_every_shipped_example_parses_as_its_pack_says(
        self, parser: ProgressEventParser, example: dict[str, Any]
    ) -> None:
        _check_expected(_parse_example(parser, example), example)

    def test_every_shipped_pattern_has_examples(self) -> None:
        bare = [p.name for p in BUILTIN.patterns if not p.examples]
        assert not bare, f"patterns without examples: {bare}"

    def test_a_users_pack_adds_a_format(self, tmp_path: Path) -> None:
        (tmp_path / "ffmpeg.toml").write_text(
            "[[pattern]]\nname = 'ffmpeg.done'\n"
            "regex = '^done (?P<percent>\\d+) pct$'\nprefilter = 'done'\n"
        )
        parser = ProgressEventParser([tmp_path], use_environment=False)
        event = parser.parse_line("done 42 pct")
        assert event is not None and event.percent == 42.0 and event.format == "ffmpeg.done"

    def test_a_users_pattern_replaces_a_builtin_one_of_the_same_name(
        self, tmp_path: Path
    ) -> None:
        (tmp_path / "override.toml").write_text(
            "[[pattern]]\nname = 'morag.ellipsis'\n"
            "regex = '^Working\\.\\.\\. (?P<percent>\\d+)%'\ntrigger = '%'\n"
        )
        parser = ProgressEventParser([tmp_path], use_environment=False)
        replaced = parser.parse_line("Processing... 75%")
        assert replaced is not None and replaced.format == "generic", (
            "the built-in ellipsis pattern is gone; the general recogniser still reads the line"
        )
        assert parser.parse_line("Working... 75%").format == "morag.ellipsis"  # type: ignore[union-attr]

    def test_pattern_dirs_come_from_the_environment(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        (tmp_path / "env.toml").write_text(
            "[[pattern]]\nname = 'env.x'\nregex = '^ENV (?P<percent>\\d+)'\nprefilter = 'ENV'\n"
        )
        monkeypatch.setenv("MORAG_PATTERN_DIRS", str(tmp_path))
        assert ProgressEventParser().parse_line("ENV 7").percent == 7.0  # type: ignore[union-attr]

    @pytest.mark.parametrize(
        ("content", "message"),
        [
            ("[[pattern", "is not valid TOML"),
            ("[[pattern]]\nname = 'p'\n", r"\[p\]: needs a non-empty 'regex'"),
            ("[[pattern]]\nname = 'p'\nregex = '(?P<percent>\\d+'\n", r"\[p\]: regex does not"),
            ("[[pattern]]\nname = 'p'\nregex = '(?P<pct>\\d+)'\n",
             r"unknown named groups \['pct'\]"),
            ("[[pattern]]\nname = 'p'\nregex = '(?P<message>x)'\n", "needs a 'percent', 'current'"),
            ("[[pattern]]\nname = 'p'\nregex = '(?P<percent>x)'\nprio = 1\n",
             r"unknown keys \['prio'\]"),
            ("[[pattern]]\nregex = '(?P<percent>x)'\n", "needs a 'name'"),
            ("[[prefix]]\nname = 'x'\nregex = '(?P<level>x)'\n", "needs a 'message' group"),
            ("[json]\nmessage = 'event'\n", "must be a list of field names"),
            ("[mystery]\n", r"unknown top-level keys \['mystery'\]"),
        ],
    )
    def test_a_broken_pack_fails_fast_naming_file_and_pattern(
        self, tmp_path: Path, content: str, message: str
    ) -> None:
        pack = tmp_path / "broken.toml"
        pack.write_text(content)
        with pytest.raises(PatternPackError, match=message) as caught:
            ProgressEventParser([tmp_path], use_environment=False)
        assert str(pack) in str(caught.value)

    def test_a_missing_pattern_dir_is_an_error(self, tmp_path: Path) -> None:
        with pytest.raises(PatternPackError, match="is not a directory"):
            ProgressEventParser([tmp_path / "nope"], use_environment=False)


def _fixture_cases() -> list[Any]:
    return [pytest.param(p, id=p.stem) for p in sorted(FIXTURES.glob("*.log"))]


class TestFixtureLogs:
    @pytest.mark.parametrize("log", _fixture_cases())
    @pytest.mark.parametrize("path", ["chunk", "line"])
    def test_sample_log_gives_exactly_the_expected_events(
        self, parser: ProgressEventParser, log: Path, path: str
    ) -> None:
        started = datetime.now(UTC) - timedelta(seconds=1)
        with log.open(encoding="utf-8", newline="") as handle:  # keep '\r' as tqdm wrote it
            text = handle.read()
        if path == "chunk":
            events = parser.parse_chunk(text)
        else:
            events = parser.parse_log_stream(text.removesuffix("\n").split("\n"))
        expected = [json.loads(line) for line in
                    log.with_suffix(".expected.jsonl").read_text(encoding="utf-8").splitlines()]
        actual = []
        for event in events:
            data = {k: v for k, v in event.to_dict().items() if k != "raw"}
            if event.timestamp >= started:
                data["timestamp"] = None  # arrival time: the line carries none
            actual.append(data)
        assert actual == expected

    def test_false_positives_are_counted_not_returned(self, parser: ProgressEventParser) -> None:
        text = (FIXTURES / "false_positives.log").read_text(encoding="utf-8")
        assert parser.parse_chunk(text) == []
        stats = parser.stats
        assert stats.lines == len(text.splitlines())
        assert stats.skipped == stats.lines
        assert stats.rejected >= 5, "out-of-range percentages are counted as rejected"


class TestPrecision:
    @pytest.mark.parametrize(
        "line",
        [
            "CPU usage 95%",
            "Memory usage at 46% of limit",
            "Model accuracy: 92.5%",
            "Disk /var is 80% full",
            "Discount of 20% applied",
            "GET /a%20b.pdf",
            "Progress: 150% - overshoot",
            "Progress: -5% - negative",
            "Processing file 1200 of 1000",
        ],
    )
    def test_lines_that_merely_mention_a_percentage_are_not_progress(
        self, parser: ProgressEventParser, line: str
    ) -> None:
        assert parser.parse_line(line) is None

    def test_decimals_are_kept(self, parser: ProgressEventParser) -> None:
        assert parser.parse_line("Progress: 45.5% - x").percent == 45.5  # type: ignore[union-attr]

    def test_the_last_carriage_return_update_wins(self, parser: ProgressEventParser) -> None:
        line = "\r 10%|#   | 1/10 [00:01<00:09]\r 20%|##  | 2/10 [00:02<00:08]\r"
        event = parser.parse_line(line)
        assert event is not None and (event.percent, event.current) == (20.0, 2)

    def test_ansi_colour_codes_are_stripped(self, parser: ProgressEventParser) -> None:
        event = parser.parse_line("\x1b[1;32mProgress: 45% - \x1b[0mConverting video\x1b[0m")
        assert event is not None and event.message == "Converting video"

    def test_celery_prefix_gives_time_level_process_and_task(
        self, parser: ProgressEventParser
    ) -> None:
        event = parser.parse_line(
            "[2026-11-22 12:00:00,123: INFO/ForkPoolWorker-3] app.tasks.ingest"
            "[5a0e9c1e-1b2b-4c3c-8d4d-9e5e6f7a8b9c]: Step 3/10"
        )
        assert event is not None
        assert event.timestamp == datetime(2026, 11, 22, 12, 0, 0, 123000, tzinfo=UTC)
        assert (event.level, event.process, event.logger) == (
            "INFO", "ForkPoolWorker-3", "app.tasks.ingest")
        assert event.task_id == "5a0e9c1e-1b2b-4c3c-8d4d-9e5e6f7a8b9c"
        assert (event.current, event.total, event.percent) == (3, 10, 30.0)

    @pytest.mark.parametrize(
        ("fields", "percent"),
        [({"progress": 0.5}, 50.0), ({"progress": 42}, 42.0), ({"percentage": 7.5}, 7.5),
         ({"percent": "12%"}, 12.0), ({"current": 1, "total": 4}, 25.0)],
    )
    def test_json_fields_carry_progress(
        self, parser: ProgressEventParser, fields: dict[str, Any], percent: float
    ) -> None:
        event = parser.parse_line(json.dumps({"event": "work", **fields, "job_id": "j1"}))
        assert event is not None and event.percent == percent and event.job_id == "j1"

    @pytest.mark.parametrize("value", ["NaN", "Infinity", "-1", "101", "true", '"x"'])
    def test_json_fields_out_of_range_are_rejected(
        self, parser: ProgressEventParser, value: str
    ) -> None:
        assert parser.parse_line(f'{{"event": "x", "percent": {value}}}') is None
        assert parser.stats.rejected == 1


class TestSeedApi:
    def test_parse_json_log_reads_the_seed_example(self, parser: ProgressEventParser) -> None:
        event = parser.parse_json_log(
            '{"event": "Processing progress: Audio processing (75%)", '
            '"timestamp": "2025-06-11T11:26:50.780725Z"}'
        )
        assert event is not None
        assert (event.percentage, event.message) == (75.0, "Audio processing")
        assert event.timestamp == datetime(2025, 6, 11, 11, 26, 50, 780725, tzinfo=UTC)

    def test_parse_json_log_ignores_plain_text(self, parser: ProgressEventParser) -> None:
        assert parser.parse_json_log("Processing... 75%") is None

    def test_parse_plain_text_log_reads_the_seed_example(
        self, parser: ProgressEventParser
    ) -> None:
        event = parser.parse_plain_text_log("Processing... 75%")
        assert event is not None and event.percent == 75.0

    def test_parse_log_stream_keeps_order(self, parser: ProgressEventParser) -> None:
        events = parser.parse_log_stream(["Progress: 10%", "noise", "Progress: 20%"])
        assert [e.percent for e in events] == [10.0, 20.0]

    def test_get_latest_progress_is_latest_by_timestamp_across_naive_and_aware(
        self, parser: ProgressEventParser
    ) -> None:
        lines = [
            '{"event": "Processing... 90%", "timestamp": "2026-11-22T12:00:05"}',
            '{"event": "Processing... 40%", "timestamp": "2026-11-22T12:00:01Z"}',
            '{"event": "Processing... 60%", "timestamp": "2026-11-22T13:00:02+02:00"}',
        ]
        latest = parser.get_latest_progress(lines)
        assert latest is not None and latest.percent == 90.0

    def test_get_latest_progress_of_nothing_is_none(self, parser: ProgressEventParser) -> None:
        assert parser.get_latest_progress(["no progress here"]) is None


@contextmanager
def hang_guard(seconds: int) -> Iterator[None]:
    """Fail instead of hanging: catastrophic backtracking takes minutes, not seconds."""

    def _timeout(*_: object) -> None:
        raise AssertionError(f"parsing took more than {seconds}s: super-linear regex?")

    previous = signal.signal(signal.SIGALRM, _timeout)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


class TestRobustness:
    @pytest.mark.parametrize(
        "line",
        [
            b"\xff\xfe\xfd Progress: 50%",
            "Progress: 5\x000%",
            "[" * 200_000,
            "{" + '"a":{' * 100_000,
            "[" * 100_000 + "]" * 100_000,
            "42",
            "[1, 2, 3]",
            '"Processing... 75%"',
            "{" + ", ".join(f'"k{i}": {i}' for i in range(50_000)) + ', "percent": 5}',
        ],
        ids=["invalid-utf8", "nul", "brackets", "deep-json", "deep-list", "number", "list",
             "json-string", "huge-json"],
    )
    def test_hostile_lines_never_raise(self, parser: ProgressEventParser, line: Any) -> None:
        parser.parse_line(line)
        parser.parse_chunk(line)
        assert parser.stats.lines == 2

    @pytest.mark.parametrize(
        "line",
        [
            "Processing progress: " + "(" * 1_000_000,
            "Processing" + " " * 1_000_000 + "... 5%",
            "1" * 1_000_000 + "%",
            "Audio: " + "1" * 1_000_000 + "% x",
            "[" + " " * 1_000_000 + "5%",
            "Processing " + "1 of " * 200_000,
            "Step " + "1/" * 500_000,
            "5%|" + "|" * 1_000_000,
            "[2026-11-22 12:00:00,123: INFO/" + "a" * 1_000_000,
            "\r".join(["Progress: 1%"] * 100_000),
            "x" * 1_000_000 + " 50%",
        ],
        ids=lambda line: repr(line[:24]),
    )
    def test_megabyte_lines_take_linear_time(
        self, parser: ProgressEventParser, line: str
    ) -> None:
        with hang_guard(20):
            parser.parse_line(line)
            parser.parse_chunk(line)

    @settings(max_examples=300, suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(st.one_of(st.text(), st.binary()))
    def test_any_input_never_raises_and_every_line_is_counted(
        self, parser: ProgressEventParser, line: str | bytes
    ) -> None:
        before = parser.stats.lines
        parser.parse_line(line)
        stats = parser.stats
        assert stats.lines == before + 1
        assert stats.lines == stats.events + stats.no_match + stats.rejected + stats.malformed


PROGRESSISH = st.sampled_from([
    "Processing... 75%", "Progress: 45% - x", "Stage: a (5%)", "[5%] y", "Step 3/10",
    "450/1000 items", " 45%|##  | 45/100 [00:01<00:01]", "450it [00:01, 1it/s]",
    '{"percent": 5}', '{"event": "Processing... 9%"}', "CPU 95%", "\r", "\x1b[1m",
    "[2026-11-22 12:00:00,123: INFO/W-1] t[abc]: ", "Page 2 of 9", "/", "%", "{",
])


class TestChunkPath:
    @settings(max_examples=300)
    @given(st.lists(st.lists(st.one_of(PROGRESSISH, st.text(max_size=12)), max_size=4)
                    .map("".join), max_size=12))
    def test_parse_chunk_finds_what_parse_line_finds(self, lines: list[str]) -> None:
        parser = ProgressEventParser(use_environment=False)
        lines = [line.replace("\n", " ") for line in lines]
        text = "".join(line + "\n" for line in lines)
        by_line = [e for e in map(ProgressEventParser(use_environment=False).parse_line, lines)
                   if e is not None]
        by_chunk = parser.parse_chunk(text)

        def comparable(events: list[ProgressEvent]) -> list[tuple[Any, ...]]:
            return [(e.percent, e.current, e.total, e.message, e.stage, e.format, e.raw)
                    for e in events]

        assert comparable(by_chunk) == comparable(by_line)
        assert parser.stats.lines == len(lines)

    def test_a_trailing_line_without_newline_is_parsed(self, parser: ProgressEventParser) -> None:
        events = parser.parse_chunk("noise\nProgress: 10%\nProgress: 20%")
        assert [e.percent for e in events] == [10.0, 20.0]
        assert parser.stats.lines == 3

    def test_bytes_chunks_are_decoded(self, parser: ProgressEventParser) -> None:
        events = parser.parse_chunk(b"Progress: 10%\n\xff\n")
        assert [e.percent for e in events] == [10.0]


def _readme_packs() -> list[str]:
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
    return [block.split("```", 1)[0] for block in readme.split("```toml\n")[1:]]


def test_the_readme_tuning_example_is_a_working_pack(tmp_path: Path) -> None:
    """The [recogniser] table shown in the README adds the words it says it adds."""
    (block,) = [b for b in _readme_packs() if "[recogniser]" in b]
    (tmp_path / "tuning.toml").write_text(block)
    line = "Vectorising 45% of the corpus"
    assert ProgressEventParser(use_environment=False).parse_line(line) is None
    event = ProgressEventParser([tmp_path], use_environment=False).parse_line(line)
    assert event is not None and event.percent == 45.0


def test_the_readme_pack_example_loads_and_its_examples_hold(tmp_path: Path) -> None:
    """The pattern pack shown in the README is a working pack."""
    (block,) = [b for b in _readme_packs() if "[[pattern]]" in b]
    (tmp_path / "readme.toml").write_text(block)
    parser = ProgressEventParser([tmp_path], use_environment=False)
    (pattern,) = [p for p in parser.patterns.patterns if p.name == "ffmpeg.time"]
    assert len(pattern.examples) == 2
    for example in pattern.examples:
        _check_expected(parser.parse_line(example["line"]), dict(example))
