"""Sharded parameters with DeepSpeed ZeRO-3: each process holds 1/N of the weights, gradients and optimizer state.

Launched with `accelerate launch --config_file configs/accelerate/zero3.yaml`, the training loop hands its model and
optimizer to `deepspeed.initialize` itself, on GPUs as on a CPU (DeepSpeed's CPU accelerator over gloo), so the code
that runs on a cluster is the code the tests run here. The DeepSpeed config is built from the run's own settings
(`config`); accelerate's config says only that ZeRO-3 is wanted.

The loop keeps its own accumulation: with `managed_gradient_accumulation: false` every backward accumulates (each
micro-batch's gradient is reduce-scattered onto its shards as it is computed) and `step()` is the step's boundary,
so a step may hold any number of micro-batches, as in an unsharded run. Clipping is DeepSpeed's, over all shards.

DeepSpeed keeps float32 master weights, gradients and AdamW moments of every shard whatever the model's dtype, so a
run in bfloat16 weights trains as mixed precision here (unsharded and under FSDP2 it updates the bfloat16 weights
themselves), and its numbers differ from theirs; in float32 weights all three agree to rounding.

The resume state is DeepSpeed's own checkpoint (each process writes its shards, beside `resume.pt`), and a model
is read (measured, saved) as an ordinary copy gathered on the main process, one module at a time.
"""

from __future__ import annotations

import os
import shutil
from contextlib import nullcontext

import torch

from elasticity.errors import UserError
from elasticity.models.hf import whole_copy
from elasticity.runs import Run

SHARDS = "resume-zero3"  # beside resume.pt: DeepSpeed's checkpoint of the weights and optimizer, one folder a save


def check_environment() -> None:
    """Refuse, in one line, the DeepSpeed launches this toolkit does not run: a ZeRO stage other than 3, offloading,
    and a DeepSpeed config file (the run's settings make the config)."""
    env = os.environ.get
    stage = env("ACCELERATE_DEEPSPEED_ZERO_STAGE", "")
    if stage != "3":
        raise UserError(f"DeepSpeed ZeRO stage {stage or '(unset)'} is not supported: set zero_stage: 3 "
                        "(configs/accelerate/zero3.yaml), or shard with FSDP2 (configs/accelerate/fsdp2.yaml)")
    for key in ("ACCELERATE_DEEPSPEED_OFFLOAD_OPTIMIZER_DEVICE", "ACCELERATE_DEEPSPEED_OFFLOAD_PARAM_DEVICE"):
        if env(key, "none") not in ("", "none"):
            raise UserError(f"DeepSpeed offloading is not supported ({key.split('DEEPSPEED_')[1].lower()} is "
                            f"{env(key)}): set it to none, or train in bf16 weights or with LoRA to fit")
    if env("ACCELERATE_DEEPSPEED_CONFIG_FILE"):
        raise UserError("a deepspeed_config_file is not read (the run's settings make the DeepSpeed config): give "
                        "zero_stage: 3 in the accelerate config instead (configs/accelerate/zero3.yaml)")
    try:
        import deepspeed  # noqa: F401
    except ImportError:
        raise UserError("DeepSpeed is not installed: pip install deepspeed") from None


def config(batch_size: int, max_grad_norm: float | None, hidden_size: int) -> dict:
    """The DeepSpeed config of a run: ZeRO-3, the loop's own accumulation, clipping at `max_grad_norm`.

    The buckets are sized by the model's width as the Hugging Face Trainer's "auto" values size them (DeepSpeed's
    defaults hold up to 5e8 gradient elements in one bucket: 2 GB in float32 whatever the model), so that a
    process holds what FSDP2's would, plus a few layers' worth (`experiments.fsdp_memory` estimates both)."""
    return {
        "train_micro_batch_size_per_gpu": batch_size,  # bookkeeping only: the loop forms the micro-batches
        "gradient_accumulation_steps": 1,
        "managed_gradient_accumulation": False,  # every backward accumulates; step() is the boundary
        "gradient_clipping": max_grad_norm or 0.0,  # 0: no clipping
        "zero_optimization": {"stage": 3, "reduce_bucket_size": hidden_size**2,
                              "stage3_prefetch_bucket_size": int(0.9 * hidden_size**2),
                              "stage3_param_persistence_threshold": 10 * hidden_size},
        "steps_per_print": 2**31 - 1,  # the loop writes its own metrics
        "wall_clock_breakdown": False,
    }


class Zero3:
    """The loop's parallel strategy under DeepSpeed ZeRO-3 (see `train.sharding.DataParallel` for the interface)."""

    name = "zero3"

    def __init__(self, batch_size: int, max_grad_norm: float | None):
        self.batch_size, self.max_grad_norm = batch_size, max_grad_norm
        self.clips = max_grad_norm is not None

    def shard(self, objective, device) -> list[torch.nn.Parameter]:
        from elasticity.likelihood import use_own_forward

        self.config = config(self.batch_size, self.max_grad_norm, objective.lm.config.hidden_size)
        use_own_forward(objective.lm)  # the head's weight is gathered inside the model's own forward only
        return [p for p in objective.parameters() if p.requires_grad]

    def wrap(self, objective, optimizer):
        import deepspeed

        engine, wrapped, _, _ = deepspeed.initialize(model=objective, optimizer=optimizer, config=self.config)
        return engine, wrapped

    def accumulating(self, model, last: bool):
        return nullcontext()  # every backward accumulates; the step's reduction is step()

    def backward(self, model, loss: torch.Tensor) -> None:
        model.backward(loss)

    def step(self, model, optimizer, params, max_grad_norm: float | None) -> float | None:
        model.step()  # clips (config's gradient_clipping), steps, and zeroes the gradients
        norm = model.get_global_grad_norm() if self.clips else None
        return None if norm is None else float(norm)

    def reader(self, lm, device: torch.device, is_main: bool, marks: list[str]):
        return gathered(lm, device, is_main) if marks else None

    def resume_states(self, model, optimizer, run: Run, step: int) -> dict:
        """Write DeepSpeed's checkpoint of this step (every process its shards); the resume file names it."""
        tag = f"step-{step}"
        model.save_checkpoint(str(run.file(SHARDS)), tag=tag, save_latest=False)
        return {"deepspeed_tag": tag}

    def resume_written(self, run: Run, state: dict) -> None:
        """Once `resume.pt` names the new checkpoint, the older ones go (on the main process). DeepSpeed's scripts
        beside them (zero_to_fp32.py: the checkpoint as float32 weights) stay."""
        for old in run.file(SHARDS).iterdir():
            if old.is_dir() and old.name != state["deepspeed_tag"]:
                shutil.rmtree(old)

    def load_resume_states(self, model, optimizer, state: dict, run: Run, is_main: bool) -> None:
        model.load_checkpoint(str(run.file(SHARDS)), tag=state["deepspeed_tag"], load_optimizer_states=True,
                              load_lr_scheduler_states=False)


def gathered(lm, device: torch.device, is_main: bool):
    """An ordinary (unsharded) copy of ZeRO-3-sharded `lm` on the main process, on `device`; None on the others.
    Every process must call it: each module's weights are all-gathered in turn, so only one is whole at a time."""
    import deepspeed

    state = {}
    for prefix, module in lm.named_modules():
        own = list(module.named_parameters(recurse=False))
        if not own:
            continue
        with deepspeed.zero.GatheredParameters([p for _, p in own], modifier_rank=None):
            if is_main:
                state.update({f"{prefix}.{name}" if prefix else name: p.detach().to("cpu", copy=True)
                              for name, p in own})
    return whole_copy(lm, state, device) if is_main else None
