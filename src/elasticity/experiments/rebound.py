"""`elasticity rebound`: align with Q1 positive examples, fine-tune on Q2 negative ones, measure the fall back.

Nested runs (one epoch, constant learning rate: training on the first q examples of a fixed order is a
prefix of training on more). Per seed, the positive pool is shuffled once with the seed and ONE positive
SFT runs over its first max(Q1) examples, with a checkpoint exactly after every Q1 (steps are cut there).
Per (Q1, seed), ONE negative SFT starts from that checkpoint on the first max(Q2) examples of the negative
pool shuffled with the seed (the same order for every Q1: the Q1 curves of a seed are paired), and the model
is measured in place whenever the examples seen reach a Q2 (steps are cut there too). Q2 = 0, the aligned
model, is always measured; so is the base model.

Stages (each cached; an interrupted experiment redoes only what is missing):

    rebound-base-<h>/       points.jsonl (the base model's measurements), samples.jsonl
    rebound-positive-<h>/   one per seed: checkpoints/examples-<Q1>/ (the aligned models), marks.json
    rebound-negative-<h>/   one per (Q1, seed): points.jsonl, one line per finished Q2 (a resumed run skips
                            those and the training loop resumes from its last Q2), samples.jsonl
    rebound-<h>/            results, metrics, tables and figures (see `elasticity.report.rebound_tables`)

The last `eval.pairs` records of the positive and negative files are held out of training: KL to the base
and the positive / negative bits/token are measured on them. See `measurement` for every measured column
and `rebound_analysis` for the elasticity metrics.
"""

from __future__ import annotations

import dataclasses
import json
import random
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

from elasticity.config import to_dict
from elasticity.data.records import Fields, load_records
from elasticity.errors import UserError
from elasticity.generate import DecodingPolicy
from elasticity.runs import Run, read_jsonl, run_stage
from elasticity.scorers import ScorerConfig, build_scorer, check_scorer_config
from elasticity.train.loop import TrainConfig

# The paper's fine-tuning recipe: one epoch, constant lr 1e-5, no warm-up, no weight decay, AdamW (0.9, 0.95),
# effective batch 8 (1 x 8 accumulation there; one batch of 8 here gives the same gradient), loss on responses.
PAPER_TRAIN = TrainConfig(lr=1e-5, betas=(0.9, 0.95), weight_decay=0.0, schedule="constant", warmup_steps=0,
                          batch_size=8, grad_accum=1, epochs=1, max_length=512, log_every=1)


@dataclass(frozen=True)
class Evaluation:
    """How much is measured at every grid point."""

    prompts: int = 64  # evaluation prompts (the file's first N); 0 = all
    pairs: int = 100  # held-out pairs per side, the LAST records of the positive and negative files
    docs: int = 100  # documents per held-out pre-training text file (its first N)
    score_prompt: bool = True  # the scorer reads prompt + response (False: the response alone)
    batch_size: int = 32  # sequences per teacher-forced forward pass


@dataclass(frozen=True)
class Metrics:
    """Windows and thresholds of the elasticity metrics (see `rebound_analysis`)."""

    early_q2: int = 0  # the initial slope runs from Q2 = 0 to this grid point; 0 = the smallest Q2 > 0
    late_q2: int = 0  # the late slope runs from this grid point to the largest Q2; 0 = the second-largest
    kl_epsilon: float = 0.01  # Table 3: negatives needed for KL to the base (nats/token) to fall below this


@dataclass(frozen=True)
class Config:
    """`elasticity rebound`: what to align, on what, how to measure. File fields are JSONL/JSON or hf:NAME."""

    model: str = ""  # base model: a run directory, a Hugging Face model folder or a hub id
    positive: str = ""  # positive (aligned) SFT records: prompt, response
    negative: str = ""  # negative SFT records: prompt, response
    prompts: str = ""  # evaluation prompts: prompt
    heldout: tuple[str, ...] = ()  # held-out pre-training text files (text); the first measures alignment depth
    fields: Fields = field(default_factory=Fields)
    scorer: ScorerConfig = field(default_factory=ScorerConfig)
    q1: tuple[int, ...] = (1000, 2000, 5000, 10000)
    q2: tuple[int, ...] = (0, 100, 200, 500, 1000, 2000)
    seeds: tuple[int, ...] = (0, 1, 2)
    train: TrainConfig = field(default_factory=lambda: PAPER_TRAIN)
    policy: DecodingPolicy = field(default_factory=lambda: DecodingPolicy(temperature=1.0, max_new_tokens=64,
                                                                         samples_per_prompt=2))
    eval: Evaluation = field(default_factory=Evaluation)
    metrics: Metrics = field(default_factory=Metrics)
    keep_models: bool = False  # keep the negative runs' checkpoints (off: only the measurements are kept)
    device: str = "auto"  # where models are measured: auto (CUDA if present), cpu, cuda:N; training runs where
    # accelerate puts it
    trust_remote_code: bool = False


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
    for key in ("model", "positive", "negative", "prompts"):
        if not getattr(cfg, key):
            raise UserError(f"missing config key '{key}' (set --{key})")
    q1 = _grid("q1", cfg.q1, allow_zero=False)
    q2 = tuple(sorted({0, *_grid("q2", cfg.q2, allow_zero=True)}))
    if not cfg.seeds:
        raise UserError("seeds is empty: give at least one seed (e.g. --seeds 0 1 2)")
    if len(set(cfg.seeds)) != len(cfg.seeds):
        raise UserError(f"seeds must be distinct, got {list(cfg.seeds)}")
    t = cfg.train
    if t.epochs != 1 or t.schedule != "constant" or t.max_steps is not None:
        raise UserError("rebound's nested runs need train.epochs 1, train.schedule constant and no train.max_steps "
                        "(then the first q examples of a run are a run on q examples)")
    if t.lr <= 0 or t.batch_size < 1 or t.grad_accum < 1:
        raise UserError("train.lr must be > 0 and train.batch_size, train.grad_accum >= 1")
    cfg.policy.check()
    ev = cfg.eval
    if ev.pairs < 1 or ev.docs < 1 or ev.prompts < 0 or ev.batch_size < 1:
        raise UserError("eval.pairs, eval.docs and eval.batch_size must be >= 1, eval.prompts >= 0")
    if cfg.metrics.kl_epsilon <= 0:
        raise UserError(f"metrics.kl_epsilon must be > 0, got {cfg.metrics.kl_epsilon}")
    check_scorer_config(cfg.scorer)

    from elasticity.models.hf import resolve_device, resolve_model_source

    resolve_device(cfg.device)
    resolve_model_source(cfg.model)
    need = ("prompt", "response")
    pos = load_records(cfg.positive, need, cfg.fields)
    neg = load_records(cfg.negative, need, cfg.fields)
    for name, pool, grid in (("positive", pos, q1), ("negative", neg, q2)):
        if grid[-1] > len(pool) - ev.pairs:
            key = "q1" if name == "positive" else "q2"
            raise UserError(f"{key} asks for {grid[-1]} {name} examples but {cfg.__dict__[name]} has {len(pool)} "
                            f"records, {ev.pairs} of them held out (eval.pairs): lower {key} or eval.pairs")
    prompts = [r["prompt"] for r in load_records(cfg.prompts, ("prompt",), cfg.fields)]
    prompts = prompts[: ev.prompts] if ev.prompts else prompts
    if not prompts:
        raise UserError(f"{cfg.prompts} has no prompts")
    texts = {}
    for path in cfg.heldout:
        name = _text_name(path)
        if name in texts or name in ("positive", "negative", "response"):
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
                prompts, texts, q1, q2, early, late)


def seed_order(n: int, seed: int) -> list[int]:
    """The data order of one seed: a permutation of range(n) fixed by the seed (shared by every Q1 and Q2)."""
    order = list(range(n))
    random.Random(seed).shuffle(order)
    return order


def _append(path: Path, record: dict) -> None:
    with open(path, "a") as f:  # one write per line, like Run.log: a crash never leaves half a record
        f.write(json.dumps(record) + "\n")


def _train_cfg(cfg: Config, seed: int, marks: tuple[int, ...]) -> TrainConfig:
    return dataclasses.replace(cfg.train, seed=seed, shuffle=False, checkpoint_examples=marks, epochs=1,
                               max_steps=None)


def _measure_key(cfg: Config, data: Data) -> dict:
    return {"eval": to_dict(cfg.eval), "policy": to_dict(cfg.policy), "scorer": to_dict(cfg.scorer),
            "max_length": cfg.train.max_length, "heldout": sorted(data.texts)}


def _inputs(cfg: Config) -> dict:
    return {"base": cfg.model, "positive": cfg.positive, "negative": cfg.negative, "prompts": cfg.prompts,
            **{f"heldout:{h}": h for h in cfg.heldout}}


def _load(source: str, cfg: Config):
    """A model on the measuring device (training moves it where accelerate says)."""
    from elasticity.models.hf import load_causal_lm

    return load_causal_lm(source, cfg.trust_remote_code, device=cfg.device)


class _Kit:
    """The evaluator, built once on first use (a fully cached experiment never loads a model)."""

    def __init__(self, cfg: Config, data: Data, scorer):
        self.cfg, self.data, self.scorer, self._ev = cfg, data, scorer, None

    def get(self):
        if self._ev is None:
            from elasticity.experiments.measurement import Evaluator
            base, tok = _load(self.cfg.model, self.cfg)
            self._ev = Evaluator(self.scorer, tok, base, self.data.prompts, self.cfg.policy,
                                 self.data.heldout_pairs, self.data.texts, self.cfg.train.max_length,
                                 self.cfg.eval.score_prompt, self.cfg.eval.batch_size)
            if self._ev.truncated:
                print(f"[rebound] {self._ev.truncated} evaluation sequences truncated to "
                      f"{self.cfg.train.max_length} tokens", file=sys.stderr)
        return self._ev


def _record_point(run: Run, ev, model, point: dict) -> dict:
    rec, samples = ev.measure(model, with_samples=True)
    point = {**point, **rec}
    for s in samples:
        _append(run.file("samples.jsonl"), {"q2": point["q2"], **s})
    _append(run.file("points.jsonl"), point)
    return point


def base_stage(cfg: Config, data: Data, kit: _Kit, runs_root: Path) -> Run:
    """Measure the base model once (the dashed line and every KL's reference)."""
    def work(run: Run) -> None:
        for p in (run.file("points.jsonl"), run.file("samples.jsonl")):
            p.unlink(missing_ok=True)
        model, _ = _load(cfg.model, cfg)
        point = _record_point(run, kit.get(), model, {"q1": 0, "q2": 0, "seed": None, "examples": 0,
                                                       "tokens": 0, "steps": 0, "train_loss": None})
        print(f"[rebound] base model: score {point['score']:.3f} +- {point['score_se']:.3f}", file=sys.stderr)

    return run_stage(runs_root, "rebound-base", _measure_key(cfg, data), _inputs(cfg), work, quiet=True)


def positive_stage(cfg: Config, data: Data, seed: int, runs_root: Path) -> Run:
    """One positive SFT per seed over the first max(Q1) examples of the seed's order, checkpointed at every Q1."""
    from elasticity.data.tokenize import tokenize_records
    from elasticity.train.loop import train

    tcfg = _train_cfg(cfg, seed, data.q1)

    def work(run: Run) -> None:
        from elasticity.models.hf import load_causal_lm

        model, tok = load_causal_lm(cfg.model, cfg.trust_remote_code)
        model.train()
        order = seed_order(len(data.positive), seed)[: data.q1[-1]]
        examples = tokenize_records([data.positive[i] for i in order], tok, tcfg.max_length, "positive")
        marks = {}

        def on_step(progress, _model) -> None:
            if progress.examples in data.q1:
                marks[progress.examples] = {"tokens": progress.tokens, "steps": progress.step}

        print(f"[rebound] seed {seed}: positive SFT on {len(examples)} examples, checkpoints at Q1 = "
              f"{list(data.q1)}", file=sys.stderr)
        summary = train(model, tok, examples, tcfg, run, on_step=on_step)
        if len(marks) < len(data.q1):  # resumed: marks before the resume point come from the checkpoints
            for q in data.q1:
                progress = json.loads((run.file("checkpoints") / f"examples-{q}" / "progress.json").read_text())
                marks.setdefault(q, {"tokens": progress["tokens"], "steps": progress["step"]})
        run.write_json("marks.json", {str(q): marks[q] for q in data.q1})
        run.write_json("summary.json", summary)

    key = {"train": to_dict(tcfg), "held_out_pairs": cfg.eval.pairs, "fields": to_dict(cfg.fields)}
    return run_stage(runs_root, "rebound-positive", key, {"base": cfg.model, "positive": cfg.positive}, work,
                     seed=seed, quiet=True)


def negative_stage(cfg: Config, data: Data, kit: _Kit, seed: int, q1: int, positive: Run, runs_root: Path) -> Run:
    """One negative SFT from the Q1 checkpoint, measured at every Q2; finished Q2 points are never redone."""
    from elasticity.data.tokenize import tokenize_records
    from elasticity.train.loop import train

    marks = tuple(q for q in data.q2 if q > 0)
    tcfg = _train_cfg(cfg, seed, marks)

    def work(run: Run) -> None:
        points = read_jsonl(run.file("points.jsonl"))
        done = {p["q2"] for p in points}
        model, tok = _load(str(positive.file("checkpoints") / f"examples-{q1}"), cfg)
        ev = kit.get()
        base = {"q1": q1, "seed": seed}
        if 0 not in done:
            p = _record_point(run, ev, model, {**base, "q2": 0, "examples": 0, "tokens": 0, "steps": 0,
                                               "train_loss": None})
            print(f"[rebound] seed {seed} Q1={q1}: aligned score {p['score']:.3f}", file=sys.stderr)
        last_step = [max((p["steps"] for p in points), default=0)]  # a resumed run's loss window starts there

        def on_step(progress, m) -> None:
            if progress.examples not in marks:
                return
            if progress.examples not in done:
                losses = [r["train/loss"] for r in run.metrics()
                          if last_step[0] < r.get("step", 0) <= progress.step and "train/loss" in r]
                p = _record_point(run, ev, m, {**base, "q2": progress.examples, "examples": progress.examples,
                                               "tokens": progress.tokens, "steps": progress.step,
                                               "train_loss": sum(losses) / len(losses) if losses else None})
                print(f"[rebound] seed {seed} Q1={q1} Q2={progress.examples}: score {p['score']:.3f}, "
                      f"KL to base {p['kl_response']:.4f}", file=sys.stderr)
            last_step[0] = progress.step

        if marks:
            model.train()
            order = seed_order(len(data.negative), seed)[: marks[-1]]
            examples = tokenize_records([data.negative[i] for i in order], tok, tcfg.max_length, "negative")
            run.write_json("summary.json", train(model, tok, examples, tcfg, run, on_step=on_step,
                                                 progress_bar=False, save_final=cfg.keep_models))
        if not cfg.keep_models:  # the measurements are the result; checkpoints of every Q2 are not
            for name in ("checkpoints", "model"):
                shutil.rmtree(run.file(name), ignore_errors=True)

    key = {"train": to_dict(tcfg), "q1": q1, **_measure_key(cfg, data)}
    inputs = {"positive_run": positive, **_inputs(cfg)}
    return run_stage(runs_root, "rebound-negative", key, inputs, work, seed=seed, quiet=True)


def rebound_stage(cfg: Config, runs_root: Path) -> Run:
    """Run (or reuse) the whole experiment; returns the `rebound` run holding results, metrics and figures."""
    data = check(cfg)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # a "Loading weights" bar per checkpoint would bury the progress lines
    scorer = build_scorer(cfg.scorer)  # a missing scorer model or world fails here, before any run directory
    kit = _Kit(cfg, data, scorer)
    runs_root = Path(runs_root)
    base = base_stage(cfg, data, kit, runs_root)
    positives, negatives = {}, {}
    for seed in cfg.seeds:
        positives[seed] = positive_stage(cfg, data, seed, runs_root)
        for q1 in data.q1:
            negatives[(q1, seed)] = negative_stage(cfg, data, kit, seed, q1, positives[seed], runs_root)

    def work(run: Run) -> None:
        from elasticity.report.rebound_tables import write_outputs

        write_outputs(run, cfg, data, base, positives, negatives)

    inputs = {"base": base, **{f"positive:{s}": r for s, r in positives.items()},
              **{f"negative:{q}:{s}": r for (q, s), r in negatives.items()}}
    return run_stage(runs_root, "rebound", cfg, inputs, work, quiet=True)


def summary_lines(run: Run | Path) -> list[str]:
    """The finished experiment's short summary (what the demo prints), read from its run directory."""
    return (run if isinstance(run, Run) else Run(Path(run))).lines("summary.txt")


def run(cfg: Config, runs_root: Path) -> None:
    result = rebound_stage(cfg, runs_root)
    for line in summary_lines(result):
        print(line, file=sys.stderr)
    print(result.path)
