"""RedrawSplitter: a redrawn line becomes the updates a person watching it saw."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from morag_jobs.terminal import MAX_UPDATE_CHARS, RedrawSplitter, redraws


class TestRedraws:
    def test_carriage_returns_separate_the_updates_of_one_line(self) -> None:
        assert redraws("\r 10%|#  | 1/10\r 20%|## | 2/10\r\n") == [
            "10%|#  | 1/10", "20%|## | 2/10"]

    def test_a_line_without_redraws_is_itself(self) -> None:
        assert redraws("  Processing file 3 of 10 ") == ["Processing file 3 of 10"]
        assert redraws("") == []

    def test_backspaces_overwrite_in_place_like_a_terminal(self) -> None:
        assert redraws("Progress: 50%\b\b\b60%\b\b\b70%") == [
            "Progress: 50%", "Progress: 60%", "Progress: 70%"]

    def test_colours_are_dropped_and_erases_honoured(self) -> None:
        assert redraws("\x1b[32m45%\x1b[0m done\r\x1b[2K\x1b[1m46%\x1b[0m done") == [
            "45% done", "46% done"]

    def test_cursor_moves_to_other_rows_end_an_update(self) -> None:
        # rich redraws a two-row display: row, newline, row, cursor up, erase
        assert redraws("\r\x1b[2Kouter 25%\n\x1b[2Kinner 50%\x1b[1A\x1b[2Kouter 50%") == [
            "outer 25%", "inner 50%", "outer 50%"]

    def test_apts_status_row_drawn_with_save_and_restore_is_one_update(self) -> None:
        drawn = ("\x1b7\x1b[24;0f\x1b[42m\x1b[30mProgress: [ 40%]\x1b[49m\x1b[39m "
                 "[#####.....] \x1b8")
        assert redraws(drawn) == ["Progress: [ 40%] [#####.....]"]

    def test_the_same_text_drawn_again_is_one_update(self) -> None:
        assert redraws("\r45%\r45%\r46%") == ["45%", "46%"]


class TestSplitter:
    def test_updates_know_their_line(self) -> None:
        splitter = RedrawSplitter()
        updates = splitter.feed("a 1%\rb 2%\nc 3%\n") + splitter.close()
        assert [(u.text, u.line) for u in updates] == [("a 1%", 1), ("b 2%", 1), ("c 3%", 2)]

    def test_an_update_still_being_drawn_waits_for_its_end(self) -> None:
        splitter = RedrawSplitter()
        assert [u.text for u in splitter.feed("\r 10%")] == []
        assert splitter.pending == "10%"
        assert [u.text for u in splitter.feed("\r 20%")] == ["10%"]
        assert [u.text for u in splitter.close()] == ["20%"]

    def test_an_escape_sequence_split_across_reads_is_kept_whole(self) -> None:
        splitter = RedrawSplitter()
        updates = splitter.feed("outer 25%\x1b[") + splitter.feed("1Aouter 50%\n")
        assert [u.text for u in updates] == ["outer 25%", "outer 50%"]

    def test_a_huge_line_without_redraws_keeps_only_its_end(self) -> None:
        splitter = RedrawSplitter()
        for _ in range(200):
            splitter.feed("x" * 1000)
        splitter.feed(" 99%")
        (update,) = splitter.close()
        assert len(update.text) <= MAX_UPDATE_CHARS and update.text.endswith("x 99%")


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.sampled_from([*"ab 1%\r\n\b\x1b[0;12AKJmH78?", "é"])),
       st.lists(st.integers(min_value=1, max_value=9), min_size=1, max_size=20))
def test_splitting_the_input_anywhere_gives_the_same_updates(text: str, cuts: list[int]) -> None:
    whole = RedrawSplitter()
    expected = [(u.text, u.line) for u in whole.feed(text) + whole.close()]
    pieces = RedrawSplitter()
    got, position = [], 0
    for cut in cuts * (len(text) // max(1, sum(cuts)) + 1):
        if position >= len(text):
            break
        got += [(u.text, u.line) for u in pieces.feed(text[position : position + cut])]
        position += cut
    got += [(u.text, u.line) for u in pieces.feed(text[position:]) + pieces.close()]
    assert got == expected
