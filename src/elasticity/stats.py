"""Statistics every experiment shares: Student-t intervals over seeds, clustered standard errors, and the
one way an interval is written. The bottom floor: numpy only.

Every metric is computed per seed and summarised by a two-sided 95% Student-t interval over seeds.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

LN2 = math.log(2)  # nats per bit
LOG_ODDS_EPS = 1e-4  # without a sample count, scores are clipped to [eps, 1 - eps] so 0 and 1 stay finite

# Two-sided 95% Student-t quantiles t_{0.975, df}; beyond 30 degrees of freedom the normal value is close enough.
_T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228,
         11: 2.201, 12: 2.179, 13: 2.160, 14: 2.145, 15: 2.131, 16: 2.120, 17: 2.110, 18: 2.101, 19: 2.093,
         20: 2.086, 21: 2.080, 22: 2.074, 23: 2.069, 24: 2.064, 25: 2.060, 26: 2.056, 27: 2.052, 28: 2.048,
         29: 2.045, 30: 2.042}


def t_quantile(df: int) -> float:
    """t_{0.975, df}.

    >>> t_quantile(2), t_quantile(1000)
    (4.303, 1.96)
    """
    if df < 1:
        return math.nan
    return _T975.get(df, 1.96 if df > 30 else _T975[30])


def format_interval(mean: float, lo: float, hi: float, spec: str = ".4g") -> str:
    """`mean [lo, hi]` in the format `spec`; the mean alone without a finite interval; "n/a" without a mean.

    >>> format_interval(2.0, -0.484, 4.484), format_interval(0.5, math.nan, math.nan, ".3f")
    ('2 [-0.484, 4.484]', '0.500')
    """
    if not math.isfinite(mean):
        return "n/a"
    if not math.isfinite(lo):
        return f"{mean:{spec}}"
    return f"{mean:{spec}} [{lo:{spec}}, {hi:{spec}}]"


@dataclass(frozen=True)
class Interval:
    """Mean over seeds with a 95% t-interval; `n` values were finite out of `n_total`.

    Example: values 1, 2, 3 have mean 2, sd 1, so the interval is 2 +- 4.303 / sqrt(3) = [-0.484, 4.484].

    >>> i = t_interval([1.0, 2.0, 3.0])
    >>> round(i.mean, 3), round(i.lo, 3), round(i.hi, 3), i.n
    (2.0, -0.484, 4.484, 3)
    >>> i.text(".3g")
    '2 [-0.484, 4.48]'
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

    def text(self, spec: str = ".4g") -> str:
        return format_interval(self.mean, self.lo, self.hi, spec)


def t_interval(values: Sequence[float | None]) -> Interval:
    """Mean and 95% Student-t interval of the finite values (None and NaN are left out, and counted).

    >>> i = t_interval([10.0, None, 14.0])
    >>> i.mean, i.n, i.n_total, round(i.hi - i.mean, 3)   # 12.706 * sd 2.828 / sqrt(2)
    (12.0, 2, 3, 25.412)
    """
    finite = [float(v) for v in values if v is not None and math.isfinite(v)]
    n = len(finite)
    if n == 0:
        return Interval(math.nan, math.nan, math.nan, 0, len(values))
    mean = float(np.mean(finite))
    if n == 1:
        return Interval(mean, math.nan, math.nan, 1, len(values))
    half = t_quantile(n - 1) * float(np.std(finite, ddof=1)) / math.sqrt(n)
    return Interval(mean, mean - half, mean + half, n, len(values))


def finite_mean(values: Sequence[float | None]) -> float:
    """Mean of the finite values; NaN if there are none.

    >>> finite_mean([1.0, None, float("nan"), 3.0])
    2.0
    """
    finite = [v for v in values if v is not None and math.isfinite(v)]
    return sum(finite) / len(finite) if finite else math.nan


def log_odds(p: float | np.ndarray, n: int | None = None, eps: float = LOG_ODDS_EPS) -> float | np.ndarray:
    """Log-odds of a mean score p.

    With n (the samples behind the mean) the empirical logit ln((n p + 1/2) / (n (1 - p) + 1/2)), whose range
    the sample count bounds: a mean of 64 samples cannot tell 0.999 from 0.99999, and a plain logit would let
    that unresolvable tail dominate a slope. Without n, ln(p / (1 - p)) with p clipped to [eps, 1 - eps].

    >>> round(log_odds(0.9), 3), round(log_odds(1.0, n=64), 3), round(log_odds(0.75, n=4), 3), log_odds(0.5)
    (2.197, 4.86, 0.847, 0.0)
    """
    q = np.asarray(p, dtype=np.float64)
    if n is not None:
        out = np.log((n * q + 0.5) / (n * (1 - q) + 0.5))
    else:
        q = np.clip(q, eps, 1 - eps)
        out = np.log(q / (1 - q))
    return float(out) if out.ndim == 0 else out


def clustered_mean_se(values: list[float], groups: list[int]) -> tuple[float, float]:
    """Mean of all values and the standard error of the mean of per-group means.

    Example: values (1, 0, 1, 1) in groups (0, 0, 1, 1): group means 0.5 and 1.0, mean 0.75,
    SE = sd(0.5, 1.0) / sqrt(2) = 0.35355 / 1.41421 = 0.25.

    >>> clustered_mean_se([1, 0, 1, 1], [0, 0, 1, 1])
    (0.75, 0.25)
    """
    by: dict[int, list[float]] = {}
    for v, g in zip(values, groups):
        by.setdefault(g, []).append(v)
    means = np.array([np.mean(v) for v in by.values()])
    se = float(np.std(means, ddof=1) / math.sqrt(len(means))) if len(means) > 1 else math.nan
    return float(np.mean(values)), se
