"""`elasticity train`: pre-train or SFT a causal LM into a run directory (the `train` stage)."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

from elasticity.config import InputPath
from elasticity.data.records import Fields, load_records
from elasticity.data.sources import HUB_PREFIX, first_row
from elasticity.data.tokenize import tokenize_note, tokenize_records
from elasticity.models.spec import ModelConfig, load_model_for_training, model_input
from elasticity.runs import Run, planned_run, run_stage
from elasticity.train import sharding
from elasticity.train.loop import TrainConfig, plan, train


@dataclass(frozen=True)
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: InputPath = ""  # training records: JSONL/JSON file or hf:NAME
    kind: str = "sft"  # "sft" (prompt/response, response-only loss) or "text" (language modelling)
    pack: bool = True  # text only: pack documents into full blocks (no padding)
    eval: tuple[InputPath, ...] = ()  # evaluation datasets, named by file stem
    fields: Fields = field(default_factory=Fields)
    split: str = "train"  # the split of a hub dataset
    train: TrainConfig = field(default_factory=TrainConfig)


def _need(kind: str) -> tuple[str, ...]:
    from elasticity.errors import UserError

    if kind not in ("sft", "text"):
        raise UserError(f"kind must be 'sft' or 'text', got '{kind}'")
    return ("prompt", "response") if kind == "sft" else ("text",)


def _eval_sets(cfg: Config, tok) -> dict:
    out = {}
    for source in cfg.eval:
        records = load_records(source, ("text",) if _is_text(source, cfg) else ("prompt", "response"), cfg.fields)
        out[Path(source).stem] = tokenize_records(records, tok, cfg.train.max_length, Path(source).stem)
    return out


def _is_text(source: str, cfg: Config) -> bool:
    """An evaluation file is text if its first record has the text field (evals may mix kinds)."""
    if source.startswith(HUB_PREFIX):
        return cfg.kind == "text"
    first = first_row(source)
    return cfg.fields.text in first if isinstance(first, dict) else cfg.kind == "text"


def train_stage(cfg: Config, runs_root: Path, quiet: bool = False) -> Run:
    """Run (or reuse) the train stage for `cfg`; the trained model is in `<run>/model`.

    Everything a user can get wrong is checked before the run directory exists and before anything is
    printed: the settings, the data, the model (and its tokenizer against its embedding), the step plan.
    """
    from elasticity.errors import UserError

    if not cfg.data:
        raise UserError("missing config key 'data' (the training records; set --data FILE.jsonl)")
    need = _need(cfg.kind)
    sharding.check_launch(cfg.model.lora_r > 0)
    cfg.train.check("train")
    cfg.model.check()
    records = load_records(cfg.data, need, cfg.fields, cfg.split)
    for source in cfg.eval:
        if not source.startswith(HUB_PREFIX) and not Path(source).exists():
            raise UserError(f"data file not found: {source}")
    inputs = {"model": model_input(cfg.model), "data": cfg.data, **{f"eval:{e}": e for e in cfg.eval}}
    if planned_run(runs_root, "train", cfg, inputs, __name__).done:
        return run_stage(runs_root, "train", cfg, inputs, lambda run: None, seed=cfg.train.seed, quiet=quiet)
    model, tok = load_model_for_training(cfg.model, cfg.train.max_length)
    pack = cfg.pack and cfg.kind == "text"
    examples = tokenize_records(records, tok, cfg.train.max_length, Path(cfg.data).stem, pack=pack, report=False)
    steps = plan(examples, cfg.train, int(os.environ.get("WORLD_SIZE", "1")))
    if not steps:
        raise UserError("the training data gives no optimizer step; lower the batch size or add data")
    cfg.train.check_plan(len(steps))
    if note := tokenize_note(records, examples, Path(cfg.data).stem, cfg.train.max_length, pack):
        print(note, file=sys.stderr)

    def work(run: Run) -> dict:
        summary = train(model, tok, examples, cfg.train, run, _eval_sets(cfg, tok))
        run.write_json("summary.json", summary)
        return {"processes": summary["processes"]}

    return run_stage(runs_root, "train", cfg, inputs, work, seed=cfg.train.seed, quiet=quiet, shared=True)


def run(cfg: Config, runs_root: Path) -> None:
    result = train_stage(cfg, runs_root)
    print(result.path)
