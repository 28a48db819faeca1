"""The scaling report: each rebound metric against model size and pre-training volume, as files.

    models.csv               one row per base model: parameters, tokens, base score, held-out rates, result
    model_metrics.csv/.jsonl every model's metrics (mean, interval, per seed): what each trend is fitted to
    trends.csv / .jsonl / .md every metric's change per decade of parameters (size) or tokens (volume)
    curves_<axis>_<view>.png the paper's form: the view against Q2, one panel per model, one curve per Q1
    metrics_<axis>.png       the headline metrics against the axis (log scale), one line per Q1
    summary.txt              the headline trends in words, with the paper's claim beside them
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from elasticity.analysis.scaling import AXES, AxisTrend, ModelResult, metric_key, model_rows, table_count  # noqa: E402
from elasticity.analysis.scaling import trends as axis_trends  # noqa: E402
from elasticity.files import csv_text, jsonl_text, read_json, read_jsonl, save_png  # noqa: E402
from elasticity.report.rebound_figures import LABELS  # noqa: E402
from elasticity.runs import Run  # noqa: E402
from elasticity.stats import t_interval  # noqa: E402

# (group, view, metric, level): the metrics the summary and the figures show, in every space
HEADLINE = (
    ("shape", "score", "initial_slope", None), ("shape", "score", "late_slope", None),
    ("shape", "score", "slope_ratio", None), ("revert", "score", "samples_to_revert", "base"),
    ("revert", "score", "mean_excess", "base"),
    ("shape", "log_odds", "initial_slope", None), ("shape", "log_odds", "late_slope", None),
    ("revert", "log_odds", "mean_excess", "base"),
    ("shape", "kl_response", "initial_slope", None), ("shape", "kl_response", "late_slope", None),
    ("revert", "kl_response", "kl_min", None),
    ("depth", "score", "score_gain", None), ("depth", "kl_response", "kl_to_base", None),
    ("resistance", "resistance", "difference", None), ("resistance", "resistance", "excess_difference", None),
    ("resistance", "resistance", "kl_left_difference", None),
)
FIGURE_METRICS = (  # the eight panels of metrics_<axis>.png
    ("shape", "score", "initial_slope", None), ("shape", "score", "late_slope", None),
    ("shape", "score", "slope_ratio", None), ("revert", "score", "samples_to_revert", "base"),
    ("revert", "score", "mean_excess", "base"), ("shape", "log_odds", "initial_slope", None),
    ("shape", "kl_response", "initial_slope", None), ("revert", "kl_response", "kl_min", None),
)
UNIT = {"size": "parameters", "volume": "pre-training tokens"}


def _headline(key: tuple) -> bool:
    group, view, metric, _, level = key
    return any((group, view, metric) == h[:3] and (h[3] is None or h[3] == level) for h in HEADLINE)


def _name(key: tuple) -> str:
    group, view, metric, q1, level = key
    at = f" to {'the base' if level == 'base' else level}" if metric == "samples_to_revert" else ""
    return f"{metric}{at} ({view})"


def _fmt(v: float) -> str:
    return "nan" if v is None or not math.isfinite(v) else f"{v:+.3g}"


def _short(n: float) -> str:
    """2.0T, 984k, unknown."""
    if not n:
        return "unknown"
    for scale, suffix in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "k")):
        if n >= scale:
            return f"{n / scale:.3g}{suffix}"
    return f"{n:.0f}"


def _group_title(t: AxisTrend) -> str:
    fixed = AXES[t.axis][1]
    held = f"{fixed} {t.fixed:,.0f}" if t.fixed else f"{fixed} unknown"
    return f"{t.axis} axis ({held}): {', '.join(t.models)}"


def trends_markdown(trends: list[AxisTrend]) -> str:
    lines = []
    for title in dict.fromkeys(_group_title(t) for t in trends):
        rows = [t for t in trends if _group_title(t) == title and _headline(t.key)]
        per = AXES[rows[0].axis][0] if rows else ""
        lines += [f"### {title}", "", f"Change per tenfold {per}, mean over seeds [95% t-interval]:", "",
                  "| metric (space) | Q1 | per decade | direction |", "|---|---|---|---|"]
        for t in rows:
            iv = t.interval
            lines.append(f"| {_name(t.key)} | {t.key[3]} | {_fmt(iv.mean)} [{_fmt(iv.lo)}, {_fmt(iv.hi)}] | "
                         f"{t.direction} |")
        lines.append("")
    return "\n".join(lines)


def paper_claim(trends: list[AxisTrend]) -> list[str]:
    """The paper's form of the claim, per axis group, space and Q1: the initial fall gets faster (initial slope
    more negative: its trend < 0) and the later fall slower (late slope less negative: trend > 0)."""
    lines = []
    for title in dict.fromkeys(_group_title(t) for t in trends):
        for view in ("score", "log_odds"):
            by_q1: dict = {}
            for t in trends:
                if _group_title(t) == title and t.key[1] == view and t.key[0] == "shape":
                    by_q1.setdefault(t.key[3], {})[t.key[2]] = t
            for q1, m in by_q1.items():
                if "initial_slope" not in m or "late_slope" not in m:
                    continue
                first, late = m["initial_slope"].interval, m["late_slope"].interval
                held = first.hi < 0 and late.lo > 0
                lines.append(f"  {title}, {view}, Q1 = {q1}: initial slope {_fmt(first.mean)} [{_fmt(first.lo)}, "
                             f"{_fmt(first.hi)}], late slope {_fmt(late.mean)} [{_fmt(late.lo)}, {_fmt(late.hi)}] "
                             f"per decade: {'the paper form holds' if held else 'not the paper form'}")
    return lines


def plot_curves(models: list[ModelResult], curves: dict[str, list[dict]], bases: dict[str, dict], view: str,
                path, title: str):
    """One panel per model: the view against Q2, one curve per Q1 (mean over seeds, 95% t-band), base dashed."""
    n = len(models)
    fig, axes = plt.subplots(1, n, figsize=(3.2 * n, 3.2), sharey=True, squeeze=False)
    for ax, m in zip(axes[0], models):
        rows = [r for r in curves[m.label] if r["view"] == view]
        q1s = sorted({int(r["q1"]) for r in rows})
        colors = plt.cm.viridis([i / max(1, len(q1s) - 1) * 0.85 for i in range(len(q1s))])
        for q1, color in zip(q1s, colors):
            rs = sorted((r for r in rows if int(r["q1"]) == q1), key=lambda r: float(r["q2"]))
            x = [float(r["q2"]) for r in rs]
            ax.plot(x, [float(r["mean"]) for r in rs], "o-", color=color, ms=2.5, label=f"Q1 = {q1}")
            lo, hi = [float(r["lo"]) for r in rs], [float(r["hi"]) for r in rs]
            if all(math.isfinite(v) for v in lo + hi):
                ax.fill_between(x, lo, hi, color=color, alpha=0.18, lw=0)
        base = bases.get(m.label, {}).get(view)
        if base is not None and math.isfinite(base):
            ax.axhline(base, color="k", ls="--", lw=1, label="base model")
        small = min((float(r["q2"]) for r in rows if float(r["q2"]) > 0), default=1.0)
        ax.set_xscale("symlog", linthresh=small)
        ax.set_xlim(left=0)
        ax.set_title(f"{m.label} ({_short(m.parameters)} parameters, {_short(m.tokens)} tokens)", fontsize=8)
        ax.set_xlabel("Q2 (negative examples)", fontsize=8)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel(LABELS.get(view, view), fontsize=8)
    axes[0][0].legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return save_png(fig, path)


def plot_metrics(models: list[ModelResult], axis: str, path):
    """The headline metrics against the axis (log scale), one line per Q1, 95% t-interval bars over seeds."""
    fig, axes = plt.subplots(2, 4, figsize=(13, 6), squeeze=False)
    values = {m.label: {metric_key(r): r for r in m.metrics} for m in models}
    x = [m.value(axis) for m in models]
    for ax, (group, view, metric, level) in zip(axes.flat, FIGURE_METRICS):
        keys = sorted({k for k in values[models[0].label] if k[:3] == (group, view, metric) and k[3] != "all"
                       and (level is None or k[4] == level)}, key=lambda k: k[3])
        for i, key in enumerate(keys):
            rows = [values[m.label].get(key) for m in models]
            mean = [r["mean"] if r else math.nan for r in rows]
            err = [[max(0.0, r["mean"] - r["lo"]) if r and math.isfinite(r["lo"]) else 0 for r in rows],
                   [max(0.0, r["hi"] - r["mean"]) if r and math.isfinite(r["hi"]) else 0 for r in rows]]
            ax.errorbar(x, mean, yerr=err, fmt="o-", ms=3, capsize=2, label=f"Q1 = {key[3]}",
                        color=plt.cm.viridis(i / max(1, len(keys) - 1) * 0.85))
        ax.set_xscale("log")
        ax.set_title(_name((group, view, metric, None, level)), fontsize=8)
        ax.set_xlabel(UNIT[axis], fontsize=8)
        ax.grid(alpha=0.3)
    if axes.flat[0].get_legend_handles_labels()[0]:
        axes.flat[0].legend(fontsize=7)
    fig.suptitle(f"elasticity metrics against {UNIT[axis]} (mean over seeds, 95% t-interval)", fontsize=9)
    fig.tight_layout()
    return save_png(fig, path)


@dataclass(frozen=True)
class Rebounded:
    """One base model of a scaling run and its finished rebound."""

    label: str
    model: str  # its source
    parameters: float
    tokens: float
    rebound: Run | None = None  # None until it has run
    resistance: Run | None = None  # with `resistance`: its resistance run
    extra: dict = field(default_factory=dict)  # more columns for models.csv (e.g. held-out bits/token)


RESISTANCE = ("difference", "excess_difference", "kl_left_difference")  # > 0: inverse easier (the paper's claim)


def resistance_metrics(results: list[dict]) -> list[dict]:
    """A resistance run's per-seed means over its pairs, as metric records (view "resistance", q1 "all"): the
    trends fit them like any rebound metric."""
    seeds = sorted({r["seed"] for r in results})
    out = []
    for name in RESISTANCE:
        per_seed = [sum(r[name] for r in results if r["seed"] == s) / sum(r["seed"] == s for r in results)
                    for s in seeds]
        iv = t_interval(per_seed)
        out.append({"group": "resistance", "view": "resistance", "metric": name, "threshold": None, "q1": "all",
                    **iv.to_dict(), "per_seed": per_seed})
    return out


def read_rebound(r: Rebounded) -> tuple[ModelResult, list[dict], dict]:
    """(its metrics, its curves.csv rows, its models.csv row) from the finished rebound's files."""
    metrics = read_json(r.rebound.file("metrics.json"))
    base = next(row for row in read_jsonl(r.rebound.file("results.jsonl")) if row["q1"] == 0)
    with open(r.rebound.file("curves.csv"), encoding="utf-8") as f:
        curves = list(csv.DictReader(f))
    if r.resistance is not None:
        metrics["metrics"] = metrics["metrics"] + resistance_metrics(read_jsonl(r.resistance.file("results.jsonl")))
    row = {"label": r.label, "model": r.model, "parameters": table_count(r.parameters), "tokens": table_count(r.tokens),
           "score": base["score"], "log_odds": base["log_odds"], "kl_response": metrics["kl_epsilon"], **r.extra,
           "result": str(r.rebound.path)}
    return ModelResult(r.label, r.parameters, r.tokens, metrics["metrics"]), curves, row


def write_from_runs(run: Run, rebounded: list[Rebounded], rates: Run | str = "") -> None:
    """The whole scaling report from finished rebounds, one per base model, and their rates report (or why there
    is none)."""
    read = [read_rebound(r) for r in rebounded]
    models = [m for m, _, _ in read]
    write_scaling(run, models, axis_trends(models), {m.label: c for m, c, _ in read}, [row for _, _, row in read],
                  rates)


def write_scaling(run: Run, models: list[ModelResult], trends: list[AxisTrend], curves: dict[str, list[dict]],
                  model_table: list[dict], rates: Run | str = "") -> None:
    """Every file of the scaling report (see the module doc). `model_table`: one row per model (models.csv;
    its score / log_odds / kl_response are the base model's level, dashed in the figures)."""
    run.write_text("models.csv", csv_text(model_table))
    per_model = model_rows(models)
    run.write_text("model_metrics.csv", csv_text(per_model))
    run.write_text("model_metrics.jsonl", jsonl_text(per_model))
    records = [t.to_record() for t in trends]
    run.write_text("trends.csv", csv_text(records))
    run.write_text("trends.jsonl", jsonl_text(records))
    run.write_text("trends.md", trends_markdown(trends))
    bases = {r["label"]: r for r in model_table}
    for axis in AXES:
        groups = list(dict.fromkeys(t.models for t in trends if t.axis == axis))
        for i, labels in enumerate(groups):
            group = [m for m in models if m.label in labels]
            group.sort(key=lambda m: m.value(axis))
            tail = f"-{i + 1}" if len(groups) > 1 else ""
            for view in ("score", "log_odds", "kl_response"):
                plot_curves(group, curves, bases, view, run.file(f"curves_{axis}{tail}_{view}.png"),
                            f"{view} vs Q2 along the {axis} axis (mean over seeds, 95% t-band)")
            plot_metrics(group, axis, run.file(f"metrics_{axis}{tail}.png"))
    lines = [f"scaling: {len(models)} base models, one rebound each (same data, prompts, scorer, grid, seeds)"]
    lines += [f"  {r['label']}: parameters {r['parameters'] or 'unknown'}, tokens {r['tokens'] or 'unknown'}, "
              f"base score {r['score']:.3f}" for r in model_table]
    if not trends:
        lines.append("  no axis has two models on it (give models with parameters or tokens that differ)")
    lines += ["The paper: with size and with pre-training volume the initial fall gets faster, the later fall "
              "slower. Per decade:", *paper_claim(trends), f"Every trend: {run.file('trends.md')}"]
    if isinstance(rates, Run):
        lines += [*rates.lines("summary.txt"), f"Rates, ratio and Hooke tables: {rates.path}"]
    elif rates:
        lines.append(f"theorem 4.2: not measured ({rates})")
    run.write_text("summary.txt", "\n".join(lines) + "\n")
