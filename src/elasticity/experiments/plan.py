"""`elasticity plan --config PRESET [--json]`: what a preset would run, read and cost, without downloading.

Reads only what is on this machine: the preset, local data (prepared in memory to count its pools), and the
configs and tokenizers of models that are local folders or in the Hugging Face cache (for exact parameter
counts, from a model built on the meta device, and exact token counts). What is not here is named as such, and
the counts that need it become upper bounds (examples x max_length), marked "<=".

Resources are first-order estimates for the code as it is (`experiments.memory`, which names every part): GPU
memory per process = the model in `dtype`, its gradients and AdamW state in the trained parameters' dtype (or
LoRA's float32 adapters alone), activations (with or without gradient checkpointing), the output head's logits
chunk, or, when measuring, the trained model and its optimizer state beside the largest of a teacher-forced batch,
the scorer and generation; disk = the kept aligned checkpoints + one resume state (twice while it is replaced) +
the base's log-probabilities. A model not on this machine takes its architecture from `memory.KNOWN` where it is
listed. GPU-hours from 6N FLOPs a trained token (4N with LoRA, +2N with gradient checkpointing) and 2N a measured
or generated one, at an assumed utilisation of an H100.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from elasticity.config import dump_yaml, to_dict
from elasticity.data.adapters import adapter
from elasticity.data.prepare import check_data, defaults, prepare
from elasticity.data.sources import HUB_PREFIX
from elasticity.data.tokenize import encode_pair
from elasticity.experiments import fsdp_memory, memory, presets
from elasticity.experiments.plan_text import text_plan
from elasticity.experiments.presets import ModelEntry, Suite, check_suite, entries
from elasticity.experiments.skeleton import seed_order
from elasticity.hub import cached_commit, hub_cached, model_folder, split_revision
from elasticity.models.hf import parameter_count

__all__ = ["Config", "config_for", "run", "build_plan"]


@dataclass(frozen=True)
class ReboundPlan(presets.ReboundPreset):
    fsdp: int = 0  # GPU memory per process with the model sharded over this many GPUs (FSDP2:
    # configs/accelerate/fsdp2.yaml); 0 = not sharded, every process holds the whole model
    zero3: int = 0  # the same sharded by DeepSpeed ZeRO-3 (configs/accelerate/zero3.yaml), which keeps float32
    # master weights and moments of each shard


@dataclass(frozen=True)
class ResistancePlan(presets.ResistancePreset):
    fsdp: int = 0  # (resistance runs in one process: refused above 0)
    zero3: int = 0  # (the same)


Config = ReboundPlan  # the CLI's default class; `config_for` picks the one a file asks for
PLANS = {presets.ReboundPreset: ReboundPlan, presets.ResistancePreset: ResistancePlan}


def config_for(path: str | None) -> type:
    """The preset class a config file asks for, with the plan's own settings."""
    return PLANS[presets.config_for(path)]

GIB = memory.GIB
ASSUMPTIONS = {
    "gpu": "one H100-class GPU: 989 TFLOP/s dense bf16",
    "training_utilisation": 0.35,  # model FLOPs utilisation of a full fine-tune
    "inference_utilisation": 0.05,  # sampling is bound by memory bandwidth, not FLOPs
    "bytes_per_parameter": "weights, gradients and AdamW's two moments in dtype (float32 16, bfloat16 8); "
                           "adamw8bit's moments 2; LoRA adapters float32",
    "measuring": "the trained model and its optimizer state stay on the GPU; the scorer comes on only to score; "
                 "the base's log-probabilities are read back (the base is on the GPU in its own stage alone)",
    "runtime_gib": memory.RUNTIME_BYTES / GIB,  # CUDA context and allocator slack, added before a card fits
    "disk": "kept checkpoints in dtype (or the adapters) + one resume state, twice while it is replaced",
}
PEAK_FLOPS = 989e12


@dataclass
class Model:
    entry: ModelEntry
    available: str  # local / cached / hub (not on this machine)
    parameters: float | None
    parameters_from: str
    config: object | None  # the HF config, where it is here (or in memory.KNOWN)
    tokenizer: object | None
    architecture_from: str = "config"  # config / known (memory.KNOWN, the model not here) / unknown


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
    architecture = "config" if config is not None else "unknown"
    if config is None and (config := memory.known_config(entry.model)) is not None:
        architecture = "known"  # a published config.json of memory.KNOWN: the shapes, not the parameter count
        if not params:
            params, origin = float(memory.known_parameters(entry.model)), "known architecture"
    return Model(entry, available, params, origin, config, tok, architecture)


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
              "measured_tokens_at_most": (sequences + 2 * ev.pairs + ev.docs) * t.max_length + extra,  # the
              # model on each set, the base once (its log-probabilities are kept), and the preference steps'
              # reference pass and samples (RL's and on-policy pairs')
              # every Q1 per seed (the last is the positive run's final model); with keep_models every negative
              # run's Q2 checkpoints too
              "kept_checkpoints": len(seeds) * len(q1) + (len(seeds) * len(q1) * len(q2) if cfg.keep_models
                                                          else 0)}
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
              "measured_tokens_at_most": None, "kept_checkpoints": len(seeds) * n + (paths if cfg.keep_models else 0)}
    return stages, totals


def _gib(x: float) -> float:
    return round(x / GIB, 2)


def _resources(cfg, model: Model, totals: dict, scorer_params: float | None, prompt_tokens: int | None) -> dict:
    n = model.parameters
    if not n:
        return {"note": "parameter count unknown: give models[].parameters in the preset"}
    lora = None
    if cfg.lora.r > 0 and model.config is not None:  # exact: peft's own wrap on the meta device
        lora = memory.lora_parameters(model.config, cfg.lora, cfg.trust_remote_code)
    mem = memory.gpu_memory(n, model.config, cfg, lora, scorer_params, prompt_tokens)
    shards, sharding = fsdp_memory.check(cfg, cfg.lora.r > 0)
    if shards:
        mem = fsdp_memory.sharded(mem, shards, n, model.config, cfg, zero3=sharding == "zero3")
    disk = memory.disk(n, model.config, cfg, totals["kept_checkpoints"], lora)
    if sharding == "zero3":
        disk = fsdp_memory.zero3_disk(disk, n, cfg)
    trains = [cfg.train] if hasattr(cfg, "train") else [cfg.align, cfg.finetune]
    per_token = (4 if lora else 6) + (2 if any(t.gradient_checkpointing for t in trains) else 0)  # FLOPs / N
    train_flops = per_token * n * (totals["training_tokens"] or 0)
    infer_flops = 2 * n * ((totals["generated_tokens_at_most"] or 0) + (totals["measured_tokens_at_most"] or 0))
    a = ASSUMPTIONS
    seconds = train_flops / (PEAK_FLOPS * a["training_utilisation"]) + \
        infer_flops / (PEAK_FLOPS * a["inference_utilisation"])
    parts = {k: _gib(v) for k, v in mem.items() if isinstance(v, float | int) and not isinstance(v, bool)}
    return {"gpu_memory_gib": round(mem["total"] / GIB, 1), "gpu_memory": parts, "peak": mem["peak"], "shards": shards,
            "sharding": sharding or None,
            "fits": mem["fits"], "lora_parameters": lora, "prompt_tokens": prompt_tokens,
            "architecture_from": model.architecture_from,
            "activations_included": model.config is not None, "disk_gib": round(disk["total"] / GIB, 1),
            "disk": {k: _gib(v) for k, v in disk.items()}, "kept_checkpoints": totals["kept_checkpoints"],
            "gpu_hours": round(seconds / 3600, 2)}


def _scorer(cfg) -> dict:
    s = cfg.scorer
    if s.name not in ("classifier", "score-model"):
        return {"name": s.name, "parameters": None}
    m = _read_model(ModelEntry(s.model))
    return {"name": s.name, "model": s.model, "available": m.available, "parameters": m.parameters,
            "parameters_from": m.parameters_from}


def build_plan(cfg: Suite) -> dict:
    """The whole plan as plain data (what `--json` prints)."""
    check_suite(cfg, models_here=False)  # a plan says what is missing instead
    fsdp_memory.check(cfg, cfg.lora.r > 0)
    models = [_read_model(e) for e in entries(cfg)]
    data, prepared = _data(cfg, models)
    scorer = _scorer(cfg) if cfg.experiment == "rebound" or getattr(cfg, "score", False) else None
    stage_fn = _rebound_stages if cfg.experiment == "rebound" else _resistance_stages
    per_model = []
    for m in models:
        stages, totals = stage_fn(cfg, prepared, m)
        prompt_tokens = None  # the longest evaluation prompt, where the data and tokenizer are here
        if prepared is not None and m.tokenizer is not None and prepared.prompts:
            prompt_tokens = max(len(m.tokenizer(p)["input_ids"]) for p in prepared.prompts)
        repo, revision = split_revision(m.entry.model)
        per_model.append({
            "model": m.entry.model, "label": m.entry.label or m.entry.model, "revision": revision,
            "commit": cached_commit(m.entry.model), "available": m.available, "parameters": m.parameters,
            "parameters_from": m.parameters_from, "pretraining_tokens": m.entry.tokens or None,
            "stages": stages, "totals": totals,
            "resources": _resources(cfg, m, totals, scorer and scorer.get("parameters"), prompt_tokens),
        })
    return {"experiment": cfg.experiment, "paper": cfg.paper, "data": data, "scorer": scorer,
            "models": per_model, "assumptions": ASSUMPTIONS, "config": to_dict(cfg)}


def run(cfg: Suite, runs_root: Path) -> None:
    """Print the plan (human-readable, then the resolved config; or JSON). Writes nothing."""
    plan = build_plan(cfg)
    if cfg.json:
        print(json.dumps(plan, indent=2, default=str))
        return
    print(text_plan(plan))
    print("resolved config:")
    print(dump_yaml(cfg).rstrip())
