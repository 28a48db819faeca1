"""Turn examples into micro-batches with little waste, in an order fixed by the seed.

Language-model documents are packed into full blocks when they are tokenised (`tokenize.pack`: zero
padding). SFT examples keep their identity (prompt masks must survive), so they are padded per micro-batch
and, with `bucket`, sorted by length inside windows of `bucket` optimizer steps. Windows are whole optimizer
steps, so training on the first q examples is still a prefix of training on more whenever q ends a window.

Padding-free (`pack_step`, `collate_packed`): a step's examples are cut into micro-batches by tokens instead
and each micro-batch is one row, every example at its own positions 0, 1, ... Transformers reads packed
sequences off those positions and lets each example attend to itself only (a block-diagonal causal mask),
so every example's numbers are what they are alone, and a step holds the same examples either way.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch

from elasticity.data.tokenize import IGNORE, Example


def ordered_indices(n: int, seed: int, shuffle: bool) -> list[int]:
    order = list(range(n))
    if shuffle:
        random.Random(seed).shuffle(order)
    return order


@dataclass(frozen=True)
class Step:
    """One optimizer step: its micro-batches and the number of loss targets in all of them together."""

    micro_batches: list[list[int]]  # example indices per micro-batch
    n_targets: int


def plan_steps(
    examples: list[Example],
    order: list[int],
    micro_batch: int,
    grad_accum: int,
    bucket: int = 0,
    boundaries: tuple[int, ...] = (),
) -> list[Step]:
    """Group `order` into optimizer steps of `micro_batch * grad_accum` examples.

    No step crosses a boundary (a count of examples, e.g. a rebound Q): the step before it is cut short.
    So the steps of a run on the first q examples are exactly the first steps of a run on more examples,
    whatever the batch size: the basis of nested runs. With `bucket > 0`, examples are sorted by length
    within windows of `bucket` steps (inside a segment), so micro-batches hold examples of similar length.
    The loss of a step is normalised by its total target count (see the training loop).
    """
    per_step = micro_batch * grad_accum
    cuts = sorted({0, len(order), *(b for b in boundaries if 0 < b < len(order))})
    steps = []
    for start, end in zip(cuts, cuts[1:]):
        segment = order[start:end]
        if bucket > 0:
            window = per_step * bucket
            segment = [
                i
                for w in range(0, len(segment), window)
                for i in sorted(segment[w:w + window], key=lambda j: len(examples[j].input_ids))
            ]
        for s in range(0, len(segment), per_step):
            chunk = segment[s:s + per_step]
            mbs = [chunk[m:m + micro_batch] for m in range(0, len(chunk), micro_batch)]
            steps.append(Step(mbs, sum(examples[i].n_targets for i in chunk)))
    return steps


def collate(examples: list[Example], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad to the longest example; padded positions are masked from attention and loss."""
    width = max(len(ex.input_ids) for ex in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for row, ex in enumerate(examples):
        n = len(ex.input_ids)
        ids[row, :n] = torch.tensor(ex.input_ids)
        labels[row, :n] = torch.tensor(ex.labels)
        mask[row, :n] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}  # each (B, T)


def pack_step(examples: list[Example], step: Step, tokens: int) -> Step:
    """The same step cut into padding-free micro-batches of at most `tokens` tokens (in the step's order;
    an example longer than `tokens` goes alone)."""
    packed: list[list[int]] = []
    used = tokens
    for i in (i for mb in step.micro_batches for i in mb):
        n = len(examples[i].input_ids)
        if used + n > tokens:
            packed.append([])
            used = 0
        packed[-1].append(i)
        used += n
    return Step(packed, step.n_targets)


def collate_packed(examples: list[Example]) -> dict[str, torch.Tensor]:
    """One row of the examples end to end, each at positions 0.. (no padding, no attention mask).

    An example's first label is IGNORE whatever it was: there it would be the target of the example before.
    """
    ids = torch.tensor([t for ex in examples for t in ex.input_ids])[None]
    positions = torch.tensor([j for ex in examples for j in range(len(ex.input_ids))])[None]
    labels = torch.tensor([t for ex in examples for t in (IGNORE, *ex.labels[1:])])[None]
    return {"input_ids": ids, "position_ids": positions, "labels": labels}  # each (1, N)
