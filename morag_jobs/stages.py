"""``StagePlan``: an ordered set of named stages, each owning a band of the overall 0..100.

A task reports "processing 50 %"; with ``processing = 10..70`` the job is 40 % done.
Plans are registered per job type (``register_stage_plan``) and stored with each job,
so a job keeps the plan it was created with even if the registry changes later.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

from morag_jobs import _config
from morag_jobs.logs import get_logger

__all__ = [
    "Band",
    "StagePlan",
    "clear_stage_plans",
    "get_stage_plan",
    "register_stage_plan",
]

log = get_logger(__name__)

Band = tuple[float, float]

# Unknown stage names already warned about, per plan; bounded because names come from logs.
_WARNED: set[tuple[tuple[tuple[str, float, float], ...], str]] = set()
_WARNED_MAX = 1024


class StagePlan:
    """Named stages in order, each mapped onto a band ``start..end`` of the overall percentage.

    Bands lie inside 0..100, are ordered and do not overlap; gaps are allowed.
    """

    __slots__ = ("_bands", "_index")

    def __init__(self, bands: Mapping[str, Band]) -> None:
        checked = _checked_bands(bands.items())
        self._bands: dict[str, Band] = dict(checked)
        self._index: dict[str, int] = {name: i for i, (name, _) in enumerate(checked)}

    @classmethod
    def from_weights(cls, weights: Mapping[str, float]) -> StagePlan:
        """Bands proportional to ``weights``, covering 0..100 without gaps."""
        for name, weight in weights.items():
            if not _is_number(weight) or not math.isfinite(weight) or weight <= 0:
                raise ValueError(f"stage {name!r}: weight {weight!r} must be a positive number")
        total = math.fsum(weights.values())
        bands: dict[str, Band] = {}
        done = 0.0
        for position, (name, weight) in enumerate(weights.items(), start=1):
            start = 100.0 * done / total if done else 0.0
            done += weight
            end = 100.0 if position == len(weights) else 100.0 * done / total
            bands[name] = (start, end)
        return cls(bands)

    @classmethod
    def from_dict(cls, data: Sequence[Sequence[Any]] | Mapping[str, Sequence[float]]) -> StagePlan:
        """Rebuild a plan from ``to_dict()`` output (also accepts ``{name: [start, end]}``)."""
        if isinstance(data, Mapping):
            return cls({str(name): _pair(name, band) for name, band in data.items()})
        bands: dict[str, Band] = {}
        for item in data:
            if len(item) != 3:
                raise ValueError(f"stage entry {item!r} must be [name, start, end]")
            name, start, end = item
            bands[str(name)] = _pair(name, (start, end))
        return cls(bands)

    def to_dict(self) -> list[list[Any]]:
        """JSON-storable form: ``[[name, start, end], ...]`` in stage order."""
        return [[name, start, end] for name, (start, end) in self._bands.items()]

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self._bands)

    @property
    def first(self) -> str:
        return next(iter(self._bands))

    def band(self, stage: str) -> Band:
        """The ``(start, end)`` band of ``stage``; ``KeyError`` for an unknown stage."""
        try:
            return self._bands[stage]
        except KeyError:
            raise KeyError(f"stage {stage!r} is not in {self!r}") from None

    def index(self, stage: str | None) -> int | None:
        """Position of ``stage`` in the plan (None when unknown): stages only move forward."""
        if stage is None:
            return None
        return self._index.get(stage)

    def to_overall(self, stage: str, stage_percent: float) -> float:
        """Overall percentage for ``stage_percent`` (clamped to 0..100) of a known ``stage``.

        Unknown names raise ``KeyError``: call ``resolve()`` first to pick the stage.
        """
        if math.isnan(stage_percent):
            raise ValueError(f"stage {stage!r}: a stage percentage cannot be NaN")
        start, end = self.band(stage)
        fraction = min(max(stage_percent, 0.0), 100.0) / 100.0
        return min(max(start + (end - start) * fraction, start), end)

    def resolve(self, stage: str | None, current: str | None) -> str:
        """The stage an event applies to: its own if known, else the job's current, else the first.

        An unknown name is a warning, never an error: a log line that names a stage the
        plan does not know still moves the job, inside the stage it is already in.
        """
        if stage is not None and stage in self._bands:
            return stage
        if stage is not None:
            self._warn_unknown(stage, current)
        if current is not None and current in self._bands:
            return current
        return self.first

    def _warn_unknown(self, stage: str, current: str | None) -> None:
        key = (self._key(), stage)
        if key in _WARNED:
            return
        if len(_WARNED) >= _WARNED_MAX:
            _WARNED.clear()
        _WARNED.add(key)
        log.warning(
            "unknown stage; treated as the current stage",
            stage=stage,
            current=current,
            known=list(self._bands),
        )

    def _key(self) -> tuple[tuple[str, float, float], ...]:
        return tuple((name, start, end) for name, (start, end) in self._bands.items())

    def __contains__(self, stage: object) -> bool:
        return stage in self._bands

    def __len__(self) -> int:
        return len(self._bands)

    def __iter__(self) -> Iterator[str]:
        return iter(self._bands)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, StagePlan):
            return NotImplemented
        return self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        return f"StagePlan({self._bands!r})"


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _pair(name: object, band: Sequence[Any]) -> Band:
    if len(band) != 2:
        raise ValueError(f"stage {name!r}: band {band!r} must be (start, end)")
    return band[0], band[1]


def _checked_bands(items: Iterable[tuple[str, Band]]) -> list[tuple[str, Band]]:
    """Validate bands in order; the message names the stage and the rule it breaks."""
    checked: list[tuple[str, Band]] = []
    for name, band in items:
        start, end = _checked_band(name, band)
        if checked and start < checked[-1][1][1]:
            previous, (p_start, p_end) = checked[-1]
            raise ValueError(
                f"stage {name!r}: band {start:g}..{end:g} overlaps or precedes stage "
                f"{previous!r} ({p_start:g}..{p_end:g}); bands must be ordered and not overlap"
            )
        checked.append((name, (start, end)))
    if not checked:
        raise ValueError("a stage plan needs at least one stage")
    return checked


def _checked_band(name: object, band: Sequence[Any]) -> Band:
    if not isinstance(name, str) or not name:
        raise ValueError(f"stage name {name!r} must be a non-empty string")
    start, end = _pair(name, band)
    if not (_is_number(start) and _is_number(end) and math.isfinite(start + end)):
        raise ValueError(f"stage {name!r}: band {band!r} must be two finite numbers")
    if start < 0 or end > 100:
        raise ValueError(f"stage {name!r}: band {start:g}..{end:g} must lie inside 0..100")
    if start >= end:
        raise ValueError(f"stage {name!r}: start {start:g} must be below end {end:g}")
    return float(start), float(end)


_PLANS = _config.stage_plans  # the registry lives with the other process-wide state


def register_stage_plan(job_type: str, plan: StagePlan) -> None:
    """Use ``plan`` for jobs of ``job_type`` created from now on (replaces an earlier one)."""
    if not isinstance(plan, StagePlan):
        raise TypeError(f"expected a StagePlan for job type {job_type!r}, got {plan!r}")
    _PLANS[job_type] = plan


def get_stage_plan(job_type: str | None) -> StagePlan | None:
    """The plan registered for ``job_type``, or None."""
    if job_type is None:
        return None
    return _PLANS.get(job_type)


def clear_stage_plans() -> None:
    """Forget every registered plan and every unknown-stage warning (for tests)."""
    _config.reset()


_config.on_reset(_WARNED.clear)
