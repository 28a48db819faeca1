"""The compression protocol: prune to depth d, code the pruned leaves, and measure each dataset's rate.

A model of capacity ``d`` trained on datasets ``D_1..D_N`` knows the size-weighted mixture of their pruned
leaf distributions (PAPER.md section 2):

    p_model = sum_i |D_i| p_i / sum_i |D_i|

It codes a leaf ``x`` either with the ideal (Shannon) length ``-log2 p_model(x)`` or with a binary Huffman
code built for ``p_model`` (integer lengths, at most one bit per leaf longer). A sequence is coded in blocks
of ``d`` tokens, one leaf per block, so the **compression rate** of dataset ``D_i`` in bits per token is

    gamma_i = E_{x ~ p_i}[len(x)] / d          (ideal: the cross-entropy H(p_i, p_model) / d)

**Normalised rate.** We subtract the dataset's own entropy per token:

    gamma~_i = gamma_i - H(p_i) / d = KL(p_i || p_model) / d          (>= 0, = 0 iff the model is p_i)

Why: it removes what makes a dataset intrinsically hard to compress, so rates of different datasets are
comparable; it is zero exactly when the model has learned that dataset; and it is the ``Delta KL`` of the
Hooke form. The paper's ``gamma - log M`` (M = number of pruned leaves, ``log2 M`` = the uniform code)
subtracts a constant shared by all datasets; it is reported beside ours as ``normalised_log_m``. Neither
normaliser depends on the dataset sizes, so the derivatives in l (and the theorem) are the same for both.

Example (checked by the tests): for ``p = (1/2, 1/4, 1/4)`` Huffman gives lengths ``(1, 2, 2)``, Kraft's sum
is exactly 1, and the expected length equals the entropy, 1.5 bits; ``p`` coded for ``q = (1/4, 1/4, 1/2)``
costs the cross-entropy 1.75 bits, so ``KL(p || q) = 0.25`` bits.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from elasticity.errors import UserError
from elasticity.theory.trees import Leaf, TokenTree


def align(trees: Sequence[TokenTree], depth: int) -> tuple[list[Leaf], np.ndarray]:
    """Prune every tree to ``depth`` and lay their leaf masses on one shared, sorted leaf list.

    Returns the leaves and an ``(N, M)`` array whose row i is tree i's pruned leaf distribution.
    """
    pruned = [t.prune(depth) for t in trees]
    leaves = sorted(set().union(*pruned))
    index = {leaf: j for j, leaf in enumerate(leaves)}
    out = np.zeros((len(trees), len(leaves)))
    for i, leaf_masses in enumerate(pruned):
        for leaf, m in leaf_masses.items():
            out[i, index[leaf]] = m
    return leaves, out


def mixture(dists: np.ndarray, sizes: Sequence[float]) -> np.ndarray:
    """Size-weighted mixture of the rows of ``dists``: ``sum_i |D_i| p_i / sum_i |D_i|``.

    >>> mixture(np.array([[1.0, 0.0], [0.0, 1.0]]), [3, 1]).tolist()
    [0.75, 0.25]
    """
    w = np.asarray(sizes, dtype=float)
    if w.shape != (np.asarray(dists).shape[0],):
        raise UserError(f"need one size per dataset, got {w.size} sizes for {np.asarray(dists).shape[0]} datasets")
    if not np.all(np.isfinite(w)) or np.any(w < 0):
        raise UserError(f"dataset sizes must be finite and >= 0, got {list(map(float, w))}")
    if w.sum() <= 0:
        raise UserError("at least one dataset size must be positive")
    return w @ np.asarray(dists, dtype=float) / w.sum()


def entropy(p: np.ndarray) -> float:
    """Shannon entropy in bits (0 log 0 = 0)."""
    p = np.asarray(p, dtype=float)
    nz = p > 0
    return float(-(p[nz] * np.log2(p[nz])).sum())


def cross_entropy(p: np.ndarray, q: np.ndarray) -> float:
    """Expected ideal code length, in bits, of leaves drawn from ``p`` under a code built for ``q``.

    Infinite if ``p`` puts mass where ``q`` has none (that leaf cannot be coded).
    """
    p, q = np.asarray(p, dtype=float), np.asarray(q, dtype=float)
    nz = p > 0
    if np.any(q[nz] <= 0):
        return float("inf")
    return float(-(p[nz] * np.log2(q[nz])).sum())


def kl(p: np.ndarray, q: np.ndarray) -> float:
    """KL(p || q) in bits: the excess of the cross-entropy over p's own entropy."""
    p, q = np.asarray(p, dtype=float), np.asarray(q, dtype=float)
    nz = p > 0
    if np.any(q[nz] <= 0):
        return float("inf")
    return float((p[nz] * np.log2(p[nz] / q[nz])).sum())


def huffman_lengths(q: np.ndarray) -> np.ndarray:
    """Binary Huffman code lengths for the distribution ``q`` (every entry must be > 0).

    Ties are broken by position, so the code is deterministic. A single leaf needs 0 bits.

    >>> huffman_lengths(np.array([0.5, 0.25, 0.25])).tolist()
    [1, 2, 2]
    """
    q = np.asarray(q, dtype=float)
    n = q.size
    if n == 0 or np.any(q <= 0):
        raise ValueError("Huffman coding needs a non-empty array of positive masses")
    if n == 1:
        return np.zeros(1, dtype=int)
    heap = [(float(m), i) for i, m in enumerate(q)]
    heapq.heapify(heap)
    parent = np.full(2 * n - 1, -1)
    nxt = n
    while len(heap) > 1:
        m1, a = heapq.heappop(heap)
        m2, b = heapq.heappop(heap)
        parent[a] = parent[b] = nxt
        heapq.heappush(heap, (m1 + m2, nxt))
        nxt += 1
    # Internal nodes are numbered in creation order, so a parent always has a larger id than its children:
    # walking ids downwards from the root fills every depth from its parent's.
    depth = np.zeros(2 * n - 1, dtype=int)
    for node in range(2 * n - 3, -1, -1):
        depth[node] = depth[parent[node]] + 1
    return depth[:n]


def kraft_sum(lengths: np.ndarray) -> float:
    """``sum 2**-len``: <= 1 for any prefix code, exactly 1 for a complete one such as Huffman's."""
    return float(np.sum(np.exp2(-np.asarray(lengths, dtype=float))))


@dataclass(frozen=True)
class Rates:
    """Per-dataset compression rates under one model, in bits per token (arrays aligned with the datasets)."""

    depth: int
    leaves: int  # M: leaves of the pruned tree that the model can code
    ideal: np.ndarray  # H(p_i, p_model) / d
    huffman: np.ndarray  # E_{p_i}[Huffman length under p_model] / d
    entropy: np.ndarray  # H(p_i) / d
    normalised: np.ndarray  # KL(p_i || p_model) / d: our normaliser (module docstring)
    normalised_log_m: np.ndarray  # ideal - log2(M) / d: the paper's normaliser, for comparison


def rates_of(dists: np.ndarray, model: np.ndarray, depth: int, huffman: bool = True) -> Rates:
    """Rates of the datasets (rows of ``dists``) under ``model``, all on one leaf list pruned to ``depth``.

    Leaves the model gives no mass are dropped; a dataset with mass there would be uncodable (rate inf).
    """
    dists, model = np.atleast_2d(np.asarray(dists, dtype=float)), np.asarray(model, dtype=float)
    support = model > 0
    q = model[support]
    logq = np.log2(q)
    ideal, ent, hub = [], [], []
    lengths = huffman_lengths(q) if huffman else None
    for p in dists:
        outside = p[~support].sum() > 0
        ps = p[support]
        ideal.append(float("inf") if outside else float(-(ps * logq).sum()))
        ent.append(entropy(p))
        hub.append(float("nan") if lengths is None else (float("inf") if outside else float(ps @ lengths)))
    ideal_a, ent_a = np.array(ideal) / depth, np.array(ent) / depth
    return Rates(
        depth=depth,
        leaves=int(support.sum()),
        ideal=ideal_a,
        huffman=np.array(hub) / depth,
        entropy=ent_a,
        normalised=ideal_a - ent_a,
        normalised_log_m=ideal_a - np.log2(support.sum()) / depth,
    )


def compression_rates(trees: Sequence[TokenTree], depth: int, huffman: bool = True) -> Rates:
    """Train the depth-``d`` model on ``trees`` (mixture weighted by each ``tree.size``) and rate each tree."""
    _, dists = align(trees, depth)
    model = mixture(dists, [t.size for t in trees])
    return rates_of(dists, model, depth, huffman)
