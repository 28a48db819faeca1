"""The algorithms report: one rebound per (order, perturbation algorithm), side by side.

    heatmap.csv / .jsonl   order, algorithm, q1, q2, score (mean over seeds) with its 95% t-interval, n
    heatmaps.png           the paper's Figure 7/8 form: Q1 x Q2 -> score, one panel per order and algorithm
    metrics.csv / .jsonl   every rebound's elasticity metrics (see `analysis.rebound`), keyed by order, algorithm
    ordering.csv, .md      per order, algorithm and space: does rebound's ordering hold? (a) more alignment, more
                           negatives to fall back (samples_to_revert rises with Q1, score space); (b) fast then
                           slow (initial slope steeper than the late one: slope_ratio above 1, its interval too)
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


def ordering_rows(order: str, algorithm: str, metrics: list[dict]) -> list[dict]:
    """Per space: samples_to_revert per Q1 (rises with Q1?) and slope_ratio per Q1 (above 1, interval above 1?)."""
    out = []
    metrics = [m for m in metrics if isinstance(m["q1"], int)]  # the base-level metrics are keyed "base"
    for space in SPACES:
        revert = sorted((m["q1"], m["mean"]) for m in metrics
                        if m["view"] == space and m["metric"] == "samples_to_revert")
        ratio = sorted((m["q1"], m["mean"], m["lo"]) for m in metrics
                       if m["view"] == space and m["metric"] == "slope_ratio")
        means = [v for _, v in revert]
        rises = (all(math.isfinite(v) for v in means) and len(means) > 1
                 and all(b > a for a, b in zip(means, means[1:])))
        out.append({"order": order, "algorithm": algorithm, "space": space,
                    "samples_to_revert": " / ".join(f"{v:.0f}" if math.isfinite(v) else "not reached"
                                                    for _, v in revert),
                    "revert_rises_with_q1": rises if revert else None,
                    "slope_ratio": " / ".join(f"{v:.3g}" for _, v, _ in ratio),
                    "fast_then_slow_q1": " ".join(str(q) for q, v, lo in ratio if math.isfinite(lo) and lo > 1)})
    return out


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
    for name, rows in (("heatmap", heat), ("metrics", metrics), ("ordering", ordering)):
        run.write_text(f"{name}.csv", csv_text(rows))
        run.write_text(f"{name}.jsonl", jsonl_text(rows))
    _plot(heat, orders, algorithms, run.file("heatmaps.png"))
    head = "| order | algorithm | space | negatives to revert (per Q1) | rises with Q1 | slope ratio | fast-then-slow Q1 |"
    lines = [head, "|---|---|---|---|---|---|---|"]
    for o in ordering:
        lines.append(f"| {o['order']} | {o['algorithm']} | {o['space']} | {o['samples_to_revert']} | "
                     f"{o['revert_rises_with_q1']} | {o['slope_ratio']} | {o['fast_then_slow_q1'] or '-'} |")
    run.write_text("ordering.md", "\n".join(lines) + "\n")
    summary = []
    for order in orders:
        for algorithm in algorithms:
            o = next(x for x in ordering if (x["order"], x["algorithm"], x["space"]) == (order, algorithm, "score"))
            summary.append(f"{order} / {algorithm}: negatives to fall back to the base score {o['samples_to_revert']}"
                           f" (rises with Q1: {o['revert_rises_with_q1']}); slope ratio {o['slope_ratio']}")
    summary.append(f"heatmaps: {run.file('heatmaps.png')}; ordering: {run.file('ordering.md')}")
    run.write_text("summary.txt", "\n".join(summary) + "\n")
