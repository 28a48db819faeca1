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
import sys
from dataclasses import dataclass, field
from pathlib import Path

from elasticity.config import to_dict
from elasticity.data.records import Fields, load_records
from elasticity.data.tokenize import pad_id
from elasticity.errors import UserError
from elasticity.experiments.rebound import PAPER_TRAIN, seed_order
from elasticity.files import write_jsonl
from elasticity.generate import DecodingPolicy
from elasticity.runs import Run, read_jsonl, run_stage
from elasticity.scorers import ScorerConfig, build_scorer, check_scorer_config
from elasticity.train.loop import TrainConfig

DIRECTIONS = ("forward", "inverse")


@dataclass(frozen=True)
class Evaluation:
    heldout_prompts: int = 32  # the LAST N prompts of the file: held out of the D's; answers measure KL, score
    loss_window: int = 5  # the final training loss is the mean over this many last optimizer steps
    batch_size: int = 32  # sequences per teacher-forced forward pass


@dataclass(frozen=True)
class Config:
    """`elasticity resistance`: what to align, the slices, the pair fine-tunes. Files are JSONL/JSON or hf:NAME."""

    model: str = ""  # base model: a run directory, a Hugging Face model folder or a hub id
    alignment: str = ""  # alignment SFT records: prompt, response
    prompts: str = ""  # prompts every model answers: the D's, then the last eval.heldout_prompts (held out)
    prompt_limit: int = 0  # use the file's first N prompts; 0 = all
    fields: Fields = field(default_factory=Fields)
    slices: int = 3  # n: checkpoints after N/n, 2N/n, ..., N alignment examples
    examples: int = 0  # N: alignment examples per seed (the first N of the seed's order); 0 = all
    seeds: tuple[int, ...] = (0, 1, 2)
    align: TrainConfig = field(default_factory=lambda: PAPER_TRAIN)  # the SFT that makes the slices
    finetune: TrainConfig = field(default_factory=lambda: PAPER_TRAIN)  # every forward and inverse fine-tune
    policy: DecodingPolicy = field(default_factory=lambda: DecodingPolicy(temperature=1.0, max_new_tokens=128))
    eval: Evaluation = field(default_factory=Evaluation)
    score: bool = False  # score every model's held-out answers with `scorer` (how far each slice moved)
    scorer: ScorerConfig = field(default_factory=ScorerConfig)
    keep_models: bool = False  # keep the fine-tuned models of the paths (off: only their measurements)
    device: str = "auto"  # where models answer and are measured: auto (CUDA if present), cpu, cuda:N; training
    # runs where accelerate puts it
    trust_remote_code: bool = False


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

    Example: 600 examples, 3 slices -> (200, 400, 600); 10 examples, 3 slices -> (3, 7, 10).
    """
    return tuple(round(i * n_examples / slices) for i in range(1, slices + 1))


def _batch(t: TrainConfig) -> int:
    return t.batch_size * t.grad_accum


def check(cfg: Config) -> Data:
    """Validate everything a user can get wrong and read the data; creates nothing on disk.

    Raises:
        UserError: one line naming the field and the fix.
    """
    for key in ("model", "alignment", "prompts"):
        if not getattr(cfg, key):
            raise UserError(f"missing config key '{key}' (set --{key})")
    if cfg.slices < 2:
        raise UserError(f"slices must be >= 2 (a pair k < l needs two slices), got {cfg.slices}")
    if not cfg.seeds:
        raise UserError("seeds is empty: give at least one seed (e.g. --seeds 0 1 2)")
    if len(set(cfg.seeds)) != len(cfg.seeds):
        raise UserError(f"seeds must be distinct, got {list(cfg.seeds)}")
    for name, t in (("align", cfg.align), ("finetune", cfg.finetune)):
        if t.lr <= 0 or t.batch_size < 1 or t.grad_accum < 1 or t.epochs < 1:
            raise UserError(f"{name}.lr must be > 0 and {name}.batch_size, {name}.grad_accum, {name}.epochs >= 1")
    if cfg.align.epochs != 1 or cfg.align.max_steps is not None:
        raise UserError("align.epochs must be 1 and align.max_steps unset: the slices are spaced over one epoch")
    cfg.policy.check()
    ev = cfg.eval
    if ev.heldout_prompts < 1 or ev.loss_window < 1 or ev.batch_size < 1:
        raise UserError("eval.heldout_prompts, eval.loss_window and eval.batch_size must be >= 1")
    if cfg.examples < 0 or cfg.prompt_limit < 0:
        raise UserError(f"examples and prompt_limit must be >= 0 (0 = all), got {cfg.examples}, {cfg.prompt_limit}")
    if cfg.score:
        check_scorer_config(cfg.scorer)

    from elasticity.models.hf import resolve_device, resolve_model_source

    resolve_device(cfg.device)
    resolve_model_source(cfg.model)
    alignment = load_records(cfg.alignment, ("prompt", "response"), cfg.fields)
    if cfg.examples > len(alignment):
        raise UserError(f"examples = {cfg.examples} but {cfg.alignment} has {len(alignment)} records: "
                        "lower examples (0 = all)")
    n = cfg.examples or len(alignment)
    if n < _batch(cfg.align):
        raise UserError(f"the alignment set has {n} examples, fewer than one batch (align.batch_size x "
                        f"align.grad_accum = {_batch(cfg.align)}): add data or lower the batch size")
    if n < cfg.slices:
        raise UserError(f"{cfg.slices} slices need at least {cfg.slices} alignment examples, got {n}")
    prompts = [r["prompt"] for r in load_records(cfg.prompts, ("prompt",), cfg.fields)]
    prompts = prompts[: cfg.prompt_limit] if cfg.prompt_limit > 0 else prompts
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
    cut = len(prompts) - ev.heldout_prompts
    return Data(alignment, prompts[:cut], prompts[cut:], n, slice_marks(n, cfg.slices))


def _policy(cfg: Config, seed: int) -> DecodingPolicy:
    """One sampling seed per experiment seed, shared by every model: D_1..D_n are paired draws."""
    return dataclasses.replace(cfg.policy, seed=cfg.policy.seed + seed)


def _checkpoint(slices: Run, k: int, data: Data) -> Path:
    return slices.file("checkpoints") / f"examples-{data.marks[k - 1]}"


def _model_source(cfg: Config, slices: Run, k: int, data: Data) -> str:
    return cfg.model if k == 0 else str(_checkpoint(slices, k, data))


def _examples(tok, records: list[dict], max_length: int, name: str):
    from elasticity.data.tokenize import tokenize_records

    return tokenize_records(records, tok, max_length, name)


def _load(source: str, cfg: Config):
    """A model in eval mode on the measuring device (training moves it where accelerate says)."""
    from elasticity.models.hf import load_causal_lm

    return load_causal_lm(source, cfg.trust_remote_code, device=cfg.device)


class _Models:
    """The base (0) and the slices (1..n) of one seed, loaded on demand, in eval mode.

    Models up to KEEP_PARAMETERS stay loaded (a tiny model loads in ~0.2 s, and the controls use each one
    n + 1 times); larger ones are loaded for each use, so at most two are in memory at once.
    """

    KEEP_PARAMETERS = 50_000_000

    def __init__(self, cfg: Config, slices: Run, data: Data):
        self.cfg, self.slices, self.data, self._kept = cfg, slices, data, {}

    def get(self, k: int):
        if k in self._kept:
            return self._kept[k]
        model, _ = _load(_model_source(self.cfg, self.slices, k, self.data), self.cfg)
        if model.num_parameters() <= self.KEEP_PARAMETERS:
            self._kept[k] = model
        return model


def slices_stage(cfg: Config, data: Data, seed: int, scorer, runs_root: Path) -> Run:
    """Align once per seed with a checkpoint at every slice mark; every model answers the prompts; controls."""
    from elasticity.train.loop import train

    tcfg = dataclasses.replace(cfg.align, seed=seed, shuffle=False, checkpoint_examples=data.marks)
    policy = _policy(cfg, seed)
    n = len(data.marks)

    def work(run: Run) -> None:
        from elasticity.generate import generate

        model, tok = _load(cfg.model, cfg)
        model.train()
        order = seed_order(len(data.alignment), seed)[: data.examples]
        examples = _examples(tok, [data.alignment[i] for i in order], tcfg.max_length, "alignment")
        print(f"[resistance] seed {seed}: alignment SFT on {len(examples)} examples, slices after "
              f"{list(data.marks)}", file=sys.stderr)
        # no final model: it is the last slice's checkpoint
        run.write_json("align_summary.json", train(model, tok, examples, tcfg, run, progress_bar=False,
                                                   save_final=False))
        del model  # the slices are read back from their checkpoints

        prompts = data.prompts + data.heldout_prompts
        models = _Models(cfg, run, data)
        for k in range(n + 1):
            source = _model_source(cfg, run, k, data)
            # the base trains on no D: it answers only the held-out prompts (score, KL reference)
            only = list(range(len(data.prompts), len(prompts))) if k == 0 else None
            samples = generate(models.get(k), tok, prompts, policy, indices=only)
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

    key = {"align": to_dict(tcfg), "examples": data.examples, "slices": cfg.slices, "policy": to_dict(policy),
           "prompt_limit": cfg.prompt_limit, "heldout_prompts": cfg.eval.heldout_prompts,
           "fields": to_dict(cfg.fields), "finetune_max_length": cfg.finetune.max_length,
           "score": to_dict(cfg.scorer) if cfg.score else None}
    inputs = {"base": cfg.model, "alignment": cfg.alignment, "prompts": cfg.prompts}
    return run_stage(runs_root, "resistance-slices", key, inputs, work, seed=seed, quiet=True)


def _controls(cfg: Config, data: Data, run: Run, tok, seed: int, models: _Models) -> None:
    """Every model's loss on every D (the targets' difficulty) and KL between models on held-out answers.

    Losses use the fine-tunes' tokenisation and truncation (`finetune.max_length`), so a model's loss on D_j
    is exactly the first training loss a fine-tune of it on D_j would see, averaged over the whole set.
    """
    from elasticity.likelihood import teacher_forced

    n, ml, bs = len(data.marks), cfg.finetune.max_length, cfg.eval.batch_size
    pad = pad_id(tok)
    sets = {j: _examples(tok, read_jsonl(run.file(f"data-{j}.jsonl")), ml, f"D_{j}") for j in range(1, n + 1)}
    held = {j: _examples(tok, read_jsonl(run.file(f"heldout-{j}.jsonl")), ml, f"held-out answers of {j}")
            for j in range(1, n + 1)}
    loss_rows, kl_rows = [], []
    for i in range(n + 1):
        m = models.get(i)
        for j, ex in sets.items():
            s = teacher_forced(m, ex, pad, bs)
            loss_rows.append({"seed": seed, "model": i, "dataset": j, "loss": s.loss, "targets": s.tokens})
        if i == 0:
            continue
        # KL(theta_i || theta_j) per token on theta_i's own held-out answers: how far theta_j is from theta_i
        # where theta_i puts its mass (for j < i it is the start of a forward path's distance to its target).
        for j in range(n + 1):
            if j != i:
                s = teacher_forced(m, held[i], pad, bs, reference=models.get(j))
                kl_rows.append({"seed": seed, "target": i, "model": j, "kl": s.kl_per_token, "targets": s.tokens})
    write_jsonl(run.file("difficulty.jsonl"), loss_rows)
    write_jsonl(run.file("kl.jsonl"), kl_rows)


def path_stage(cfg: Config, data: Data, seed: int, k: int, l: int, direction: str, slices: Run,
               runs_root: Path) -> Run:
    """Forward: theta_k fine-tuned on D_l. Inverse: theta_l fine-tuned on D_k. Same settings, order and steps."""
    from elasticity.likelihood import teacher_forced
    from elasticity.train.loop import train

    start, target = (k, l) if direction == "forward" else (l, k)
    # shuffle with the seed: both directions get the same permutation of prompt indices (the D's line up)
    tcfg = dataclasses.replace(cfg.finetune, seed=seed, shuffle=True)

    def work(run: Run) -> None:
        import copy

        model, tok = _load(_model_source(cfg, slices, start, data), cfg)
        small = model.num_parameters() <= _Models.KEEP_PARAMETERS
        start_model = copy.deepcopy(model) if small else None  # the KL reference, without a second load
        model.train()
        records = read_jsonl(slices.file(f"data-{target}.jsonl"))
        examples = _examples(tok, records, tcfg.max_length, f"D_{target}")
        summary = train(model, tok, examples, tcfg, run, progress_bar=False, save_final=cfg.keep_models)
        model.eval()
        pad = pad_id(tok)
        bs = cfg.eval.batch_size
        held = _examples(tok, read_jsonl(slices.file(f"heldout-{target}.jsonl")), tcfg.max_length, "held-out")
        target_model, _ = _load(_model_source(cfg, slices, target, data), cfg)
        end = teacher_forced(target_model, held, pad, bs, reference=model)
        del target_model
        if start_model is None:
            start_model, _ = _load(_model_source(cfg, slices, start, data), cfg)
        moved = teacher_forced(model, held, pad, bs, reference=start_model)
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

    key = {"finetune": to_dict(tcfg), "k": k, "l": l, "direction": direction, "eval_batch": cfg.eval.batch_size}
    return run_stage(runs_root, "resistance-path", key, {"slices": slices}, work, seed=seed, quiet=True)


def resistance_stage(cfg: Config, runs_root: Path) -> Run:
    """Run (or reuse) the whole experiment; returns the `resistance` run holding tables, figures, summary."""
    data = check(cfg)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    scorer = build_scorer(cfg.scorer) if cfg.score else None  # a missing scorer fails before any run directory
    runs_root = Path(runs_root)
    slices, paths = {}, {}
    for seed in cfg.seeds:
        slices[seed] = slices_stage(cfg, data, seed, scorer, runs_root)
        for k, l in data.pairs:
            for direction in DIRECTIONS:
                paths[(seed, k, l, direction)] = path_stage(cfg, data, seed, k, l, direction, slices[seed],
                                                            runs_root)
        print(f"[resistance] seed {seed}: {len(data.pairs)} pairs done", file=sys.stderr)

    def work(run: Run) -> None:
        from elasticity.report.resistance_outputs import write_outputs

        write_outputs(run, cfg, data, slices, paths)

    inputs = {**{f"slices:{s}": r for s, r in slices.items()},
              **{f"path:{s}:{k}:{l}:{d}": r for (s, k, l, d), r in paths.items()}}
    return run_stage(runs_root, "resistance", cfg, inputs, work, quiet=True)


def run(cfg: Config, runs_root: Path) -> None:
    result = resistance_stage(cfg, runs_root)
    for line in result.lines("summary.txt"):
        print(line, file=sys.stderr)
    print(result.path)
