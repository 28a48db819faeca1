"""What a training run writes to disk: model checkpoints and its one resume state.

A checkpoint is a model folder (safetensors in the model's own dtype; a peft model writes its adapter alone) with
its tokenizer and progress.json. A run keeps at most one resume state, `resume.pt`, replaced at each save
(written beside it first, so a kill never leaves half of one): the weights, the optimizer and scheduler, the
progress and every random generator's state, as tensors and plain values only. (Under ZeRO-3 the weights and the
optimizer are DeepSpeed's own checkpoint, in `resume-zero3/`, which `resume.pt` names.)
"""

from __future__ import annotations

import random
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from elasticity.errors import UserError
from elasticity.files import write_json
from elasticity.models.hf import quiet_loading
from elasticity.models.spec import save_model
from elasticity.runs import Run
from elasticity.train.zero3 import SHARDS

RESUME = "resume.pt"  # a run's resume state: tensors and plain values only


@dataclass
class Progress:
    step: int = 0
    examples: int = 0
    tokens: int = 0  # input tokens processed (padding excluded)


def write_checkpoint(lm, tok, path: Path, progress: dict) -> None:
    """A model folder (safetensors in the model's own dtype; a peft model's adapter alone), its tokenizer and
    progress.json, appearing whole or not at all."""
    quiet_loading()  # "Writing model shards" bars would bury the training bar
    tmp = path.with_name(path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    save_model(lm, tmp)
    if tok is not None:
        tok.save_pretrained(tmp)
    write_json(tmp / "progress.json", progress)
    shutil.rmtree(path, ignore_errors=True)
    tmp.rename(path)


def save_checkpoint(lm, tok, path: Path, accelerator, progress: Progress) -> None:
    """The main process writes `lm` (the others may pass None) while the others wait."""
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        write_checkpoint(lm, tok, path, vars(progress))
    accelerator.wait_for_everyone()


def _is_peft(lm) -> bool:
    return hasattr(lm, "peft_config")


def _trained_weights(lm) -> dict:
    """The weights a resumed run cannot rebuild: all of them, or a LoRA model's trained adapters alone (its frozen
    base is reloaded from its source, which at 7B saves ~13 GB a resume state)."""
    if not _is_peft(lm):
        return lm.state_dict()
    trained = {name for name, p in lm.named_parameters() if p.requires_grad}
    return {k: v for k, v in lm.state_dict().items() if k in trained}


def save_resume(run: Run, model, optimizer, scheduler, progress: Progress, accelerator, parallel) -> None:
    """Everything a resumed run needs, as tensors and plain Python values only (read back without pickle's
    power to run code: `torch.load(weights_only=True)`). A sharded run's states come from its strategy
    (`train.sharding`): gathered whole by parameter name onto the main process (FSDP2), or DeepSpeed's checkpoint
    of the shards (ZeRO-3)."""
    lm = accelerator.unwrap_model(model).lm
    sharded = parallel.resume_states(model, optimizer, run, progress.step) if parallel.name else {}
    if not accelerator.is_main_process:
        return
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {
        "sharded": parallel.name or False,
        "model": None if parallel.name else _trained_weights(lm),
        "optimizer": None if parallel.name else optimizer.state_dict(),
        **sharded,
        "scheduler": scheduler.state_dict(),
        "progress": vars(progress).copy(),
        "rng": {"torch": torch.get_rng_state(), "python": random.getstate(),
                "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss)]},
    }
    tmp = run.file("resume.pt.tmp")
    torch.save(state, tmp)
    tmp.replace(run.file(RESUME))
    if parallel.name:
        parallel.resume_written(run, state)


def drop_resume(run: Run) -> None:
    """Remove a finished run's resume state (the main process)."""
    run.file(RESUME).unlink(missing_ok=True)
    shutil.rmtree(run.file(SHARDS), ignore_errors=True)


def _written_by(state: dict) -> str:
    sharded = state.get("sharded", False)
    return {True: "fsdp2", False: ""}.get(sharded, sharded)  # True: an FSDP2 state of the first sharded release


def load_resume(run: Run, model, optimizer, scheduler, accelerator, parallel) -> Progress:
    try:  # memory-mapped: under FSDP every process reads its progress, and only the main one the weights
        state = torch.load(run.file(RESUME), map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # noqa: BLE001 - whatever the file is, it is not a resume state of ours
        raise UserError(f"{run.file(RESUME)} is not a resume state this toolkit wrote (it holds more than tensors "
                        "and plain values, and is not unpickled); delete it to start the stage over") from None
    lm = accelerator.unwrap_model(model).lm
    if _written_by(state) != parallel.name:
        how = {"": "an unsharded", "fsdp2": "an FSDP2", "zero3": "a ZeRO-3"}
        raise UserError(f"{run.file(RESUME)} was written by {how.get(_written_by(state), 'another')} run: resume it "
                        "launched as it was, or delete it to start the stage over")
    if parallel.name:
        parallel.load_resume_states(model, optimizer, state, run, accelerator.is_main_process)
        return _restore_rest(state, scheduler)
    missing, unexpected = lm.load_state_dict(state["model"], strict=not _is_peft(lm))
    trained = {name for name, p in lm.named_parameters() if p.requires_grad}
    if unexpected or trained & set(missing):  # a LoRA state holds the trained weights, and only those may be missing
        raise UserError(f"{run.file(RESUME)} does not fit this model (its weights differ in name); delete it to "
                        "start the stage over")
    optimizer.load_state_dict(state["optimizer"])
    return _restore_rest(state, scheduler)


def _restore_rest(state: dict, scheduler) -> Progress:
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["rng"]["torch"])
    kind, keys, pos, has_gauss, gauss = state["rng"]["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    random.setstate(tuple(tuple(x) if isinstance(x, list) else x for x in state["rng"]["python"]))
    return Progress(**state["progress"])
