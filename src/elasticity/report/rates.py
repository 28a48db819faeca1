"""The rates report: normalised compression rates through the perturbation, the theorem's ratio against k, Hooke.

    rates.csv / .jsonl     one row per grid point (and each base model): k, l, every set's normalised rate
                           gamma_<set> (bits/token), the forces force_p / force_a / force_t (bits)
    ratio.csv / .jsonl     one row per (model, Q1): d gamma / dl of D_a, D_p, D_t, the ratio (mean, 95% t-interval,
                           per seed) beside k (the theorem at l -> 0) and the ideal code's secant at the same (k, l)
    fits.csv               the log-log slope of the ratio against k per group of models and direction (theory: 1)
    hooke.csv              F_p, F_a, F_t and F_a / (-F_p) at every (model, Q1, Q2 > 0)
    hooke_summary.csv      per group, the Hooke ratio at the first Q2 (geometric mean over cells; theory: 1)
    table.md               the ratio, fit and Hooke tables in words
    rates.json             the headline numbers (for the demo's and the scaling run's summaries)
    ratio_vs_k.png         the measured ratio against k beside the theory's; rates_vs_l.png: gamma against l
    summary.txt            the verdict in a few lines
"""

from __future__ import annotations

import math

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from elasticity.analysis.rates import ROLE_NAMES, ROLES, Fit, HookeRow, HookeSummary, RatioRow  # noqa: E402
from elasticity.files import csv_text, jsonl_text, save_png  # noqa: E402
from elasticity.stats import Interval, format_interval  # noqa: E402

ALONG_WORDS = {"all": "every cell", "q1": "within each model (k moved by Q1)",
               "volume": "within each Q1 (k moved by pre-training volume)"}


def _g(v: float, spec: str = ".3g") -> str:
    return format_interval(v, math.nan, math.nan, spec)


def _iv(iv: Interval, spec: str = ".3g") -> str:
    return iv.text(spec)


def _verdict(fit: Fit) -> str:
    iv = fit.slope
    if not math.isfinite(iv.lo):
        return "too few seeds for an interval"
    if iv.lo <= 1 <= iv.hi:
        return "consistent with the theorem's slope 1"
    return f"{'steeper' if iv.lo > 1 else 'shallower'} than the theorem's slope 1"


def fit_line(fit: Fit) -> str:
    out = f"{fit.left_out} seed value{'' if fit.left_out == 1 else 's'} left out: ratio not positive"
    return (f"{fit.group}, {ALONG_WORDS[fit.along]}: log-log slope of the ratio against k {_iv(fit.slope)} over "
            f"{fit.cells} cells, k {fit.k_min:.3g} to {fit.k_max:.3g} ({out}) -> {_verdict(fit)}")


def hooke_line(h: HookeSummary) -> str:
    iv = h.log10
    ratio = format_interval(10 ** iv.mean, 10 ** iv.lo, 10 ** iv.hi, ".3g")
    equal = "equal forces" if math.isfinite(iv.lo) and iv.lo <= 0 <= iv.hi else "not equal"
    return (f"{h.group}: Hooke ratio F_a / (-F_p) at the first Q2 {ratio} (geometric mean over cells; theory 1) "
            f"-> {equal}")


def table_markdown(ratios: list[RatioRow], fits: list[Fit], hooke: list[HookeSummary], normaliser: str,
                   span: int) -> str:
    lines = [f"Normaliser: {normaliser}. Derivatives: least squares over Q2 = 0 and the next {span} grid point(s); "
             "mean over seeds [95% t-interval]; k = |D_p| / |D_a| in tokens.", "",
             "| model | Q1 | k | l | d gamma_a / dl | d gamma_p / dl | ratio -(d gamma_a)/(d gamma_p) | per seed | "
             "gamma_p fell | theory (k) | ideal code at this l | ratio / k |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in ratios:
        lines.append(f"| {r.model} | {r.q1} | {r.k:.3g} | {r.l:.3g} | {_iv(r.d_align)} | {_iv(r.d_pretrain)} | "
                     f"{_iv(r.ratio)} | {', '.join(_g(v) for v in r.per_seed.values())} | "
                     f"{r.pretrain_fell}/{len(r.per_seed)} | {r.k:.3g} | {_g(r.ideal)} | {_g(r.ratio.mean / r.k)} |")
    lines += ["", "Log-log slope of the ratio against k (per seed over the cells where the ratio is positive; "
              "theory: 1):", ""]
    lines += [f"- {fit_line(f)}" for f in fits] or ["- no group has two values of k"]
    lines += ["", "Hooke's form (F_i = |D_i| x Delta gamma_i, bits; equal forces give F_a / (-F_p) = 1):", ""]
    lines += [f"- {hooke_line(h)}" for h in hooke]
    return "\n".join(lines) + "\n"


def plot_ratio(ratios: list[RatioRow], fits: list[Fit], path):
    """The measured ratio against k (log-log): each seed, the cell means, the theorem's k and the ideal secant."""
    fig, ax = plt.subplots(figsize=(6.4, 4.6))
    models = list(dict.fromkeys(r.model for r in ratios))
    colors = plt.cm.viridis([i / max(1, len(models) - 1) * 0.85 for i in range(len(models))])
    for model, color in zip(models, colors):
        rows = sorted((r for r in ratios if r.model == model), key=lambda r: r.k)
        for r in rows:
            seeds = [(r.per_seed_k[s], v) for s, v in r.per_seed.items() if v > 0]
            ax.scatter([x for x, _ in seeds], [y for _, y in seeds], s=9, color=color, alpha=0.45, lw=0)
        pos = [r for r in rows if r.ratio.mean > 0]
        ax.plot([r.k for r in pos], [r.ratio.mean for r in pos], "o-", color=color, ms=4, label=model)
    ks = sorted(r.k for r in ratios)
    span = [ks[0] / 1.5, ks[-1] * 1.5]
    ax.plot(span, span, "k--", lw=1, label="theorem at l -> 0: ratio = k")
    ideal = [(r.k, r.ideal) for r in ratios if r.ideal > 0 and r.ideal != r.k]
    if ideal:
        ax.scatter(*zip(*ideal), marker="x", color="k", s=18, lw=0.8, label="ideal code at the measured l")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("k = |D_p| / |D_a| (tokens)")
    ax.set_ylabel("-(d gamma_a / dl) / (d gamma_p / dl)")
    if fits:  # the group with the most cells (on the world: the volume axis's model)
        top = max(fits, key=lambda f: f.cells).group
        slopes = "; ".join(f"{f.along} {_iv(f.slope, '.2f')}" for f in fits if f.group == top)
        ax.set_title(f"measured ratio (dots: seeds; lines: mean over seeds, one per model) and the theory's\n"
                     f"log-log slope (theory 1), {top}: {slopes}", fontsize=8)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=6.5, ncol=2)
    fig.tight_layout()
    return save_png(fig, path)


def plot_rates(rows: list[dict], roles: dict[str, str], path):
    """gamma_p, gamma_a, gamma_t against l, mean over seeds, one line per (model, Q1)."""
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.6), squeeze=False)
    cells = list(dict.fromkeys((r["model"], r["q1"]) for r in rows if r["q1"]))
    colors = plt.cm.viridis([i / max(1, len(cells) - 1) * 0.85 for i in range(len(cells))])
    for ax, role in zip(axes[0], ROLES):
        for (model, q1), color in zip(cells, colors):
            pts = [r for r in rows if (r["model"], r["q1"]) == (model, q1)]
            q2s = sorted({r["q2"] for r in pts})
            xs = [sum(r["l"] for r in pts if r["q2"] == q) / sum(r["q2"] == q for r in pts) for q in q2s]
            ys = [sum(r[f"gamma_{roles[role]}"] for r in pts if r["q2"] == q) / sum(r["q2"] == q for r in pts)
                  for q in q2s]
            ax.plot(xs, ys, "o-", ms=2.5, color=color, label=f"{model} Q1={q1}" if len(cells) <= 12 else None)
        ax.set_xscale("symlog", linthresh=min((r["l"] for r in rows if r.get("l")), default=0.05))
        ax.set_title(f"{ROLE_NAMES[role]}: gamma ({roles[role]})", fontsize=8)
        ax.set_xlabel("l = |D_t| / |D_a|", fontsize=8)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("normalised rate (bits/token)", fontsize=8)
    if len(cells) <= 12:
        axes[0][2].legend(fontsize=6)
    fig.tight_layout()
    return save_png(fig, path)


def write_rates(run, rows: list[dict], ratios: list[RatioRow], fits: list[Fit], hooke: list[HookeRow],
                hooke_summary: list[HookeSummary], models: list[dict], normaliser: str, span: int,
                share: float | None) -> None:
    """Every file of the rates report (see the module doc)."""
    run.write_text("rates.csv", csv_text(rows))
    run.write_text("rates.jsonl", jsonl_text(rows))
    ratio_records = [r.to_record() for r in ratios]
    run.write_text("ratio.csv", csv_text(ratio_records))
    run.write_text("ratio.jsonl", jsonl_text(ratio_records))
    run.write_text("fits.csv", csv_text([f.to_record() for f in fits]))
    run.write_text("hooke.csv", csv_text([h.to_record() for h in hooke]))
    run.write_text("hooke_summary.csv", csv_text([h.to_record() for h in hooke_summary]))
    run.write_text("models.csv", csv_text(models))
    run.write_text("table.md", table_markdown(ratios, fits, hooke_summary, normaliser, span))
    run.write_json("rates.json", {"normaliser": normaliser, "span": span, "perturbation_share": share,
                                  "ratio": ratio_records, "fits": [f.to_record() for f in fits],
                                  "hooke": [h.to_record() for h in hooke_summary]})
    plot_ratio(ratios, fits, run.file("ratio_vs_k.png"))
    roles = {"p": models[0]["pretraining_set"], "a": "positive", "t": "negative"}
    plot_rates(rows, roles, run.file("rates_vs_l.png"))
    run.write_text("summary.txt", "\n".join(summary_lines(ratios, fits, hooke_summary)) + "\n")


def summary_lines(ratios: list[RatioRow], fits: list[Fit], hooke: list[HookeSummary]) -> list[str]:
    """The measured ratio per cell, the slope and the Hooke ratio, with the theory's values beside them."""
    cells = "; ".join(f"{r.model} Q1={r.q1}: {_g(r.ratio.mean)} at k = {r.k:.3g}" for r in ratios)
    fell = sum(r.pretrain_fell for r in ratios), sum(len(r.per_seed) for r in ratios)
    rose = sum(r.align_rose for r in ratios)
    lines = [f"theorem 4.2 measured: -(d gamma_a/dl)/(d gamma_p/dl) = {cells} (theory: k)",
             f"  the theorem: gamma_p falls and gamma_a rises; measured: gamma_p fell in {fell[0]}/{fell[1]} "
             f"(cell, seed), gamma_a rose in {rose}/{fell[1]}"]
    lines += [f"  {fit_line(f)}" for f in fits]
    lines += [f"  {hooke_line(h)}" for h in hooke]
    return lines
