"""The rebound run's result files, from its typed rows (no model is loaded, no stage directory is read here).

    results.jsonl, results.csv      tidy: one row per (Q1, seed, Q2), and the base model (q1 = 0, no seed)
    metrics.json, .csv, .md         every elasticity metric with its 95% t-interval over seeds; the metric's
                                    name alone, its level (for samples-to-revert) in `threshold`
    revert.md, revert.csv           Table 3's form: negatives needed to reach the base score / KL < epsilon
    curves.csv                      the figures' data: mean and t-band per (view, Q1, Q2)
    score.png, log_odds.png, kl_response.png   the figures
    savings.json                    training tokens of the nested runs against one run per grid cell
    summary.txt                     what was found, in a few lines
"""

from __future__ import annotations

from elasticity.analysis.rebound import verdict
from elasticity.files import csv_text, jsonl_text
from elasticity.report.rebound_figures import curve_bands, plot_view
from elasticity.results import (
    KL_RESPONSE,
    LOG_ODDS,
    SCORE,
    Group,
    Metric,
    MetricRow,
    Point,
    Quantity,
    ReboundGrid,
    Savings,
    View,
)
from elasticity.runs import Run


def metric_label(row: MetricRow) -> str:
    """A metric as the tables name it, e.g. "samples_to_revert (score <= base 0.4690)"."""
    name = row.metric.value
    if row.group is Group.TREND:
        return f"{name} per decade of Q1"
    if row.metric is Metric.SAMPLES_TO_REVERT:
        if row.view == SCORE:
            return f"{name} (score <= base {row.threshold:.4f})"
        return f"{name} ({row.view.column} <= {row.threshold:g})"
    return name


def metric_text(row: MetricRow) -> str:
    """The mean with its interval, and how many seeds it rests on when not all; "not reached" if none did."""
    iv = row.interval
    if iv.n == 0:
        return "not reached" if row.metric is Metric.SAMPLES_TO_REVERT else "n/a"
    return iv.text(".4g") + (f" ({iv.n}/{iv.n_total} seeds)" if iv.n < iv.n_total else "")


def metrics_markdown(metrics: list[MetricRow]) -> str:
    lines = ["| group | view | metric | Q1 | mean [95% t-interval] | per seed |", "|---|---|---|---|---|---|"]
    for r in metrics:
        seeds = ", ".join("not reached" if v is None else f"{v:.4g}" for v in r.per_seed)
        q1 = "all" if r.q1 is None else r.q1
        lines.append(f"| {r.group.value} | {r.view.column} | {metric_label(r)} | {q1} | {metric_text(r)} | {seeds} |")
    return "\n".join(lines) + "\n"


def _reverts(metrics: list[MetricRow], q1: int) -> list[MetricRow]:
    return [r for r in metrics if r.group is Group.REVERT and r.q1 == q1 and r.metric is Metric.SAMPLES_TO_REVERT]


def revert_table(metrics: list[MetricRow], q1s) -> list[dict]:
    """Table 3's form: per Q1, negatives to reach the base score and to bring KL below epsilon."""
    out = []
    for q1 in q1s:
        row = {"q1": q1}
        for r in _reverts(metrics, q1):
            kind, iv = ("score" if r.view == SCORE else "kl"), r.interval
            row.update({f"{kind}_threshold": r.threshold, f"{kind}_mean": iv.mean, f"{kind}_lo": iv.lo,
                        f"{kind}_hi": iv.hi, f"{kind}_reached": f"{iv.n}/{iv.n_total}", f"{kind}_text": metric_text(r)})
        out.append(row)
    return out


def revert_markdown(metrics: list[MetricRow], grid: ReboundGrid) -> str:
    by = {(r.metric, r.q1): r for r in metrics if r.group is Group.REVERT}
    md = [f"| Q1 | negatives to reach the base score | negatives for KL to base < {grid.kl_epsilon:g} | "
          "smallest KL to base (nats/token) | at Q2 |", "|---|---|---|---|---|"]
    for row in revert_table(metrics, grid.q1):
        q1 = row["q1"]
        md.append(f"| {q1} | {row.get('score_text', '')} | {row.get('kl_text', '')} | "
                  f"{metric_text(by[(Metric.KL_MIN, q1)])} | {metric_text(by[(Metric.Q2_AT_KL_MIN, q1)])} |")
    return "\n".join(md) + "\n"


def summary_lines(points: list[Point], metrics: list[MetricRow], savings: Savings, grid: ReboundGrid,
                  run: Run) -> list[str]:
    base = points[0].measurement
    by = {(r.group, r.view, r.metric, r.q1): r for r in metrics}
    lines = [f"rebound: base score {base.score:.3f} +- {base.score_se:.3f}; Q1 {list(grid.q1)}, "
             f"Q2 up to {max(grid.q2)}, seeds {list(grid.seeds)}, lr {grid.lr:g}"]
    for q1 in grid.q1:
        aligned = [p.measurement.score for p in points if p.q1 == q1 and p.q2 == 0]
        parts = [f"Q1={q1}: aligned score {sum(aligned) / len(aligned):.3f}"]
        for r in _reverts(metrics, q1):
            parts.append(f"{'to base score' if r.view == SCORE else 'KL < eps'} {metric_text(r)}")
        low, at = by[(Group.REVERT, KL_RESPONSE, Metric.KL_MIN, q1)], by[(Group.REVERT, KL_RESPONSE,
                                                                           Metric.Q2_AT_KL_MIN, q1)]
        parts.append(f"smallest KL to base {metric_text(low)} at Q2 {metric_text(at)}")
        for view in (SCORE, LOG_ODDS):
            r = by.get((Group.SHAPE, view, Metric.INITIAL_SLOPE, q1))
            if r:
                parts.append(f"initial slope ({view.column}) {metric_text(r)}")
        lines.append("  " + "; ".join(parts))
    for r in metrics:
        if r.group is Group.TREND and r.view.falls and r.metric in (Metric.INITIAL_SLOPE, Metric.SAMPLES_TO_REVERT):
            lines.append(f"  more alignment data, {r.view.column} {metric_label(r)}: {metric_text(r)} -> {verdict(r)}")
    if grid.texts:  # alignment depth on the first held-out pre-training set, one line per Q1
        name = grid.texts[0]
        bpt, kl = View(Quantity.BITS_PER_TOKEN, name), View(Quantity.KL_TO_BASE, name)
        for q1 in grid.q1:
            d, k = by[(Group.DEPTH, bpt, Metric.DELTA_BITS_PER_TOKEN, q1)], by[(Group.DEPTH, kl, Metric.KL_TO_BASE, q1)]
            lines.append(f"  depth Q1={q1}: {name} bits/token {base.bits_per_token[name]:.3f} -> change "
                         f"{metric_text(d)}, KL to base {metric_text(k)} nats/token")
    lines.append(f"  training tokens: nested {savings.nested_tokens:,} vs naive grid {savings.naive_tokens:,} "
                 f"({savings.saving_factor:.1f}x fewer; {savings.runs_nested} runs instead of {savings.runs_naive})")
    lines.append(f"  results: {run.path}")
    return lines


def write_rebound(run: Run, points: list[Point], metrics: list[MetricRow], savings: Savings,
                  grid: ReboundGrid) -> None:
    """Write every result file of the rebound run (see the module doc). `points` starts with the base."""
    records = [p.to_record() for p in points]
    run.write_text("results.jsonl", jsonl_text(records))
    run.write_text("results.csv", csv_text(records))
    run.write_json("metrics.json", {"interval": "95% Student-t over seeds", "early_q2": grid.early,
                                    "late_q2": grid.late, "kl_epsilon": grid.kl_epsilon,
                                    "metrics": [m.to_record() for m in metrics]})
    run.write_text("metrics.csv", csv_text([m.to_record() for m in metrics]))
    run.write_text("metrics.md", metrics_markdown(metrics))
    run.write_text("revert.csv", csv_text(revert_table(metrics, grid.q1)))
    run.write_text("revert.md", revert_markdown(metrics, grid))
    on_grid = [p for p in points if not p.is_base]
    bands = []
    for view in (SCORE, LOG_ODDS, KL_RESPONSE):
        b = curve_bands(on_grid, view, grid.q1)
        bands += b
        kl = view == KL_RESPONSE
        plot_view(b, grid.kl_epsilon if kl else view.of(points[0]), view, run.file(f"{view.column}.png"),
                  "KL to the base model on held-out responses (mean over seeds, 95% t-band)" if kl else "",
                  f"epsilon = {grid.kl_epsilon:g}" if kl else "base model")
    run.write_text("curves.csv", csv_text([b.to_record() for b in bands]))
    run.write_json("savings.json", savings.to_record())
    run.write_text("summary.txt", "\n".join(summary_lines(points, metrics, savings, grid, run)) + "\n")
