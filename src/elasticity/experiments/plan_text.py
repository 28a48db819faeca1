"""`elasticity plan`'s text: the plan (`plan.build_plan`'s data) as lines a person reads."""

from __future__ import annotations

import math


def _fmt(x) -> str:
    if x is None:
        return "?"
    if isinstance(x, float) and not x.is_integer():
        return f"{x:,.2f}"
    return f"{int(x):,}" if isinstance(x, (int, float)) and math.isfinite(x) else str(x)


def _parts(parts: dict, names: tuple[str, ...]) -> str:
    return ", ".join(f"{k.replace('_', ' ')} {parts[k]}" for k in names if parts.get(k))


def _resource_lines(r: dict, runtime_gib: float) -> list[str]:
    if "note" in r:
        return [f"  resources: {r['note']}"]
    g, d = r["gpu_memory"], r["disk"]
    shapes = {"config": "", "known": " (architecture from memory.KNOWN: the model is not here)",
              "unknown": " (activations, logits and generation not included: no config here)"}
    fits = ", ".join(f"{k} {'yes' if v else 'no'}" for k, v in r["fits"].items())
    sharded = r.get("shards", 0)
    trained = (("shard_weights", "shard_gradients", "shard_optimizer", "shard_autocast_copies", "zero3_master_weights",
                "zero3_master_gradients", "zero3_buckets", "fsdp_whole_weights", "fsdp_whole_gradients", "fsdp_logits",
                "activations", "logits_chunk") if sharded else
               ("weights", "gradients", "optimizer", "autocast_copies", "activations", "logits_chunk",
                "head_gradient_temporary"))
    lines = [f"  GPU memory per process: {r['gpu_memory_gib']} GiB at the {r['peak']} peak"
             + (f", sharded over {sharded} GPUs ({'ZeRO-3' if r.get('sharding') == 'zero3' else 'FSDP2'}; the main "
                "process, which measures)" if sharded else "")
             + shapes[r["architecture_from"]],
             f"    training {g['training']} GiB: " + _parts(g, trained)
             + (f" (LoRA: {r['lora_parameters']:,} trained parameters)" if r["lora_parameters"] else "")
             + (f"; an RL step through TRL {g['rl_training']} GiB: the model state, "
                + _parts(g, ("rl_reference", "rl_activations", "rl_logits")) + " (bound)" if g.get("rl_training")
                else ""),
             (f"    measuring {g['measuring']} GiB: its shard of the model state {g['measuring_other']} (all the other "
              f"processes hold meanwhile), a whole copy of the model {g['weights']} and the largest "
              if sharded else
              f"    measuring {g['measuring']} GiB: the trained model (a rebound's optimizer state too) and the "
              "largest ")
             + f"of: a teacher-forced batch {g['teacher_forced']}"
             + (f" with a second model {g['reference']}" if g.get("reference") else "")
             + (f" and the base's log-probabilities {g['base_cache']}" if g.get("base_cache") else "")
             + f", the scorer {g['scorer']}, generation {g['generation']}"
             + ("" if r["prompt_tokens"] else " (prompts <= max_length tokens: the data is not here)"),
             f"    fits {'each' if sharded else 'one'} GPU (with {runtime_gib} GiB for the CUDA "
             f"runtime): {fits}",
             f"  disk at peak: {r['disk_gib']} GiB: {r['kept_checkpoints']} kept checkpoints {d['kept_checkpoints']}"
             f" GiB + a resume state {d['resume_state']} GiB (x2 while it is replaced)"
             + (f" + the base's log-probabilities <= {d['base_logprobs']} GiB" if d.get("base_logprobs") else "")
             + "; measurements negligible",
             f"  GPU-hours: {r['gpu_hours']}"]
    return lines


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
        lines += _resource_lines(m["resources"], plan["assumptions"]["runtime_gib"])
    lines.append("estimates assume " + ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in plan["assumptions"].items()))
    return "\n".join(lines)
