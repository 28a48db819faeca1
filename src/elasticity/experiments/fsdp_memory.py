"""GPU memory per process of a rebound sharded over N GPUs by FSDP2 (`train.sharding`): `elasticity plan --fsdp N`.

What changes from `memory.gpu_memory`'s unsharded estimate, part by part:

- weights, gradients, optimizer (and autocast copies): 1/N of them on each process (`shard_*`).
- fsdp_whole_weights: the parameters a process holds whole while it computes: two decoder layers (the one running
  and the next, gathered ahead) and the root unit (the embeddings, the head when it is not tied, the final norm),
  which stays whole from the forward to the end of the backward. fsdp_whole_gradients: a layer's and the root's
  whole gradients before they are reduce-scattered.
- fsdp_logits: a sharded model is scored by its own forward (`likelihood.use_own_forward`), so its whole logits of
  a micro-batch are made in the model's dtype, and their gradient beside them in the backward pass (the float32
  work is still chunked: `logits_chunk` stays; the chunked head's gradient temporary goes).
- measuring: only the main process measures, on a whole copy of the model gathered at each mark (`gathered`), next
  to its own shard of the weights and optimizer; the other processes wait.
"""

from __future__ import annotations

from elasticity.errors import UserError
from elasticity.experiments.memory import BYTES, Shape, accumulates, fits, micro_batch


def check(cfg, shards: int, lora: bool) -> None:
    """What a sharded run refuses (train.sharding.check_launch), said by the plan too."""
    if shards < 0:
        raise UserError(f"fsdp must be >= 0 (0: not sharded), got {shards}")
    if not shards:
        return
    if not hasattr(cfg, "train"):
        raise UserError("fsdp: resistance runs in one process; plan it without --fsdp")
    if lora:
        raise UserError("fsdp: LoRA with FSDP is not supported (a LoRA run fits one GPU); plan it without --fsdp")
    other = [o for o in (cfg.align, cfg.perturb) if o != "sft"]
    if other:
        raise UserError(f"fsdp: FSDP shards sft steps only, and this preset has a {other[0]} step")


def sharded_training(parts: dict, shards: int, parameters: float, shape: Shape | None, dtype: str, train) -> dict:
    """`parts` (memory.training_memory's unsharded estimate) for a run sharded over `shards` processes: the
    parts above added, `training` recomputed (the training peak of every process)."""
    e = BYTES[dtype]
    out = dict(parts)
    for part in ("weights", "gradients", "optimizer", "autocast_copies"):
        out[f"shard_{part}"] = parts[part] / shards
    root = layer = logits = 0.0
    if shape is not None:
        root = shape.vocab * shape.hidden * (1 if shape.tied else 2) + shape.hidden
        layer = (parameters - root) / shape.layers
        rows, width = micro_batch(train)
        logits = 2 * rows * width * shape.vocab * e
    out["fsdp_whole_weights"] = (2 * layer + root) * e
    out["fsdp_whole_gradients"] = (layer + root) * e
    out["fsdp_logits"] = logits
    state = out["shard_weights"] + out["shard_optimizer"] + out["shard_autocast_copies"] + out["fsdp_whole_weights"]
    at_head = (parts.get("activations", 0.0) + parts.get("logits_chunk", 0.0) + logits + out["fsdp_whole_gradients"]
               + (out["shard_gradients"] if accumulates(train) else 0.0))
    out["training"] = state + max(at_head, out["shard_gradients"] + out["fsdp_whole_gradients"])
    return out


def sharded(mem: dict, shards: int, parameters: float, config, cfg) -> dict:
    """`mem` (memory.gpu_memory's unsharded estimate of a rebound) sharded over `shards` processes: the training
    parts (`sharded_training`), measuring on the main process, `measuring_other` (what every other process holds
    meanwhile), total, peak and fits."""
    out = sharded_training(mem, shards, parameters, Shape.of(config), cfg.dtype, cfg.train)
    measure = mem["measuring"] - mem["weights"] - mem["optimizer"]  # what measuring adds beside the model state
    out["measuring_other"] = out["shard_weights"] + out["shard_optimizer"]
    out["measuring"] = out["measuring_other"] + mem["weights"] + measure
    out["total"] = max(out["training"], out["measuring"])
    out["peak"] = "training" if out["training"] >= out["measuring"] else "measuring"
    out["fits"] = fits(out["total"])
    return out
