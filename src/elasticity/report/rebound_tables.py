"""The rebound run's result files, built from its stages' run directories (no model is loaded here).

    results.jsonl, results.csv      tidy: one row per (Q1, seed, Q2), and the base model (q1 = 0, no seed)
    metrics.json, .csv, .md         every elasticity metric with its 95% t-interval over seeds
    revert.md, revert.csv           Table 3's form: negatives needed to reach the base score / KL < epsilon
    curves.csv                      the figures' data: mean and t-band per (view, Q1, Q2)
    score.png, log_odds.png, kl_response.png   the figures
    savings.json                    training tokens of the nested runs against one run per grid cell
    summary.txt                     what was found, in a few lines
"""

from __future__ import annotations

import csv
import io
import json
import math

from elasticity.experiments.elasticity_metrics import log_odds
from elasticity.experiments.rebound_analysis import FALLING_VIEWS, analyse, verdict
from elasticity.report.rebound_figures import curve_bands, plot_view
from elasticity.runs import Run, read_jsonl

_FIRST = ["q1", "seed", "q2", "examples", "tokens", "steps", "train_loss", "score", "score_se", "samples",
          "log_odds", "kl_response"]


def csv_text(rows: list[dict], columns: list[str] | None = None) -> str:
    """Rows as CSV (lists joined with ';', None as an empty cell)."""
    columns = columns or list(dict.fromkeys(k for r in rows for k in r))
    buf = io.StringIO()
    w = csv.DictWriter(buf, columns, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: ";".join("" if x is None else f"{x:g}" for x in v) if isinstance(v, list) else
                    ("" if v is None else v) for k, v in r.items()})
    return buf.getvalue()


def collect_rows(base: Run, negatives: dict[tuple[int, int], Run], samples: int) -> list[dict]:
    """The tidy results: the base row, then every grid point sorted by (Q1, seed, Q2).

    `log_odds` is (re)derived here from the score and the `samples` behind it (the empirical logit), so a
    change of that definition never needs a model run.
    """
    rows = [dict(p, seed=None) for p in read_jsonl(base.file("points.jsonl"))]
    for (q1, seed), r in sorted(negatives.items()):
        points = {p["q2"]: p for p in read_jsonl(r.file("points.jsonl"))}  # a resumed run's last word wins
        rows += [points[q] for q in sorted(points)]
    for r in rows:
        r["samples"] = r.get("samples", samples)
        r["log_odds"] = log_odds(r["score"], r["samples"])
    cols = _FIRST + [k for k in rows[0] if k not in _FIRST]
    return [{k: r.get(k) for k in cols} for r in rows]


def savings(positives: dict[int, Run], negatives: dict[tuple[int, int], Run], q1s, q2s) -> dict:
    """Training tokens actually processed by the nested runs and by the naive grid (one run per cell).

    A naive cell (Q1, Q2, seed) trains on the first Q1 positives then the first Q2 negatives of that seed's
    orders, so it costs pos(Q1) + neg(Q2) tokens, read from the nested runs at those very marks.
    """
    nested = naive = 0
    for seed, pos in positives.items():
        marks = json.loads(pos.file("marks.json").read_text())
        nested += json.loads(pos.file("summary.json").read_text())["tokens"]
        for q1 in q1s:
            neg = {p["q2"]: p["tokens"] for p in read_jsonl(negatives[(q1, seed)].file("points.jsonl"))}
            nested += neg[max(q2s)]
            naive += sum(marks[str(q1)]["tokens"] + neg[q2] for q2 in q2s)
    return {"nested_tokens": nested, "naive_tokens": naive, "saved_tokens": naive - nested,
            "saving_factor": naive / nested if nested else math.nan,
            "runs_nested": len(positives) + len(negatives), "runs_naive": len(positives) * len(q1s) * len(q2s)}


def _fmt(r: dict) -> str:
    if r["n"] == 0:
        return "not reached" if r["metric"].startswith("samples_to_revert") else "n/a"
    text = f"{r['mean']:.4g}" + (f" [{r['lo']:.4g}, {r['hi']:.4g}]" if r["n"] > 1 else "")
    return text + (f" ({r['n']}/{r['n_total']} seeds)" if r["n"] < r["n_total"] else "")


def metrics_markdown(metrics: list[dict]) -> str:
    lines = ["| group | view | metric | Q1 | mean [95% t-interval] | per seed |", "|---|---|---|---|---|---|"]
    for r in metrics:
        seeds = ", ".join("not reached" if v is None else f"{v:.4g}" for v in r["per_seed"])
        lines.append(f"| {r['group']} | {r['view']} | {r['metric']} | {r['q1']} | {_fmt(r)} | {seeds} |")
    return "\n".join(lines) + "\n"


def revert_table(metrics: list[dict], q1s) -> list[dict]:
    """Table 3's form: per Q1, negatives to reach the base score and to bring KL below epsilon."""
    out = []
    for q1 in q1s:
        row = {"q1": q1}
        for r in metrics:
            if r["group"] == "revert" and r["q1"] == q1 and r["metric"].startswith("samples_to_revert"):
                kind = "score" if r["view"] == "score" else "kl"
                row.update({f"{kind}_metric": r["metric"], f"{kind}_mean": r["mean"], f"{kind}_lo": r["lo"],
                            f"{kind}_hi": r["hi"], f"{kind}_reached": f"{r['n']}/{r['n_total']}",
                            f"{kind}_text": _fmt(r)})
        out.append(row)
    return out


def _summary(cfg, rows, metrics, save: dict, run: Run) -> list[str]:
    base = rows[0]
    by = {(r["group"], r["view"], r["metric"], r["q1"]): r for r in metrics}
    lines = [f"rebound: base score {base['score']:.3f} +- {base['score_se']:.3f}; Q1 {list(cfg.q1)}, "
             f"Q2 up to {max(cfg.q2)}, seeds {list(cfg.seeds)}, lr {cfg.train.lr:g}"]
    for q1 in sorted(cfg.q1):
        aligned = [r["score"] for r in rows if r["q1"] == q1 and r["q2"] == 0]
        parts = [f"Q1={q1}: aligned score {sum(aligned) / len(aligned):.3f}"]
        for r in metrics:
            if r["group"] == "revert" and r["q1"] == q1 and r["metric"].startswith("samples_to_revert"):
                parts.append(f"{'to base score' if r['view'] == 'score' else 'KL < eps'} {_fmt(r)}")
        lo, at = by[("revert", "kl_response", "kl_min", q1)], by[("revert", "kl_response", "q2_at_kl_min", q1)]
        parts.append(f"smallest KL to base {_fmt(lo)} at Q2 {_fmt(at)}")
        for view in ("score", "log_odds"):
            r = by.get(("shape", view, "initial_slope", q1))
            if r:
                parts.append(f"initial slope ({view}) {_fmt(r)}")
        lines.append("  " + "; ".join(parts))
    for r in metrics:
        if r["group"] == "trend" and r["view"] in FALLING_VIEWS and r["metric"].startswith(
                ("initial_slope", "samples_to_revert")):
            lines.append(f"  more alignment data, {r['view']} {r['metric']}: {_fmt(r)} -> {verdict(r)}")
    if cfg.heldout:  # alignment depth on the first held-out pre-training set, one line per Q1
        name = [k for k in rows[0] if k.startswith("bpt_") and k not in ("bpt_positive", "bpt_negative")][0][4:]
        for q1 in sorted(cfg.q1):
            d, kl = by[("depth", f"bpt_{name}", "delta_bits_per_token", q1)], by[("depth", f"kl_{name}", "kl_to_base", q1)]
            lines.append(f"  depth Q1={q1}: {name} bits/token {rows[0]['bpt_' + name]:.3f} -> change {_fmt(d)}, "
                         f"KL to base {_fmt(kl)} nats/token")
    lines.append(f"  training tokens: nested {save['nested_tokens']:,} vs naive grid {save['naive_tokens']:,} "
                 f"({save['saving_factor']:.1f}x fewer; {save['runs_nested']} runs instead of {save['runs_naive']})")
    lines.append(f"  results: {run.path}")
    return lines


def write_outputs(run: Run, cfg, data, base: Run, positives: dict, negatives: dict) -> None:
    """Write every result file of the rebound run (see the module doc)."""
    rows = collect_rows(base, negatives, len(data.prompts) * cfg.policy.samples_per_prompt)
    atomic = run.write_text
    atomic("results.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    atomic("results.csv", csv_text(rows))
    metrics = analyse(rows, data.q1, tuple(cfg.seeds), data.early, data.late, cfg.metrics.kl_epsilon)
    run.write_json("metrics.json", {"interval": "95% Student-t over seeds", "early_q2": data.early,
                                    "late_q2": data.late, "kl_epsilon": cfg.metrics.kl_epsilon,
                                    "metrics": metrics})
    atomic("metrics.csv", csv_text(metrics))
    atomic("metrics.md", metrics_markdown(metrics))
    table = revert_table(metrics, data.q1)
    atomic("revert.csv", csv_text(table))
    kl_min = {r["q1"]: r for r in metrics if r["metric"] == "kl_min"}
    at_min = {r["q1"]: r for r in metrics if r["metric"] == "q2_at_kl_min"}
    md = [f"| Q1 | negatives to reach the base score | negatives for KL to base < {cfg.metrics.kl_epsilon:g} | "
          "smallest KL to base (nats/token) | at Q2 |", "|---|---|---|---|---|"]
    md += [f"| {r['q1']} | {r.get('score_text', '')} | {r.get('kl_text', '')} | {_fmt(kl_min[r['q1']])} | "
           f"{_fmt(at_min[r['q1']])} |" for r in table]
    atomic("revert.md", "\n".join(md) + "\n")
    grid = [r for r in rows if r["q1"] != 0]
    bands = []
    for view in ("score", "log_odds", "kl_response"):
        b = curve_bands(grid, view, data.q1)
        bands += b
        kl = view == "kl_response"
        plot_view(b, cfg.metrics.kl_epsilon if kl else rows[0][view], view, run.file(f"{view}.png"),
                  "KL to the base model on held-out responses (mean over seeds, 95% t-band)" if kl else "",
                  f"epsilon = {cfg.metrics.kl_epsilon:g}" if kl else "base model")
    atomic("curves.csv", csv_text(bands))
    save = savings(positives, negatives, data.q1, data.q2)
    run.write_json("savings.json", save)
    atomic("summary.txt", "\n".join(_summary(cfg, rows, metrics, save, run)) + "\n")
