"""`elasticity rebound`: align with Q1 positive examples, fine-tune on Q2 negative ones, measure the fall back.

Nested runs (one epoch, constant learning rate: training on the first q examples of a fixed order is a
prefix of training on more). Per seed, the positive pool is shuffled once with the seed and ONE positive
SFT runs over its first max(Q1) examples, with a checkpoint exactly after every Q1 (steps are cut there).
Per (Q1, seed), ONE negative SFT starts from that checkpoint on the first max(Q2) examples of the negative
pool shuffled with the seed (the same order for every Q1: the Q1 curves of a seed are paired), and the model
is measured in place whenever the examples seen reach a Q2 (steps are cut there too). Q2 = 0, the aligned
model, is always measured; so is the base model.

Stages (each cached; an interrupted experiment redoes only what is missing):

    rebound-base-<h>/       points.jsonl (the base model's measurements), samples.jsonl, and base_logprobs/ when the
                            base's log-probabilities on the measuring sets are too large to keep in memory
    rebound-positive-<h>/   one per seed: checkpoints/examples-<Q1>/ (the aligned models), marks.json
    rebound-negative-<h>/   one per (Q1, seed): points.jsonl, one line per finished Q2 (a resumed run skips
                            those and the training loop resumes from its last Q2), samples.jsonl
    rebound-<h>/            results, metrics, tables and figures (see `elasticity.report.rebound_tables`)

The last `eval.pairs` records of the positive and negative files are held out of training: KL to the base
and the positive / negative bits/token are measured on them.

Either step can train on preference pairs instead of SFT (`--align`, `--perturb`: dpo, ipo, simpo, kto; see
`train.preference`): the alignment on the first half of `pairs` (chosen = the aligned response), the
perturbation on the second half with chosen and rejected swapped; Q1 and Q2 then count pairs. `--reverse`
aligns toward the negative side and perturbs toward the positive one (the files' roles swap) and reads every
scorer reversed (`scorers.registry.Reversed`), so a score still rises with alignment. See `measurement` for every
measured column and `analysis.rebound` for the elasticity metrics.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

from elasticity import ranks
from elasticity.analysis.rebound import analyse
from elasticity.config import InputPath
from elasticity.data.records import load_records
from elasticity.errors import UserError
from elasticity.experiments.measurement import Kit, resident
from elasticity.experiments.rebound_steps import (
    check_steps,
    preference_pools,
    run_rl,
    step_examples,
    step_records,
)
from elasticity.experiments.skeleton import (
    PAPER_TRAIN,
    ExperimentConfig,
    check_experiment,
    check_lengths,
    command,
    dtype_key,
    model_key,
    read_pairs,
    read_prompts,
    say,
    seed_order,
    stage,
)
from elasticity.files import read_jsonl, write_jsonl
from elasticity.generate import DecodingPolicy
from elasticity.models.hf import quiet_loading
from elasticity.report.rebound_tables import write_rebound
from elasticity.results import BUILT_IN_PAIRS, Point, ReboundGrid, Savings
from elasticity.runs import Run
from elasticity.scorers.registry import build_scorer_for
from elasticity.train.loop import TrainConfig, train, write_checkpoint
from elasticity.train.preference import PREFERENCE, PreferenceConfig
from elasticity.train.rl import RL, RLConfig


@dataclass(frozen=True)
class Evaluation:
    """How much is measured at every grid point."""

    prompts: int = 64  # evaluation prompts (the file's first N); 0 = all
    pairs: int = 100  # held-out pairs per side, the LAST records of the positive and negative files
    docs: int = 100  # documents per held-out pre-training text file (its first N)
    score_prompt: bool = True  # the scorer reads prompt + response (False: the response alone)
    batch_size: int = 32  # sequences per teacher-forced forward pass ...
    batch_tokens: int = 16384  # ... and positions, padding included (32 x 512: long sequences come fewer at once)


@dataclass(frozen=True)
class Metrics:
    """Windows and thresholds of the elasticity metrics (see `analysis.rebound`)."""

    early_q2: int = 0  # the initial slope runs from Q2 = 0 to this grid point; 0 = the smallest Q2 > 0
    late_q2: int = 0  # the late slope runs from this grid point to the largest Q2; 0 = the second-largest
    kl_epsilon: float = 0.01  # Table 3: negatives needed for KL to the base (nats/token) to fall below this


@dataclass(frozen=True)
class Config(ExperimentConfig):
    """`elasticity rebound`: what to align, on what, how to measure. File fields are JSONL/JSON or hf:NAME."""

    positive: InputPath = ""  # positive (aligned) SFT records: prompt, response
    negative: InputPath = ""  # negative SFT records: prompt, response
    prompts: InputPath = ""  # evaluation prompts: prompt
    pairs: InputPath = ""  # preference records for a dpo/ipo/simpo/kto step: prompt, chosen (aligned), rejected
    align: str = "sft"  # the alignment's objective: sft on `positive`, dpo/ipo/simpo/kto on `pairs`' first half, or
    # rloo/grpo on `positive`'s prompts rewarded by the scorer
    perturb: str = "sft"  # the perturbation's: sft on `negative`, a preference one on `pairs`' second half (sides
    # swapped), or rloo/grpo on `negative`'s prompts rewarded by the reversed scorer
    reverse: bool = False  # align toward the negative side and perturb toward the positive one; scores reversed
    on_policy: bool = False  # a preference step's pairs are its starting model's own: two samples per prompt of the
    # step's SFT file, the one the scorer rates higher (for that step) chosen, ties skipped; `pairs` is not read
    heldout: tuple[InputPath, ...] = ()  # held-out pre-training text files (text); the first measures alignment depth
    q1: tuple[int, ...] = (1000, 2000, 5000, 10000)  # positive example counts (the aligned models)
    q2: tuple[int, ...] = (0, 100, 200, 500, 1000, 2000)  # negative example counts at which each is measured
    train: TrainConfig = field(default_factory=lambda: PAPER_TRAIN)  # both SFTs; one epoch, constant lr
    policy: DecodingPolicy = field(default_factory=lambda: DecodingPolicy(temperature=1.0, max_new_tokens=64,
                                                                         samples_per_prompt=2))
    eval: Evaluation = field(default_factory=Evaluation)  # how much is measured at every grid point
    metrics: Metrics = field(default_factory=Metrics)  # windows and thresholds of the elasticity metrics
    preference: PreferenceConfig = field(default_factory=PreferenceConfig)  # beta and the rest of dpo/ipo/simpo/kto
    rl: RLConfig = field(default_factory=RLConfig)  # rloo / grpo: prompts per step, completions per prompt, KL beta


@dataclass
class Data:
    """Everything read and checked before the first run directory exists."""

    positive: list[dict]  # training pool (held-out pairs removed)
    negative: list[dict]
    heldout_pairs: dict[str, list[dict]]
    prompts: list[str]
    texts: dict[str, list[str]]
    q1: tuple[int, ...]
    q2: tuple[int, ...]  # sorted, 0 first
    early: int
    late: int
    align_pairs: list[dict] = field(default_factory=list)  # preference steps' pools: chosen = the step's target
    perturb_pairs: list[dict] = field(default_factory=list)


def _grid(name: str, values: tuple[int, ...], allow_zero: bool) -> tuple[int, ...]:
    if not values:
        raise UserError(f"{name} is empty: give at least one example count (e.g. --{name} 100 300)")
    low = 0 if allow_zero else 1
    bad = [v for v in values if v < low]
    if bad:
        raise UserError(f"{name} values must be {'>= 0' if allow_zero else 'positive'}, got {bad[0]}")
    return tuple(sorted(set(values)))


def _text_name(path: str) -> str:
    return Path(path).stem.replace("-", "_")


def check(cfg: Config) -> Data:
    """Validate everything a user can get wrong and read the data; creates nothing on disk.

    Raises:
        UserError: one line naming the field and the fix.
    """
    check_steps(cfg)
    check_experiment(cfg, ("model", "positive", "negative", "prompts"))
    q1 = _grid("q1", cfg.q1, allow_zero=False)
    q2 = tuple(sorted({0, *_grid("q2", cfg.q2, allow_zero=True)}))
    t = cfg.train
    if t.epochs != 1 or t.schedule != "constant" or t.max_steps is not None:
        raise UserError("rebound's nested runs need train.epochs 1, train.schedule constant and no train.max_steps "
                        "(then the first q examples of a run are a run on q examples)")
    t.check("train")
    ev = cfg.eval
    if min(ev.pairs, ev.docs, ev.batch_size, ev.batch_tokens) < 1 or ev.prompts < 0:
        raise UserError("eval.pairs, eval.docs, eval.batch_size and eval.batch_tokens must be >= 1, eval.prompts >= 0")
    if cfg.metrics.kl_epsilon <= 0:
        raise UserError(f"metrics.kl_epsilon must be > 0, got {cfg.metrics.kl_epsilon}")
    pos, neg = read_pairs(cfg.positive, cfg.fields), read_pairs(cfg.negative, cfg.fields)
    align_pairs, perturb_pairs = preference_pools(cfg)
    if cfg.reverse:
        pos, neg = neg, pos
    for name, pool, grid in (("positive", pos, q1), ("negative", neg, q2)):
        key = "q1" if name == "positive" else "q2"
        if (cfg.align if key == "q1" else cfg.perturb) in PREFERENCE and not cfg.on_policy:
            pool = align_pairs if key == "q1" else perturb_pairs
            if grid[-1] > len(pool):
                raise UserError(f"{key} asks for {grid[-1]} pairs but half of {cfg.pairs} is {len(pool)} (the "
                                f"alignment takes the first half, the perturbation the second): lower {key}")
        elif grid[-1] > len(pool) - ev.pairs:
            file = getattr(cfg, {"positive": "negative", "negative": "positive"}[name] if cfg.reverse else name)
            raise UserError(f"{key} asks for {grid[-1]} {name} examples but {file} has {len(pool)} "
                            f"records, {ev.pairs} of them held out (eval.pairs): lower {key} or eval.pairs")
    prompts = read_prompts(cfg.prompts, cfg.fields, ev.prompts)
    check_lengths(cfg, [(cfg.positive, [r["prompt"] for r in pos], "train.max_length", t.max_length),
                        (cfg.negative, [r["prompt"] for r in neg], "train.max_length", t.max_length)], prompts)
    texts = {}
    for path in cfg.heldout:
        name = _text_name(path)
        if name in texts or name in (*BUILT_IN_PAIRS, "response"):
            raise UserError(f"heldout: two files, or a file and a built-in set, share the name '{name}'; rename one")
        texts[name] = [r["text"] for r in load_records(path, ("text",), cfg.fields)][: ev.docs]
    early = late = 0  # with fewer than two Q2 > 0 there is no late slope: the shape metrics are skipped
    if len(q2) > 2:
        early, late = cfg.metrics.early_q2 or q2[1], cfg.metrics.late_q2 or q2[-2]
        for key, v in (("metrics.early_q2", early), ("metrics.late_q2", late)):
            if v not in q2 or v == 0 or (key.endswith("late_q2") and v == q2[-1]):
                raise UserError(f"{key} = {v} must be a Q2 grid point above 0 (late: below the largest), "
                                f"grid {list(q2)}")
    return Data(pos[: len(pos) - ev.pairs], neg[: len(neg) - ev.pairs],
                {"positive": pos[len(pos) - ev.pairs:], "negative": neg[len(neg) - ev.pairs:]},
                prompts, texts, q1, q2, early, late, align_pairs, perturb_pairs)


def _train_cfg(cfg: Config, seed: int, marks: tuple[int, ...]) -> TrainConfig:
    return dataclasses.replace(cfg.train, seed=seed, shuffle=False, checkpoint_examples=marks, epochs=1,
                               max_steps=None)


def _measure_key(cfg: Config, data: Data) -> dict:
    return {"eval": cfg.eval, "policy": cfg.policy, "scorer": cfg.scorer, "max_length": cfg.train.max_length,
            "heldout": sorted(data.texts), "reverse": cfg.reverse, **dtype_key(cfg)}


def _objective_key(cfg: Config, algorithm: str) -> dict:
    settings = ({"preference": cfg.preference, "on_policy": cfg.on_policy} if algorithm in PREFERENCE
                else {"rl": cfg.rl} if algorithm in RL else {})
    return {"objective": algorithm, **settings, **model_key(cfg)}


def _inputs(cfg: Config) -> dict:
    return {"base": cfg.model, "positive": cfg.positive, "negative": cfg.negative, "prompts": cfg.prompts,
            **({"pairs": cfg.pairs} if cfg.pairs else {}), **{f"heldout:{h}": h for h in cfg.heldout}}


def base_stage(cfg: Config, data: Data, kit: Kit, runs_root: Path) -> Run:
    """Measure the base model once (the dashed line and every KL's reference)."""
    def work(run: Run) -> None:
        for p in (run.file("points.jsonl"), run.file("samples.jsonl")):
            p.unlink(missing_ok=True)
        kit.cache_dir = run.file("base_logprobs")  # the base's log-probabilities, for every later grid point
        evaluator = kit.evaluator()
        base = evaluator.base_model()  # (loading it sets where it waits between uses)
        with resident(base, evaluator.base_device):
            kit.record(run, base, 0, None, 0, 0, 0, 0, None, "base model")

    return stage(runs_root, "rebound-base", _measure_key(cfg, data), _inputs(cfg), work)


def positive_stage(cfg: Config, data: Data, kit: Kit, seed: int, runs_root: Path) -> Run:
    """One positive SFT per seed over the first max(Q1) examples of the seed's order, checkpointed at every Q1."""
    tcfg = _train_cfg(cfg, seed, data.q1)

    def work(run: Run) -> None:
        model, tok = kit.models.trainable(cfg.model, seed)
        records = step_records(cfg, cfg.align, data.positive, data.align_pairs, seed, data.q1[-1], model, tok,
                               kit.scorer, run, perturb=False)
        marks = {}
        say("rebound", f"seed {seed}: alignment by {cfg.align} on {len(records)} examples, checkpoints at Q1 = "
                       f"{list(data.q1)}")
        model.train()
        if cfg.align in RL:
            def on_mark(q, steps, tokens, m) -> None:
                write_checkpoint(m, tok, run.file("checkpoints") / f"examples-{q}",
                                {"step": steps, "examples": q, "tokens": tokens})
                marks[q] = {"tokens": tokens, "steps": steps}

            summary = run_rl(cfg.align, cfg, kit.scorer, model, tok, [r["prompt"] for r in records], data.q1, seed,
                             run, on_mark, perturb=False)
        else:
            examples, objective = step_examples(cfg.align, records, tok, tcfg.max_length, "positive", cfg.preference)

            def on_step(progress, _model) -> None:
                if progress.examples in data.q1:
                    marks[progress.examples] = {"tokens": progress.tokens, "steps": progress.step}

            summary = train(model, tok, examples, tcfg, run, on_step=on_step, objective=objective,
                            save_final=False)  # the last Q1 checkpoint is the final model
        if len(marks) < len(data.q1):  # resumed: marks before the resume point come from the checkpoints
            for q in data.q1:
                progress = json.loads((run.file("checkpoints") / f"examples-{q}" / "progress.json").read_text())
                marks.setdefault(q, {"tokens": progress["tokens"], "steps": progress["step"]})
        if ranks.is_main():
            run.write_json("marks.json", {str(q): marks[q] for q in data.q1})
            run.write_json("summary.json", summary)

    key = {"train": tcfg, "held_out_pairs": cfg.eval.pairs, "fields": cfg.fields, "reverse": cfg.reverse,
           **_objective_key(cfg, cfg.align)}
    inputs = {"base": cfg.model, "positive": cfg.negative if cfg.reverse else cfg.positive,
              **({"pairs": cfg.pairs} if cfg.align in PREFERENCE and not cfg.on_policy else {})}
    return stage(runs_root, "rebound-positive", key, inputs, work, seed=seed, shared=True)


def negative_stage(cfg: Config, data: Data, kit: Kit, seed: int, q1: int, positive: Run, runs_root: Path) -> Run:
    """One negative SFT from the Q1 checkpoint, measured at every Q2; finished Q2 points are never redone."""
    marks = tuple(q for q in data.q2 if q > 0)
    tcfg = _train_cfg(cfg, seed, marks)

    def work(run: Run) -> None:
        # an interrupted run keeps its finished points; samples of a point it did not finish are dropped (that
        # point is measured again), and both files are rewritten whole (no half line from a killed append)
        points = [p for p in read_jsonl(run.file("points.jsonl")) if cfg.perturb not in RL or p["q2"] == 0]
        done = {p["q2"] for p in points}  # (an RL run has no resume: it measures every Q2 > 0 again)
        if ranks.is_main():
            write_jsonl(run.file("points.jsonl"), points)
            write_jsonl(run.file("samples.jsonl"), [s for s in read_jsonl(run.file("samples.jsonl"))
                                                    if s["q2"] in done])
        model, tok = kit.models.trainable(str(positive.file("checkpoints") / f"examples-{q1}"), seed)
        if 0 not in done:
            kit.record(run, model, q1, seed, 0, 0, 0, 0, None, f"seed {seed} Q1={q1} aligned")
        last_step = [max((p["steps"] for p in points), default=0)]  # a resumed run's loss window starts there

        def on_step(progress, m) -> None:
            if progress.examples not in marks:
                return
            if progress.examples not in done:
                losses = [r["train/loss"] for r in run.metrics()
                          if last_step[0] < r.get("step", 0) <= progress.step and "train/loss" in r]
                kit.record(run, m, q1, seed, progress.examples, progress.examples, progress.tokens, progress.step,
                           sum(losses) / len(losses) if losses else None, f"seed {seed} Q1={q1} Q2={progress.examples}")
            last_step[0] = progress.step

        if marks and cfg.perturb in RL:
            def on_mark(q, steps, tokens, m) -> None:
                kit.record(run, m, q1, seed, q, q, tokens, steps, None, f"seed {seed} Q1={q1} Q2={q}")

            prompts = [data.negative[i]["prompt"] for i in seed_order(len(data.negative), seed)[: marks[-1]]]
            run.write_json("summary.json", run_rl(cfg.perturb, cfg, kit.scorer, model, tok, prompts, marks, seed, run,
                                                  on_mark, perturb=True))
        elif marks:
            records = step_records(cfg, cfg.perturb, data.negative, data.perturb_pairs, seed, marks[-1], model, tok,
                                   kit.scorer, run, perturb=True)
            model.train()
            examples, objective = step_examples(cfg.perturb, records, tok, tcfg.max_length, "negative", cfg.preference)
            # measured in place at every Q2: a model is written only when the user keeps them (at 7B each is ~13 GB)
            summary = train(model, tok, examples, tcfg, run, on_step=on_step, progress_bar=False,
                            save_final=cfg.keep_models, objective=objective, keep_checkpoints=cfg.keep_models)
            if ranks.is_main():
                run.write_json("summary.json", summary)

    key = {"train": tcfg, "q1": q1, **_measure_key(cfg, data), **_objective_key(cfg, cfg.perturb)}
    inputs = {"positive_run": positive, **_inputs(cfg)}
    return stage(runs_root, "rebound-negative", key, inputs, work, seed=seed, shared=True)


def collect_points(base: Run, negatives: dict[tuple[int, int], Run], texts: list[str]) -> list[Point]:
    """The base point, then every grid point sorted by (Q1, seed, Q2)."""
    points = [Point.from_record(r, texts) for r in read_jsonl(base.file("points.jsonl"))]
    for _, r in sorted(negatives.items()):
        by_q2 = {p["q2"]: p for p in read_jsonl(r.file("points.jsonl"))}  # a resumed run's last word wins
        points += [Point.from_record(by_q2[q], texts) for q in sorted(by_q2)]
    return points


def token_savings(positives: dict[int, Run], negatives: dict[tuple[int, int], Run], q1s, q2s) -> Savings:
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
    return Savings(nested, naive, len(positives) + len(negatives), len(positives) * len(q1s) * len(q2s))


def rebound_stage(cfg: Config, runs_root: Path) -> Run:
    """Run (or reuse) the whole experiment; returns the `rebound` run holding results, metrics and figures."""
    data = check(cfg)
    ranks.setup()  # under accelerate launch: each rank's models go to its own device
    quiet_loading()
    kit = Kit(cfg, data, build_scorer_for(cfg.scorer, cfg.reverse))  # a missing scorer model fails here, before
    # any run directory
    base = base_stage(cfg, data, kit, runs_root)
    kit.cache_dir = base.file("base_logprobs")
    positives, negatives = {}, {}
    for seed in cfg.seeds:
        positives[seed] = positive_stage(cfg, data, kit, seed, runs_root)
        for q1 in data.q1:
            negatives[(q1, seed)] = negative_stage(cfg, data, kit, seed, q1, positives[seed], runs_root)
    grid = ReboundGrid(data.q1, data.q2, tuple(cfg.seeds), cfg.train.lr, data.early, data.late,
                       cfg.metrics.kl_epsilon, tuple(data.texts))

    def work(run: Run) -> None:
        points = collect_points(base, negatives, list(data.texts))
        write_rebound(run, points, analyse(points, grid), token_savings(positives, negatives, data.q1, data.q2), grid)

    inputs = {"base": base, **{f"positive:{s}": r for s, r in positives.items()},
              **{f"negative:{q}:{s}": r for (q, s), r in negatives.items()}}
    return stage(runs_root, "rebound", cfg, inputs, work, reports=True)


run = command(rebound_stage)
