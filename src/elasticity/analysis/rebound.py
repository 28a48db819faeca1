"""Elasticity metrics of a rebound experiment: per Q1 curve, per seed, then a t-interval over seeds.

Input: the grid points (`results.Point`: one per (Q1, seed, Q2), and the base model with q1 = 0, no seed).
Output: `results.MetricRow`s, in four groups:

    shape   initial_slope, late_slope, slope_ratio of every view (score, log_odds, kl_response, bits/token ...)
    revert  samples_to_revert: Q2 at which the score first reaches the base model's score (threshold = that
            score; the same Q2 in log-odds space: the logit is monotone), and Q2 at which kl_response first
            falls to kl_epsilon (threshold = epsilon; Table 3's form); "not reached within the grid" is a value
            (None) and counted (n < n_total); kl_min and q2_at_kl_min: the smallest KL to the base on the grid
            and the Q2 where it lies; mean_excess: the curve's mean height above the base model's score (or
            log-odds) over the Q2 grid, the threshold (trapezoid area / max Q2)
    trend   per seed, the least-squares slope of a per-Q1 metric against log10(Q1) ("change per tenfold more
            alignment data"): the answer to "does more alignment data revert faster?" in each space
    depth   how far alignment moved the model: the aligned model's (Q2 = 0) change of bits/token on each
            held-out set against the base, its KL to the base there, its score gain

Intervals are 95% Student-t over seeds (`stats.t_interval`); with 3 seeds t = 4.303.
"""

from __future__ import annotations

import math

from elasticity.analysis.curves import curve_shape, mean_excess, samples_to_revert, trend
from elasticity.results import (
    BUILT_IN_PAIRS,
    KL_RESPONSE,
    LOG_ODDS,
    SCORE,
    Group,
    Metric,
    MetricRow,
    Point,
    Quantity,
    ReboundGrid,
    View,
)
from elasticity.stats import t_interval

SHAPES = (Metric.INITIAL_SLOPE, Metric.LATE_SLOPE, Metric.SLOPE_RATIO)


def curve(points: list[Point], q1: int, seed: int, view: View) -> tuple[list[int], list[float]]:
    """(Q2 values, the view's values) of one (Q1, seed) curve, sorted by Q2."""
    pts = sorted((p.q2, view.of(p)) for p in points if p.q1 == q1 and p.seed == seed)
    return [p[0] for p in pts], [math.nan if p[1] is None else float(p[1]) for p in pts]


def _kl_min(x: list[int], y: list[float]) -> tuple[float, float]:
    """(Q2, value) of the smallest finite KL on a curve; the first such Q2 if several tie."""
    pts = [(v, q) for q, v in zip(x, y) if math.isfinite(v)]
    v, q = min(pts, key=lambda p: (p[0], p[1])) if pts else (math.nan, math.nan)
    return float(q), float(v)


def _row(group: Group, view: View, metric: Metric, q1: int | None, per_seed: list,
         threshold: float | None = None) -> MetricRow:
    return MetricRow(group, view, metric, q1, t_interval(per_seed), per_seed, threshold)


def analyse(points: list[Point], grid: ReboundGrid) -> list[MetricRow]:
    """All metric rows (see the module doc), per Q1 and then the trends over Q1."""
    base = next(p for p in points if p.is_base)
    on_grid = [p for p in points if not p.is_base]
    seeds, out = grid.seeds, []
    per_q1: dict[tuple[View, Metric, float | None], list[list]] = {}  # per Q1, per seed: the trends' input
    levels = ((SCORE, base.measurement.score), (KL_RESPONSE, grid.kl_epsilon))
    for q1 in grid.q1:
        for view in base.measurement.views() if grid.early > 0 and grid.late > 0 else []:
            shapes = [curve_shape(*curve(on_grid, q1, s, view), grid.early, grid.late) for s in seeds]
            for metric in SHAPES:
                vals = [getattr(sh, metric.value) for sh in shapes]
                out.append(_row(Group.SHAPE, view, metric, q1, vals))
                per_q1.setdefault((view, metric, None), []).append(vals)
        for view, level in levels:
            vals = [samples_to_revert(*curve(on_grid, q1, s, view), level) for s in seeds]
            out.append(_row(Group.REVERT, view, Metric.SAMPLES_TO_REVERT, q1, vals, level))
            per_q1.setdefault((view, Metric.SAMPLES_TO_REVERT, level), []).append(vals)
        for view in (SCORE, LOG_ODDS):  # how far above the base model the curve stays, in both spaces
            level = view.of(base)
            vals = [mean_excess(*curve(on_grid, q1, s, view), level) for s in seeds]
            out.append(_row(Group.REVERT, view, Metric.MEAN_EXCESS, q1, vals, level))
            per_q1.setdefault((view, Metric.MEAN_EXCESS, level), []).append(vals)
        # KL to the base need not fall monotonically (the negative data pulls the model past the base):
        # its smallest value on the grid and where it lies say how close the rebound came.
        mins = [_kl_min(*curve(on_grid, q1, s, KL_RESPONSE)) for s in seeds]
        out.append(_row(Group.REVERT, KL_RESPONSE, Metric.KL_MIN, q1, [m[1] for m in mins]))
        out.append(_row(Group.REVERT, KL_RESPONSE, Metric.Q2_AT_KL_MIN, q1, [m[0] for m in mins]))
        aligned = [next(p for p in on_grid if p.q1 == q1 and p.seed == s and p.q2 == 0).measurement for s in seeds]
        b = base.measurement
        out.append(_row(Group.DEPTH, SCORE, Metric.SCORE_GAIN, q1, [a.score - b.score for a in aligned]))
        for name in (*BUILT_IN_PAIRS, *b.texts):
            out.append(_row(Group.DEPTH, View(Quantity.BITS_PER_TOKEN, name), Metric.DELTA_BITS_PER_TOKEN, q1,
                            [a.bits_per_token[name] - b.bits_per_token[name] for a in aligned]))
        out.append(_row(Group.DEPTH, KL_RESPONSE, Metric.KL_TO_BASE, q1, [a.kl_response for a in aligned]))
        for name in b.texts:
            out.append(_row(Group.DEPTH, View(Quantity.KL_TO_BASE, name), Metric.KL_TO_BASE, q1,
                            [a.kl_to_base[name] for a in aligned]))
    if len(grid.q1) > 1:
        for (view, metric, level), table in per_q1.items():
            by_seed = [trend(grid.q1, [table[i][j] for i in range(len(grid.q1))]) for j in range(len(seeds))]
            out.append(_row(Group.TREND, view, metric, None, by_seed, level))
    return out


def verdict(row: MetricRow) -> str:
    """Words for a trend row of a falling view: does more alignment data make the fall faster?"""
    iv = row.interval
    if iv.n < 2 or not math.isfinite(iv.lo):
        return "too few seeds for an interval"
    revert = row.metric is Metric.SAMPLES_TO_REVERT
    if iv.hi < 0:
        return "fewer negatives needed with more alignment" if revert else "falls faster with more alignment"
    if iv.lo > 0:
        return "more negatives needed with more alignment" if revert else "falls slower with more alignment"
    return "no clear difference (interval spans 0)"
