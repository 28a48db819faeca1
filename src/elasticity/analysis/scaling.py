"""Elasticity against model size and pre-training volume: every rebound metric's trend along each axis.

Input: one rebound per base model (`ModelResult`: its parameter count, pre-training tokens and the records of
its `metrics.json`), all run with the same data, prompts, scorer, grid and seeds, so that seed s of one model is
paired with seed s of every other (the same positive and negative orders).

    size axis     models that share a pre-training volume (tokens; 0 = unknown counts as one value), at two or
                  more distinct parameter counts
    volume axis   models that share a parameter count, at two or more distinct token counts

For every metric of the rebound (`analysis.rebound`: shape, revert, depth and the Q1 trends; one row per view,
Q1 and level), per seed, the least-squares slope of the metric against log10 of the axis over the models
(`curves.trend`): its change per tenfold more parameters (or tokens), then a 95% Student-t interval over
seeds. A revert metric's level is each model's own base score ("base"), or KL epsilon; the key says which, so
models with different base scores are compared at the same kind of level.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from elasticity.analysis.curves import trend
from elasticity.stats import Interval, t_interval

AXES = {"size": ("parameters", "tokens"), "volume": ("tokens", "parameters")}  # axis -> (varies, held fixed)
BASE_LEVEL = "base"
_BASE_LEVELED = {"samples_to_revert", "mean_excess"}  # in score / log-odds space their level is the base model's


@dataclass(frozen=True)
class ModelResult:
    label: str
    parameters: float  # 0 = unknown
    tokens: float  # pre-training tokens; 0 = unknown
    metrics: list[dict]  # the rebound's metrics.json "metrics" records

    def value(self, axis: str) -> float:
        return self.parameters if AXES[axis][0] == "parameters" else self.tokens

    def fixed(self, axis: str) -> float:
        return self.tokens if AXES[axis][1] == "tokens" else self.parameters


def metric_key(record: dict) -> tuple:
    """(group, view, metric, q1, level) of a metric record; level "base" where it is the model's own base."""
    level = record["threshold"]
    if record["metric"] in _BASE_LEVELED and record["view"] in ("score", "log_odds"):
        level = BASE_LEVEL
    return record["group"], record["view"], record["metric"], record["q1"], level


@dataclass(frozen=True)
class AxisTrend:
    """One metric's change per decade along one axis, per seed and with its t-interval over seeds."""

    axis: str  # size | volume
    fixed: float  # the other axis's value shared by the models (0 = unknown)
    models: tuple[str, ...]  # labels, in order of the axis
    key: tuple  # metric_key
    interval: Interval
    per_seed: list[float]

    @property
    def direction(self) -> str:
        iv = self.interval
        if iv.n < 2 or not math.isfinite(iv.lo):
            return "too few seeds"
        return "grows" if iv.lo > 0 else "shrinks" if iv.hi < 0 else "no clear change"

    def to_record(self) -> dict:
        group, view, metric, q1, level = self.key
        return {"axis": self.axis, "per": f"decade of {AXES[self.axis][0]}", AXES[self.axis][1]: self.fixed or None,
                "models": " ".join(self.models), "group": group, "view": view, "metric": metric, "q1": q1,
                "level": level, **self.interval.to_dict(), "direction": self.direction, "per_seed": self.per_seed}


def axis_groups(models: list[ModelResult], axis: str) -> list[list[ModelResult]]:
    """The sets of models one trend runs over: equal on the fixed axis, two or more known values on the axis,
    sorted along it. A model whose value on the axis is unknown (0) is left out of that axis."""
    groups: dict[float, list[ModelResult]] = {}
    for m in models:
        if m.value(axis) > 0:
            groups.setdefault(m.fixed(axis), []).append(m)
    return [sorted(g, key=lambda m: m.value(axis)) for _, g in sorted(groups.items())
            if len({m.value(axis) for m in g}) >= 2]


def per_seed(model: ModelResult) -> dict[tuple, list]:
    return {metric_key(r): r["per_seed"] for r in model.metrics}


def trends(models: list[ModelResult]) -> list[AxisTrend]:
    """Every metric's per-decade trend along every axis with two or more models on it (see the module doc)."""
    out = []
    for axis in AXES:
        for group in axis_groups(models, axis):
            tables = [per_seed(m) for m in group]
            keys = [k for k in tables[0] if all(k in t for t in tables[1:])]
            x = [m.value(axis) for m in group]
            for key in keys:
                seeds = min(len(t[key]) for t in tables)
                slopes = [trend(x, [t[key][s] for t in tables]) for s in range(seeds)]
                out.append(AxisTrend(axis, group[0].fixed(axis), tuple(m.label for m in group), key,
                                     t_interval(slopes), slopes))
    return out


def table_count(n: float) -> int | float | None:
    """A count as a table holds it: 92360, not 92360.0; None if unknown (0)."""
    return None if not n else int(n) if float(n).is_integer() else n


def model_rows(models: list[ModelResult]) -> list[dict]:
    """Each model's metrics, flat: the per-model values every trend is fitted to."""
    rows = []
    for m in models:
        for r in m.metrics:
            group, view, metric, q1, level = metric_key(r)
            rows.append({"model": m.label, "parameters": table_count(m.parameters), "tokens": table_count(m.tokens),
                         "group": group, "view": view, "metric": metric, "q1": q1, "level": level,
                         "threshold": r["threshold"], "mean": r["mean"], "lo": r["lo"], "hi": r["hi"], "n": r["n"],
                         "per_seed": r["per_seed"]})
    return rows
