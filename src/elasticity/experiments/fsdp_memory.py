"""GPU memory per process of a rebound sharded over N GPUs by FSDP2 (`train.sharding`) or DeepSpeed ZeRO-3
(`train.zero3`): `elasticity plan --fsdp N` / `--zero3 N`.

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

ZeRO-3 holds the same, and more: DeepSpeed keeps float32 master weights and AdamW moments of each shard whatever the
model's dtype (zero3_master_weights, a float32 `shard_optimizer`), casts the step's gradient shard to float32 beside
it at the step (zero3_master_gradients), and has gradient and prefetch buckets of ~1.9 hidden^2 elements
(zero3_buckets, the sizes `train.zero3.config` gives). In float32 weights there is no master copy.
"""

from __future__ import annotations

from elasticity.errors import UserError
from elasticity.experiments.memory import BYTES, Shape, accumulates, fits, micro_batch


def check(cfg, lora: bool) -> tuple[int, str]:
    """(processes, "fsdp2" or "zero3"; 0 and "" when not sharded) from the plan's --fsdp / --zero3, refusing what a
    sharded run refuses (train.sharding.check_launch)."""
    for key in ("fsdp", "zero3"):
        if getattr(cfg, key) < 0:
            raise UserError(f"{key} must be >= 0 (0: not sharded), got {getattr(cfg, key)}")
    if cfg.fsdp and cfg.zero3:
        raise UserError("fsdp and zero3 are two ways to shard one run: give one of them")
    shards, key = (cfg.zero3, "zero3") if cfg.zero3 else (cfg.fsdp, "fsdp")
    if not shards:
        return 0, ""
    name = {"fsdp": "FSDP", "zero3": "DeepSpeed ZeRO-3"}[key]
    if not hasattr(cfg, "train"):
        raise UserError(f"{key}: resistance runs in one process; plan it without --{key}")
    if lora:
        raise UserError(f"{key}: LoRA with {name} is not supported (a LoRA run fits one GPU); plan it without --{key}")
    other = [o for o in (cfg.align, cfg.perturb) if o != "sft"]
    if other:
        raise UserError(f"{key}: {name} shards sft steps only, and this preset has a {other[0]} step")
    return shards, {"fsdp": "fsdp2", "zero3": "zero3"}[key]


def sharded_training(parts: dict, shards: int, parameters: float, shape: Shape | None, dtype: str, train,
                     zero3: bool = False) -> dict:
    """`parts` (memory.training_memory's unsharded estimate) for a run sharded over `shards` processes by FSDP2 (or
    ZeRO-3): the parts above added, `training` recomputed (the training peak of every process)."""
    e = BYTES[dtype]
    out = dict(parts)
    for part in ("weights", "gradients", "optimizer", "autocast_copies"):
        out[f"shard_{part}"] = parts[part] / shards
    master = zero3 and dtype != "float32"
    out["zero3_master_weights"] = 4 * parameters / shards if master else 0.0
    out["zero3_master_gradients"] = 4 * parameters / shards if master else 0.0
    if master and train.optimizer == "adamw":
        out["shard_optimizer"] = 8 * parameters / shards  # two float32 moments
    out["zero3_buckets"] = 1.9 * shape.hidden**2 * e if zero3 and shape is not None else 0.0
    root = layer = logits = 0.0
    if shape is not None:
        root = shape.vocab * shape.hidden * (1 if shape.tied else 2) + shape.hidden
        layer = (parameters - root) / shape.layers
        rows, width = micro_batch(train)
        logits = 2 * rows * width * shape.vocab * e
    out["fsdp_whole_weights"] = (2 * layer + root) * e
    out["fsdp_whole_gradients"] = (layer + root) * e
    out["fsdp_logits"] = logits
    state = (out["shard_weights"] + out["shard_optimizer"] + out["shard_autocast_copies"] + out["fsdp_whole_weights"]
             + out["zero3_master_weights"] + out["zero3_buckets"])
    at_head = (parts.get("activations", 0.0) + parts.get("logits_chunk", 0.0) + logits + out["fsdp_whole_gradients"]
               + (out["shard_gradients"] if accumulates(train) else 0.0))
    at_step = out["shard_gradients"] + max(out["fsdp_whole_gradients"], out["zero3_master_gradients"])
    out["training"] = state + max(at_head, at_step)
    return out


def sharded(mem: dict, shards: int, parameters: float, config, cfg, zero3: bool = False) -> dict:
    """`mem` (memory.gpu_memory's unsharded estimate of a rebound) sharded over `shards` processes: the training
    parts (`sharded_training`), measuring on the main process, `measuring_other` (what every other process holds
    meanwhile), total, peak and fits."""
    out = sharded_training(mem, shards, parameters, Shape.of(config), cfg.dtype, cfg.train, zero3)
    measure = mem["measuring"] - mem["weights"] - mem["optimizer"]  # what measuring adds beside the model state
    out["measuring_other"] = out["shard_weights"] + out["shard_optimizer"] + out["zero3_master_weights"]
    out["measuring"] = out["measuring_other"] + mem["weights"] + measure
    out["total"] = max(out["training"], out["measuring"])
    out["peak"] = "training" if out["training"] >= out["measuring"] else "measuring"
    out["fits"] = fits(out["total"])
    return out


def zero3_disk(disk: dict, parameters: float, cfg) -> dict:
    """`disk` (memory.disk) with ZeRO-3's resume state: DeepSpeed's checkpoint holds each shard's float32 master
    weights and AdamW moments, 12 bytes a parameter whatever the model's dtype (its module file is small)."""
    optimizer = 2 * parameters if cfg.train.optimizer == "adamw8bit" else 8 * parameters
    out = dict(disk, resume_state=4 * parameters + optimizer, resume_replacement=4 * parameters + optimizer)
    out["total"] = sum(v for k, v in out.items() if k != "total")
    return out
