"""Rebound figures in the paper's form: a view against Q2, one curve per Q1 (mean over seeds with a 95%
t-band), the base model's value dashed. Each PNG's numbers are the `curves.csv` rows of its view."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from elasticity.files import save_png  # noqa: E402
from elasticity.results import CurveBand, Point, View  # noqa: E402
from elasticity.stats import t_interval  # noqa: E402

LABELS = {
    "score": "behaviour score (higher = more aligned)",
    "log_odds": "log-odds of the score",
    "kl_response": "KL(model || base), nats / response token",
}


def curve_bands(points: list[Point], view: View, q1s: tuple[int, ...]) -> list[CurveBand]:
    """Per (Q1, Q2): mean of the view over seeds and its 95% t-interval (the figure's data)."""
    out = []
    for q1 in q1s:
        for q2 in sorted({p.q2 for p in points if p.q1 == q1}):
            vals = [view.of(p) for p in points if p.q1 == q1 and p.q2 == q2]
            out.append(CurveBand(view, q1, q2, t_interval(vals)))
    return out


def plot_view(bands: list[CurveBand], base_value: float | None, view: View, path: Path, title: str = "",
              base_label: str = "base model") -> Path:
    """One view against Q2 (symlog x axis so Q2 = 0 and the fast phase both show); `base_value` dashed."""
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    q1s = sorted({b.q1 for b in bands})
    colors = plt.cm.viridis([i / max(1, len(q1s) - 1) * 0.85 for i in range(len(q1s))])
    for q1, color in zip(q1s, colors):
        bs = [b for b in bands if b.q1 == q1]
        x = [b.q2 for b in bs]
        ax.plot(x, [b.interval.mean for b in bs], "o-", color=color, ms=3, label=f"Q1 = {q1}")
        if all(math.isfinite(b.interval.lo) for b in bs):
            ax.fill_between(x, [b.interval.lo for b in bs], [b.interval.hi for b in bs], color=color, alpha=0.18,
                            lw=0)
    if base_value is not None and math.isfinite(base_value):
        ax.axhline(base_value, color="k", ls="--", lw=1, label=base_label)
    small = min((b.q2 for b in bands if b.q2 > 0), default=1)
    ax.set_xscale("symlog", linthresh=small)
    ax.set_xlim(left=0)
    ax.set_xlabel("Q2 (negative examples)")
    ax.set_ylabel(LABELS.get(view.column, view.column))
    ax.set_title(title or f"{view.column} vs negative fine-tuning (mean over seeds, 95% t-band)", fontsize=9)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return save_png(fig, path)
