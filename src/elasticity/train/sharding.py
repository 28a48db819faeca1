"""How the loop spreads a run over its processes: data parallel (DDP), or parameters sharded by FSDP2 or ZeRO-3.

Each is a strategy object with one interface (`DataParallel`'s docstring), so the loop reads the same for all three.
Launched with `accelerate launch --config_file configs/accelerate/fsdp2.yaml` (or `--use_fsdp --fsdp_version 2`),
the loop shards the model itself with torch's `fully_shard`; with `configs/accelerate/zero3.yaml` it hands it to
DeepSpeed (`train.zero3`). Both run on a GPU as on a CPU (gloo), so the code that runs on a cluster is the code the
tests run here. (Accelerate shards only on accelerators: on a CPU it would fall back to data parallelism, and its
own sharded preparation would never be tested.)

Every forward of a sharded model is a collective: all processes run it, or none. So a sharded model is never
measured or saved by the main process alone: the strategy's `reader` all-gathers its weights into an ordinary copy
on the main process (the others get None), which is measured and written as a model of any other run would be.
"""

from __future__ import annotations

import os
from contextlib import nullcontext

import torch

from elasticity.errors import UserError
from elasticity.models.hf import whole_copy
from elasticity.ranks import world_size

__all__ = ["DataParallel", "Fsdp2", "check_launch", "gathered", "launched", "shard", "strategy"]

NAMES = {"fsdp2": "FSDP", "zero3": "DeepSpeed ZeRO-3"}


def launched() -> str:
    """The sharding the launch asked for: "zero3", "fsdp2", or "" (data parallel); accelerate launch sets these
    variables from its config."""
    if os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true":
        return "zero3"
    return "fsdp2" if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true" else ""


def check_launch(lora: bool = False, objectives: tuple[str, ...] = ()) -> None:
    """Refuse, in one line, the sharded launches this toolkit does not run (before anything is written): FSDP1,
    DeepSpeed other than plain ZeRO-3, and when sharded a LoRA run or a step other than sft (`objectives`: the run's
    step algorithms)."""
    kind = launched()
    if not kind:
        return
    if kind == "zero3":
        from elasticity.train.zero3 import check_environment

        check_environment()
    elif os.environ.get("FSDP_VERSION", "1") != "2":
        raise UserError("FSDP1 is not supported: set fsdp_version: 2 in the accelerate config "
                        "(configs/accelerate/fsdp2.yaml)")
    if lora:
        raise UserError(f"LoRA with {NAMES[kind]} is not supported (a LoRA run fits one GPU): launch it with "
                        "--multi_gpu")
    other = [o for o in objectives if o != "sft"]
    if other:
        raise UserError(f"{NAMES[kind]} shards sft steps only, and this run has a {other[0]} step: launch it with "
                        "--multi_gpu")


def strategy(accelerator, batch_size: int, max_grad_norm: float | None):
    """The launch's strategy: `DataParallel`, `Fsdp2` or `train.zero3.Zero3`."""
    kind = launched()
    if kind == "zero3":
        from elasticity.train.zero3 import Zero3

        return Zero3(batch_size, max_grad_norm)
    return Fsdp2() if kind == "fsdp2" else DataParallel(accelerator)


class DataParallel:
    """Every process holds the whole model; accelerate's DDP wrapper averages the gradients.

    The interface of every strategy, in the order the loop calls it:
    - `shard(objective, device)`: shard the model in place; the trainable parameters (the optimizer's).
    - `wrap(objective, optimizer)`: (the model to call, the optimizer to step).
    - `accumulating(model, last)`: the context of a micro-batch's forward and backward; `last` ends the step.
    - `backward(model, loss)`, then once a step `step(model, optimizer, params, max_grad_norm)`: clip, step and
      zero the gradients; the gradient norm before clipping (None without clipping).
    - `reader(lm, device, is_main, marks)`: the model to measure and save after a step (None where there is none).
    - `resume_states(model, optimizer, run, step)` (every process) / `load_resume_states(model, optimizer, state,
      run, is_main)`: a sharded run's entries in the resume file; `resume_written(run, state)` after it is.
    """

    name = ""

    def __init__(self, accelerator):
        self.accelerator = accelerator

    def shard(self, objective, device) -> list[torch.nn.Parameter]:
        return [p for p in objective.parameters() if p.requires_grad]

    def wrap(self, objective, optimizer):
        return self.accelerator.prepare(objective, optimizer)

    def accumulating(self, model, last: bool):
        return nullcontext() if last else self.accelerator.no_sync(model)

    def backward(self, model, loss: torch.Tensor) -> None:
        self.accelerator.backward(loss)

    def step(self, model, optimizer, params, max_grad_norm: float | None) -> float | None:
        norm = None if max_grad_norm is None else float(self.accelerator.clip_grad_norm_(params, max_grad_norm))
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return norm

    def reader(self, lm, device: torch.device, is_main: bool, marks: list[str]):
        return lm


class Fsdp2(DataParallel):
    """Parameters sharded by torch's `fully_shard` (FSDP2), one decoder layer at a time."""

    name = "fsdp2"

    def __init__(self):
        super().__init__(None)

    def shard(self, objective, device) -> list[torch.nn.Parameter]:
        from elasticity.likelihood import use_own_forward

        shard(objective.lm, device)
        use_own_forward(objective.lm)  # its root unit gathers the embeddings and the head in its own forward only
        return [p for p in objective.parameters() if p.requires_grad]  # the shards

    def wrap(self, objective, optimizer):
        return objective, optimizer  # no data-parallel wrapper: FSDP reduce-scatters the shards' gradients

    def accumulating(self, model, last: bool):
        model.lm.set_requires_gradient_sync(last)
        return nullcontext()

    def backward(self, model, loss: torch.Tensor) -> None:
        loss.backward()

    def step(self, model, optimizer, params, max_grad_norm: float | None) -> float | None:
        norm = None
        if max_grad_norm is not None:  # the norm of all shards together, as one process would have it
            total = torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
            norm = float(total.full_tensor() if hasattr(total, "full_tensor") else total)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return norm

    def reader(self, lm, device: torch.device, is_main: bool, marks: list[str]):
        return gathered(lm, device, is_main) if marks else None

    def resume_states(self, model, optimizer, run, step: int) -> dict:
        """The whole model's and optimizer's state, by parameter name, on the main process; a collective."""
        from torch.distributed.checkpoint.state_dict import get_state_dict

        weights, optimizer_state = get_state_dict(model.lm, optimizer, options=_full())
        return {"model": weights, "optimizer": optimizer_state}

    def resume_written(self, run, state: dict) -> None:
        pass

    def load_resume_states(self, model, optimizer, state: dict, run, is_main: bool) -> None:
        """Put the main process's full states back into the shards; a collective (the other processes pass empty
        dicts and receive their shards)."""
        from torch.distributed.checkpoint import state_dict as dcp

        # one call each: torch's set_state_dict would skip the model on a process passing an empty model state
        options = dcp.StateDictOptions(full_state_dict=True, broadcast_from_rank0=True)
        dcp.set_model_state_dict(model.lm, state["model"] if is_main else {}, options=options)
        dcp.set_optimizer_state_dict(model.lm, optimizer, state["optimizer"] if is_main else {}, options=options)


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
    """An ordinary (unsharded) copy of FSDP-sharded `lm` on the main process, on `device`, in the model's own dtype;
    None on the other processes. Every process must call it (it all-gathers the weights)."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    state = get_model_state_dict(lm, options=_full())  # the whole of it on rank 0 (CPU), empty elsewhere
    return whole_copy(lm, state, device) if is_main else None
