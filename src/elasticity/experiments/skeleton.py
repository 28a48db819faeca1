"""What every experiment shares: the common config pieces, the input checks, the models, the stage wiring.

An experiment module defines its `Config` (a subclass of `ExperimentConfig`), a `check(cfg) -> Data` that
reads and validates everything before any run directory exists, its stages (each a `stage(...)` call whose
work function only reads its inputs and writes its own directory), and a final stage whose work turns typed
rows into files with a `report` writer. `command(...)` makes its CLI entry point.
"""

from __future__ import annotations

import random
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from elasticity.config import InputPath
from elasticity.data.records import Fields, load_records
from elasticity.errors import UserError
from elasticity.generate import DecodingPolicy, check_context, prompt_lengths
from elasticity.models.hf import load_causal_lm, load_config, load_tokenizer, resolve_device, resolve_model_source
from elasticity.models.spec import LoraSettings, check_lora_targets, with_lora
from elasticity.runs import Run, run_stage
from elasticity.scorers import ScorerConfig, check_scorer_config
from elasticity.train.loop import TrainConfig

# The paper's fine-tuning recipe: one epoch, constant lr 1e-5, no warm-up, no weight decay, AdamW (0.9, 0.95),
# effective batch 8 (1 x 8 accumulation there; one batch of 8 here gives the same gradient), loss on responses.
PAPER_TRAIN = TrainConfig(lr=1e-5, betas=(0.9, 0.95), weight_decay=0.0, schedule="constant", warmup_steps=0,
                          batch_size=8, grad_accum=1, epochs=1, max_length=512, log_every=1)


DTYPES = ("float32", "bfloat16")  # no float16: without loss scaling its gradients underflow


@dataclass(frozen=True)
class ExperimentConfig:
    """The config fields every experiment has (its own fields follow them)."""

    model: InputPath = ""  # base model: a run directory, a Hugging Face model folder or a hub id
    fields: Fields = field(default_factory=Fields)  # the records' names for prompt, response and text
    seeds: tuple[int, ...] = (0, 1, 2)  # one run of every stage per seed; intervals are over seeds
    scorer: ScorerConfig = field(default_factory=ScorerConfig)  # the behaviour scorer (higher = more aligned)
    policy: DecodingPolicy = field(default_factory=DecodingPolicy)  # how models answer the prompts
    keep_models: bool = False  # keep the fine-tuned models (off: only their measurements are kept)
    device: str = "auto"  # where models answer and are measured: auto (CUDA if present), cpu, cuda:N; training
    # runs where accelerate puts it
    trust_remote_code: bool = False  # let a hub checkpoint run its own modelling code
    allow_pickle: bool = False  # read model weights stored only as a pickle (.bin), which can run code when read
    dtype: str = "float32"  # the weights of every model loaded, float32 or bfloat16 (half the memory; training then
    # keeps gradients and AdamW's moments in bfloat16 too; train.bf16 with float32 weights is mixed precision)
    lora: LoraSettings = field(default_factory=LoraSettings)  # r > 0: the models trained learn LoRA adapters only
    # (checkpoints are the adapters alone); the base and every model measured against stay whole


def check_experiment(cfg: ExperimentConfig, required: tuple[str, ...], scored: bool = True) -> None:
    """The checks every experiment needs, before anything is read: required paths, seeds, policy, scorer, device,
    and that the base model exists.

    Raises:
        UserError: one line naming the field and the fix.
    """
    for key in required:
        if not getattr(cfg, key):
            raise UserError(f"missing config key '{key}' (set --{key})")
    if not cfg.seeds:
        raise UserError("seeds is empty: give at least one seed (e.g. --seeds 0 1 2)")
    if len(set(cfg.seeds)) != len(cfg.seeds):
        raise UserError(f"seeds must be distinct, got {list(cfg.seeds)}")
    cfg.policy.check()
    if scored:
        check_scorer_config(cfg.scorer)
    resolve_device(cfg.device)
    resolve_model_source(cfg.model)
    if cfg.dtype not in DTYPES:
        raise UserError(f"dtype must be one of {', '.join(DTYPES)}, got {cfg.dtype!r}")
    if cfg.dtype == "bfloat16" and not cfg.lora.r:
        # bfloat16 keeps 8 bits of mantissa: AdamW at lr 1e-5 moves a weight of 0.01 by a sixth of its rounding step
        say("elasticity", "note: dtype bfloat16 trains every weight in bfloat16, which rounds away an update smaller "
                          "than 1/512 of a weight; for a full fine-tune at a small lr prefer float32 weights with "
                          "--train.bf16 true (mixed precision) and, on a GPU, --train.optimizer adamw8bit")
    cfg.lora.check()
    if cfg.lora.r > 0:
        check_lora_targets(cfg.lora, load_config(cfg.model, cfg.trust_remote_code), cfg.trust_remote_code)


def model_key(cfg: ExperimentConfig) -> dict:
    """What a stage's key adds for how its models are held: LoRA (a LoRA run is another stage than a full
    fine-tune) and a dtype other than float32. At the defaults nothing, so that the unused LoRA settings do not
    make a full fine-tune another stage, and float32 runs keep the names they had before the option existed."""
    return {**({"lora": cfg.lora} if cfg.lora.r else {}), **dtype_key(cfg)}


def dtype_key(cfg: ExperimentConfig) -> dict:
    """What a measuring stage's key adds: the dtype its models are loaded in, unless float32."""
    return {"dtype": cfg.dtype} if cfg.dtype != "float32" else {}


def check_lengths(cfg: ExperimentConfig, trained: list[tuple[str, list[str], str, int]], answered: list[str]) -> None:
    """Every trained prompt leaves room for its response, and every answered prompt its generation.

    `trained` holds (what, prompts, key, max_length): a prompt as long as `max_length` tokens would be cut before
    its response, leaving nothing to learn or measure. `answered` must fit the base model's context with
    policy.max_new_tokens. Reads the tokenizer and the model's config only.
    """
    tok = load_tokenizer(cfg.model, cfg.trust_remote_code)
    for what, prompts, key, max_length in trained:
        lengths = prompt_lengths(tok, prompts)
        i = max(lengths, key=lengths.__getitem__)
        if lengths[i] >= max_length:
            raise UserError(f"{key} {max_length} is shorter than the longest prompt ({lengths[i]} tokens, record "
                            f"{i + 1} of {what}): raise {key}")
    check_context(prompt_lengths(tok, answered), cfg.policy, load_config(cfg.model, cfg.trust_remote_code), tok)


def read_pairs(path: str, fields: Fields) -> list[dict]:
    return load_records(path, ("prompt", "response"), fields)


def read_prompts(path: str, fields: Fields, limit: int = 0) -> list[str]:
    """The file's prompts, its first `limit` if limit > 0; never none."""
    prompts = [r["prompt"] for r in load_records(path, ("prompt",), fields)]
    prompts = prompts[:limit] if limit > 0 else prompts
    if not prompts:
        raise UserError(f"{path} has no prompts")
    return prompts


def seed_order(n: int, seed: int) -> list[int]:
    """The data order of one seed: a permutation of range(n) fixed by the seed (shared by every stage)."""
    order = list(range(n))
    random.Random(seed).shuffle(order)
    return order


def say(experiment: str, message: str) -> None:
    print(f"[{experiment}] {message}", file=sys.stderr, flush=True)


class Models:
    """The models of one experiment by source, loaded on first use on the measuring device, in eval mode.

    `get` keeps models up to KEEP_PARAMETERS loaded (a tiny model loads in ~0.2 s and the controls use each
    several times); larger ones are loaded at each use, so that at most two are in memory at once. `trainable`
    always loads a new copy: the one to train. A kept model is never trained.
    """

    KEEP_PARAMETERS = 50_000_000

    def __init__(self, cfg: ExperimentConfig):
        self.cfg = cfg
        self._kept: dict[str, tuple] = {}

    def fresh(self, source: str) -> tuple:
        """(model, tokenizer) newly loaded from `source` on the measuring device, in eval mode."""
        return load_causal_lm(source, self.cfg.trust_remote_code, dtype=self.cfg.dtype, device=self.cfg.device,
                              allow_pickle=self.cfg.allow_pickle)

    def trainable(self, source: str, seed: int = 0) -> tuple:
        """(model, tokenizer) to train, in train mode: a fresh copy, wrapped with new LoRA adapters (drawn from
        `seed`) when lora.r > 0. A LoRA on a LoRA checkpoint applies to that checkpoint merged."""
        model, tok = self.fresh(source)
        if self.cfg.lora.r > 0:
            model = with_lora(model, self.cfg.lora, seed)
        model.train()
        return model, tok

    def get(self, source: str):
        return self.with_tokenizer(source)[0]

    def with_tokenizer(self, source: str) -> tuple:
        if source in self._kept:
            return self._kept[source]
        loaded = self.fresh(source)
        if loaded[0].num_parameters() <= self.KEEP_PARAMETERS:
            self._kept[source] = loaded
        return loaded

    def clear(self) -> None:
        """Free every kept model (e.g. when a seed's models will not be used again)."""
        self._kept.clear()


def stage(runs_root: Path, name: str, key, inputs: dict, work: Callable[[Run], dict | None],
          seed: int | None = None, reports: bool = False, shared: bool = False) -> Run:
    """One cached stage of an experiment (see `runs.run_stage`): reused when finished, else computed.
    `reports`: the stage writes the experiment's tables (the report writers' code is part of its name); `shared`:
    it trains, so every process of a multi-process launch runs it (and only the main one writes)."""
    return run_stage(Path(runs_root), name, key, inputs, work, seed=seed, quiet=True, reports=reports, shared=shared)


def command(experiment: Callable[[object, Path], Run]) -> Callable[[object, Path], None]:
    """The CLI entry point of an experiment: run it, print its summary lines, then its run directory."""
    def run(cfg, runs_root: Path) -> None:
        result = experiment(cfg, runs_root)
        for line in result.lines("summary.txt"):
            print(line, file=sys.stderr)
        print(result.path)

    return run
