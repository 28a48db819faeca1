"""`elasticity rates`: theory meets experiment. Normalised compression rates at every grid point of finished
rebounds, the theorem's ratio -(d gamma_a/dl)/(d gamma_p/dl) against k = |D_p|/|D_a|, and Hooke's form.

Rebound measures bits/token on held-out positive pairs (D_a, the alignment data), negative pairs (D_t, the
perturbation) and pre-training text (D_p) at every (Q1, seed, Q2). This command reads those measurements, the
token counts behind them (|D_a| from each positive run's checkpoint marks, |D_t| from each point, |D_p| from the
base model's pre-training run or the config) and a normaliser per set:

    entropy    the world's exact entropy rate of the very held-out records (`world.truth`): gamma is the model's
               excess code length over the truth, its KL per token (the default for oracle-scored world rebounds)
    base       the base model's own rate on the set: gamma is the change since the base (real models)
    reference  a rate per set given as SET=BITS (e.g. a larger model's rate on the same sets)

then the ratio, its log-log slope against k and the forces (`analysis.rates`), and writes them
(`report.rates`). `elasticity demo` runs it on its rebound, `elasticity scaling` on every model's.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from elasticity.analysis.rates import Series, fits, hooke_rows, hooke_summary, ratio_rows
from elasticity.config import InputPath, load_config
from elasticity.data.sources import read_rows
from elasticity.data.tokenize import encode_pair, encode_text
from elasticity.errors import UserError
from elasticity.experiments import rebound
from elasticity.experiments.skeleton import command, stage
from elasticity.files import read_json, read_jsonl
from elasticity.models.hf import load_tokenizer, parameter_count
from elasticity.report.rates import write_rates
from elasticity.runs import Run
from elasticity.stats import LN2
from elasticity.world.truth import pair_nats
from elasticity.world.world import load_world

NORMALISERS = ("entropy", "base", "reference")


@dataclass(frozen=True)
class Config:
    """`elasticity rates`: which finished rebounds, how big their datasets are, what normalises a rate."""

    rebound: tuple[InputPath, ...] = ()  # finished rebound run directories (runs/rebound-<h>), one per base model
    labels: tuple[str, ...] = ()  # a name per rebound; () = the run directories' names
    pretrain_tokens: tuple[int, ...] = ()  # |D_p| per rebound (the base model's pre-training tokens); () = read
    # from each base model's pre-training run (world models)
    parameters: tuple[int, ...] = ()  # parameters per rebound (models that share a count are fitted together);
    # () = counted from each base model's config
    normaliser: str = ""  # entropy (the world's exact entropy) | base (the base model's rate) | reference;
    # "" = entropy for oracle-scored rebounds on the world, else base
    world: InputPath = ""  # the world of the entropy normaliser; "" = each rebound's oracle world
    reference: tuple[str, ...] = ()  # with normaliser reference: SET=BITS for positive, negative and the
    # pre-training set
    pretraining: str = ""  # the held-out text set that stands for D_p (a rebound heldout file's stem, e.g.
    # heldout_mixture); "" = the last held-out set of each rebound
    span: int = 1  # the finite differences run from Q2 = 0 over this many grid points after it


@dataclass
class Source:
    """One finished rebound and everything read about it."""

    run: Run
    label: str
    parameters: float
    pretrain_tokens: float
    points: list[dict]  # results.jsonl rows
    align_tokens: dict[tuple[int, int], int]  # (seed, Q1) -> tokens of the Q1 aligned examples
    sets: tuple[str, ...]  # measured sets: positive, negative, then the held-out texts
    pretraining: str
    kind: str  # entropy | base | reference
    normaliser: dict[str, float]  # set -> bits/token subtracted
    share: float | None  # D_t's share of D_p (the ideal code's secant); None = unknown


def _sibling(run: Run, name: str) -> Run:
    """A run the rebound read (by the name in its meta.json), in the same runs directory as the rebound."""
    return Run(run.path.parent / Path(name).name)


def _rebound_run(path: str) -> tuple[Run, rebound.Config, list[dict]]:
    run = Run(Path(path))
    if not run.done or not run.file("results.jsonl").is_file() or not run.name.startswith("rebound-"):
        raise UserError(f"rebound: {path} is not a finished rebound run directory (runs/rebound-<h>)")
    return run, load_config(rebound.Config, run.file("config.yaml")), read_jsonl(run.file("results.jsonl"))


def _align_tokens(run: Run) -> dict[tuple[int, int], int]:
    out = {}
    for key, name in read_json(run.file("meta.json"))["inputs"].items():
        if key.startswith("positive:"):
            positive = _sibling(run, name)
            if not positive.file("marks.json").is_file():
                raise UserError(f"rebound: {run.path} has no {positive.name} beside it (its aligned models' token "
                                "counts): keep a rebound in the runs directory it ran in")
            marks = read_json(positive.file("marks.json"))
            out |= {(int(key.split(":")[1]), int(q1)): m["tokens"] for q1, m in marks.items()}
    return out


def _pretrain_tokens(model: str) -> int:
    for progress in (Path(model) / "progress.json", Path(model) / "model" / "progress.json"):
        if progress.is_file():
            return json.loads(progress.read_text())["tokens"]
    raise UserError(f"pretrain_tokens: {model} is not a pre-training run of this toolkit, so |D_p| is not known; "
                    "give each base model's pre-training tokens (--pretrain_tokens N ...)")


def _per_rebound(values: tuple, n: int, key: str) -> list:
    if values and len(values) != n:
        raise UserError(f"{key}: {len(values)} values for {n} rebounds; give one per rebound, or none")
    return list(values) or [None] * n


def _reference(cfg: Config) -> dict[str, float]:
    out = {}
    for item in cfg.reference:
        name, _, value = item.partition("=")
        try:
            out[name] = float(value)
        except ValueError:
            raise UserError(f"reference: '{item}' is not SET=BITS (e.g. positive=0.74)") from None
    return out


def _entropy(world_dir: str, rcfg: rebound.Config, pretraining: str) -> tuple[dict, float | None]:
    """(set -> exact entropy in bits per predicted token, D_t's share of D_p) of a world rebound's held-out sets."""
    world, data = load_world(world_dir), rebound.check(rcfg)
    tok, max_length = load_tokenizer(rcfg.model, rcfg.trust_remote_code), rcfg.train.max_length
    out, components = {}, {}
    for name, pairs in data.heldout_pairs.items():
        nats, targets = 0.0, 0
        for r in pairs:
            c, n = pair_nats(world, r["prompt"], r["response"])
            ex = encode_pair(tok, r["prompt"], r["response"], max_length)
            if ex.truncated:
                raise UserError(f"a held-out {name} pair is longer than train.max_length {max_length}: its exact "
                                "entropy would not be that of the scored tokens; normalise by the base instead")
            nats, targets, components[name] = nats + n, targets + ex.n_targets, components.get(name, set()) | {c}
        out[name] = nats / targets / LN2
    for path in rcfg.heldout:
        name = rebound._text_name(path)
        rows = [obj for _, obj in read_rows(path)[0][: rcfg.eval.docs]]
        if any("nats" not in r for r in rows):
            raise UserError(f"{path} has no exact 'nats' per document (the world's heldout files do): normalise by "
                            "the base model instead (--normaliser base)")
        examples = [encode_text(tok, r[rcfg.fields.text], max_length) for r in rows]
        if any(ex.truncated for ex in examples):
            raise UserError(f"a document of {path} is longer than train.max_length {max_length}: normalise by "
                            "the base model instead (--normaliser base)")
        out[name] = sum(r["nats"] for r in rows) / sum(ex.n_targets for ex in examples) / LN2
        components[name] = {r.get("component") for r in rows}
    # D_t's share of D_p, for the ideal code's secant: its component's weight if D_p is the mixture
    perturbation, inside = components["negative"], components[pretraining]
    if len(perturbation) != 1:
        return out, None
    (t,) = perturbation
    return out, world.weights.get(t) if len(inside) > 1 else float(t in inside)


def check(cfg: Config) -> list[Source]:
    """Read and check every rebound, its token counts and its normaliser; creates nothing on disk."""
    if not cfg.rebound:
        raise UserError("rebound: give one or more finished rebound run directories (--rebound runs/rebound-<h>)")
    if cfg.normaliser not in ("", *NORMALISERS):
        raise UserError(f"normaliser must be one of {', '.join(NORMALISERS)}, got '{cfg.normaliser}'")
    if cfg.span < 1:
        raise UserError(f"span must be >= 1, got {cfg.span}")
    n = len(cfg.rebound)
    labels = _per_rebound(cfg.labels, n, "labels")
    tokens = _per_rebound(cfg.pretrain_tokens, n, "pretrain_tokens")
    params = _per_rebound(cfg.parameters, n, "parameters")
    named = [label or Path(path).name for path, label in zip(cfg.rebound, labels)]
    twice = next((x for x in named if named.count(x) > 1), None)
    if twice:
        raise UserError(f"rebound: '{twice}' is given twice (a rebound or a label): each model's cells must be its own")
    reference = _reference(cfg)
    sources = []
    for path, label, tok_count, param in zip(cfg.rebound, labels, tokens, params):
        run, rcfg, points = _rebound_run(path)
        align = _align_tokens(run)
        q2s = sorted({p["q2"] for p in points if p["q1"]})
        if len(q2s) < cfg.span + 1:
            raise UserError(f"span {cfg.span} needs {cfg.span + 1} Q2 points (0 included); {path} has {q2s}")
        texts = [k[len("bpt_"):] for k in points[0] if k.startswith("bpt_") and k not in ("bpt_positive",
                                                                                           "bpt_negative")]
        sets = ("positive", "negative", *texts)
        pretraining = cfg.pretraining or (texts[-1] if texts else "")
        if pretraining not in texts:
            raise UserError(f"pretraining: {path} measured no held-out text set '{pretraining}' (it has "
                            f"{', '.join(texts) or 'none'}): rebound needs --heldout pre-training text for D_p")
        oracle_world = rcfg.scorer.world if rcfg.scorer.name == "oracle" else ""
        kind = cfg.normaliser or ("entropy" if cfg.world or oracle_world else "base")
        share = None
        if kind == "entropy":
            if not (cfg.world or oracle_world):
                raise UserError("normaliser entropy needs the world (--world runs/world-<h>), or an oracle-scored "
                                "rebound")
            try:
                normaliser, share = _entropy(cfg.world or oracle_world, rcfg, pretraining)
            except UserError as e:  # the rebound's files are named as it was run (relative to its directory)
                raise UserError(f"{run.name}: its held-out data cannot be read ({e}); run from where the rebound "
                                "ran, or normalise by the base model (--normaliser base)") from None
        elif kind == "base":
            base = next(p for p in points if p["q1"] == 0)
            normaliser = {s: base[f"bpt_{s}"] for s in sets}
        else:
            missing = [s for s in ("positive", "negative", pretraining) if s not in reference]
            if missing:
                raise UserError(f"reference: no rate for {', '.join(missing)} (give SET=BITS for each)")
            normaliser = {s: reference.get(s, math.nan) for s in sets}
        if param is None:
            param = parameter_count(rcfg.model, rcfg.trust_remote_code) or 0
        sources.append(Source(run, label or run.name, float(param),
                              float(tok_count if tok_count is not None else _pretrain_tokens(rcfg.model)), points,
                              align, sets, pretraining, kind, normaliser, share))
    return sources


def series_of(src: Source) -> tuple[list[Series], list[dict]]:
    """The negative runs of one rebound as Series, and its rates rows (every set's normalised rate per point)."""
    by: dict[tuple[int, int], list[dict]] = {}
    for p in src.points:
        if p["q1"]:
            by.setdefault((p["q1"], p["seed"]), []).append(p)
    roles = {"p": src.pretraining, "a": "positive", "t": "negative"}

    def gamma(p: dict) -> dict[str, float]:  # every set's normalised rate at one point
        return {name: p[f"bpt_{name}"] - src.normaliser[name] for name in src.sets}

    base = next(p for p in src.points if p["q1"] == 0)
    series, rows = [], [{"model": src.label, "q1": 0, "seed": None, "q2": 0, "pretrain_tokens": src.pretrain_tokens,
                         **{f"gamma_{name}": v for name, v in gamma(base).items()}}]
    for (q1, seed), pts in sorted(by.items()):
        pts.sort(key=lambda p: p["q2"])
        rates = [gamma(p) for p in pts]
        s = Series(src.label, src.parameters, src.pretrain_tokens, q1, seed, src.align_tokens[(seed, q1)],
                   tuple(p["q2"] for p in pts), tuple(p["tokens"] for p in pts),
                   {r: tuple(g[name] for g in rates) for r, name in roles.items()})
        series.append(s)
        for i, (p, g) in enumerate(zip(pts, rates)):
            rows.append({"model": src.label, "q1": q1, "seed": seed, "q2": p["q2"],
                         "pretrain_tokens": src.pretrain_tokens, "align_tokens": s.align_tokens,
                         "perturb_tokens": s.perturb_tokens[i], "k": s.k, "l": s.l_values[i],
                         **{f"gamma_{name}": v for name, v in g.items()},
                         **{f"force_{r}": s.force(r, i) for r in roles}})
    return series, rows


def rates_stage(cfg: Config, runs_root: Path) -> Run:
    """Read the rebounds (finished stages), then the rates report."""
    sources = check(cfg)

    def work(run: Run) -> None:
        series, rows = [], []
        for src in sources:
            s, r = series_of(src)
            series, rows = series + s, rows + r
        shares = {src.share for src in sources}
        share = shares.pop() if len(shares) == 1 else None
        ratios = ratio_rows(series, cfg.span, share)
        info = [{"model": src.label, "run": src.run.name, "parameters": src.parameters,
                 "pretrain_tokens": src.pretrain_tokens, "pretraining_set": src.pretraining,
                 **{f"normaliser_{s}": v for s, v in src.normaliser.items()}} for src in sources]
        write_rates(run, rows, ratios, fits(ratios), hooke_rows(series), hooke_summary(series), info,
                    " / ".join(dict.fromkeys(src.kind for src in sources)), cfg.span, share)

    return stage(runs_root, "rates", cfg, {f"rebound:{i}": s.run for i, s in enumerate(sources)}, work, reports=True)


run = command(rates_stage)
