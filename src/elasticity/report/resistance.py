"""The resistance run's result files, from its typed rows (no model is loaded, no stage directory is read here).

    results.jsonl, results.csv   one row per (seed, pair): every number of `analysis.resistance`
    table.md, table.csv          Table 1's form: per pair and over all pairs, means with 95% t-intervals
    difficulty.md, difficulty.csv  every model's loss on every D before fine-tuning (mean over seeds / per seed)
    scores.csv                   with `score`: the mean score of each model's held-out answers, per seed
    curves.csv                   every path's training loss per step (the figures' data)
    loss_<l>_<k>.png             per pair: forward and inverse loss curves, each target's entropy dashed
    summary.txt                  what was found, in a few lines
"""

from __future__ import annotations

from dataclasses import asdict

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from elasticity.files import csv_text, jsonl_text, save_png  # noqa: E402
from elasticity.results import LossCurve, ModelLoss, PairRow, PairSummary, ResistanceSetup, SliceScore  # noqa: E402
from elasticity.runs import Run  # noqa: E402

COLORS = {"forward": "tab:blue", "inverse": "tab:orange"}


def _iv(row: PairSummary, key: str, digits: int = 3) -> str:
    return row[key].text(f".{digits}f")


def table_markdown(summary: list[PairSummary], window: int) -> str:
    """Table 1's form (the paper's measure, with the target-entropy control), then the lower-noise distance."""
    lines = [f"**Final training loss** (mean of the last {window} steps; the paper's measure). Forward: theta_k "
             "fine-tuned on D_l; inverse: theta_l on D_k. Target gap = H(D_l) - H(D_k), how much harder the "
             "forward target is by its own entropy; excess difference = difference - target gap. 95% t-intervals "
             "over seeds.", "",
             "| pair l/k | forward (theta_k on D_l) | inverse (theta_l on D_k) | forward - inverse | inverse lower | "
             "target gap | excess difference |", "|---|---|---|---|---|---|---|"]
    lines += [f"| {r.pair} | {_iv(r, 'forward_loss')} | {_iv(r, 'inverse_loss')} | {_iv(r, 'difference', 4)} | "
              f"{r.inverse_lower}/{r.cells} | {_iv(r, 'target_gap', 4)} | {_iv(r, 'excess_difference', 4)} |"
              for r in summary]
    lines += ["", "**Distance to the target slice**: KL(theta_target || model) per token on the target's held-out "
              "answers before the fine-tune (start) and after it (end), and the share of the start distance left "
              "(end / start); share left forward - inverse > 0: the inverse path closed more of its distance.", "",
              "| pair l/k | start forward / inverse | end forward / inverse | left forward | left inverse | "
              "left forward - inverse | inverse closed more |", "|---|---|---|---|---|---|---|"]
    lines += [f"| {r.pair} | {r['kl_start_forward'].mean:.4f} / {r['kl_start_inverse'].mean:.4f} | "
              f"{r['kl_end_forward'].mean:.4f} / {r['kl_end_inverse'].mean:.4f} | {_iv(r, 'kl_left_forward')} | "
              f"{_iv(r, 'kl_left_inverse')} | {_iv(r, 'kl_left_difference')} | "
              f"{r.inverse_closed_more}/{r.cells} |" for r in summary]
    return "\n".join(lines) + "\n"


def difficulty_markdown(losses: list[ModelLoss], n: int) -> str:
    """Mean over seeds of every model's loss on every D (rows: models; columns: datasets)."""
    def mean(i, j):
        vs = [r.loss for r in losses if r.model == i and r.dataset == j]
        return sum(vs) / len(vs)

    names = ["base"] + [f"theta_{i}" for i in range(1, n + 1)]
    lines = ["Loss (nats/token) of each model on each slice's answers D_j before any fine-tune, mean over seeds; "
             "the diagonal estimates each dataset's entropy.", "",
             "| model | " + " | ".join(f"D_{j}" for j in range(1, n + 1)) + " |", "|---" * (n + 1) + "|"]
    lines += [f"| {names[i]} | " + " | ".join(f"{mean(i, j):.4f}" for j in range(1, n + 1)) + " |"
              for i in range(n + 1)]
    return "\n".join(lines) + "\n"


def plot_pair(curves: list[LossCurve], entropy: dict[str, float], k: int, l: int, path) -> None:  # noqa: E741
    """Both directions' loss per step: one thin line per seed, the mean thick, each target's entropy dashed."""
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for d, label in (("forward", f"forward: theta_{k} on D_{l}"), ("inverse", f"inverse: theta_{l} on D_{k}")):
        runs = [c.losses for c in curves if c.direction == d]
        for losses in runs:
            ax.plot(range(1, len(losses) + 1), losses, color=COLORS[d], alpha=0.3, lw=0.8)
        steps = min(len(x) for x in runs)
        mean = [sum(x[s] for x in runs) / len(runs) for s in range(steps)]
        ax.plot(range(1, steps + 1), mean, color=COLORS[d], lw=2, label=f"{label} (mean of {len(runs)} seeds)")
        target = l if d == "forward" else k
        ax.axhline(entropy[d], color=COLORS[d], ls="--", lw=1, label=f"H(D_{target}): its own slice's loss")
    ax.set_xlabel("fine-tuning step")
    ax.set_ylabel("training loss (nats / response token)")
    ax.set_title(f"pair {l}/{k}: forward vs inverse alignment", fontsize=9)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    save_png(fig, path)


def summary_lines(setup: ResistanceSetup, summary: list[PairSummary], scores: list[SliceScore], run: Run) -> list[str]:
    n = len(setup.marks)
    per_d = setup.prompts * setup.samples_per_prompt
    lines = [f"resistance: {n} slices after {list(setup.marks)} alignment examples; each D_k = {setup.prompts} "
             f"prompts x {setup.samples_per_prompt} = {per_d} examples; seeds {list(setup.seeds)}; "
             f"fine-tune lr {setup.lr:g}, final loss = mean of the last {setup.loss_window} steps"]
    if scores:
        means = [sum(r.score for r in scores if r.slice == k) / len(setup.seeds) for k in range(n + 1)]
        lines.append("  score of each model's held-out answers (base, theta_1..): "
                     + " / ".join(f"{m:.3f}" for m in means))
    for r in summary:
        name = "all pairs" if r.pair == "all" else f"pair {r.pair}"
        lines.append(f"  {name}: final loss forward {_iv(r, 'forward_loss')} vs inverse {_iv(r, 'inverse_loss')}; "
                     f"forward - inverse {_iv(r, 'difference', 4)}, inverse lower in {r.inverse_lower}/"
                     f"{r.cells}; target gap {_iv(r, 'target_gap', 4)}; excess difference "
                     f"{_iv(r, 'excess_difference', 4)}; share of the KL distance left, forward - inverse "
                     f"{_iv(r, 'kl_left_difference')}, inverse closed more in {r.inverse_closed_more}/{r.cells}")
    lines.append(f"  results: {run.path}")
    return lines


def write_resistance(run: Run, setup: ResistanceSetup, rows: list[PairRow], summary: list[PairSummary],
                     curves: list[LossCurve], losses: list[ModelLoss], scores: list[SliceScore]) -> None:
    """Write every result file of the resistance run (see the module doc)."""
    records = [r.to_record() for r in rows]
    run.write_text("results.jsonl", jsonl_text(records))
    run.write_text("results.csv", csv_text(records))
    run.write_text("table.csv", csv_text([s.to_record() for s in summary]))
    run.write_text("table.md", table_markdown(summary, setup.loss_window))
    run.write_text("difficulty.csv", csv_text([asdict(r) for r in losses]))
    run.write_text("difficulty.md", difficulty_markdown(losses, len(setup.marks)))
    run.write_text("curves.csv", csv_text([{"seed": c.seed, "pair": f"{c.l}/{c.k}", "direction": c.direction,
                                            "step": i + 1, "loss": v} for c in curves for i, v in enumerate(c.losses)]))
    if scores:
        run.write_text("scores.csv", csv_text([asdict(s) for s in scores]))
    for k, l in setup.pairs:  # noqa: E741
        rs = [r for r in rows if (r.k, r.l) == (k, l)]
        entropy = {"forward": sum(r.entropy_target_forward for r in rs) / len(rs),
                   "inverse": sum(r.entropy_target_inverse for r in rs) / len(rs)}
        plot_pair([c for c in curves if (c.k, c.l) == (k, l)], entropy, k, l, run.file(f"loss_{l}_{k}.png"))
    run.write_text("summary.txt", "\n".join(summary_lines(setup, summary, scores, run)) + "\n")
