"""`elasticity scaling`: elasticity against model size and pre-training volume, one rebound per base model.

The base models are either the embedded world's size ladder (`pretrain`: sizes with their learning rates,
pre-trained on the same tokens; the models of the size axis) and the token checkpoints of one of its sizes
(`volume_size`, `volumes`: with a constant learning rate, the checkpoint at N tokens is a model pre-trained on
N tokens; the volume axis), or any list of Hugging Face models (`models`, each with its parameter and token
counts; `configs/paper/` presets give them through `elasticity run`, which writes the same report).

Every model gets the same rebound (data, prompts, scorer, grid, seeds: the rebound fields of this config), as
its own cached stages: a finished model is never redone, and a model that fails in the middle of the list
stops the command with one line while every finished model's results stay on disk for the next call. The
final `scaling-<h>/` stage fits every metric's trend against log size and log volume (`analysis.scaling`) and
writes the report (`report.scaling`).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

from elasticity.config import InputPath
from elasticity.errors import UserError
from elasticity.experiments import rebound, resistance
from elasticity.experiments.presets import ModelEntry, scaling_report_stage
from elasticity.experiments.pretrain import Config as PretrainConfig
from elasticity.experiments.pretrain import check as check_pretrain
from elasticity.experiments.pretrain import pretrain_model, report_stage
from elasticity.experiments.skeleton import command, say
from elasticity.experiments.world_inputs import preset_config, rebound_files, resistance_files
from elasticity.models.hf import parameter_count
from elasticity.report.scaling import Rebounded
from elasticity.runs import Run
from elasticity.world.command import build_world
from elasticity.world.world import COMPONENTS


@dataclass(frozen=True)
class Config(rebound.Config):
    """`elasticity scaling`: the rebound every model gets, and the models (the world's ladder, or `models`)."""

    pretrain: PretrainConfig = field(default_factory=PretrainConfig)  # the world and its size ladder (sizes, lrs)
    volume_size: str = ""  # the size whose token checkpoints are the volume axis; "" = the largest (last) size;
    # "all" = every size's (the full grid: a size axis at every volume, a volume axis at every size)
    volumes: tuple[int, ...] = ()  # which of its checkpoint_tokens to run (its final model always runs); () = all
    size_volume: int = 0  # the size axis at this checkpoint of every size (one of checkpoint_tokens); 0 = the final
    # models (the whole pre-training of each)
    models: tuple[ModelEntry, ...] = ()  # instead of the world: base models with their parameter and token counts
    resistance: bool = False  # also run resistance per model (forward vs inverse; its differences get trends too)
    resistance_preset: InputPath = "configs/resistance-demo.yaml"  # its settings; on the world, the world's files
    # fill in alignment, prompts and scorer.world


def _rebound_fields(cfg: Config) -> dict:
    own = {f.name for f in dataclasses.fields(rebound.Config)}
    return {k: getattr(cfg, k) for k in own}


def check(cfg: Config) -> None:
    """The scaling config's own checks (each model's rebound is checked by rebound.check before any runs)."""
    if cfg.model:
        raise UserError("scaling runs one rebound per base model: give them as models (or the world's ladder as "
                        "pretrain.sizes), not model")
    if cfg.models:
        labels = [e.label or e.model for e in cfg.models]
        if len(set(labels)) < len(labels):
            raise UserError(f"models: {next(x for x in labels if labels.count(x) > 1)} is listed twice")
        return
    check_pretrain(cfg.pretrain)
    sizes = cfg.pretrain.sizes
    if cfg.volume_size and cfg.volume_size not in (*sizes, "all"):
        raise UserError(f"volume_size {cfg.volume_size} is not one of pretrain.sizes ({', '.join(sizes)}) or all")
    if cfg.size_volume and cfg.size_volume not in cfg.pretrain.checkpoint_tokens:
        raise UserError(f"size_volume {cfg.size_volume} is not one of pretrain.checkpoint_tokens "
                        f"{list(cfg.pretrain.checkpoint_tokens)}")
    missing = [v for v in cfg.volumes if v not in cfg.pretrain.checkpoint_tokens]
    if missing:
        raise UserError(f"volumes {missing[0]} is not one of pretrain.checkpoint_tokens "
                        f"{list(cfg.pretrain.checkpoint_tokens)}: a volume is a checkpoint of the pre-training")
    if len(sizes) < 2 and not cfg.pretrain.checkpoint_tokens:
        raise UserError("one size and no checkpoint_tokens make one model: give two sizes or a volume")


def _progress_tokens(folder: Path) -> int:
    return json.loads((folder / "progress.json").read_text())["tokens"]


def _heldout(table: list[dict], size: str, checkpoint: str) -> dict:
    row = next(r for r in table if r["size"] == size and r["checkpoint"] == checkpoint)
    return {f"bpt_{c}": row[c]["packed_bits_per_token"] for c in COMPONENTS} | {
        f"bpt_{c}_whole": row[c]["bits_per_token"] for c in COMPONENTS} | {"pretrain_lr": row["lr"]}


def world_models(cfg: Config, runs_root: Path) -> tuple[list[Rebounded], dict]:
    """Pre-train (or reuse) the ladder; the base models (without their rebounds yet) and the world's files."""
    pre = cfg.pretrain
    world = build_world(pre.world, runs_root)
    trains = {size: pretrain_model(pre, size, runs_root, world)[1] for size in pre.sizes}
    report = report_stage(pre, runs_root)
    table = json.loads(report.file("table.json").read_text())
    models, params = [], {}
    for size, train in trains.items():
        final = train.file("model")
        params[size] = parameter_count(str(final))
        if cfg.size_volume:  # the size axis at a checkpoint: every size pre-trained on that many tokens
            folder = train.file("checkpoints") / f"tokens-{cfg.size_volume}"
            tokens = _progress_tokens(folder)
            models.append(Rebounded(f"{size}@{tokens:,}", str(folder), params[size], tokens,
                                    extra=_heldout(table, size, folder.name)))
        else:
            models.append(Rebounded(size, str(train.path), params[size], _progress_tokens(final),
                                    extra=_heldout(table, size, "model")))
    vsizes = pre.sizes if cfg.volume_size == "all" else [cfg.volume_size or pre.sizes[-1]]
    for vsize in vsizes:
        marks = [m for m in cfg.volumes or pre.checkpoint_tokens if not (cfg.size_volume == m)]
        for mark in marks:  # the size axis's checkpoint is on it already
            folder = trains[vsize].file("checkpoints") / f"tokens-{mark}"
            tokens = _progress_tokens(folder)
            models.append(Rebounded(f"{vsize}@{tokens:,}", str(folder), params[vsize], tokens,
                                    extra=_heldout(table, vsize, folder.name)))
        if cfg.size_volume:  # and the final model, the volume axis's last point
            final = trains[vsize].file("model")
            models.append(Rebounded(vsize, str(trains[vsize].path), params[vsize], _progress_tokens(final),
                                    extra=_heldout(table, vsize, "model")))
    return models, {"world": world, "pretrain": report}


def resistance_config(cfg: Config, model: str, world: dict | None) -> resistance.Config:
    """The resistance every model gets (with `resistance`): the preset; on the world, with the world's files (the
    positive reviews to align on, the evaluation openings, the oracle)."""
    files = resistance_files(world["world"]) if world else {}
    return preset_config(resistance.Config, cfg.resistance_preset, "resistance_preset", {"model": model, **files})


def rebound_config(cfg: Config, model: str, world: dict | None) -> rebound.Config:
    """The rebound every model gets: this config's rebound fields, the world's files where not given."""
    values = {**_rebound_fields(cfg), "model": model}
    if world:
        files = rebound_files(world["world"])
        values.update({k: v for k, v in files.items() if "." not in k and not values[k]})
        if cfg.scorer.name == "oracle" and not cfg.scorer.world:
            values["scorer"] = dataclasses.replace(cfg.scorer, world=files["scorer.world"])
    return rebound.Config(**values)


def scaling_stage(cfg: Config, runs_root: Path) -> Run:
    """Every model's rebound (cached), then the scaling report."""
    check(cfg)
    if cfg.models:
        models = [Rebounded(e.label or e.model, e.model, e.parameter_count(cfg.trust_remote_code), e.tokens)
                  for e in cfg.models]
        world = None
    else:
        models, world = world_models(cfg, runs_root)
    configs = [rebound_config(cfg, m.model, world) for m in models]
    against = [resistance_config(cfg, m.model, world) for m in models] if cfg.resistance else []
    for c in configs:  # every model is checked before the first run: a bad one late in the list stops here
        rebound.check(c)
    for c in against:
        resistance.check(c)
    done = []
    for i, (m, c) in enumerate(zip(models, configs), start=1):
        say("scaling", f"model {i} of {len(models)}: {m.label} ({m.model})")
        done.append(dataclasses.replace(m, rebound=rebound.rebound_stage(c, runs_root)))
        if against:
            done[-1] = dataclasses.replace(done[-1], resistance=resistance.resistance_stage(against[i - 1], runs_root))
    return scaling_report_stage(done, runs_root, {"pretrain": world["pretrain"]} if world else None)


run = command(scaling_stage)
