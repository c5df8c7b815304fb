"""StagePlan: stage-relative percentages onto the overall 0..100, and the per-type registry."""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator

import pytest
from hypothesis import given
from hypothesis import strategies as st
from log_helpers import capture_logs

from morag_jobs.stages import StagePlan, clear_stage_plans, get_stage_plan, register_stage_plan

SEED_BANDS = {
    "download": (0, 10),
    "processing": (10, 70),
    "indexing": (70, 95),
    "finalize": (95, 100),
}


@pytest.fixture(autouse=True)
def _fresh_registry() -> Iterator[None]:
    clear_stage_plans()
    yield
    clear_stage_plans()


@pytest.fixture
def plan() -> StagePlan:
    return StagePlan(SEED_BANDS)


def test_processing_half_done_is_forty_percent_overall(plan: StagePlan) -> None:
    assert plan.to_overall("processing", 50) == 40.0, "processing = 10..70 at 50% is 40% overall"


@pytest.mark.parametrize("progress", [0.0, 0.1, 0.25, 0.5, 0.9, 1.0])
def test_seed_formula_ten_plus_progress_times_sixty_is_the_processing_band(
    plan: StagePlan, progress: float
) -> None:
    expected = 10 + progress * 60
    assert plan.to_overall("processing", progress * 100) == pytest.approx(expected), (
        f"the seed's 10 + {progress} * 60 should equal processing at {progress * 100}%"
    )


def test_stage_percent_is_clamped_to_the_band(plan: StagePlan) -> None:
    assert plan.to_overall("processing", -5) == 10.0, "below 0% stays at the band start"
    assert plan.to_overall("processing", 250) == 70.0, "above 100% stays at the band end"


def test_to_overall_rejects_nan(plan: StagePlan) -> None:
    with pytest.raises(ValueError, match="cannot be NaN"):
        plan.to_overall("processing", float("nan"))


def test_to_overall_raises_key_error_for_an_unknown_stage(plan: StagePlan) -> None:
    with pytest.raises(KeyError, match="'uploading' is not in"):
        plan.to_overall("uploading", 50)


def test_weights_become_proportional_bands_covering_zero_to_hundred() -> None:
    plan = StagePlan.from_weights({"download": 1, "processing": 6, "indexing": 2, "finalize": 1})
    assert plan.band("download") == (0.0, 10.0)
    assert plan.band("processing") == pytest.approx((10.0, 70.0))
    assert plan.band("indexing") == pytest.approx((70.0, 90.0))
    assert plan.band("finalize")[1] == 100.0, "the last band ends exactly at 100"


def test_weights_leave_no_gaps_between_stages() -> None:
    plan = StagePlan.from_weights({"a": 1, "b": 3, "c": 7})
    bands = [plan.band(name) for name in plan]
    for (_, end), (start, _) in itertools.pairwise(bands):
        assert start == end, f"each band should start where the previous ends ({bands})"


@pytest.mark.parametrize("weight", [0, -1, float("inf"), float("nan"), "2"])
def test_weights_must_be_positive_numbers(weight: object) -> None:
    with pytest.raises(ValueError, match=r"stage 'b': weight .* must be a positive number"):
        StagePlan.from_weights({"a": 1, "b": weight})  # type: ignore[dict-item]


@pytest.mark.parametrize(
    ("bands", "message"),
    [
        ({"a": (-1, 10)}, r"stage 'a': band -1\.\.10 must lie inside 0\.\.100"),
        ({"a": (0, 101)}, r"stage 'a': band 0\.\.101 must lie inside 0\.\.100"),
        ({"a": (20, 10)}, r"stage 'a': start 20 must be below end 10"),
        ({"a": (10, 10)}, r"stage 'a': start 10 must be below end 10"),
        ({"a": (0, 50), "b": (40, 60)}, r"stage 'b': band 40\.\.60 overlaps or precedes stage 'a'"),
        ({"a": (50, 60), "b": (0, 10)}, r"stage 'b': .* bands must be ordered and not overlap"),
        ({"a": (0, float("nan"))}, r"stage 'a': band .* must be two finite numbers"),
        ({"a": (0, 10, 20)}, r"stage 'a': band .* must be \(start, end\)"),
        ({"": (0, 10)}, r"stage name '' must be a non-empty string"),
        ({}, r"a stage plan needs at least one stage"),
    ],
)
def test_invalid_bands_name_the_stage_and_the_rule(
    bands: dict[str, tuple[float, ...]], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        StagePlan(bands)  # type: ignore[arg-type]


def test_gaps_between_bands_are_allowed() -> None:
    plan = StagePlan({"a": (0, 10), "b": (50, 60)})
    assert plan.to_overall("b", 0) == 50.0


def test_plan_lists_its_stages_in_order(plan: StagePlan) -> None:
    assert plan.names == ("download", "processing", "indexing", "finalize")
    assert list(plan) == list(plan.names), "iterating a plan yields its stage names in order"
    assert len(plan) == 4
    assert plan.first == "download"
    assert "indexing" in plan
    assert "uploading" not in plan


def test_index_orders_stages_and_is_none_for_unknown(plan: StagePlan) -> None:
    assert [plan.index(name) for name in plan] == [0, 1, 2, 3]
    assert plan.index("uploading") is None
    assert plan.index(None) is None


def test_resolve_keeps_a_known_stage(plan: StagePlan) -> None:
    assert plan.resolve("indexing", current="processing") == "indexing"


def test_resolve_without_a_stage_uses_the_current_one(plan: StagePlan) -> None:
    assert plan.resolve(None, current="processing") == "processing"
    assert plan.resolve(None, current=None) == "download", "no current stage means the first"


def test_unknown_stage_warns_once_and_is_treated_as_the_current_stage(plan: StagePlan) -> None:
    with capture_logs() as logs:
        first = plan.resolve("uploading", current="processing")
        again = plan.resolve("uploading", current="indexing")
    assert first == "processing", "an unknown stage is treated as the job's current stage"
    assert again == "indexing"
    warnings = [entry for entry in logs if entry["log_level"] == "warning"]
    assert len(warnings) == 1, f"expected one warning per unknown name, got {warnings}"
    assert warnings[0]["stage"] == "uploading"
    assert warnings[0]["current"] == "processing"


def test_unknown_stage_without_a_current_stage_falls_back_to_the_first(plan: StagePlan) -> None:
    with capture_logs():
        assert plan.resolve("uploading", current=None) == "download"


def test_to_dict_is_json_and_round_trips(plan: StagePlan) -> None:
    stored = json.loads(json.dumps(plan.to_dict()))
    assert stored[1] == ["processing", 10.0, 70.0], "stored as [name, start, end] in order"
    assert StagePlan.from_dict(stored) == plan


def test_from_dict_accepts_a_name_to_band_mapping(plan: StagePlan) -> None:
    as_object = {name: list(plan.band(name)) for name in plan}
    assert StagePlan.from_dict(as_object) == plan


def test_from_dict_rejects_malformed_entries() -> None:
    with pytest.raises(ValueError, match=r"must be \[name, start, end\]"):
        StagePlan.from_dict([["download", 0]])


def test_equal_plans_compare_and_hash_equal(plan: StagePlan) -> None:
    same = StagePlan(dict(SEED_BANDS))
    assert plan == same
    assert hash(plan) == hash(same)
    assert plan != StagePlan({"download": (0, 100)})
    assert plan != SEED_BANDS, "a plan is not equal to a plain dict"


def test_repr_shows_the_bands(plan: StagePlan) -> None:
    assert repr(plan).startswith("StagePlan({'download': (0.0, 10.0), 'processing': (10.0, 70.0)")


def test_registry_returns_the_plan_registered_for_a_job_type(plan: StagePlan) -> None:
    assert get_stage_plan("audio") is None, "nothing is registered before register_stage_plan"
    register_stage_plan("audio", plan)
    assert get_stage_plan("audio") is plan
    assert get_stage_plan("video") is None
    assert get_stage_plan(None) is None


def test_registering_again_replaces_and_clearing_forgets(plan: StagePlan) -> None:
    other = StagePlan({"all": (0, 100)})
    register_stage_plan("audio", plan)
    register_stage_plan("audio", other)
    assert get_stage_plan("audio") is other
    clear_stage_plans()
    assert get_stage_plan("audio") is None


def test_registry_only_takes_stage_plans() -> None:
    with pytest.raises(TypeError, match="expected a StagePlan for job type 'audio'"):
        register_stage_plan("audio", {"all": (0, 100)})  # type: ignore[arg-type]


@st.composite
def plans_and_stage(draw: st.DrawFn) -> tuple[StagePlan, str]:
    weights = draw(st.lists(st.floats(0.01, 1000), min_size=1, max_size=8))
    plan = StagePlan.from_weights({f"s{i}": weight for i, weight in enumerate(weights)})
    return plan, draw(st.sampled_from(plan.names))


percents = st.floats(-50, 150, allow_nan=False)


@given(plans_and_stage(), percents, percents)
def test_to_overall_is_monotonic_and_stays_inside_the_band(
    plan_and_stage: tuple[StagePlan, str], low: float, high: float
) -> None:
    plan, stage = plan_and_stage
    low, high = sorted((low, high))
    start, end = plan.band(stage)
    at_low, at_high = plan.to_overall(stage, low), plan.to_overall(stage, high)
    assert at_low <= at_high, f"{stage}: {low}% -> {at_low} but {high}% -> {at_high}"
    assert start <= at_low <= end, f"{at_low} left the band {start}..{end}"
    assert start <= at_high <= end, f"{at_high} left the band {start}..{end}"
