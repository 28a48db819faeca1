"""Numbers for the shape of a rebound curve. Pure functions of arrays.

A rebound curve is a view y (score, its log-odds, KL to the base, bits/token) measured at negative-example
counts 0 = x_0 < x_1 < ... < x_n (the Q2 grid) after alignment on Q1 positives. With an early point e and a
late start l taken from the grid:

    initial slope   (y(e) - y(0)) / e
    late slope      (y(x_n) - y(l)) / (x_n - l)
    slope ratio     initial slope / late slope
    samples-to-revert to level c: the smallest x where the curve first reaches c, linearly interpolated
                    between the last point above c and the first at or below it; 0 if y(0) <= c already,
                    None ("not reached within the grid") if no point reaches c.
    mean excess over level c: the trapezoid area between the curve and c, divided by x_n - x_0.

Every metric is computed per seed and summarised by a Student-t interval over seeds (`stats.t_interval`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np


class Shape(NamedTuple):
    initial_slope: float
    late_slope: float
    slope_ratio: float


def _at(x: Sequence[float], y: Sequence[float], q: float) -> float:
    xs = list(x)
    if q not in xs:
        raise ValueError(f"{q} is not a grid point ({xs})")
    return float(y[xs.index(q)])


def secant_slope(x: Sequence[float], y: Sequence[float], a: float, b: float) -> float:
    """(y(b) - y(a)) / (b - a) between two grid points.

    >>> round(secant_slope((0, 10, 50), (0.9, 0.6, 0.5), 0, 10), 12)   # per example
    -0.03
    """
    return (_at(x, y, b) - _at(x, y, a)) / (b - a)


def samples_to_revert(x: Sequence[float], y: Sequence[float], level: float) -> float | None:
    """Smallest x at which y first reaches `level` or below, linearly interpolated; None if never.

    The curve (0.9, 0.6, 0.4) at x = (0, 10, 50) crosses 0.5 between 10 and 50, at
    10 + (0.6 - 0.5) / (0.6 - 0.4) * 40 = 30; it never reaches 0.3:

    >>> samples_to_revert((0, 10, 50), (0.9, 0.6, 0.4), 0.5), samples_to_revert((0, 10, 50), (0.9, 0.6, 0.4), 0.3)
    (30.0, None)
    """
    for i, (xi, yi) in enumerate(zip(x, y)):
        if not math.isfinite(yi):
            continue
        if yi <= level:
            if i == 0:
                return float(xi)
            x0, y0 = x[i - 1], y[i - 1]
            if not math.isfinite(y0):
                return float(xi)
            return float(x0 + (y0 - level) / (y0 - yi) * (xi - x0))
    return None


def mean_excess(x: Sequence[float], y: Sequence[float], level: float) -> float:
    """The curve's mean height above `level` over the grid: the trapezoid area between them / (x_n - x_0).

    One number for the whole fall: how far above the base model an aligned model stays, on average, while the
    negative examples come in (negative where it has fallen below). The curve (0.9, 0.6, 0.4) at x = (0, 10, 50)
    is 0.4, 0.1 and -0.1 above 0.5: (10 * 0.25 + 40 * 0) / 50 = 0.05.

    >>> round(mean_excess((0, 10, 50), (0.9, 0.6, 0.4), 0.5), 12)
    0.05
    """
    area = sum((b - a) * ((ya - level) + (yb - level)) / 2 for a, b, ya, yb in zip(x, x[1:], y, y[1:]))
    return float(area / (x[-1] - x[0])) if x[-1] > x[0] else math.nan


def curve_shape(x: Sequence[float], y: Sequence[float], early: float, late: float) -> Shape:
    """Initial slope over [0, early], late slope over [late, max x] and their ratio (see the module doc).

    >>> s = curve_shape((0, 10, 50, 100), (0.9, 0.6, 0.45, 0.4), early=10, late=50)
    >>> round(s.initial_slope, 12), round(s.late_slope, 12), round(s.slope_ratio, 9)
    (-0.03, -0.001, 30.0)
    """
    initial = secant_slope(x, y, x[0], early)
    late_slope = secant_slope(x, y, late, x[-1])
    ratio = initial / late_slope if late_slope != 0 else math.nan
    return Shape(initial, late_slope, ratio)


def trend(q1: Sequence[float], values: Sequence[float | None]) -> float:
    """Least-squares slope of a metric against log10(Q1) within one seed: the change per tenfold Q1.

    NaN if fewer than two Q1 have a finite value.

    >>> round(trend((100, 1000, 10000), (-0.01, -0.02, -0.03)), 12), trend((100, 1000), (None, -0.02))
    (-0.01, nan)
    """
    pts = [(math.log10(a), float(v)) for a, v in zip(q1, values) if v is not None and math.isfinite(v)]
    if len(pts) < 2:
        return math.nan
    xs, ys = np.array([p[0] for p in pts]), np.array([p[1] for p in pts])
    xc = xs - xs.mean()
    return float((xc * (ys - ys.mean())).sum() / (xc ** 2).sum())
