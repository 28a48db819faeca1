"""Elasticity metrics of a rebound experiment: per Q1 curve, per seed, then a t-interval over seeds.

Input: the tidy result rows (one per (Q1, seed, Q2), plus the base model's row with q1 = 0, seed None).
Output: flat metric rows `{group, view, metric, q1, mean, lo, hi, n, n_total, per_seed}`:

    shape   initial_slope, late_slope, slope_ratio of every view (score, log_odds, kl_response, bits/token ...)
    revert  samples_to_revert: Q2 at which the score first reaches the base model's score (the same Q2 in
            log-odds space: the logit is monotone), and Q2 at which kl_response first falls to kl_epsilon
            (Table 3's form); "not reached within the grid" is a value (None) and counted (n < n_total);
            kl_min and q2_at_kl_min: the smallest KL to the base on the grid and the Q2 where it lies
    trend   per seed, the least-squares slope of a Q1 metric against log10(Q1) ("change per tenfold more
            alignment data"): the answer to "does more alignment data revert faster?" in each space
    depth   how far alignment moved the model: the aligned model's (Q2 = 0) change of bits/token on the
            first held-out pre-training set against the base, its KL to the base there, its score gain

Intervals are 95% Student-t over seeds (`elasticity_metrics.t_interval`); with 3 seeds t = 4.303.
"""

from __future__ import annotations

import math

from elasticity.experiments.elasticity_metrics import curve_shape, samples_to_revert, t_interval, trend

FALLING_VIEWS = ("score", "log_odds", "kl_response")  # views whose rebound is a fall: faster = more negative


def views(rows: list[dict]) -> list[str]:
    """The measured columns a curve is drawn for: behaviour first, then the compression views."""
    keys = [k for k in rows[0] if k.startswith(("bpt_", "kl_"))]
    return ["score", "log_odds", *[k for k in keys if k == "kl_response"], *[k for k in keys if k != "kl_response"]]


def curve(rows: list[dict], q1: int, seed: int, view: str) -> tuple[list[int], list[float]]:
    """(Q2 values, the view's values) of one (Q1, seed) curve, sorted by Q2."""
    pts = sorted((r["q2"], r[view]) for r in rows if r["q1"] == q1 and r["seed"] == seed)
    return [p[0] for p in pts], [math.nan if p[1] is None else float(p[1]) for p in pts]


def _kl_min(x: list[int], y: list[float]) -> tuple[float, float]:
    """(Q2, value) of the smallest finite KL on a curve; the first such Q2 if several tie."""
    pts = [(v, q) for q, v in zip(x, y) if math.isfinite(v)]
    v, q = min(pts, key=lambda p: (p[0], p[1])) if pts else (math.nan, math.nan)
    return float(q), float(v)


def _row(group: str, view: str, metric: str, q1, per_seed: list) -> dict:
    iv = t_interval(per_seed)
    return {"group": group, "view": view, "metric": metric, "q1": q1, **iv.to_dict(), "per_seed": per_seed}


def analyse(rows: list[dict], q1s: tuple[int, ...], seeds: tuple[int, ...], early: int, late: int,
            kl_epsilon: float) -> list[dict]:
    """All metric rows (see the module doc) from the tidy results."""
    base = next(r for r in rows if r["q1"] == 0)
    grid = [r for r in rows if r["q1"] != 0]
    out: list[dict] = []
    names = views(grid)
    per_q1: dict[tuple[str, str], list[list]] = {}  # (view, metric) -> per Q1 -> per seed, for the trends
    has_curve = late > 0 and early > 0
    for q1 in q1s:
        for view in names if has_curve else []:
            shapes = [curve_shape(*curve(grid, q1, s, view), early, late) for s in seeds]
            for metric in ("initial_slope", "late_slope", "slope_ratio"):
                vals = [sh[metric] for sh in shapes]
                out.append(_row("shape", view, metric, q1, vals))
                per_q1.setdefault((view, metric), []).append(vals)
        reverts = {
            ("score", f"samples_to_revert (score <= base {base['score']:.4f})"):
                [samples_to_revert(*curve(grid, q1, s, "score"), base["score"]) for s in seeds],
            ("kl_response", f"samples_to_revert (kl_response <= {kl_epsilon:g})"):
                [samples_to_revert(*curve(grid, q1, s, "kl_response"), kl_epsilon) for s in seeds],
        }
        for (view, metric), vals in reverts.items():
            out.append(_row("revert", view, metric, q1, vals))
            per_q1.setdefault((view, "samples_to_revert"), []).append(vals)
        # KL to the base need not fall monotonically (the negative data pulls the model past the base):
        # its smallest value on the grid and where it lies say how close the rebound came.
        mins = [_kl_min(*curve(grid, q1, s, "kl_response")) for s in seeds]
        out.append(_row("revert", "kl_response", "kl_min", q1, [m[1] for m in mins]))
        out.append(_row("revert", "kl_response", "q2_at_kl_min", q1, [m[0] for m in mins]))
        aligned = [next(r for r in grid if r["q1"] == q1 and r["seed"] == s and r["q2"] == 0) for s in seeds]
        out.append(_row("depth", "score", "score_gain", q1, [a["score"] - base["score"] for a in aligned]))
        for key in [k for k in base if k.startswith("bpt_")]:
            out.append(_row("depth", key, "delta_bits_per_token", q1, [a[key] - base[key] for a in aligned]))
        for key in [k for k in base if k.startswith("kl_")]:
            out.append(_row("depth", key, "kl_to_base", q1, [a[key] for a in aligned]))
    if len(q1s) > 1:
        for (view, metric), table in per_q1.items():
            by_seed = [trend(q1s, [table[i][j] for i in range(len(q1s))]) for j in range(len(seeds))]
            out.append(_row("trend", view, f"{metric} per decade of Q1", "all", by_seed))
    return out


def verdict(row: dict) -> str:
    """Words for a trend row of a falling view: does more alignment data make the fall faster?"""
    if row["n"] < 2 or not math.isfinite(row["lo"]):
        return "too few seeds for an interval"
    revert = row["metric"].startswith("samples_to_revert")
    if row["hi"] < 0:
        return "fewer negatives needed with more alignment" if revert else "falls faster with more alignment"
    if row["lo"] > 0:
        return "more negatives needed with more alignment" if revert else "falls slower with more alignment"
    return "no clear difference (interval spans 0)"
