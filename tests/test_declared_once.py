"""Knowledge declared once: where a declaration has to be repeated, a test holds the copies equal.

The record (``store/records.py``) declares a job's fields; the table (``store/models.py``)
and the API's bodies (``api/schemas.py``) must carry every one of them, and the migrations
must build that table (``tests/test_store.py::test_migrations_create_exactly_the_models``).
``rules.staleness`` is the one rule of stale events, for the handler and the API's retry
check; ``events.check_percent`` the one rule of percentages, which the copies inlined on hot
paths (the parser, ``report_progress``) and the API's schema must agree with.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import fields
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pydantic import ValidationError

from morag_jobs import InvalidProgress, ProgressEvent
from morag_jobs.api.remote import JobCache
from morag_jobs.api.schemas import HIDDEN_JOB_FIELDS, EventOut, JobOut, ProgressUpdate, job_json
from morag_jobs.events import check_percent
from morag_jobs.rules import judge, staleness
from morag_jobs.stages import StagePlan
from morag_jobs.store import HistoryEntry, Job, JobStatus, JobStore
from morag_jobs.store.models import JobEventRow, JobRow
from morag_jobs.store.reads import JobCheck
from morag_jobs.store.records import EVENT_FIELDS, JOB_FIELDS
from morag_jobs.task.context import JobContext, bind, report_progress, unbind
from morag_jobs.values import Rejected, checked

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


def _differ(declared: set[str], expected: set[str]) -> str:
    return f"missing {sorted(expected - declared)}, unexpected {sorted(declared - expected)}"


class TestJobFields:
    def test_the_api_shows_every_field_of_a_job_but_the_hidden_ones(self) -> None:
        """A field added to ``Job`` and not to ``JobOut`` would vanish from GET /jobs/{id}."""
        shown, expected = set(JobOut.model_fields), set(JOB_FIELDS) - HIDDEN_JOB_FIELDS
        assert shown == expected, f"JobOut must mirror Job: {_differ(shown, expected)}"

    def test_the_hidden_fields_are_fields_of_a_job(self) -> None:
        assert set(JOB_FIELDS) >= HIDDEN_JOB_FIELDS, "a renamed field would be shown again"

    def test_the_api_shows_every_field_of_a_history_event(self) -> None:
        shown, expected = set(EventOut.model_fields), set(EVENT_FIELDS)
        assert shown == expected, (
            f"EventOut must mirror HistoryEntry: {_differ(shown, expected)}")

    def test_the_job_table_has_a_column_for_every_field(self) -> None:
        columns = {column.name for column in JobRow.__table__.columns}
        expected = set(JOB_FIELDS)
        assert columns == expected, f"JobRow must mirror Job: {_differ(columns, expected)}"

    def test_the_history_table_has_a_column_for_every_field(self) -> None:
        columns = {column.name for column in JobEventRow.__table__.columns}
        expected = set(EVENT_FIELDS)
        assert columns == expected, (
            f"JobEventRow must mirror HistoryEntry: {_differ(columns, expected)}")

    def test_every_value_of_a_job_reaches_the_api_unchanged(self) -> None:
        job = Job(
            id="j1", name="ingest", job_type="audio", user_id="u1", status=JobStatus.PROCESSING,
            percentage=42.5, stage="processing", stage_percent=50.0, current=3, total=6,
            summary="working", error="none yet", metadata={"k": [1, "v"]},
            stages=StagePlan({"download": (0, 10), "processing": (10, 100)}),
            webhook_url="https://hooks.example/x", worker_id="w1", created_at=T0,
            started_at=T0 + timedelta(seconds=1), updated_at=T0 + timedelta(seconds=2),
            finished_at=T0 + timedelta(seconds=3), last_progress_at=T0 + timedelta(seconds=4),
            heartbeat_at=T0 + timedelta(seconds=5), last_event_at=T0 + timedelta(seconds=6),
            last_event_clock="remote:w1", last_sequence=7, version=8, ignored_count=9,
            claim="remote", lease_seconds=300.0, lease_until=T0 + timedelta(seconds=10),
            parent_id="p1", weight=2.0, children=3, children_done=1, children_failed=1,
            children_weight=3.0, progress_sum=150.0, attempt=2,
        )
        unset = {f.name for f in fields(Job) if getattr(job, f.name) == getattr(Job("x"), f.name)}
        assert not unset, f"give every field a value other than its default: {sorted(unset)}"
        shown = JobOut.of(job).model_dump()
        for name in set(JOB_FIELDS) - HIDDEN_JOB_FIELDS:
            value = getattr(job, name)
            expected = [tuple(band) for band in value.to_dict()] if name == "stages" else value
            assert shown[name] == expected, f"{name}: {shown[name]!r}, expected {expected!r}"
        assert set(job_json(job)) == set(shown), "the remote routes show what GET /jobs shows"

    def test_every_value_of_a_history_event_reaches_the_api_unchanged(self) -> None:
        values: dict[str, Any] = {
            "id": 1, "job_id": "j1", "at": T0, "percentage": 10.0, "stage": "s",
            "stage_percent": 20.0, "current": 1, "total": 2, "message": "m",
            "status": JobStatus.FINISHED, "source": "remote", "kind": "completion",
        }
        for field in fields(HistoryEntry):
            if field.name not in values:  # fields added later: a value of their own type
                values[field.name] = T0 if "datetime" in str(field.type) else "x"
        shown = EventOut.of(HistoryEntry(**values)).model_dump()
        assert shown == values, "every field of a history event reaches EventOut as it was"


def _job(sequence: int | None = None, at: datetime | None = None, clock: str = "remote:w1",
         summary: str = "") -> Job:
    return Job("j1", status=JobStatus.PROCESSING, last_sequence=sequence, last_event_at=at,
               last_event_clock=clock if at is not None else None, summary=summary)


def _event(sequence: int | None = None, at: datetime = T0, worker: str = "w1",
           message: str = "m") -> ProgressEvent:
    return ProgressEvent(percent=50.0, message=message, sequence=sequence, timestamp=at,
                         source="remote", worker_id=worker)


class TestStaleness:
    @pytest.mark.parametrize(("last", "event", "expected"), [
        ((5, T0, "remote:w1"), _event(4), "stale"),
        ((5, T0, "remote:w1"), _event(5), "repeat"),
        ((5, T0, "remote:w1"), _event(6, at=T0 - timedelta(hours=1)), None),
        ((None, T0, "remote:w1"), _event(6, at=T0 - timedelta(seconds=1)), "stale"),
        ((5, T0, "remote:w1"), _event(None, at=T0 - timedelta(seconds=1)), "stale"),
        ((None, T0, "remote:w1"), _event(at=T0), "same_time"),
        ((None, T0, "remote:w1"), _event(at=T0 + timedelta(seconds=1)), None),
        ((None, T0, "remote:w2"), _event(at=T0 - timedelta(hours=1)), None),
        ((None, None, None), _event(), None),
    ], ids=["lower-sequence", "same-sequence", "higher-sequence-wins-over-time",
            "no-sequence-applied-falls-back-to-time", "no-sequence-sent-falls-back-to-time",
            "same-time", "newer-time", "another-clock", "nothing-applied"])
    def test_an_event_is_placed_by_sequence_else_by_time_on_its_clock(
        self, last: tuple[Any, ...], event: ProgressEvent, expected: str | None
    ) -> None:
        assert staleness(event, last) == expected

    def test_the_newest_of_several_applied_events_counts(self) -> None:
        job, queued = (3, T0, "remote:w1"), (5, T0 - timedelta(seconds=9), "remote:w1")
        assert staleness(_event(4), job, queued) == "stale", "the highest sequence counts"
        by_time = (None, T0 + timedelta(seconds=9), "remote:w2"), (None, T0, "remote:w1")
        assert staleness(_event(at=T0), *by_time) == "same_time", "only times of its own clock"

    @pytest.mark.parametrize(("job", "event"), [
        (_job(5, T0), _event(4)), (_job(5, T0), _event(5)), (_job(5, T0), _event(6)),
        (_job(None, T0), _event(at=T0 - timedelta(seconds=1))), (_job(None, T0), _event(at=T0)),
        (_job(None, T0), _event(at=T0 + timedelta(seconds=1))),
        (_job(None, T0, clock="log"), _event(at=T0 - timedelta(seconds=1))),
    ])
    def test_the_handler_and_the_api_judge_staleness_alike(
        self, job: Job, event: ProgressEvent, cache: JobCache
    ) -> None:
        where = staleness(event, (job.last_sequence, job.last_event_at, job.last_event_clock))
        handler_refuses = judge(job, event).reason == "stale"
        assert handler_refuses == (where in ("stale", "repeat")), f"judge on {where}"
        # (the same time with other content, as here, is no retry: the content decides)
        expected = {"stale": "stale", "repeat": "duplicate", "same_time": None, None: None}
        assert cache.repeat_of(JobCheck.of(job), event) == expected[where], f"repeat_of on {where}"

    def test_the_api_also_weighs_what_this_process_queued(self, cache: JobCache) -> None:
        job = _job(None, T0)
        cache.sent(job.id, _event(7, at=T0 + timedelta(seconds=1)))
        assert cache.repeat_of(JobCheck.of(job), _event(7)) == "duplicate"
        assert cache.repeat_of(JobCheck.of(job), _event(6)) == "stale"
        assert cache.repeat_of(JobCheck.of(job), _event(8)) is None


@pytest.fixture
def cache(sqlite_url: str) -> Iterator[JobCache]:
    with JobStore(sqlite_url, create_tables=True) as store:
        job_cache = JobCache(store)
        yield job_cache
        job_cache.close()


EDGES = [math.nan, math.inf, -math.inf, -1e-9, -0.0, 0, 0.0, 12.5, 100, 100.0,
         math.nextafter(100.0, math.inf), 150.0, 1e308]


def _refused(check: Any, value: float, *errors: type[Exception]) -> bool:
    try:
        check(value)
    except errors:
        return True
    return False


def _strict(value: float) -> float:
    return check_percent(value, over_100=False)


class TestPercentages:
    @pytest.mark.parametrize("value", EDGES)
    def test_an_event_refuses_what_the_rule_refuses(self, value: float) -> None:
        refused = _refused(check_percent, value, InvalidProgress)
        assert _refused(lambda v: ProgressEvent(percent=v), value, InvalidProgress) == refused

    @pytest.mark.parametrize("value", EDGES)
    def test_the_api_refuses_what_the_strict_rule_refuses(self, value: float) -> None:
        def update(percentage: float) -> object:
            return ProgressUpdate.model_validate(
                {"percentage": percentage, "message": "m", "timestamp": "2026-03-01T12:00:00Z"})

        refused = _refused(_strict, value, InvalidProgress)
        assert _refused(update, value, ValidationError) == refused

    @pytest.mark.parametrize("value", EDGES)
    def test_the_parser_rejects_what_the_strict_rule_refuses(self, value: float) -> None:
        refused = _refused(_strict, value, InvalidProgress)
        assert _refused(lambda v: checked({"percent": v}), value, Rejected) == refused

    @pytest.mark.parametrize("value", EDGES)
    def test_report_progress_refuses_what_the_rule_refuses(self, value: float) -> None:
        token = bind(JobContext("j1", None, runtime=None))  # type: ignore[arg-type]
        try:
            refused = _refused(report_progress, value, InvalidProgress)
        finally:
            unbind(token)
        assert refused == _refused(check_percent, value, InvalidProgress)

    def test_the_api_schema_documents_the_rules_bounds(self) -> None:
        schema = ProgressUpdate.model_json_schema()["properties"]["percentage"]
        low, high = schema["minimum"], schema["maximum"]
        assert _strict(low) == low and _strict(high) == high, "the bounds themselves pass"
        for outside in (math.nextafter(low, -math.inf), math.nextafter(high, math.inf)):
            assert _refused(_strict, outside, InvalidProgress), f"{outside} must be refused"

    def test_the_api_says_which_rule_a_percentage_broke(self) -> None:
        with pytest.raises(ValidationError, match="a percentage cannot be above 100"):
            ProgressUpdate.model_validate(
                {"percentage": 101, "message": "m", "timestamp": "2026-03-01T12:00:00Z"})
