"""The base model's log-probabilities on rebound's fixed measuring sets, kept on disk: computed once, read back at
every grid point, so that a large model's base is never in memory beside the model being trained.

KL to the base at a grid point needs the base's full next-token distribution at every target position of the
held-out pairs and texts. These never change, so the base stage writes them, chunk by chunk as the kernel makes
them (`likelihood.token_scores`' `reference_cache`), as float32 safetensors:

    rebound-base-<h>/base_logprobs/<set>/<batch start>/<chunk offset>.safetensors
    rebound-base-<h>/base_logprobs/<set>/complete        written once every batch of the set is there

The base stage's name covers everything they depend on (the base model, the sets, their tokenisation and
batching, the kernel's code), so they are valid wherever that stage is. A set without its `complete` marker (an
interrupted write) is removed and computed again with the base. At 7B (vocabulary 32,000) rebound's default
sets take about 15 GB; float32 because KL is a small difference of log-probabilities.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

COMPLETE = "complete"


class _Batch:
    """One batch's chunks, keyed by chunk offset (the mapping `token_scores` reads and fills)."""

    def __init__(self, folder: Path):
        self.folder = folder

    def _path(self, offset: int) -> Path:
        return self.folder / f"{offset}.safetensors"

    def __contains__(self, offset: int) -> bool:
        return self._path(offset).is_file()

    def __getitem__(self, offset: int) -> torch.Tensor:
        return load_file(str(self._path(offset)))["logq"]

    def __setitem__(self, offset: int, logq: torch.Tensor) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        tmp = self.folder / f"{offset}.tmp"
        save_file({"logq": logq.detach().float().cpu().contiguous()}, str(tmp))
        tmp.replace(self._path(offset))


class DiskSet:
    """One measuring set's batches (the mapping `teacher_forced`'s `cache` takes: batch start -> `_Batch`)."""

    def __init__(self, folder: Path):
        self.folder = folder
        if not self.complete:  # an interrupted write: start the set over
            shutil.rmtree(folder, ignore_errors=True)

    @property
    def complete(self) -> bool:
        return (self.folder / COMPLETE).is_file()

    def setdefault(self, start: int, _default) -> _Batch:
        return _Batch(self.folder / str(start))

    def finish(self) -> None:
        """Mark the set whole (after a `teacher_forced` call over all of it returned)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        (self.folder / COMPLETE).write_text("")


def disk_bytes(positions: int, vocab: int) -> int:
    """What the cache of `positions` target positions takes on disk (float32, every padded position of a batch
    included: an upper bound)."""
    return 4 * positions * vocab
