"""The algorithms report: one rebound per (order, perturbation algorithm), side by side.

    heatmap.csv / .jsonl   order, algorithm, q1, q2, score (mean over seeds) with its 95% t-interval, n
    heatmaps.png           the paper's Figure 7/8 form: Q1 x Q2 -> score, one panel per order and algorithm
    metrics.csv / .jsonl   every rebound's elasticity metrics (see `analysis.rebound`), keyed by order, algorithm
    ordering.csv, .md      per order, algorithm and space: rebound's ordering along Q1, as trends per decade of Q1
                           with their intervals: the negatives to fall back (up / down / unclear) and the initial
                           slope; the slope ratio per Q1 (fast then slow where its interval lies above 1); and
                           whether both directions are the SFT perturbation's (does the ordering hold?)
    summary.txt            the table in words
"""

from __future__ import annotations

import json
import math
from collections import defaultdict

from elasticity.files import csv_text, jsonl_text
from elasticity.runs import Run
from elasticity.stats import t_interval

SPACES = ("score", "log_odds", "kl_response")


def _rows(run: Run) -> list[dict]:
    return [json.loads(line) for line in run.file("results.jsonl").read_text().splitlines()]


def heatmap_rows(order: str, algorithm: str, rows: list[dict]) -> list[dict]:
    cells = defaultdict(list)
    for r in rows:
        if r["q1"]:
            cells[(r["q1"], r["q2"])].append(r["score"])
    out = []
    for (q1, q2), scores in sorted(cells.items()):
        i = t_interval(scores)
        out.append({"order": order, "algorithm": algorithm, "q1": q1, "q2": q2, "score": i.mean, "lo": i.lo,
                    "hi": i.hi, "n": i.n})
    return out


def _direction(row: dict | None) -> str:
    """up / down by the trend's 95% interval (per decade of Q1), else "unclear" (or "-" without the metric)."""
    if row is None or not math.isfinite(row["mean"]):
        return "-"
    return "up" if row["lo"] > 0 else "down" if row["hi"] < 0 else "unclear"


def _interval(row: dict | None) -> str:
    return "-" if row is None or not math.isfinite(row["mean"]) else f"{row['mean']:.3g} [{row['lo']:.3g}, {row['hi']:.3g}]"


def ordering_rows(order: str, algorithm: str, metrics: list[dict]) -> list[dict]:
    """Per space, rebound's ordering along Q1 as the trends per decade of Q1 (t-intervals over seeds) give it: the
    negatives to fall back to the base (score; KL: below epsilon) and the initial slope, each with a direction,
    beside their per-Q1 means and the Q1s whose slope ratio (initial / late) lies above 1 with its interval."""
    out = []
    per_q1 = [m for m in metrics if isinstance(m["q1"], int)]  # the base-level metrics are keyed "base"
    trend = {(m["view"], m["metric"]): m for m in metrics if m["group"] == "trend"}
    for space in SPACES:
        revert = sorted((m["q1"], m["mean"]) for m in per_q1
                        if m["view"] == space and m["metric"] == "samples_to_revert")
        ratio = sorted((m["q1"], m["mean"], m["lo"]) for m in per_q1
                       if m["view"] == space and m["metric"] == "slope_ratio")
        out.append({"order": order, "algorithm": algorithm, "space": space,
                    "samples_to_revert": " / ".join(f"{v:.0f}" if math.isfinite(v) else "not reached"
                                                    for _, v in revert) or "-",
                    "revert_per_decade": _interval(trend.get((space, "samples_to_revert"))),
                    "revert_direction": _direction(trend.get((space, "samples_to_revert"))),
                    "initial_slope_per_decade": _interval(trend.get((space, "initial_slope"))),
                    "initial_slope_direction": _direction(trend.get((space, "initial_slope"))),
                    "slope_ratio": " / ".join(f"{v:.3g}" for _, v, _ in ratio),
                    "fast_then_slow_q1": " ".join(str(q) for q, v, lo in ratio if math.isfinite(lo) and lo > 1)})
    return out


def same_as_sft(ordering: list[dict]) -> None:
    """Mark each row with whether its directions are the SFT perturbation's in the same order and space."""
    sft = {(o["order"], o["space"]): o for o in ordering if o["algorithm"] == "sft"}
    for o in ordering:
        ref = sft.get((o["order"], o["space"]))
        o["same_as_sft"] = None if ref is None or o is ref else all(
            o[k] == ref[k] for k in ("revert_direction", "initial_slope_direction"))


def _plot(heat: list[dict], orders, algorithms, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, axes = plt.subplots(len(orders), len(algorithms), squeeze=False,
                             figsize=(3.2 * len(algorithms), 2.8 * len(orders)))
    for i, order in enumerate(orders):
        for j, algorithm in enumerate(algorithms):
            cells = [h for h in heat if h["order"] == order and h["algorithm"] == algorithm]
            q1s, q2s = sorted({h["q1"] for h in cells}), sorted({h["q2"] for h in cells})
            grid = np.full((len(q1s), len(q2s)), np.nan)
            for h in cells:
                grid[q1s.index(h["q1"]), q2s.index(h["q2"])] = h["score"]
            ax = axes[i][j]
            ax.imshow(grid, vmin=0, vmax=1, cmap="RdYlGn", aspect="auto", origin="lower")
            for (a, b), v in np.ndenumerate(grid):
                ax.text(b, a, f"{v:.2f}", ha="center", va="center", fontsize=7)
            ax.set_xticks(range(len(q2s)), [str(q) for q in q2s], fontsize=7)
            ax.set_yticks(range(len(q1s)), [str(q) for q in q1s], fontsize=7)
            ax.set_title(f"{order}: perturb by {algorithm}", fontsize=9)
            ax.set_xlabel("Q2 (perturbation examples)", fontsize=8)
            if j == 0:
                ax.set_ylabel("Q1 (alignment examples)", fontsize=8)
    fig.suptitle("score after alignment on Q1 and perturbation on Q2 (mean over seeds; reverse: read reversed)",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_algorithms(run: Run, runs: dict[tuple[str, str], Run], orders, algorithms) -> None:
    heat, metrics, ordering = [], [], []
    for (order, algorithm), r in runs.items():
        heat += heatmap_rows(order, algorithm, _rows(r))
        own = json.loads(r.file("metrics.json").read_text())["metrics"]
        metrics += [{"order": order, "algorithm": algorithm, **m} for m in own]
        ordering += ordering_rows(order, algorithm, own)
    same_as_sft(ordering)
    for name, rows in (("heatmap", heat), ("metrics", metrics), ("ordering", ordering)):
        run.write_text(f"{name}.csv", csv_text(rows))
        run.write_text(f"{name}.jsonl", jsonl_text(rows))
    _plot(heat, orders, algorithms, run.file("heatmaps.png"))
    head = ("| order | algorithm | space | negatives to revert per Q1 | per decade of Q1 | | initial slope per decade "
            "of Q1 | | slope ratio per Q1 | fast-then-slow Q1 | same as SFT |")
    lines = [head, "|---|---|---|---|---|---|---|---|---|---|---|"]
    for o in ordering:
        lines.append(f"| {o['order']} | {o['algorithm']} | {o['space']} | {o['samples_to_revert']} | "
                     f"{o['revert_per_decade']} | {o['revert_direction']} | {o['initial_slope_per_decade']} | "
                     f"{o['initial_slope_direction']} | {o['slope_ratio']} | {o['fast_then_slow_q1'] or '-'} | "
                     f"{'-' if o['same_as_sft'] is None else o['same_as_sft']} |")
    run.write_text("ordering.md", "\n".join(lines) + "\n")
    summary = []
    for order in orders:
        for algorithm in algorithms:
            o = next(x for x in ordering if (x["order"], x["algorithm"], x["space"]) == (order, algorithm, "score"))
            summary.append(f"{order} / {algorithm}: negatives to fall back to the base score {o['samples_to_revert']}"
                           f" per Q1, {o['revert_per_decade']} per decade of Q1 ({o['revert_direction']}); initial "
                           f"slope {o['initial_slope_per_decade']} per decade ({o['initial_slope_direction']})"
                           + ("" if o["same_as_sft"] is None else f"; same ordering as SFT: {o['same_as_sft']}"))
    summary.append(f"heatmaps: {run.file('heatmaps.png')}; ordering: {run.file('ordering.md')}")
    run.write_text("summary.txt", "\n".join(summary) + "\n")
