"""The processes of `accelerate launch` (or torchrun): which one writes, and a barrier for them all.

Under one process every function here is trivial. Under several, every rank runs the same experiment code: a
stage that trains runs on every rank (the loop shares its steps out, DDP sums the gradients), while everything
else (measuring, scoring, writing a file) is done by the main process alone as the others wait at `barrier`.
So a result is written once, and a run with N processes computes what one process accumulating N micro-batches
computes.
"""

from __future__ import annotations

import os


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main() -> bool:
    """False on the other ranks of a multi-process launch: they follow their main process."""
    return int(os.environ.get("RANK", "0")) == 0


def no_accelerator() -> bool:
    """True on a CPU-only machine: accelerate then needs cpu=True to set up multi-process (gloo) training."""
    import torch

    current = getattr(getattr(torch, "accelerator", None), "current_accelerator", None)
    return current() is None if current else not torch.cuda.is_available()


def setup() -> None:
    """Join the launch's process group before any model is loaded, so that each rank's "cuda" is its own local
    GPU (accelerate sets the current device) and `barrier` can be used; nothing under one process."""
    if world_size() > 1:
        from accelerate import PartialState

        PartialState(cpu=no_accelerator())


def barrier() -> None:
    """Wait until every rank is here (nothing under one process)."""
    if world_size() > 1:
        from accelerate import PartialState

        PartialState(cpu=no_accelerator()).wait_for_everyone()
