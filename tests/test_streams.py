"""ProgressStream and the general recogniser: state across lines, bars, cues as data."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from morag_jobs import PatternPackError, ProgressEventParser
from morag_jobs.streams import ProgressStream


@pytest.fixture
def parser() -> ProgressEventParser:
    return ProgressEventParser(use_environment=False)


def percents(stream: ProgressStream, *chunks: str) -> list[float | None]:
    events = [event for chunk in chunks for event in stream.feed(chunk)] + stream.close()
    return [event.percent for event in events]


class TestState:
    def test_ffmpeg_time_positions_are_read_against_the_duration_printed_before(
        self, parser: ProgressEventParser
    ) -> None:
        stream = ProgressStream(parser)
        got = percents(stream, "  Duration: 00:00:20.00, start: 0.000000, bitrate: 129 kb/s\n",
                       "frame=  100 fps=25 q=28.0 size=  256kB time=00:00:05.00 speed=1x\r",
                       "frame=  200 fps=25 q=28.0 size=  512kB time=00:00:10.00 speed=1x\r")
        assert got == [25.0, 50.0]

    def test_a_duration_the_caller_knows_serves_output_that_never_prints_one(
        self, parser: ProgressEventParser
    ) -> None:
        stream = ProgressStream(parser, duration=40.0)
        assert percents(stream, "out_time=00:00:10.000000\nprogress=continue\n") == [25.0]

    def test_a_time_position_alone_is_no_event_for_a_lone_line(
        self, parser: ProgressEventParser
    ) -> None:
        assert parser.parse_line("frame= 100 fps=25 time=00:00:05.00 bitrate=1k speed=1x") is None

    def test_scikit_learn_fits_count_toward_the_total_announced_first(
        self, parser: ProgressEventParser
    ) -> None:
        stream = ProgressStream(parser)
        got = percents(stream, "Fitting 5 folds for each of 2 candidates, totalling 10 fits\n",
                       "[CV 1/5] END ....C=1;, score=0.967 total time=   0.0s\n",
                       "[CV 2/5] END ....C=1;, score=0.933 total time=   0.0s\n")
        assert got == [10.0, 20.0], "the fold index [CV 2/5] is not the search's progress"

    def test_a_count_without_a_total_uses_the_callers_total(
        self, parser: ProgressEventParser
    ) -> None:
        stream = ProgressStream(parser, total=40)
        assert percents(stream, "[Parallel(n_jobs=2)]: Done  10 tasks | elapsed: 0.1s\n") == [
            25.0]


class TestBars:
    def test_a_nested_bar_reaching_100_does_not_move_the_job(
        self, parser: ProgressEventParser
    ) -> None:
        stream = ProgressStream(parser)
        got = percents(stream, "outer:   0%|          | 0/2 [00:00<?, ?it/s]\n",
                       "inner:  50%|#####     | 5/10 [00:00<00:00, 9.9it/s]\n",
                       "inner: 100%|##########| 10/10 [00:01<00:00, 9.9it/s]\n",
                       "outer:  50%|#####     | 1/2 [00:01<00:01, 1.0it/s]\n")
        assert got == [0.0, 50.0]
        assert stream.stats.inner == 2

    def test_a_bar_redrawn_with_words_has_ended_and_the_next_one_is_followed(
        self, parser: ProgressEventParser
    ) -> None:
        stream = ProgressStream(parser)
        got = percents(stream, "\rReading package lists... 98%\r\rReading package lists... Done\n",
                       "\rProgress: [ 40%] [####......]\n")
        assert got == [98.0, 40.0]

    def test_a_tools_whole_run_counter_is_followed_over_its_per_file_bars(
        self, parser: ProgressEventParser
    ) -> None:
        stream = ProgressStream(parser)
        got = percents(stream, "file1\n\r  32,768  40%  1.0MB/s  0:00:01",
                       "\r  81,920 100%  1.0MB/s  0:00:01 (xfr#1, to-chk=2/4)\n",
                       "file2\n\r  32,768  40%  1.0MB/s  0:00:01\n")
        assert got == [40.0, 50.0], "after rsync's to-chk counter, per-file meters are inner"

    def test_peek_reads_a_line_being_drawn_without_changing_the_stream(
        self, parser: ProgressEventParser
    ) -> None:
        stream = ProgressStream(parser)
        percents(stream, "outer:   0%|          | 0/2 [00:00<?, ?it/s]\n")
        assert stream.peek("\rinner: 50%|#####     | 5/10 [00:00<00:00, 9.9it/s]") is None
        seen = stream.peek(b"\router:  50%|#####     | 1/2 [00:01<00:01, 1.0it/s]")
        assert seen is not None and seen.percent == 50.0

    def test_two_pipes_feed_one_stream_safely(self, parser: ProgressEventParser) -> None:
        stream = ProgressStream(parser)
        got: list[float | None] = []
        lock = threading.Lock()

        def pump(channel: str, lines: list[str]) -> None:
            for line in lines:
                events = stream.feed(line, channel)
                with lock:
                    got.extend(e.percent for e in events)

        out = [f"Step {i}/200\n" for i in range(1, 201)]
        threads = [threading.Thread(target=pump, args=("stdout", out)),
                   threading.Thread(target=pump, args=("stderr", ["noise\n"] * 200))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert sorted(p for p in got if p is not None) == pytest.approx(
            [i / 2 for i in range(1, 201)])


class TestRecogniserData:
    def test_a_users_pack_adds_cue_and_refusal_words_without_code(self, tmp_path: Path) -> None:
        line = "Digesting 45% of the corpus"
        assert ProgressEventParser(use_environment=False).parse_line(line) is None
        (tmp_path / "mine.toml").write_text(
            '[recogniser]\ncue_words = ["digesting"]\nrefusal_words = ["humidity"]\n')
        tuned = ProgressEventParser([tmp_path], use_environment=False)
        event = tuned.parse_line(line)
        assert event is not None and event.percent == 45.0 and event.format == "generic"

    def test_a_users_pack_can_take_a_cue_word_away(self, tmp_path: Path) -> None:
        (tmp_path / "mine.toml").write_text('[recogniser]\nremove_cue_words = ["downloading"]\n')
        tuned = ProgressEventParser([tmp_path], use_environment=False)
        assert tuned.parse_line("Downloading blob, 45% of it") is None
        assert ProgressEventParser(use_environment=False).parse_line(
            "Downloading blob, 45% of it") is not None

    @pytest.mark.parametrize(("table", "message"), [
        ("[recogniser]\ncue_words = 'x'\n", "must be a list of words"),
        ("[recogniser]\nthreshold = 'high'\n", "must be an integer"),
        ("[recogniser]\nlevel = 3\n", r"unknown \[recogniser\] key 'level'"),
        ("[[recogniser.cue]]\nname = 'c'\nregex = '('\n", "cue regex does not compile"),
    ])
    def test_a_broken_recogniser_table_fails_fast_with_the_rule(
        self, tmp_path: Path, table: str, message: str
    ) -> None:
        (tmp_path / "bad.toml").write_text(table)
        with pytest.raises(PatternPackError, match=message):
            ProgressEventParser([tmp_path], use_environment=False)

    @pytest.mark.parametrize("line", [
        "CPU: 45.2% | MEM: 3.2/16.0 GB", "GPU 0: 87% util, 10.2/24 GB", "Retry 2 of 5",
        "3/4 replicas ready", "Save 50% today", "Unit tests: 98% coverage",
        "Epoch 3: accuracy 92.5%", "semi6.txt: 2229.2 KiB / 5859.4 KiB = 0.380, 598 KiB/s",
        '"Processing... 75%"', "2026/11/29 12:30:45 ok", "GET /a%20b%2050%25.pdf HTTP/1.1",
    ])
    def test_numbers_that_measure_something_else_are_not_progress(
        self, parser: ProgressEventParser, line: str
    ) -> None:
        assert parser.parse_line(line) is None, line


_LINES = st.sampled_from([
    "Receiving objects:  45% (450/1000), 1.20 MiB | 3.40 MiB/s", "CPU usage 45%",
    "[12/30] Building C object x.o", "\r 10%|#  | 1/10\r 20%|## | 2/10", "plain text",
    '{"event": "x", "progress": 0.5}', "Processing file 3 of 10", "a%20b/12/34 of 5",
])


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.one_of(_LINES, st.text(max_size=80)), max_size=30))
def test_parse_chunk_finds_what_parse_line_finds_and_nothing_raises(lines: list[str]) -> None:
    parser = ProgressEventParser(use_environment=False)
    text = "\n".join(line.replace("\n", " ") for line in lines)
    by_line = [e for e in map(parser.parse_line, text.split("\n")) if e is not None] if text else []
    by_chunk = parser.parse_chunk(text)
    assert [(e.percent, e.format) for e in by_chunk] == [(e.percent, e.format) for e in by_line]
    stream = ProgressStream(parser)
    stream.feed(text.encode("utf-8", "surrogatepass")[:4000])
    stream.close()
