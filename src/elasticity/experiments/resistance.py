"""`elasticity resistance`: is moving a model back toward pre-training easier than moving it forward?

The paper's Table 1, with the seeds, intervals and controls it lacks. Per seed:

1. SFT the base model theta_0 for one epoch on the alignment data (the seed shuffles it) and keep n equally
   spaced checkpoints, the slices theta_1..theta_n (after N/n, 2N/n, ..., N examples).
2. Every slice answers one shared set of prompts under one decoding policy (the same sampling seed for
   every model, so the datasets are paired draws): D_1..D_n. The last `eval.heldout_prompts` prompts are held
   out of the D's; the answers to them, the base's included, measure KL and (with `score`) each model's
   behaviour.
3. For every pair k < l: forward = fine-tune theta_k on D_l, inverse = fine-tune theta_l on D_k, with the same
   hyper-parameters, the same example count, the same step plan and the same prompt order.
4. Controls: the base's and every slice's loss on every D (a slice's loss on its own answers estimates that
   dataset's entropy: the floor no fine-tune can go below), and the KL between models on each slice's held-out
   answers.

Stages (each cached; an interrupted experiment redoes only what is missing):

    resistance-slices-<h>/  one per seed: checkpoints/examples-<m>/ (the slices), data-<k>.jsonl (D_k, with
                            the generation record of every line), heldout-<k>.jsonl (k = 0: the base),
                            difficulty.jsonl (loss of every model on every D), kl.jsonl (KL between models)
    resistance-path-<h>/    one per (seed, pair, direction): metrics.jsonl (the loss curve), path.json (KL
                            at the end of the path)
    resistance-<h>/         tables, figures and the summary (see `elasticity.report.resistance_outputs`)
"""

from __future__ import annotations

import dataclasses
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from elasticity import ranks
from elasticity.analysis.resistance import pair_row, summarise
from elasticity.config import InputPath, to_dict
from elasticity.data.tokenize import pad_id, tokenize_records
from elasticity.errors import UserError
from elasticity.experiments.skeleton import (
    PAPER_TRAIN,
    ExperimentConfig,
    Models,
    check_experiment,
    check_lengths,
    command,
    model_key,
    read_pairs,
    read_prompts,
    say,
    seed_order,
    stage,
)
from elasticity.files import read_json, read_jsonl, write_jsonl
from elasticity.generate import DecodingPolicy, generate
from elasticity.likelihood import teacher_forced
from elasticity.models.hf import quiet_loading
from elasticity.report.resistance import write_resistance
from elasticity.results import LossCurve, ModelLoss, PathEnd, ResistanceSetup, SliceScore
from elasticity.runs import Run
from elasticity.scorers import build_scorer
from elasticity.train.loop import TrainConfig, train

DIRECTIONS = ("forward", "inverse")


@dataclass(frozen=True)
class Evaluation:
    heldout_prompts: int = 32  # the LAST N prompts of the file: held out of the D's; answers measure KL, score
    loss_window: int = 5  # the final training loss is the mean over this many last optimizer steps
    batch_size: int = 32  # sequences per teacher-forced forward pass


@dataclass(frozen=True)
class Config(ExperimentConfig):
    """`elasticity resistance`: what to align, the slices, the pair fine-tunes. Files are JSONL/JSON or hf:NAME."""

    alignment: InputPath = ""  # alignment SFT records: prompt, response
    prompts: InputPath = ""  # prompts every model answers: the D's, then the last eval.heldout_prompts (held out)
    prompt_limit: int = 0  # use the file's first N prompts; 0 = all
    slices: int = 3  # n: checkpoints after N/n, 2N/n, ..., N alignment examples
    examples: int = 0  # N: alignment examples per seed (the first N of the seed's order); 0 = all
    align: TrainConfig = field(default_factory=lambda: PAPER_TRAIN)  # the SFT that makes the slices
    finetune: TrainConfig = field(default_factory=lambda: PAPER_TRAIN)  # every forward and inverse fine-tune
    policy: DecodingPolicy = field(default_factory=lambda: DecodingPolicy(temperature=1.0, max_new_tokens=128))
    eval: Evaluation = field(default_factory=Evaluation)  # held-out prompts, the loss window, batch size
    score: bool = False  # score every model's held-out answers with `scorer` (how far each slice moved)


@dataclass
class Data:
    """Everything read and checked before the first run directory exists."""

    alignment: list[dict]
    prompts: list[str]  # the D's prompts
    heldout_prompts: list[str]
    examples: int  # N
    marks: tuple[int, ...]  # alignment examples seen by slices 1..n

    @property
    def pairs(self) -> list[tuple[int, int]]:
        n = len(self.marks)
        return [(k, l) for k in range(1, n + 1) for l in range(k + 1, n + 1)]


def slice_marks(n_examples: int, slices: int) -> tuple[int, ...]:
    """Alignment examples seen by slices 1..n: equally spaced, the last at the end of the epoch.

    >>> slice_marks(600, 3), slice_marks(10, 3)
    ((200, 400, 600), (3, 7, 10))
    """
    return tuple(round(i * n_examples / slices) for i in range(1, slices + 1))


def _batch(t: TrainConfig) -> int:
    return t.batch_size * t.grad_accum


def check(cfg: Config) -> Data:
    """Validate everything a user can get wrong and read the data; creates nothing on disk.

    Raises:
        UserError: one line naming the field and the fix.
    """
    check_experiment(cfg, ("model", "alignment", "prompts"), scored=cfg.score)
    if ranks.world_size() > 1:
        raise UserError("resistance runs in one process (only rebound and train share their steps over the processes "
                        "of accelerate launch): run it without accelerate launch")
    if cfg.slices < 2:
        raise UserError(f"slices must be >= 2 (a pair k < l needs two slices), got {cfg.slices}")
    for name, t in (("align", cfg.align), ("finetune", cfg.finetune)):
        t.check(name)
    if cfg.align.epochs != 1 or cfg.align.max_steps is not None:
        raise UserError("align.epochs must be 1 and align.max_steps unset: the slices are spaced over one epoch")
    ev = cfg.eval
    if ev.heldout_prompts < 1 or ev.loss_window < 1 or ev.batch_size < 1:
        raise UserError("eval.heldout_prompts, eval.loss_window and eval.batch_size must be >= 1")
    if cfg.examples < 0 or cfg.prompt_limit < 0:
        raise UserError(f"examples and prompt_limit must be >= 0 (0 = all), got {cfg.examples}, {cfg.prompt_limit}")
    alignment = read_pairs(cfg.alignment, cfg.fields)
    if cfg.examples > len(alignment):
        raise UserError(f"examples = {cfg.examples} but {cfg.alignment} has {len(alignment)} records: "
                        "lower examples (0 = all)")
    n = cfg.examples or len(alignment)
    if n < _batch(cfg.align):
        raise UserError(f"the alignment set has {n} examples, fewer than one batch (align.batch_size x "
                        f"align.grad_accum = {_batch(cfg.align)}): add data or lower the batch size")
    if n < cfg.slices:
        raise UserError(f"{cfg.slices} slices need at least {cfg.slices} alignment examples, got {n}")
    prompts = read_prompts(cfg.prompts, cfg.fields, cfg.prompt_limit)
    per_slice = (len(prompts) - ev.heldout_prompts) * cfg.policy.samples_per_prompt
    if per_slice < _batch(cfg.finetune):
        raise UserError(f"too few prompts for the slices: {cfg.prompts} has {len(prompts)} prompts, "
                        f"{ev.heldout_prompts} held out (eval.heldout_prompts), so each D_k has {max(per_slice, 0)} "
                        f"examples, fewer than one fine-tuning batch ({_batch(cfg.finetune)}): add prompts, raise "
                        "policy.samples_per_prompt or lower eval.heldout_prompts")
    steps = -(-per_slice // _batch(cfg.finetune)) * cfg.finetune.epochs
    if cfg.finetune.max_steps is not None:
        steps = min(steps, cfg.finetune.max_steps)
    if ev.loss_window > steps:
        raise UserError(f"eval.loss_window = {ev.loss_window} is more than the {steps} steps of a fine-tune on "
                        f"{per_slice} examples: lower eval.loss_window")
    check_lengths(cfg, [(cfg.alignment, [r["prompt"] for r in alignment], "align.max_length",
                         cfg.align.max_length),
                        (cfg.prompts, prompts, "finetune.max_length", cfg.finetune.max_length)], prompts)
    cut = len(prompts) - ev.heldout_prompts
    return Data(alignment, prompts[:cut], prompts[cut:], n, slice_marks(n, cfg.slices))


def _policy(cfg: Config, seed: int) -> DecodingPolicy:
    """One sampling seed per experiment seed, shared by every model: D_1..D_n are paired draws."""
    return dataclasses.replace(cfg.policy, seed=cfg.policy.seed + seed)


def _model_source(cfg: Config, slices: Run, k: int, data: Data) -> str:
    """Model k of a seed: the base (0) or the checkpoint of slice k."""
    return cfg.model if k == 0 else str(slices.file("checkpoints") / f"examples-{data.marks[k - 1]}")


def _examples(tok, records: list[dict], max_length: int, name: str):
    return tokenize_records(records, tok, max_length, name)


def slices_stage(cfg: Config, data: Data, models: Models, seed: int, scorer, runs_root: Path) -> Run:
    """Align once per seed with a checkpoint at every slice mark; every model answers the prompts; controls."""
    tcfg = dataclasses.replace(cfg.align, seed=seed, shuffle=False, checkpoint_examples=data.marks)
    policy = _policy(cfg, seed)
    n = len(data.marks)

    def work(run: Run) -> None:
        model, tok = models.trainable(cfg.model, seed)
        order = seed_order(len(data.alignment), seed)[: data.examples]
        examples = _examples(tok, [data.alignment[i] for i in order], tcfg.max_length, "alignment")
        say("resistance", f"seed {seed}: alignment SFT on {len(examples)} examples, slices after {list(data.marks)}")
        # no final model: it is the last slice's checkpoint
        run.write_json("align_summary.json", train(model, tok, examples, tcfg, run, progress_bar=False,
                                                   save_final=False))
        del model  # the slices are read back from their checkpoints

        prompts = data.prompts + data.heldout_prompts
        for k in range(n + 1):
            source = _model_source(cfg, run, k, data)
            # the base trains on no D: it answers only the held-out prompts (score, KL reference)
            only = list(range(len(data.prompts), len(prompts))) if k == 0 else None
            samples = generate(models.get(source), tok, prompts, policy, indices=only)
            provenance = {"slice": k, "alignment_examples": 0 if k == 0 else data.marks[k - 1],
                          "model": "base" if k == 0 else str(Path(source).relative_to(run.path)),
                          "policy_seed": policy.seed}
            records = [{**provenance, **s} for s in samples]
            held = [r for r in records if r["prompt_index"] >= len(data.prompts)]
            if cfg.score:  # held-out answers only: a slice's behaviour, at a fraction of the scoring cost
                for r, v in zip(held, scorer.score([r["prompt"] + r["response"] for r in held])):
                    r["score"] = float(v)
            if k > 0:
                write_jsonl(run.file(f"data-{k}.jsonl"), [r for r in records if r["prompt_index"] < len(data.prompts)])
            write_jsonl(run.file(f"heldout-{k}.jsonl"), held)
        run.write_json("generation.json", {"policy": to_dict(policy), "prompts": len(data.prompts),
                                           "heldout_prompts": len(data.heldout_prompts), "slices": list(data.marks)})
        _controls(cfg, data, run, tok, seed, models)

    key = {"align": tcfg, "examples": data.examples, "slices": cfg.slices, "policy": policy,
           "prompt_limit": cfg.prompt_limit, "heldout_prompts": cfg.eval.heldout_prompts, "fields": cfg.fields,
           "finetune_max_length": cfg.finetune.max_length, "score": cfg.scorer if cfg.score else None,
           **model_key(cfg)}
    inputs = {"base": cfg.model, "alignment": cfg.alignment, "prompts": cfg.prompts}
    return stage(runs_root, "resistance-slices", key, inputs, work, seed=seed)


def _controls(cfg: Config, data: Data, run: Run, tok, seed: int, models: Models) -> None:
    """Every model's loss on every D (the targets' difficulty) and KL between models on held-out answers.

    Losses use the fine-tunes' tokenisation and truncation (`finetune.max_length`), so a model's loss on D_j
    is exactly the first training loss a fine-tune of it on D_j would see, averaged over the whole set.
    """
    n, ml, bs, pad = len(data.marks), cfg.finetune.max_length, cfg.eval.batch_size, pad_id(tok)
    sets = {j: _examples(tok, read_jsonl(run.file(f"data-{j}.jsonl")), ml, f"D_{j}") for j in range(1, n + 1)}
    held = {j: _examples(tok, read_jsonl(run.file(f"heldout-{j}.jsonl")), ml, f"held-out answers of {j}")
            for j in range(1, n + 1)}
    model = {i: _model_source(cfg, run, i, data) for i in range(n + 1)}
    loss_rows, kl_rows = [], []
    for i in range(n + 1):
        m = models.get(model[i])
        for j, ex in sets.items():
            s = teacher_forced(m, ex, pad, bs)
            loss_rows.append({"seed": seed, "model": i, "dataset": j, "loss": s.loss, "targets": s.tokens})
        if i == 0:
            continue
        # KL(theta_i || theta_j) per token on theta_i's own held-out answers: how far theta_j is from theta_i
        # where theta_i puts its mass (for j < i it is the start of a forward path's distance to its target).
        for j in range(n + 1):
            if j != i:
                s = teacher_forced(m, held[i], pad, bs, reference=models.get(model[j]))
                kl_rows.append({"seed": seed, "target": i, "model": j, "kl": s.kl_per_token, "targets": s.tokens})
    write_jsonl(run.file("difficulty.jsonl"), loss_rows)
    write_jsonl(run.file("kl.jsonl"), kl_rows)


def path_stage(cfg: Config, data: Data, models: Models, seed: int, k: int, l: int, direction: str,  # noqa: E741
               slices: Run, runs_root: Path) -> Run:
    """Forward: theta_k fine-tuned on D_l. Inverse: theta_l fine-tuned on D_k. Same settings, order and steps."""
    start, target = (k, l) if direction == "forward" else (l, k)
    # shuffle with the seed: both directions get the same permutation of prompt indices (the D's line up)
    tcfg = dataclasses.replace(cfg.finetune, seed=seed, shuffle=True)

    def work(run: Run) -> None:
        start_source, target_source = _model_source(cfg, slices, start, data), _model_source(cfg, slices, target, data)
        model, tok = models.trainable(start_source, seed)
        examples = _examples(tok, read_jsonl(slices.file(f"data-{target}.jsonl")), tcfg.max_length, f"D_{target}")
        summary = train(model, tok, examples, tcfg, run, progress_bar=False, save_final=cfg.keep_models)
        model.eval()
        pad, bs = pad_id(tok), cfg.eval.batch_size
        held = _examples(tok, read_jsonl(slices.file(f"heldout-{target}.jsonl")), tcfg.max_length, "held-out")
        end = teacher_forced(models.get(target_source), held, pad, bs, reference=model)
        moved = teacher_forced(model, held, pad, bs, reference=models.get(start_source))
        run.write_json("path.json", {
            "seed": seed, "k": k, "l": l, "direction": direction, "start": start, "target": target,
            "steps": summary["steps"], "examples": summary["examples"], "tokens": summary["tokens"],
            "kl_target_end": end.kl_per_token,  # KL(theta_target || fine-tuned), target's held-out answers
            "kl_moved": moved.kl_per_token,  # KL(fine-tuned || start model) on the same answers
            "heldout_loss_end": moved.loss,  # the fine-tuned model's loss on them
        })
        if not cfg.keep_models:
            for name in ("checkpoints", "model"):
                shutil.rmtree(run.file(name), ignore_errors=True)

    key = {"finetune": tcfg, "k": k, "l": l, "direction": direction, "eval_batch": cfg.eval.batch_size,
           **model_key(cfg)}
    return stage(runs_root, "resistance-path", key, {"slices": slices}, work, seed=seed)


def _loss_curve(path: Run) -> list[float]:
    return [r["train/loss"] for r in sorted(path.metrics(), key=lambda r: r["step"]) if "train/loss" in r]


def write_results(run: Run, cfg: Config, data: Data, slices: dict[int, Run], paths: dict[tuple, Run]) -> None:
    """The final stage's work: typed rows from the stages' files, their analysis, and the result files."""
    rows, curves, losses, scores = [], [], [], []
    for seed, s in slices.items():
        diff = [ModelLoss(**r) for r in read_jsonl(s.file("difficulty.jsonl"))]
        losses += diff
        loss = {(r.model, r.dataset): r.loss for r in diff}
        kl = {(r["target"], r["model"]): r["kl"] for r in read_jsonl(s.file("kl.jsonl"))}
        if cfg.score:
            for k in range(len(data.marks) + 1):
                recs = read_jsonl(s.file(f"heldout-{k}.jsonl"))
                scores.append(SliceScore(seed, k, sum(r["score"] for r in recs) / len(recs)))
        for k, l in data.pairs:  # noqa: E741
            c = {d: _loss_curve(paths[(seed, k, l, d)]) for d in DIRECTIONS}
            ends = {d: PathEnd.from_record(read_json(paths[(seed, k, l, d)].file("path.json"))) for d in c}
            rows.append(pair_row(seed, k, l, c, cfg.eval.loss_window, loss, kl, ends))
            curves += [LossCurve(seed, k, l, d, values) for d, values in c.items()]
    setup = ResistanceSetup(data.marks, len(data.prompts), cfg.policy.samples_per_prompt, tuple(cfg.seeds),
                            cfg.finetune.lr, cfg.eval.loss_window, tuple(data.pairs))
    write_resistance(run, setup, rows, summarise(rows, cfg.seeds), curves, losses, scores)


def resistance_stage(cfg: Config, runs_root: Path) -> Run:
    """Run (or reuse) the whole experiment; returns the `resistance` run holding tables, figures, summary."""
    data = check(cfg)
    quiet_loading()
    scorer = build_scorer(cfg.scorer) if cfg.score else None  # a missing scorer fails before any run directory
    models = Models(cfg)
    slices, paths = {}, {}
    for seed in cfg.seeds:
        slices[seed] = slices_stage(cfg, data, models, seed, scorer, runs_root)
        for k, l in data.pairs:  # noqa: E741
            for direction in DIRECTIONS:
                paths[(seed, k, l, direction)] = path_stage(cfg, data, models, seed, k, l, direction, slices[seed],
                                                            runs_root)
        models.clear()  # this seed's slices are not used again
        say("resistance", f"seed {seed}: {len(data.pairs)} pairs done")

    inputs = {**{f"slices:{s}": r for s, r in slices.items()},
              **{f"path:{s}:{k}:{l}:{d}": r for (s, k, l, d), r in paths.items()}}
    return stage(runs_root, "resistance", cfg, inputs, lambda run: write_results(run, cfg, data, slices, paths),
                 reports=True)


run = command(resistance_stage)
