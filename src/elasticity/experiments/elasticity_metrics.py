"""Numbers for the shape of a rebound curve, and t-intervals over seeds. Pure functions of arrays.

A rebound curve is a view y (score, its log-odds, KL to the base, bits/token) measured at negative-example
counts 0 = x_0 < x_1 < ... < x_n (the Q2 grid) after alignment on Q1 positives. With an early point e and a
late start l taken from the grid:

    initial slope   (y(e) - y(0)) / e
    late slope      (y(x_n) - y(l)) / (x_n - l)
    slope ratio     initial slope / late slope
    samples-to-revert to level c: the smallest x where the curve first reaches c, linearly interpolated
                    between the last point above c and the first at or below it; 0 if y(0) <= c already,
                    None ("not reached within the grid") if no point reaches c.

Every metric is computed per seed and summarised by a Student-t interval over seeds (95%, two-sided).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

# Two-sided 95% Student-t quantiles t_{0.975, df}; beyond 30 degrees of freedom the normal value is close enough.
_T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228,
         11: 2.201, 12: 2.179, 13: 2.160, 14: 2.145, 15: 2.131, 16: 2.120, 17: 2.110, 18: 2.101, 19: 2.093,
         20: 2.086, 21: 2.080, 22: 2.074, 23: 2.069, 24: 2.064, 25: 2.060, 26: 2.056, 27: 2.052, 28: 2.048,
         29: 2.045, 30: 2.042}
LOG_ODDS_EPS = 1e-4  # scores are clipped to [eps, 1 - eps] before the logit, so 0 and 1 stay finite


def t_quantile(df: int) -> float:
    """t_{0.975, df}: 4.303 for 2 degrees of freedom (3 seeds), 1.960 for very many."""
    if df < 1:
        return math.nan
    return _T975.get(df, 1.96 if df > 30 else _T975[30])


@dataclass(frozen=True)
class Interval:
    """Mean over seeds with a 95% t-interval; `n` values were finite out of `n_total`.

    Example: values 1, 2, 3 have mean 2, sd 1, so the interval is 2 +- 4.303 / sqrt(3) = [-0.484, 4.484].

    >>> i = t_interval([1.0, 2.0, 3.0])
    >>> round(i.mean, 3), round(i.lo, 3), round(i.hi, 3), i.n
    (2.0, -0.484, 4.484, 3)
    """

    mean: float
    lo: float
    hi: float
    n: int
    n_total: int

    @property
    def complete(self) -> bool:
        return self.n == self.n_total

    def to_dict(self) -> dict:
        return {"mean": self.mean, "lo": self.lo, "hi": self.hi, "n": self.n, "n_total": self.n_total}

    def text(self, digits: int = 3) -> str:
        if self.n == 0:
            return "n/a"
        if self.n == 1:
            return f"{self.mean:.{digits}g}"
        return f"{self.mean:.{digits}g} [{self.lo:.{digits}g}, {self.hi:.{digits}g}]"


def t_interval(values: Sequence[float | None]) -> Interval:
    """Mean and 95% Student-t interval of the finite values (None and NaN are left out, and counted)."""
    finite = [float(v) for v in values if v is not None and math.isfinite(v)]
    n = len(finite)
    if n == 0:
        return Interval(math.nan, math.nan, math.nan, 0, len(values))
    mean = float(np.mean(finite))
    if n == 1:
        return Interval(mean, math.nan, math.nan, 1, len(values))
    half = t_quantile(n - 1) * float(np.std(finite, ddof=1)) / math.sqrt(n)
    return Interval(mean, mean - half, mean + half, n, len(values))


def log_odds(p: float | np.ndarray, n: int | None = None, eps: float = LOG_ODDS_EPS) -> float | np.ndarray:
    """Log-odds of a mean score p. With n (the samples behind the mean) the empirical logit
    ln((n p + 1/2) / (n (1 - p) + 1/2)), whose range the sample count bounds: a mean of 64 samples cannot
    tell 0.999 from 0.99999, and a plain logit would let that unresolvable tail dominate a slope. Without n,
    ln(p / (1 - p)) with p clipped to [eps, 1 - eps].

    Examples: log_odds(0.5) = 0, log_odds(0.9) = ln 9 = 2.197; log_odds(1.0, n=64) = ln(64.5 / 0.5) = 4.860,
    log_odds(0.75, n=4) = ln(3.5 / 1.5) = 0.847.
    """
    q = np.asarray(p, dtype=np.float64)
    if n is not None:
        out = np.log((n * q + 0.5) / (n * (1 - q) + 0.5))
    else:
        q = np.clip(q, eps, 1 - eps)
        out = np.log(q / (1 - q))
    return float(out) if out.ndim == 0 else out


def _at(x: Sequence[float], y: Sequence[float], q: float) -> float:
    xs = list(x)
    if q not in xs:
        raise ValueError(f"{q} is not a grid point ({xs})")
    return float(y[xs.index(q)])


def secant_slope(x: Sequence[float], y: Sequence[float], a: float, b: float) -> float:
    """(y(b) - y(a)) / (b - a) between two grid points.

    Example: x = (0, 10, 50), y = (0.9, 0.6, 0.5): secant_slope(x, y, 0, 10) = -0.03 per example.
    """
    return (_at(x, y, b) - _at(x, y, a)) / (b - a)


def samples_to_revert(x: Sequence[float], y: Sequence[float], level: float) -> float | None:
    """Smallest x at which y first reaches `level` or below, linearly interpolated; None if never.

    Example: x = (0, 10, 50), y = (0.9, 0.6, 0.4), level 0.5: the curve crosses between 10 and 50,
    at 10 + (0.6 - 0.5) / (0.6 - 0.4) * 40 = 30.0. With level 0.3 it is never reached: None.
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


def curve_shape(x: Sequence[float], y: Sequence[float], early: float, late: float) -> dict[str, float]:
    """Initial slope over [0, early], late slope over [late, max x] and their ratio (see the module doc).

    Example: x = (0, 10, 50, 100), y = (0.9, 0.6, 0.45, 0.4), early 10, late 50: initial slope -0.03,
    late slope -0.001, ratio 30.
    """
    initial = secant_slope(x, y, x[0], early)
    late_slope = secant_slope(x, y, late, x[-1])
    ratio = initial / late_slope if late_slope != 0 else math.nan
    return {"initial_slope": initial, "late_slope": late_slope, "slope_ratio": ratio}


def trend(q1: Sequence[float], values: Sequence[float | None]) -> float:
    """Least-squares slope of a metric against log10(Q1) within one seed: the change per tenfold Q1.

    Example: Q1 = (100, 1000, 10000) with initial slopes (-0.01, -0.02, -0.03) give -0.01 per decade.
    NaN if fewer than two Q1 have a finite value.
    """
    pts = [(math.log10(a), float(v)) for a, v in zip(q1, values) if v is not None and math.isfinite(v)]
    if len(pts) < 2:
        return math.nan
    xs, ys = np.array([p[0] for p in pts]), np.array([p[1] for p in pts])
    xc = xs - xs.mean()
    return float((xc * (ys - ys.mean())).sum() / (xc ** 2).sum())
