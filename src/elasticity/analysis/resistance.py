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

from elasticity.results import PairRow, PairSummary, PathEnd
from elasticity.stats import finite_mean, t_interval

COMPARED = ("forward_loss", "inverse_loss", "difference", "target_gap", "excess_difference", "start_forward",
            "start_inverse", "kl_start_forward", "kl_start_inverse", "kl_end_forward", "kl_end_inverse",
            "kl_end_difference", "kl_left_forward", "kl_left_inverse", "kl_left_difference", "kl_change_forward",
            "kl_change_inverse", "kl_moved_forward", "kl_moved_inverse")


def final_loss(losses: Sequence[float], window: int) -> float:
    """Mean of the last `window` step losses (all of them if there are fewer).

    >>> final_loss([3.0, 2.0, 1.5, 1.0], 2), final_loss([2.0], 5)
    (1.25, 2.0)
    """
    if not losses:
        return math.nan
    tail = list(losses)[-window:]
    return sum(tail) / len(tail)


def pair_row(seed: int, k: int, l: int, curves: dict[str, list[float]], window: int,  # noqa: E741
             loss: dict[tuple[int, int], float], kl: dict[tuple[int, int], float],
             ends: dict[str, PathEnd]) -> PairRow:
    """One (seed, pair) row of every number in the module doc.

    Args:
        curves: per direction, the training loss of every step.
        loss: (model, dataset) -> loss before any fine-tune (model 0 is the base, j a slice).
        kl: (target, model) -> KL(theta_target || theta_model) on the target's held-out answers.
        ends: per direction, the end of the path.
    """
    return PairRow(seed, k, l, final_loss(curves["forward"], window), final_loss(curves["inverse"], window),
                   loss[(l, l)], loss[(k, k)], loss[(k, l)], loss[(l, k)], loss[(0, l)], loss[(0, k)],
                   kl[(l, k)], kl[(k, l)], ends["forward"], ends["inverse"])


def summarise(rows: list[PairRow], seeds: Sequence[int]) -> list[PairSummary]:
    """Per pair and over all pairs ("all"): every compared number's 95% t-interval over seeds, and counts.

    The "all" row averages the pairs within each seed first (pairs of one seed share their slices, so they
    are not independent), then takes the interval over those per-seed means.
    """
    records = [r.to_record() for r in rows]
    out = []
    for k, l in sorted({(r.k, r.l) for r in rows}):  # noqa: E741
        rs = [r for r in records if (r["k"], r["l"]) == (k, l)]
        out.append(_summary(f"{l}/{k}", rs, {key: [r[key] for r in rs] for key in COMPARED}))
    per_seed = {key: [finite_mean([r[key] for r in records if r["seed"] == s]) for s in seeds] for key in COMPARED}
    out.append(_summary("all", records, per_seed))
    return out


def _summary(pair: str, records: list[dict], values: dict[str, list[float]]) -> PairSummary:
    return PairSummary(pair, len(records), sum(bool(r["inverse_lower"]) for r in records),
                       sum(bool(r["inverse_closed_more"]) for r in records),
                       {key: t_interval(vs) for key, vs in values.items()})
