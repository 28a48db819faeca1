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

import dataclasses
import shutil

from elasticity import ranks
from elasticity.data.records import load_records
from elasticity.data.tokenize import tokenize_records
from elasticity.errors import UserError
from elasticity.experiments.skeleton import seed_order
from elasticity.files import read_jsonl, write_jsonl
from elasticity.generate import generate
from elasticity.scorers.registry import Reversed, score_bounds
from elasticity.train import sharding
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
        if algorithm != "sft" and cfg.train.pack_tokens:
            raise UserError(f"train.pack_tokens packs next-token (sft) examples only, and --{key} is {algorithm}: "
                            "set train.pack_tokens 0")
    sharding.check_launch(cfg.lora.r > 0, (cfg.align, cfg.perturb))
    if ranks.world_size() > 1 and (cfg.align in RL or cfg.perturb in RL):
        raise UserError("rloo and grpo steps run in one process (TRL's trainer would take the launch's processes "
                        "over): run them without accelerate launch")
    if cfg.align in RL:
        cfg.rl.check(tuple(cfg.q1), "q1")
    if cfg.perturb in RL:
        cfg.rl.check(tuple(q for q in cfg.q2 if q > 0), "q2")


def preference_pools(cfg) -> tuple[list[dict], list[dict]]:
    """(the alignment's pairs, the perturbation's pairs), each with chosen = that step's target."""
    if cfg.on_policy and cfg.align not in PREFERENCE and cfg.perturb not in PREFERENCE:
        raise UserError(f"on_policy makes a preference step's pairs: set --align or --perturb to one of "
                        f"{', '.join(PREFERENCE)}")
    if cfg.on_policy or (cfg.align not in PREFERENCE and cfg.perturb not in PREFERENCE):
        if cfg.pairs:
            raise UserError("pairs is read only by a preference objective without on_policy: set --align or "
                            f"--perturb to one of {', '.join(PREFERENCE)}, or drop pairs")
        return [], []
    if not cfg.pairs:
        raise UserError(f"--align {cfg.align} --perturb {cfg.perturb} trains on preference pairs: set --pairs to a "
                        "file of prompt, chosen, rejected records")
    cfg.preference.check()
    records = load_records(cfg.pairs, ("prompt", "chosen", "rejected"), cfg.fields)
    if cfg.reverse:
        records = [_swapped(r) for r in records]
    half = len(records) // 2
    return records[:half], [_swapped(r) for r in records[half:]]


def _swapped(pair: dict) -> dict:
    return dict(pair, chosen=pair["rejected"], rejected=pair["chosen"])


def step_records(cfg, algorithm: str, sft_pool: list[dict], pair_pool: list[dict], seed: int, need: int, model, tok,
                 scorer, run, perturb: bool) -> list[dict]:
    """The step's first `need` training records in the seed's order: SFT records, pairs from the file, or (with
    on_policy) the starting model's own pairs, kept in the run (`on_policy_pairs.jsonl`) for a resumed run."""
    file_pairs = algorithm in PREFERENCE and not cfg.on_policy
    pool = pair_pool if file_pairs else sft_pool
    records = [pool[i] for i in seed_order(len(pool), seed)]
    if algorithm not in PREFERENCE or file_pairs:
        return records[:need]
    kept = run.file("on_policy_pairs.jsonl")
    if kept.is_file():
        return read_jsonl(kept)[:need]
    reward = Reversed(scorer, score_bounds(cfg.scorer)) if perturb else scorer
    pairs = on_policy_pairs(model, tok, [r["prompt"] for r in records], reward, cfg.policy, need,
                            cfg.eval.score_prompt)
    if ranks.is_main():  # every rank samples the same pairs from the same model; one writes them
        write_jsonl(kept, pairs)
    return pairs


def on_policy_pairs(model, tok, prompts: list[str], scorer, policy, need: int, score_prompt: bool) -> list[dict]:
    """Two samples of each prompt in turn (the decoding policy's, seeds apart from the measurement's), the higher
    scored one chosen, until `need` pairs; prompts whose two samples score the same are skipped.

    Raises:
        UserError: the prompts ran out before `need` pairs.
    """
    sampling = dataclasses.replace(policy, samples_per_prompt=2, seed=policy.seed + 1_000_003)
    out: list[dict] = []
    chunk = max(need, 8)
    for start in range(0, len(prompts), chunk):
        rows = generate(model, tok, prompts, sampling, indices=list(range(start, min(start + chunk, len(prompts)))))
        scores = scorer.score([r["prompt"] + r["response"] if score_prompt else r["response"] for r in rows])
        for (a, sa), (b, sb) in zip(zip(rows[::2], scores[::2]), zip(rows[1::2], scores[1::2])):
            if sa != sb and len(out) < need:
                hi, lo = (a, b) if sa > sb else (b, a)
                out.append({"prompt": a["prompt"], "chosen": hi["response"], "rejected": lo["response"]})
        if len(out) == need:
            return out
    raise UserError(f"on-policy pairs: {len(prompts)} prompts gave only {len(out)} pairs the scorer tells apart, "
                    f"{need} needed: lower the grid or give pairs from a file")


def step_examples(algorithm: str, chosen: list[dict], tok, max_length: int, name: str,
                  preference: PreferenceConfig):
    """(the step's training examples, its objective): SFT examples, or pairs with their preference loss."""
    if algorithm == "sft":
        return tokenize_records(chosen, tok, max_length, name), None
    return make_pairs(chosen, tok, max_length, algorithm), PreferenceLoss(algorithm, preference)


def run_rl(algorithm: str, cfg, scorer, model, tok, prompts: list[str], marks: tuple[int, ...], seed: int, run,
           on_mark, perturb: bool) -> dict:
    """An RL step through TRL, rewarded by `scorer` (reversed for a perturbation: it rewards the other side)."""
    reward = Reversed(scorer, score_bounds(cfg.scorer)) if perturb else scorer
    try:
        return rl_train(algorithm, model, tok, prompts, reward.score, cfg.eval.score_prompt, cfg.rl, cfg.train,
                        cfg.policy, marks, seed, run.file("trl"), on_mark)
    finally:
        shutil.rmtree(run.file("trl"), ignore_errors=True)  # TRL's output folder: nothing of ours is kept there
