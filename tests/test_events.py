"""ProgressEvent: the record every source produces."""

from __future__ import annotations

import dataclasses
import math
from datetime import UTC, datetime

import pytest

from morag_jobs import InvalidProgress, ProgressEvent


class TestProgressEvent:
    def test_percent_is_derived_from_current_and_total(self) -> None:
        """With only current/total known, percent is current/total*100."""
        assert ProgressEvent(current=450, total=1000).percent == 45.0

    def test_explicit_percent_wins_over_counts(self) -> None:
        assert ProgressEvent(percent=12.5, current=1, total=2).percent == 12.5

    def test_zero_total_derives_nothing(self) -> None:
        assert ProgressEvent(current=3, total=0).percent is None

    def test_integers_are_stored_as_floats(self) -> None:
        event = ProgressEvent(percent=50)
        assert event.percent == 50.0
        assert isinstance(event.percent, float)

    @pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, -0.5, "abc"])
    def test_nan_infinite_and_negative_percent_are_rejected(self, value: object) -> None:
        with pytest.raises(InvalidProgress, match="invalid progress"):
            ProgressEvent(percent=value)  # type: ignore[arg-type]

    def test_over_100_is_kept_for_the_handler_to_clamp(self) -> None:
        assert ProgressEvent(percent=150.0).percent == 150.0

    def test_naive_timestamps_are_read_as_utc(self) -> None:
        event = ProgressEvent(percent=1.0, timestamp=datetime(2026, 11, 22, 12, 0))
        assert event.timestamp == datetime(2026, 11, 22, 12, 0, tzinfo=UTC)

    def test_default_timestamp_is_aware_arrival_time(self) -> None:
        before = datetime.now(UTC)
        assert ProgressEvent(percent=1.0).timestamp >= before

    def test_is_immutable_and_slotted(self) -> None:
        event = ProgressEvent(percent=1.0)
        with pytest.raises(dataclasses.FrozenInstanceError):
            event.percent = 2.0  # type: ignore[misc]
        assert not hasattr(event, "__dict__")

    def test_seed_attribute_names_still_work(self) -> None:
        event = ProgressEvent(percent=75.0, logger="ingest", raw="Processing... 75%",
                              message="Processing")
        assert (event.percentage, event.logger_name, event.raw_event, event.description) == (
            75.0, "ingest", "Processing... 75%", "Processing")

    def test_to_dict_is_json_ready(self) -> None:
        stamp = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
        data = ProgressEvent(percent=1.0, timestamp=stamp, stage="download").to_dict()
        assert data["timestamp"] == "2026-11-22T12:00:00+00:00"
        assert data["stage"] == "download"
        assert data["percent"] == 1.0
