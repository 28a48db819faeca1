"""Command line: a table of subcommands; each one's flags are generated from its config dataclass.

Every subcommand lives in a module that exposes `Config` (a frozen dataclass) and `run(cfg, runs_root)`.
Only the chosen subcommand's module is imported, so `elasticity --help` stays fast.
Flags are the config's dotted keys (`--train.lr 1e-5`) and override values from `--config FILE.yaml`.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from pathlib import Path
from typing import Any, get_args, get_origin

from elasticity.config import leaf_fields, load_config, parse_flag
from elasticity.errors import UserError
from elasticity.models.hf import quiet_loading
from elasticity.runs import check_runs_root

# name -> (module, one-line help). The module's `Config` and `run` do the work.
COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("elasticity.train.command", "train (pre-train or SFT) a causal LM; writes a run directory"),
    "generate": ("elasticity.generate", "sample responses to prompts with a recorded decoding policy"),
    "compress": ("elasticity.compression", "bits/token, bits/byte, response-only rates and KL to a reference"),
    "theory": ("elasticity.theory.command", "the elasticity theorem checked numerically on token trees"),
    "world": ("elasticity.world.command", "build the embedded world's datasets and world card"),
    "pretrain": ("elasticity.experiments.pretrain", "pre-train tiny models on the embedded world (cached)"),
    "rebound": ("elasticity.experiments.rebound", "align with Q1 positives, fine-tune on Q2 negatives, measure the fall"),
    "resistance": ("elasticity.experiments.resistance",
                   "forward vs inverse alignment between SFT slices (Table 1), with controls and intervals"),
    "scaling": ("elasticity.experiments.scaling",
                "elasticity against model size and pre-training volume: one rebound per base model"),
    "rates": ("elasticity.experiments.rates",
              "theory meets experiment: normalised rates through rebound, the theorem's ratio against k, Hooke"),
    "algorithms": ("elasticity.experiments.algorithms",
                   "rebound with the perturbation by SFT, DPO, IPO, SimPO or KTO, in both orders: heatmaps, metrics"),
    "demo": ("elasticity.demo", "the main job on the embedded world: every experiment, one report"),
    "run": ("elasticity.experiments.presets", "run a preset (configs/paper/): an experiment from raw data, per model"),
    "plan": ("elasticity.experiments.plan", "what a preset would run, read and cost, without downloading anything"),
}

DEFAULT_RUNS = "runs"


def _flag_kwargs(tp: Any) -> dict:
    origin = get_origin(tp)
    args = [a for a in get_args(tp) if a is not type(None)]
    if origin is tuple or (args and get_origin(args[0]) is tuple):
        return {"nargs": "+"}
    if tp is bool or (args and args[0] is bool and len(args) == 1):
        return {"nargs": "?", "const": "true"}
    return {}


def config_class(module, config_path: str | None) -> type:
    """A command's config dataclass: its `Config`, or, for commands whose schema depends on the file (presets name
    their experiment), the class its `config_for(path)` picks."""
    return module.config_for(config_path) if hasattr(module, "config_for") else module.Config


def _config_path(argv: list[str]) -> str | None:
    for i, a in enumerate(argv):
        if a == "--config" and i + 1 < len(argv):
            return argv[i + 1]
        if a.startswith("--config="):
            return a.split("=", 1)[1]
    return None


def _subparser(sub: argparse._SubParsersAction, name: str, help_text: str, with_flags: bool,
               config_path: str | None = None) -> tuple:
    p = sub.add_parser(name, help=help_text, description=help_text)
    fields = []
    if with_flags:
        module = importlib.import_module(COMMANDS[name][0])
        p.add_argument("--config", metavar="FILE.yaml", help="YAML file of config values (flags override it)")
        p.add_argument(
            "--runs-dir",
            default=os.environ.get("ELASTICITY_RUNS", DEFAULT_RUNS),
            help="root of the run directories (default: $ELASTICITY_RUNS or ./runs)",
        )
        fields = leaf_fields(config_class(module, config_path))
        for key, tp, default, doc in fields:
            shown = "required" if default is None and not _optional(tp) else f"default: {default}"
            p.add_argument(f"--{key}", dest=key, default=argparse.SUPPRESS, metavar="V",
                           help=f"{doc} ({shown})" if doc else shown, **_flag_kwargs(tp))
        return p, module, fields
    return p, None, fields


def _optional(tp: Any) -> bool:
    return type(None) in get_args(tp)


def build_parser(chosen: str | None, config_path: str | None = None) -> tuple[argparse.ArgumentParser, Any, list]:
    parser = argparse.ArgumentParser(
        prog="elasticity", description="Measure how language models resist alignment (Ji et al., ACL 2025)."
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    module, fields = None, []
    for name, (_, help_text) in COMMANDS.items():
        _, m, f = _subparser(sub, name, help_text, with_flags=(name == chosen), config_path=config_path)
        if name == chosen:
            module, fields = m, f
    return parser, module, fields


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    chosen = next((a for a in argv if not a.startswith("-")), None)
    chosen = chosen if chosen in COMMANDS else None
    try:
        parser, module, fields = build_parser(chosen, _config_path(argv))
        try:
            ns, unknown = parser.parse_known_args(argv)
        except SystemExit as e:  # argparse's own errors (and --help) already printed their line
            return int(e.code or 0)
        if unknown:
            flag = next((u for u in unknown if u.startswith("--")), unknown[0])
            raise UserError(f"unknown config key '{flag.lstrip('-')}' (see `elasticity {chosen} --help`)")
        if ns.command is None:
            parser.print_help()
            return 0
        given = vars(ns)
        overrides = {
            key: parse_flag(tp, given[key], key) for key, tp, _, _ in fields if key in given
        }
        cfg = load_config(config_class(module, ns.config), ns.config, overrides)
        check_runs_root(Path(ns.runs_dir))
        quiet_loading()  # no progress bar per model loaded or saved: the commands say what they do
        module.run(cfg, Path(ns.runs_dir))
    except UserError as e:
        print(f"elasticity: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("elasticity: interrupted; finished stages are kept and unfinished ones resume", file=sys.stderr)
        return 130
    return 0
