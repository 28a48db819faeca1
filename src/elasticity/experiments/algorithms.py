"""`elasticity algorithms`: rebound with the perturbation done by each objective, in both orders (Appendix B.2).

The paper repeats rebound with PPO, DPO, KTO and SimPO as the perturbation instead of SFT (its Figure 7; PPO is
RLOO or GRPO here, see `train.rl`) and in the reversed order, negative data first and positive after (Figure 8).
Here every (order, algorithm) is one rebound (`--perturb ALGORITHM`, `--reverse` for the reversed order) on the
same base model, data, grid and seeds, each its own cached stages; the final `algorithms-<h>/` stage writes the
heatmaps (Q1 x Q2 -> score, one panel per order and algorithm), the elasticity metrics per algorithm with their
intervals, and whether the ordering holds (`report.algorithms`).

The base model is `model` with its files, or, when `model` is empty, the embedded world's model of
`pretrain` (the demo's 1M-parameter model by default: the same cached stages) with the world's files and its
preference pairs.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from elasticity.errors import UserError
from elasticity.experiments import rebound
from elasticity.experiments.pretrain import Config as PretrainConfig
from elasticity.experiments.pretrain import pretrain_model
from elasticity.experiments.rebound_steps import STEP_ALGORITHMS
from elasticity.experiments.skeleton import command, say, stage
from elasticity.experiments.world_inputs import rebound_files
from elasticity.report.algorithms import write_algorithms
from elasticity.runs import Run
from elasticity.train.preference import PREFERENCE

ORDERS = ("forward", "reverse")


@dataclass(frozen=True)
class Config(rebound.Config):
    """`elasticity algorithms`: the rebound every algorithm gets, the algorithms and the orders."""

    algorithms: tuple[str, ...] = ("sft", "dpo", "simpo", "kto")  # the perturbation's objectives
    orders: tuple[str, ...] = ("forward", "reverse")  # forward: align positive, perturb negative; reverse: swapped
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)  # with no model: the world's model of this


def check(cfg: Config) -> None:
    for key, values, known in (("algorithms", cfg.algorithms, STEP_ALGORITHMS), ("orders", cfg.orders, ORDERS)):
        if not values or len(set(values)) != len(values):
            raise UserError(f"{key} must list distinct values, got {list(values)}")
        bad = [v for v in values if v not in known]
        if bad:
            raise UserError(f"{key}: unknown '{bad[0]}' (known: {', '.join(known)})")
    if cfg.reverse or cfg.perturb != "sft":
        raise UserError("algorithms sets perturb and reverse itself: give them as algorithms and orders instead")


def configs(cfg: Config, runs_root: Path) -> dict[tuple[str, str], rebound.Config]:
    """One rebound config per (order, algorithm), the world's files filled in where no model is given."""
    values = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(rebound.Config)}
    if not cfg.model:
        world, train = pretrain_model(cfg.pretrain, cfg.pretrain.sizes[-1], runs_root)
        files = rebound_files(world, pairs=True)
        values.update({k: v for k, v in files.items() if "." not in k and not values[k]}, model=str(train.path))
        if cfg.scorer.name == "oracle" and not cfg.scorer.world:
            values["scorer"] = dataclasses.replace(cfg.scorer, world=files["scorer.world"])
    out = {}
    for order in cfg.orders:
        for algorithm in cfg.algorithms:
            pairs = values["pairs"] if algorithm in PREFERENCE or cfg.align in PREFERENCE else ""
            out[(order, algorithm)] = rebound.Config(**dict(values, perturb=algorithm, reverse=order == "reverse",
                                                            pairs=pairs))
    return out


def algorithms_stage(cfg: Config, runs_root: Path) -> Run:
    """Every (order, algorithm)'s rebound (cached), then the report."""
    check(cfg)
    planned = configs(cfg, runs_root)
    for c in planned.values():
        rebound.check(c)  # every rebound's data is read and checked before the first one trains
    runs = {}
    for (order, algorithm), c in planned.items():
        say("algorithms", f"{order} order, perturbation by {algorithm}")
        runs[(order, algorithm)] = rebound.rebound_stage(c, runs_root)

    def work(run: Run) -> None:
        write_algorithms(run, runs, cfg.orders, cfg.algorithms)

    inputs = {f"{o}:{a}": r for (o, a), r in runs.items()}
    return stage(runs_root, "algorithms", {"orders": cfg.orders, "algorithms": cfg.algorithms}, inputs, work,
                 reports=True)


run = command(algorithms_stage)
