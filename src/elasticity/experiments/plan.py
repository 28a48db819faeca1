"""`elasticity plan --config PRESET [--json]`: what a preset would run, read and cost, without downloading.

Reads only what is on this machine: the preset, local data (prepared in memory to count its pools), and the
configs and tokenizers of models that are local folders or in the Hugging Face cache (for exact parameter
counts, from a model built on the meta device, and exact token counts). What is not here is named as such, and
the counts that need it become upper bounds (examples x max_length), marked "<=".

Resources are first-order estimates for the code as it is, stated with their assumptions (`ASSUMPTIONS`):
training memory = 16 bytes a parameter (fp32 weights, gradients, AdamW's two moments) + a float32 copy of the base
for KL + the scorer + activations (no gradient checkpointing); disk = the kept aligned checkpoints + the peak of
one negative run's checkpoints and resume states; GPU-hours from 6N FLOPs a trained token and 2N a measured or
generated one at an assumed utilisation of an H100.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from elasticity.config import dump_yaml, to_dict
from elasticity.data.adapters import adapter
from elasticity.data.prepare import check_data, defaults, prepare
from elasticity.data.sources import HUB_PREFIX
from elasticity.data.tokenize import encode_pair
from elasticity.experiments.presets import Config, ModelEntry, Suite, check_suite, config_for, entries  # noqa: F401
from elasticity.experiments.skeleton import seed_order
from elasticity.hub import cached_commit, hub_cached, model_folder, split_revision
from elasticity.models.hf import parameter_count

__all__ = ["Config", "config_for", "run", "build_plan"]

GIB = 2**30
ASSUMPTIONS = {
    "gpu": "one H100-class GPU: 989 TFLOP/s dense bf16",
    "training_utilisation": 0.35,  # model FLOPs utilisation of a full fine-tune
    "inference_utilisation": 0.05,  # sampling is bound by memory bandwidth, not FLOPs
    "training_bytes_per_parameter": 16,  # fp32 weights + gradients + AdamW moments (the loop's state today)
    "reference_bytes_per_parameter": 4,  # the base model kept in float32 for KL
    "checkpoint_bytes_per_parameter": 4,  # a float32 safetensors checkpoint
    "resume_bytes_per_parameter": 12,  # weights + AdamW moments
}
PEAK_FLOPS = 989e12


@dataclass
class Model:
    entry: ModelEntry
    available: str  # local / cached / hub (not on this machine)
    parameters: float | None
    parameters_from: str
    config: object | None  # the HF config, where it is here
    tokenizer: object | None


def _available(source: str) -> str:
    if Path(source).expanduser().exists():
        return "local"
    return "cached" if hub_cached(source) else "hub (not on this machine)"


def _read_model(entry: ModelEntry) -> Model:
    """What can be known of a model offline: its config (and exact parameter count), its tokenizer."""
    available = _available(entry.model)
    config = tok = None
    params, origin = (entry.parameters or None), ("preset" if entry.parameters else "unknown")
    folder = model_folder(entry.model)
    if folder is not None:
        if (folder / "model" / "config.json").is_file():
            folder = folder / "model"
        try:
            from transformers import AutoConfig, AutoTokenizer

            config = AutoConfig.from_pretrained(str(folder))
            counted = parameter_count(str(folder))  # exact, from the config on the meta device
            if counted is not None:
                params, origin = counted, "config"
            tok = AutoTokenizer.from_pretrained(str(folder))
        except Exception:  # noqa: BLE001 - a model plan cannot read is described by the preset alone
            pass
    return Model(entry, available, params, origin, config, tok)


def _data(cfg: Suite, models: list[Model]) -> tuple[dict, object | None]:
    """The data section of the plan, and the prepared data when the source is on this machine."""
    if not cfg.data.dataset:
        return {"files": {k: getattr(cfg, k) for k in ("positive", "negative", "alignment", "prompts")
                          if hasattr(cfg, k) and getattr(cfg, k)}}, None
    check_data(cfg.data)
    source, split, held, template = defaults(cfg.data)
    out = {"dataset": cfg.data.dataset, "source": source, "split": split, "heldout_split": held or None,
           "template": template, "filters": list(cfg.data.filters)}
    if source.startswith(HUB_PREFIX):
        out["available"] = "hub (read when run; plan downloads nothing)"
        return out, None
    out["available"] = "local"
    tok = models[0].tokenizer if template == "chat" else None
    prepared = prepare(cfg.data, tok)
    out.update(pools=prepared.record["pools"], prompts=len(prepared.prompts), rows=prepared.record["rows"])
    return out, prepared


def _tokens(records: list[dict], tok, max_length: int) -> int:
    return sum(min(len(encode_pair(tok, r["prompt"], r["response"], max_length).input_ids), max_length)
               for r in records)


def _train_tokens(pool: list[dict] | None, held: int, n: int, seeds, tok, max_length: int) -> tuple[int, bool]:
    """Input tokens of training on the first n examples of each seed's order (exact), or n x max_length."""
    if pool is None or tok is None:
        return n * max_length * len(seeds), False
    train = pool[: len(pool) - held]
    return sum(_tokens([train[i] for i in seed_order(len(train), s)[:n]], tok, max_length) for s in seeds), True


def _pair_tokens(pool: list[dict] | None, n: int, seeds, tok, max_length: int) -> tuple[int, bool]:
    """Input tokens of the first n pairs (both sides) of each seed's order, or 2 n max_length."""
    if pool is None or tok is None:
        return 2 * n * max_length * len(seeds), False
    sides = [{"prompt": r["prompt"], "response": r[k]} for r in pool for k in ("chosen", "rejected")]
    return sum(_tokens([sides[j] for i in seed_order(len(pool), s)[:n] for j in (2 * i, 2 * i + 1)], tok, max_length)
               for s in seeds), True


def _step(cfg, algorithm: str, pools: dict, side: str, n: int, runs: int, tok) -> dict:
    """One rebound step's work by its objective: training tokens (exact where the data is here), the reference
    pass of a preference objective, and the samples RL and on-policy pairs generate (bounds)."""
    from elasticity.train.preference import PREFERENCE
    from elasticity.train.rl import RL

    t, ev, pol, seeds = cfg.train, cfg.eval, cfg.policy, list(cfg.seeds)
    if algorithm in RL:
        completions = n * cfg.rl.num_generations * len(seeds)
        return {"training_tokens": completions * t.max_length * runs, "exact": False,
                "rl_generated_tokens": completions * pol.max_new_tokens * runs}
    if algorithm in PREFERENCE:
        half = pools.get("pairs")
        if half is not None:
            half = half[: len(half) // 2] if side == "positive" else half[len(half) // 2:]
        tokens, exact = _pair_tokens(None if cfg.on_policy else half, n, seeds, tok, t.max_length)
        out = {"training_tokens": tokens * runs, "exact": exact and not cfg.on_policy,
               "reference_tokens": tokens * runs if algorithm != "simpo" else 0}
        if cfg.on_policy:  # at least two samples per pair (prompts whose samples tie are skipped)
            out["on_policy_generated_tokens_at_least"] = 2 * n * len(seeds) * runs * pol.max_new_tokens
        return out
    tokens, exact = _train_tokens(pools.get(side), ev.pairs, n, seeds, tok, t.max_length)
    return {"training_tokens": tokens * runs, "exact": exact}


def _prompt_count(cfg, prepared) -> int | None:
    """Evaluation prompts: counted where the data is here; else the number the data section asks for."""
    if prepared is not None:
        return len(prepared.prompts)
    return cfg.data.prompts if cfg.data.dataset else None


def _rebound_stages(cfg, prepared, model: Model) -> tuple[list[dict], dict]:
    q1, q2 = sorted(set(cfg.q1)), sorted({0, *cfg.q2})
    seeds, t, ev, pol = list(cfg.seeds), cfg.train, cfg.eval, cfg.policy
    prompts = _prompt_count(cfg, prepared)
    prompts = min(prompts, ev.prompts) if prompts is not None and ev.prompts else prompts
    pools = prepared.pools if prepared else {}
    align = _step(cfg, cfg.align, pools, "positive", max(q1), 1, model.tokenizer)
    perturb = _step(cfg, cfg.perturb, pools, "negative", max(q2), len(q1), model.tokenizer)
    pos_tokens, neg_tokens = align["training_tokens"], perturb["training_tokens"]
    extra = sum(v for step in (align, perturb) for k, v in step.items() if k.endswith(("_tokens", "_at_least"))
                and k != "training_tokens")
    measures = 1 + len(seeds) * len(q1) * len(q2)
    gens = None if prompts is None else measures * prompts * pol.samples_per_prompt
    sequences = measures * (2 * ev.pairs + ev.docs)
    stages = [
        {"stage": "rebound-base", "runs": 1, "generations": None if prompts is None else prompts *
         pol.samples_per_prompt, "measured_sequences": 2 * ev.pairs + ev.docs},
        {"stage": "rebound-positive", "objective": cfg.align, "runs": len(seeds), "examples_each": max(q1),
         "checkpoints_each": len(q1), **align},
        {"stage": "rebound-negative", "objective": cfg.perturb, "runs": len(seeds) * len(q1),
         "examples_each": max(q2), "measurements_each": len(q2), **perturb},
        {"stage": "rebound", "runs": 1, "writes": "results.csv, metrics.csv, tables and figures"},
    ]
    totals = {"training_tokens": pos_tokens + neg_tokens, "measurements": measures, "generations": gens,
              "generated_tokens_at_most": None if gens is None else gens * pol.max_new_tokens,
              "measured_tokens_at_most": sequences * t.max_length * 2 + extra,  # the model and the base on
              # each, and the preference steps' reference pass and samples (RL's and on-policy pairs')
              "kept_checkpoints": len(seeds) * len(q1), "peak_run_checkpoints": len(q2) - 1}
    return stages, totals


def _resistance_stages(cfg, prepared, model: Model) -> tuple[list[dict], dict]:
    seeds, pol, n = list(cfg.seeds), cfg.policy, cfg.slices
    pool = prepared.pools.get("positive") if prepared else None
    examples = cfg.examples or (len(pool) if pool is not None else None)
    total_prompts = _prompt_count(cfg, prepared)
    if examples is None and cfg.data.dataset and adapter(cfg.data.dataset).rows:  # all of a split not here: its
        held = 0 if defaults(cfg.data)[2] else total_prompts or 0  # size on the card, less the held-out prompts
        examples = adapter(cfg.data.dataset).rows - held
    if total_prompts is not None and cfg.prompt_limit:
        total_prompts = min(total_prompts, cfg.prompt_limit)
    d_size = None if total_prompts is None else (total_prompts - cfg.eval.heldout_prompts) * pol.samples_per_prompt
    if examples is None:
        align_tokens, exact = None, False
    else:
        align_tokens, exact = _train_tokens(pool, 0, examples, seeds, model.tokenizer, cfg.align.max_length)
    paths = len(seeds) * n * (n - 1)
    path_tokens = None if d_size is None else paths * d_size * cfg.finetune.max_length
    gens = None if total_prompts is None else len(seeds) * (n * total_prompts + cfg.eval.heldout_prompts) * \
        pol.samples_per_prompt
    stages = [
        {"stage": "resistance-slices", "runs": len(seeds), "examples_each": examples, "slices": n,
         "training_tokens": align_tokens, "exact": exact, "generations": gens},
        {"stage": "resistance-path", "runs": paths, "examples_each": d_size, "training_tokens_at_most": path_tokens},
        {"stage": "resistance", "runs": 1, "writes": "table1.csv, pairs, controls, figures"},
    ]
    totals = {"training_tokens": None if align_tokens is None else align_tokens + (path_tokens or 0),
              "generations": gens, "generated_tokens_at_most": None if gens is None else gens * pol.max_new_tokens,
              "measured_tokens_at_most": None, "kept_checkpoints": len(seeds) * n, "peak_run_checkpoints": 1}
    return stages, totals


def _activation_bytes(config, batch: int, length: int, bf16: bool) -> float | None:
    """Activations kept for the backward pass, per layer s*b*h*(34 + 5*a*s/h) bytes at 16 bits (Korthikanti et
    al. 2022), without gradient checkpointing; fp32 doubles it."""
    if config is None:
        return None
    cfg = getattr(config, "text_config", None) or config
    h = getattr(cfg, "hidden_size", None) or getattr(cfg, "n_embd", None)
    layers = getattr(cfg, "num_hidden_layers", None) or getattr(cfg, "n_layer", None)
    heads = getattr(cfg, "num_attention_heads", None) or getattr(cfg, "n_head", None)
    if not (h and layers and heads):
        return None
    per_layer = length * batch * h * (34 + 5 * heads * length / h)
    return layers * per_layer * (1 if bf16 else 2)


def _resources(cfg, model: Model, totals: dict, scorer_params: float | None) -> dict:
    n = model.parameters
    if not n:
        return {"note": "parameter count unknown: give models[].parameters in the preset"}
    t = cfg.train if hasattr(cfg, "train") else cfg.align
    a = ASSUMPTIONS
    act = _activation_bytes(model.config, t.batch_size, t.max_length, t.bf16)
    memory = n * (a["training_bytes_per_parameter"] + a["reference_bytes_per_parameter"])
    memory += (scorer_params or 0) * 4 + (act or 0)
    disk = n * (totals["kept_checkpoints"] * a["checkpoint_bytes_per_parameter"] + totals["peak_run_checkpoints"] *
                (a["checkpoint_bytes_per_parameter"] + a["resume_bytes_per_parameter"]))
    train_flops = 6 * n * (totals["training_tokens"] or 0)
    infer_flops = 2 * n * ((totals["generated_tokens_at_most"] or 0) + (totals["measured_tokens_at_most"] or 0))
    seconds = train_flops / (PEAK_FLOPS * a["training_utilisation"]) + \
        infer_flops / (PEAK_FLOPS * a["inference_utilisation"])
    return {"gpu_memory_gib": round(memory / GIB, 1), "activations_included": act is not None,
            "disk_gib": round(disk / GIB, 1), "gpu_hours": round(seconds / 3600, 2)}


def _scorer(cfg) -> dict:
    s = cfg.scorer
    if s.name not in ("classifier", "score-model"):
        return {"name": s.name, "parameters": None}
    m = _read_model(ModelEntry(s.model))
    return {"name": s.name, "model": s.model, "available": m.available, "parameters": m.parameters}


def build_plan(cfg: Suite) -> dict:
    """The whole plan as plain data (what `--json` prints)."""
    check_suite(cfg, models_here=False)  # a plan says what is missing instead
    models = [_read_model(e) for e in entries(cfg)]
    data, prepared = _data(cfg, models)
    scorer = _scorer(cfg) if cfg.experiment == "rebound" or getattr(cfg, "score", False) else None
    stage_fn = _rebound_stages if cfg.experiment == "rebound" else _resistance_stages
    per_model = []
    for m in models:
        stages, totals = stage_fn(cfg, prepared, m)
        repo, revision = split_revision(m.entry.model)
        per_model.append({
            "model": m.entry.model, "label": m.entry.label or m.entry.model, "revision": revision,
            "commit": cached_commit(m.entry.model), "available": m.available, "parameters": m.parameters,
            "parameters_from": m.parameters_from, "pretraining_tokens": m.entry.tokens or None,
            "stages": stages, "totals": totals,
            "resources": _resources(cfg, m, totals, scorer and scorer.get("parameters")),
        })
    return {"experiment": cfg.experiment, "paper": cfg.paper, "data": data, "scorer": scorer,
            "models": per_model, "assumptions": ASSUMPTIONS, "config": to_dict(cfg)}


def _fmt(x) -> str:
    if x is None:
        return "?"
    if isinstance(x, float) and not x.is_integer():
        return f"{x:,.2f}"
    return f"{int(x):,}" if isinstance(x, (int, float)) and math.isfinite(x) else str(x)


def text_plan(plan: dict) -> str:
    lines = [f"plan: {plan['experiment']}" + (f" - {plan['paper']}" if plan["paper"] else "")]
    d = plan["data"]
    if "dataset" in d:
        lines.append(f"data: {d['dataset']} from {d['source']} (split {d['split']}, evaluation prompts from "
                     f"{d['heldout_split'] or 'the same split, held out by prompt'}; template {d['template']}): "
                     f"{d['available']}")
        if "pools" in d:
            lines.append("  pools: " + ", ".join(f"{k} {_fmt(v)}" for k, v in d["pools"].items())
                         + f"; {d['prompts']} evaluation prompts")
    if plan["scorer"]:
        s = plan["scorer"]
        lines.append(f"scorer: {s['name']}" + (f" {s['model']} ({s['available']}, {_fmt(s['parameters'])} "
                                               f"parameters)" if s.get("model") else ""))
    for m in plan["models"]:
        lines.append(f"model {m['label']}: {m['model']} ({m['available']}"
                     + (f", commit {m['commit'][:12]}" if m["commit"] else "")
                     + f"; {_fmt(m['parameters'])} parameters from {m['parameters_from']}"
                     + (f"; pre-trained on {_fmt(m['pretraining_tokens'])} tokens" if m["pretraining_tokens"] else "")
                     + ")")
        for s in m["stages"]:
            bound = "" if s.get("exact", True) else "<= "
            extra = ", ".join(f"{k.replace('_', ' ')} {bound if k == 'training_tokens' else ''}{_fmt(v)}"
                              for k, v in s.items() if k not in ("stage", "exact"))
            lines.append(f"  {s['stage']}: {extra}")
        r = m["resources"]
        if "note" in r:
            lines.append(f"  resources: {r['note']}")
        else:
            lines.append(f"  estimate: {r['gpu_memory_gib']} GiB GPU memory per process"
                         + ("" if r["activations_included"] else " (activations not included: config not here)")
                         + f", {r['disk_gib']} GiB disk at peak, {r['gpu_hours']} GPU-hours")
    lines.append("estimates assume " + ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in plan["assumptions"].items()))
    return "\n".join(lines)


def run(cfg: Suite, runs_root: Path) -> None:
    """Print the plan (human-readable, then the resolved config; or JSON). Writes nothing."""
    plan = build_plan(cfg)
    if cfg.json:
        print(json.dumps(plan, indent=2, default=str))
        return
    print(text_plan(plan))
    print("resolved config:")
    print(dump_yaml(cfg).rstrip())
