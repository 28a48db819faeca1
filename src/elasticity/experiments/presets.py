"""`elasticity run --config PRESET`: an experiment of the paper, from raw data, on one model or a list of them.

A preset (`configs/paper/*.yaml`) is an experiment's own config (rebound or resistance) plus:

    experiment   rebound | resistance
    data         a raw dataset and how to read it (`data.prepare.DataConfig`): its pools become the experiment's
                 files (rebound: positive, negative, prompts and held-out text; resistance: alignment, prompts)
    models       the base models, each a local folder, `org/name` or `org/name@revision`, with its parameter
                 count and pre-training tokens when known (the scaling axes)
    revisions    crossed with every model: Pythia's sizes x step checkpoints in one grid
    tokens_per_step   a `stepN` revision's pre-training tokens are N x this (Pythia: 2,097,152)

Stages: `data-<h>/` (the prepared files and `split.json`: what was read, filtered, de-duplicated and held out),
then the experiment once per model (its own cached stages: a finished model is never redone), then `suite-<h>/`
with `models.csv` (one row per model: its revision, resolved commit, weights hash, and result directory) and
`summary.txt`. Two models whose weights hash the same are flagged: the comparison between them is empty.
"""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from elasticity.config import read_yaml
from elasticity.data.prepare import POOLS, DataConfig, check_data, defaults, prepare
from elasticity.data.records import Fields
from elasticity.errors import UserError
from elasticity.experiments import rebound, resistance
from elasticity.experiments.rates import Config as RatesConfig
from elasticity.experiments.rates import rates_stage
from elasticity.experiments.skeleton import say, stage
from elasticity.files import csv_text, write_jsonl
from elasticity.hub import model_identity
from elasticity.models.hf import load_tokenizer, parameter_count, resolve_model_source
from elasticity.report.scaling import Rebounded, write_from_runs
from elasticity.runs import Run, planned_run

EXPERIMENTS = {"rebound": rebound, "resistance": resistance}


@dataclass(frozen=True)
class ModelEntry:
    """One base model of a preset. Given on the command line as its source alone (`--models org/a org/b@rev`)."""

    model: str = ""  # a local folder, a run directory, org/name or org/name@revision
    label: str = ""  # its name in tables; default the source
    parameters: float = 0.0  # parameter count, when known (the size axis; `plan` reads it from the config if local)
    tokens: float = 0.0  # pre-training tokens, when known (the volume axis)

    @classmethod
    def parse(cls, text: str) -> "ModelEntry":
        return cls(model=text)

    def parameter_count(self, trust_remote_code: bool = False) -> float:
        """Its parameter count: the given one, else counted from its config where it is on this machine, else 0."""
        return self.parameters or parameter_count(self.model, trust_remote_code) or 0.0


@dataclass(frozen=True)
class Suite:
    """What a preset adds to its experiment's config."""

    experiment: Literal["rebound", "resistance"] = "rebound"  # which experiment the preset runs
    paper: str = ""  # what of the paper it reproduces (shown by `plan`)
    data: DataConfig = field(default_factory=DataConfig)  # the raw dataset; empty dataset: the file fields as given
    models: tuple[ModelEntry, ...] = ()  # base models, one experiment each; empty: `model` alone
    revisions: tuple[str, ...] = ()  # crossed with every model (org/name@revision); empty: as given
    tokens_per_step: int = 0  # pre-training tokens of a stepN revision = N x this (Pythia: 2097152)
    json: bool = False  # plan: print the plan as JSON


@dataclass(frozen=True)
class ReboundPreset(Suite, rebound.Config):
    """A rebound preset: rebound's config plus the suite fields."""


@dataclass(frozen=True)
class ResistancePreset(Suite, resistance.Config):
    """A resistance preset: resistance's config plus the suite fields."""


PRESETS = {"rebound": ReboundPreset, "resistance": ResistancePreset}
FILES = {"rebound": {"positive": "positive", "negative": "negative"}, "resistance": {"alignment": "positive"}}


def config_for(path: str | None) -> type:
    """The preset class a config file asks for (its `experiment` key); rebound's without a file."""
    name = read_yaml(path).get("experiment", "rebound") if path else "rebound"
    if name not in PRESETS:
        raise UserError(f"{path}: experiment must be one of {', '.join(PRESETS)}, got {name!r}")
    return PRESETS[name]


Config = ReboundPreset  # the CLI's default class; `config_for` picks the one a file asks for


def entries(cfg: Suite) -> list[ModelEntry]:
    """Every base model of the preset: models x revisions, or the experiment's `model` alone."""
    base = list(cfg.models) or ([ModelEntry(cfg.model)] if cfg.model else [])
    if not base:
        raise UserError("missing config key 'models' (or 'model'): give the base models (--models org/name ...)")
    out = []
    for e in base:
        for rev in cfg.revisions or (None,):
            source = f"{e.model}@{rev}" if rev else e.model
            tokens = e.tokens
            if rev and cfg.tokens_per_step and (m := re.fullmatch(r"step(\d+)", rev)):
                tokens = int(m.group(1)) * cfg.tokens_per_step
            out.append(dataclasses.replace(e, model=source, tokens=tokens, label=e.label + (f"@{rev}" if rev and
                                                                                              e.label else "")))
    sources = [e.model for e in out]
    if len(set(sources)) < len(sources):
        raise UserError(f"models: {next(s for s in sources if sources.count(s) > 1)} is listed twice")
    return out


def experiment_fields(cfg: Suite) -> dict:
    """The experiment's own config values of a preset (the suite fields dropped)."""
    own = {f.name for f in dataclasses.fields(Suite)}
    return {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg) if f.name not in own}


def check_suite(cfg: Suite, models_here: bool = True) -> list[ModelEntry]:
    """The preset's own checks, before any file is read: the data section, and (`models_here`) every model is here
    or on a hub that answers, so that a missing model at the end of the list stops the suite before its first run."""
    models = entries(cfg)
    if cfg.data.dataset:
        taken = [k for k in (*FILES[cfg.experiment], "prompts") if getattr(cfg, k)]
        if taken:
            raise UserError(f"set either data.dataset or {taken[0]}, not both (data.dataset makes {taken[0]})")
        check_data(cfg.data)
    for e in models if models_here else ():
        resolve_model_source(e.model)
    return models


def checked_configs(cfg: Suite, models: list[ModelEntry], runs_root: Path) -> tuple[Run | None, list]:
    """The prepared data and every model's experiment config, each checked by its experiment (data read, lengths,
    scorer, grid). A check that fails removes the data stage this call made: a bad preset leaves nothing."""
    module = EXPERIMENTS[cfg.experiment]
    runs_root = Path(runs_root)
    new_root = not runs_root.exists()
    data = None
    if cfg.data.dataset:
        fresh = not data_run(cfg, runs_root).done
        data = data_stage(cfg, runs_root)
    try:
        configs = [experiment_config(cfg, e.model, data) for e in models]
        for c in configs:
            module.check(c)
    except UserError as e:
        if data is None:
            raise
        if fresh:
            shutil.rmtree(data.path, ignore_errors=True)
            if new_root and not any(runs_root.iterdir()):
                runs_root.rmdir()
        message = str(e)
        for name in (*POOLS, "prompts", "heldout_text"):  # name the pool, not a file that is gone
            message = message.replace(str(data.file(f"{name}.jsonl")), f"the {name} pool of {cfg.data.dataset}")
        raise UserError(message) from None
    if data is not None:
        record = json.loads(data.file("split.json").read_text())
        say("data", f"{cfg.data.dataset}: " + ", ".join(f"{k} {v}" for k, v in record["pools"].items())
            + f", {record['prompts']} evaluation prompts ({data.path})")
    return data, configs


def _data_inputs(cfg: Suite) -> dict:
    """The data stage's inputs: the source, and the first model's tokenizer when the template is its chat one."""
    chat = defaults(cfg.data)[3] == "chat"
    return {"source": defaults(cfg.data)[0], **({"tokenizer": entries(cfg)[0].model} if chat else {})}


def data_run(cfg: Suite, runs_root: Path) -> Run:
    """The data stage's run directory, finished or not."""
    return planned_run(Path(runs_root), "data", cfg.data, _data_inputs(cfg), __name__)


def data_stage(cfg: Suite, runs_root: Path) -> Run:
    """Prepare the raw dataset once: every pool as a JSONL file, the evaluation prompts, and split.json."""
    inputs = _data_inputs(cfg)

    def work(run: Run) -> None:
        tok = load_tokenizer(inputs["tokenizer"], cfg.trust_remote_code) if "tokenizer" in inputs else None
        prepared = prepare(cfg.data, tok)
        for name in POOLS:
            if name in prepared.pools:
                write_jsonl(run.file(f"{name}.jsonl" if name != "text" else "heldout_text.jsonl"),
                            prepared.pools[name])
        write_jsonl(run.file("prompts.jsonl"), [{"prompt": p} for p in prepared.prompts])
        run.write_json("split.json", prepared.record)

    return stage(runs_root, "data", cfg.data, inputs, work)


def experiment_config(cfg: Suite, model: str, data: Run | None):
    """The experiment's config for one base model, its file fields pointing at the prepared data."""
    values = {**experiment_fields(cfg), "model": model}
    if data is not None:
        values["fields"] = Fields()  # the prepared files hold the canonical names
        for key, pool in FILES[cfg.experiment].items():
            if not data.file(f"{pool}.jsonl").is_file():
                raise UserError(f"data.dataset {cfg.data.dataset} gives no {pool} records, which {cfg.experiment} "
                                f"needs as {key}")
            values[key] = str(data.file(f"{pool}.jsonl"))
        values["prompts"] = str(data.file("prompts.jsonl"))
        if cfg.experiment == "rebound" and _reads_pairs(values):
            if not data.file("pairs.jsonl").is_file():
                raise UserError(f"data.dataset {cfg.data.dataset} gives no preference pairs, which --align "
                                f"{values['align']} --perturb {values['perturb']} trains on: set on_policy true (the "
                                "model's own samples ranked by the scorer) or give pairs")
            values["pairs"] = str(data.file("pairs.jsonl"))
        if cfg.experiment == "rebound" and not cfg.heldout and data.file("heldout_text.jsonl").is_file():
            values["heldout"] = (str(data.file("heldout_text.jsonl")),)
    return EXPERIMENTS[cfg.experiment].Config(**values)


def _reads_pairs(values: dict) -> bool:
    """A rebound whose preference step trains on pairs from the data (not its own samples, not a given file)."""
    from elasticity.train.preference import PREFERENCE

    return (not values.get("pairs") and not values.get("on_policy")
            and (values.get("align") in PREFERENCE or values.get("perturb") in PREFERENCE))


def duplicates(identities: list[dict]) -> dict[str, str]:
    """source -> the earlier source with identical weights (only where the weights are on this machine).

    >>> duplicates([{"source": "a", "weights_sha256": "x"}, {"source": "b", "weights_sha256": "x"}])
    {'b': 'a'}
    """
    first: dict[str, str] = {}
    out = {}
    for ident in identities:
        h = ident.get("weights_sha256")
        if h and h in first:
            out[ident["source"]] = first[h]
        elif h:
            first[h] = ident["source"]
    return out


def rates_report(rebounded: list[Rebounded], runs_root: Path) -> Run | str:
    """The theorem's ratio against k over every model's rebound (`elasticity rates`), or why it cannot be
    measured (a model's pre-training tokens unknown, no held-out pre-training text): the report says so."""
    if any(not r.tokens for r in rebounded):
        return "a model's pre-training tokens are unknown, so k is"
    try:
        return rates_stage(RatesConfig(rebound=tuple(str(r.rebound.path) for r in rebounded),
                                       labels=tuple(r.label for r in rebounded),
                                       pretrain_tokens=tuple(int(r.tokens) for r in rebounded),
                                       parameters=tuple(int(r.parameters) for r in rebounded)), runs_root)
    except UserError as e:  # the rebounds stand without it
        return str(e)


def scaling_report_stage(rebounded: list[Rebounded], runs_root: Path, inputs: dict | None = None) -> Run:
    """The scaling report of finished rebounds, one per base model: every metric's trend against log parameters
    and log pre-training tokens (`analysis.scaling`, `report.scaling`), with the theorem's ratio against k."""
    rates = rates_report(rebounded, runs_root)

    def work(run: Run) -> None:
        write_from_runs(run, rebounded, rates)

    key = [(r.label, r.parameters, r.tokens) for r in rebounded]
    inputs = {**{f"rebound:{r.label}": r.rebound for r in rebounded},
              **{f"resistance:{r.label}": r.resistance for r in rebounded if r.resistance}, **(inputs or {}),
              **({"rates": rates} if isinstance(rates, Run) else {})}
    return stage(runs_root, "scaling", key, inputs, work, reports=True)


def suite_stage(cfg: Suite, runs_root: Path) -> Run:
    """Run (or reuse) every model's experiment; returns the suite run with models.csv and summary.txt. A rebound
    suite of two or more models also gets the scaling report (its `scaling-<h>/` is named in the summary)."""
    models = check_suite(cfg)
    data, configs = checked_configs(cfg, models, runs_root)
    module = EXPERIMENTS[cfg.experiment]
    results: dict[str, Run] = {}
    for i, (entry, config) in enumerate(zip(models, configs), start=1):
        say(cfg.experiment, f"model {i} of {len(models)}: {entry.model}")
        results[entry.model] = getattr(module, f"{cfg.experiment}_stage")(config, runs_root)
    scaling = None
    if cfg.experiment == "rebound" and len(models) > 1:
        scaling = scaling_report_stage([Rebounded(e.label or e.model, e.model, e.parameter_count(cfg.trust_remote_code),
                                                  e.tokens, results[e.model]) for e in models], runs_root)

    def work(run: Run) -> dict:
        identities = [model_identity(e.model) for e in models]
        same = duplicates(identities)
        rows = [{"label": e.label or e.model, "model": e.model, "revision": ident.get("revision"),
                 "commit": ident.get("commit"), "weights_sha256": ident["weights_sha256"],
                 "parameters": e.parameters or None, "tokens": e.tokens or None,
                 "same_weights_as": same.get(e.model), "result": str(results[e.model].path)}
                for e, ident in zip(models, identities)]
        run.write_text("models.csv", csv_text(rows))
        lines = [f"{cfg.experiment} on {len(models)} model(s)" + (f", data {cfg.data.dataset}" if data else "")]
        lines += [f"  {e.label or e.model}: {results[e.model].path}" for e in models]
        lines += [f"  WARNING: {a} has the same weights as {b}: the two are one model" for a, b in same.items()]
        if scaling is not None:
            lines += [f"  elasticity against size and volume: {scaling.path}",
                      *[f"  {line}" for line in scaling.lines("summary.txt")[1:]]]
        run.write_text("summary.txt", "\n".join(lines) + "\n")
        return {"models": identities}

    inputs = {**({"data": data} if data else {}), **{f"result:{k}": r for k, r in results.items()},
              **({"scaling": scaling} if scaling else {})}
    key = {"experiment": cfg.experiment, "models": cfg.models, "revisions": cfg.revisions,
           "tokens_per_step": cfg.tokens_per_step}
    return stage(runs_root, "suite", key, inputs, work)


def run(cfg: Suite, runs_root: Path) -> None:
    result = suite_stage(cfg, runs_root)
    for line in result.lines("summary.txt"):
        print(line, file=sys.stderr)
    print(result.path)
