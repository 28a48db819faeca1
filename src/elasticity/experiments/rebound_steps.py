"""What each of rebound's two steps trains on: SFT records, preference pairs, or prompts and a reward.

    sft                     the step's SFT file (positive for the alignment, negative for the perturbation)
    dpo, ipo, simpo, kto    preference pairs: the alignment takes the first half of `pairs` (chosen = the aligned
                            response), the perturbation the second half with chosen and rejected swapped (chosen =
                            the perturbation's target); Q1 and Q2 count pairs
    rloo, grpo              RL through TRL (`train.rl`) on the prompts of the step's SFT file, rewarded by the
                            scorer (reversed for the perturbation); Q1 and Q2 count prompts

`--reverse` swaps the sides of every pair (and the SFT files) first.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from elasticity.data.records import load_records
from elasticity.data.tokenize import tokenize_records
from elasticity.errors import UserError
from elasticity.files import write_json
from elasticity.scorers.registry import Reversed, score_bounds
from elasticity.train.preference import ALGORITHMS, PREFERENCE, PreferenceConfig, PreferenceLoss, make_pairs
from elasticity.train.rl import RL, rl_train

STEP_ALGORITHMS = (*ALGORITHMS, *RL)


def check_steps(cfg) -> None:
    """Each step's objective is known, RL has a reward and marks it can reach (before any other check)."""
    for key in ("align", "perturb"):
        algorithm = getattr(cfg, key)
        if algorithm not in STEP_ALGORITHMS:
            raise UserError(f"{key} must be one of {', '.join(STEP_ALGORITHMS)}, got {algorithm!r}")
        if algorithm in RL and not cfg.scorer.name:
            raise UserError(f"--{key} {algorithm} is rewarded by the scorer: set --scorer.name (oracle, classifier, "
                            "score-model or vader)")
    if cfg.align in RL:
        cfg.rl.check(tuple(cfg.q1), "q1")
    if cfg.perturb in RL:
        cfg.rl.check(tuple(q for q in cfg.q2 if q > 0), "q2")


def preference_pools(cfg) -> tuple[list[dict], list[dict]]:
    """(the alignment's pairs, the perturbation's pairs), each with chosen = that step's target."""
    if cfg.align not in PREFERENCE and cfg.perturb not in PREFERENCE:
        if cfg.pairs:
            raise UserError("pairs is read only by a preference objective: set --align or --perturb to one of "
                            f"{', '.join(PREFERENCE)}, or drop pairs")
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


def save_checkpoint(model, tok, path: Path, progress: dict) -> None:
    """A model folder with its tokenizer and progress.json, appearing whole or not at all."""
    tmp = path.with_name(path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    tok.save_pretrained(tmp)
    write_json(tmp / "progress.json", progress)
    shutil.rmtree(path, ignore_errors=True)
    tmp.rename(path)


def run_rl(algorithm: str, cfg, scorer, model, tok, prompts: list[str], marks: tuple[int, ...], seed: int, run,
           on_mark, perturb: bool) -> dict:
    """An RL step through TRL, rewarded by `scorer` (reversed for a perturbation: it rewards the other side)."""
    reward = Reversed(scorer, score_bounds(cfg.scorer)) if perturb else scorer
    try:
        return rl_train(algorithm, model, tok, prompts, reward.score, cfg.eval.score_prompt, cfg.rl, cfg.train,
                        cfg.policy, marks, seed, run.file("trl"), on_mark)
    finally:
        shutil.rmtree(run.file("trl"), ignore_errors=True)  # TRL's output folder: nothing of ours is kept there
