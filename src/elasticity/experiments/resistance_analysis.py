"""Resistance numbers from the measured rows: pure functions, no model.

Per (seed, pair k < l), with L(m, D) the loss of model m on dataset D before any fine-tune and
H(D_j) = L(theta_j, D_j) (a slice's loss on its own sampled answers estimates their entropy, the floor no
fine-tune can go below):

    forward_loss, inverse_loss   the final training loss (mean over the last `window` steps) of
                                 theta_k on D_l and of theta_l on D_k
    difference                   forward_loss - inverse_loss (> 0: inverse is easier, the paper's claim)
    target_gap                   H(D_l) - H(D_k): how much harder the forward target is on its own
    excess_difference            (forward_loss - H(D_l)) - (inverse_loss - H(D_k)) = difference - target_gap:
                                 the difference left once each target's own entropy is taken out
    start_forward, start_inverse L(theta_k, D_l) and L(theta_l, D_k): each path's loss before its first step
    kl_start_*, kl_end_*         KL(theta_target || model) per token on the target's held-out answers, before
                                 and after the fine-tune: the distance to the target, exact per position (a sum
                                 over the vocabulary), so far less noisy than a few batches' loss;
                                 kl_change_* = start - end (how far toward the target);
                                 kl_end_difference = kl_end_forward - kl_end_inverse (> 0: inverse ended closer)
    kl_left_*                    kl_end / kl_start: the share of the distance still left after the fine-tune, which
                                 takes out that one path may start closer to its target (the KL analogue of the
                                 target gap); kl_left_difference = forward - inverse (> 0: inverse closed more)
    kl_moved_*                   KL(fine-tuned || start model) on the same answers (how far the model moved)

Statistics over seeds: per pair, each number's mean with a 95% t-interval and the count of seeds where the
inverse loss is lower; over all pairs, the per-seed mean over pairs with its t-interval, and the count of
(pair, seed) cells where the inverse loss is lower (the paper: 27 of 27).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from elasticity.experiments.elasticity_metrics import t_interval

COMPARED = ("forward_loss", "inverse_loss", "difference", "target_gap", "excess_difference", "start_forward",
            "start_inverse", "kl_start_forward", "kl_start_inverse", "kl_end_forward", "kl_end_inverse",
            "kl_end_difference", "kl_left_forward", "kl_left_inverse", "kl_left_difference", "kl_change_forward",
            "kl_change_inverse", "kl_moved_forward", "kl_moved_inverse")


def final_loss(losses: Sequence[float], window: int) -> float:
    """Mean of the last `window` step losses (all of them if there are fewer).

    Example: losses (3.0, 2.0, 1.5, 1.0), window 2 -> (1.5 + 1.0) / 2 = 1.25.
    """
    if not losses:
        return math.nan
    tail = list(losses)[-window:]
    return sum(tail) / len(tail)


def pair_row(seed: int, k: int, l: int, curves: dict[str, list[float]], window: int,
             loss: dict[tuple[int, int], float], kl: dict[tuple[int, int], float],
             ends: dict[str, dict]) -> dict:
    """One (seed, pair) row of every number in the module doc.

    Args:
        curves: per direction, the training loss of every step.
        loss: (model, dataset) -> loss before any fine-tune (model 0 is the base, j a slice).
        kl: (target, model) -> KL(theta_target || theta_model) on the target's held-out answers.
        ends: per direction, the path's `path.json` (kl_target_end, kl_moved, steps, examples, tokens).
    """
    fwd, inv = final_loss(curves["forward"], window), final_loss(curves["inverse"], window)
    h_l, h_k = loss[(l, l)], loss[(k, k)]
    row = {"seed": seed, "k": k, "l": l, "pair": f"{l}/{k}", "forward_loss": fwd, "inverse_loss": inv,
           "difference": fwd - inv, "inverse_lower": inv < fwd, "entropy_target_forward": h_l,
           "entropy_target_inverse": h_k, "target_gap": h_l - h_k, "excess_forward": fwd - h_l,
           "excess_inverse": inv - h_k, "excess_difference": (fwd - h_l) - (inv - h_k),
           "start_forward": loss[(k, l)], "start_inverse": loss[(l, k)],
           "base_on_target_forward": loss[(0, l)], "base_on_target_inverse": loss[(0, k)]}
    for d, start, target in (("forward", k, l), ("inverse", l, k)):
        e = ends[d]
        row[f"kl_start_{d}"] = kl[(target, start)]
        row[f"kl_end_{d}"] = e["kl_target_end"]
        row[f"kl_change_{d}"] = kl[(target, start)] - e["kl_target_end"]
        row[f"kl_left_{d}"] = e["kl_target_end"] / kl[(target, start)] if kl[(target, start)] > 0 else math.nan
        row[f"kl_moved_{d}"] = e["kl_moved"]
        row[f"heldout_loss_{d}"] = e["heldout_loss_end"]
        for key in ("steps", "examples", "tokens"):
            row[f"{key}_{d}"] = e[key]
    row["kl_end_difference"] = row["kl_end_forward"] - row["kl_end_inverse"]
    row["kl_left_difference"] = row["kl_left_forward"] - row["kl_left_inverse"]
    row["inverse_closed_more"] = row["kl_left_inverse"] < row["kl_left_forward"]
    return row


def summarise(rows: list[dict], seeds: Sequence[int]) -> list[dict]:
    """Per pair and over all pairs ("all"): every compared number's 95% t-interval over seeds, and counts.

    The "all" row averages the pairs within each seed first (pairs of one seed share their slices, so they
    are not independent), then takes the interval over those per-seed means.
    """
    out = []
    pairs = sorted({(r["k"], r["l"]) for r in rows})
    for k, l in pairs:
        rs = [r for r in rows if (r["k"], r["l"]) == (k, l)]
        out.append(_summary_row(f"{l}/{k}", rs, {key: [r[key] for r in rs] for key in COMPARED}))
    per_seed = {key: [_mean([r[key] for r in rows if r["seed"] == s]) for s in seeds] for key in COMPARED}
    out.append(_summary_row("all", rows, per_seed))
    return out


def _mean(values: list[float]) -> float:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    return sum(finite) / len(finite) if finite else math.nan


def _summary_row(pair: str, rows: list[dict], values: dict[str, list[float]]) -> dict:
    row = {"pair": pair, "cells": len(rows), "inverse_lower": sum(bool(r["inverse_lower"]) for r in rows),
           "inverse_closed_more": sum(bool(r["inverse_closed_more"]) for r in rows)}
    for key, vs in values.items():
        iv = t_interval(vs)
        row.update({key: iv.mean, f"{key}_lo": iv.lo, f"{key}_hi": iv.hi, f"{key}_n": iv.n})
    return row
