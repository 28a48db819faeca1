"""Sharded parameters (FSDP2): each process holds 1/N of the weights, gradients and optimizer state.

Launched with `accelerate launch --config_file configs/accelerate/fsdp2.yaml` (or `--use_fsdp --fsdp_version 2`),
the training loop shards the model itself with torch's `fully_shard`, on a GPU as on a CPU (gloo), so the code
that runs on a cluster is the code the tests run here. (Accelerate shards only on accelerators: on a CPU it would
fall back to data parallelism, and its own FSDP preparation would never be tested.)

Every forward of a sharded model is a collective: all processes run it, or none. So a sharded model is never
measured or saved by the main process alone: `gathered` all-gathers its weights into an ordinary copy on the main
process (the others get None), which is measured and written as a model of any other run would be.
"""

from __future__ import annotations

import os

import torch

from elasticity.errors import UserError
from elasticity.ranks import world_size

__all__ = ["check_launch", "gathered", "load_resume_state", "requested", "resume_state", "shard"]


def requested() -> bool:
    """True when the launch asked for FSDP (accelerate launch sets ACCELERATE_USE_FSDP from its config)."""
    return os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"


def check_launch(lora: bool = False, objectives: tuple[str, ...] = ()) -> None:
    """Refuse, in one line, the sharded launches this toolkit does not run (before anything is written): DeepSpeed,
    FSDP1, and under FSDP a LoRA run or a step other than sft (`objectives`: the run's step algorithms)."""
    if os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true":
        raise UserError("DeepSpeed is not supported: shard with configs/accelerate/fsdp2.yaml (FSDP2), or launch "
                        "with --multi_gpu (data parallel)")
    if not requested():
        return
    if os.environ.get("FSDP_VERSION", "1") != "2":
        raise UserError("FSDP1 is not supported: set fsdp_version: 2 in the accelerate config "
                        "(configs/accelerate/fsdp2.yaml)")
    if lora:
        raise UserError("LoRA with FSDP is not supported (a LoRA run fits one GPU): launch it with --multi_gpu")
    other = [o for o in objectives if o != "sft"]
    if other:
        raise UserError(f"FSDP shards sft steps only, and this run has a {other[0]} step: launch it with --multi_gpu")


def _layers(lm) -> list[torch.nn.Module]:
    """The repeated blocks to shard one by one: the classes a Hugging Face model names as never to be split."""
    names = set(getattr(lm, "_no_split_modules", None) or ())
    return [m for m in lm.modules() if type(m).__name__ in names]


def shard(lm, device: torch.device) -> None:
    """Shard `lm` in place over the launch's processes: each decoder layer, then the rest (embeddings, final norm,
    output head) as one unit. Weights move to `device` as shards; only one layer is whole at a time."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    if hasattr(lm, "peft_config"):
        raise UserError("LoRA with FSDP is not supported (a LoRA run fits one GPU): launch it with --multi_gpu")
    layers = _layers(lm)
    if not layers:
        raise UserError(f"{type(lm).__name__} names no layer class to shard by (_no_split_modules); launch with "
                        "--multi_gpu instead")
    mesh = init_device_mesh(device.type, (world_size(),))
    reshard = os.environ.get("FSDP_RESHARD_AFTER_FORWARD", "true").lower() == "true"
    for layer in layers:
        fully_shard(layer, mesh=mesh, reshard_after_forward=reshard)
    fully_shard(lm, mesh=mesh, reshard_after_forward=reshard)


def _full():
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, cpu_offload=True)


def gathered(lm, device: torch.device, is_main: bool):
    """An ordinary (unsharded) copy of sharded `lm` on the main process, on `device`, in the model's own dtype;
    None on the other processes. Every process must call it (it all-gathers the weights)."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    state = get_model_state_dict(lm, options=_full())  # the whole of it on rank 0 (CPU), empty elsewhere
    if not is_main:
        return None
    with torch.device("meta"):
        copy = type(lm)(lm.config)
    copy.load_state_dict(state, assign=True)
    for name, buffer in lm.named_buffers():  # buffers are never sharded; the state dict lacks the non-persistent
        owner, _, attr = name.rpartition(".")  # ones (rotary frequencies), still on the meta device here
        copy.get_submodule(owner)._buffers[attr] = buffer.detach().clone()
    if getattr(lm.config, "tie_word_embeddings", False):
        copy.tie_weights()  # assign=True gave the head its own tensor; tie it back to the embeddings
    copy.generation_config = lm.generation_config
    return copy.to(device).train(lm.training)


def resume_state(lm, optimizer) -> tuple[dict, dict]:
    """The whole model's and optimizer's state, keyed by parameter name, on the main process (empty elsewhere);
    a collective."""
    from torch.distributed.checkpoint.state_dict import get_state_dict

    return get_state_dict(lm, optimizer, options=_full())


def load_resume_state(lm, optimizer, model_state: dict, optimizer_state: dict) -> None:
    """Put the main process's full states (`resume_state`) back into the sharded model and optimizer; a collective
    (the other processes pass empty dicts and receive their shards)."""
    from torch.distributed.checkpoint import state_dict as dcp

    # one call each: torch's set_state_dict would skip the model on a process passing an empty model state
    options = dcp.StateDictOptions(full_state_dict=True, broadcast_from_rank0=True)
    dcp.set_model_state_dict(lm, model_state, options=options)
    dcp.set_optimizer_state_dict(lm, optimizer, optimizer_state, options=options)
