"""What each of rebound's two steps trains on: SFT records, or preference pairs with their objective.

The alignment takes the first half of `pairs` (chosen = the aligned response), the perturbation the second half
with chosen and rejected swapped (chosen = the perturbation's target); `--reverse` swaps the sides of every pair
first. Q1 and Q2 then count pairs.
"""

from __future__ import annotations

from elasticity.data.records import load_records
from elasticity.data.tokenize import tokenize_records
from elasticity.errors import UserError
from elasticity.train.preference import ALGORITHMS, PreferenceConfig, PreferenceLoss, make_pairs


def preference_pools(cfg) -> tuple[list[dict], list[dict]]:
    """(the alignment's pairs, the perturbation's pairs), each with chosen = that step's target."""
    for key in ("align", "perturb"):
        if getattr(cfg, key) not in ALGORITHMS:
            raise UserError(f"{key} must be one of {', '.join(ALGORITHMS)}, got {getattr(cfg, key)!r}")
    if cfg.align == cfg.perturb == "sft":
        if cfg.pairs:
            raise UserError("pairs is read only by a preference objective: set --align or --perturb to one of "
                            f"{', '.join(ALGORITHMS[1:])}, or drop pairs")
        return [], []
    if not cfg.pairs:
        raise UserError(f"--align {cfg.align} --perturb {cfg.perturb} trains on preference pairs: set --pairs to a "
                        "file of prompt, chosen, rejected records")
    cfg.preference.check()
    records = load_records(cfg.pairs, ("prompt", "chosen", "rejected"), cfg.fields)
    if cfg.reverse:
        records = [dict(r, chosen=r["rejected"], rejected=r["chosen"]) for r in records]
    half = len(records) // 2
    return records[:half], [dict(r, chosen=r["rejected"], rejected=r["chosen"]) for r in records[half:]]


def step_examples(algorithm: str, records: list[dict], order: list[int], tok, max_length: int, name: str,
                  preference: PreferenceConfig):
    """(the step's training examples, its objective): SFT examples, or pairs with their preference loss."""
    chosen = [records[i] for i in order]
    if algorithm == "sft":
        return tokenize_records(chosen, tok, max_length, name), None
    return make_pairs(chosen, tok, max_length, algorithm), PreferenceLoss(algorithm, preference)
