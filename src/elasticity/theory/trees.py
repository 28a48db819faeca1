"""Token trees: a dataset is a distribution over token sequences, drawn as a prefix tree.

A sequence ``(t_1, ..., t_n)`` followed by end-of-sequence (EOS) is a path from the root to the EOS leaf of
the node ``t_1..t_n``. So every node carries one EOS leaf, whose mass is the probability that a sequence
ends exactly there, and a node's mass is its EOS mass plus the masses of its children (the next tokens).
The tree is stored as its list of distinct sequences and their masses; nodes are implicit (prefixes).

Pruning to depth ``d`` (the model's capacity, PAPER.md section 2) keeps the EOS leaves of the nodes above
depth ``d`` and turns every depth-``d`` node into one leaf holding its whole subtree:

    leaf ``(prefix, True)``   the EOS leaf of node ``prefix`` (a sequence of length < d that ends there)
    leaf ``(prefix, False)``  node ``prefix`` at depth d, cut: every sequence that starts with ``prefix``

A full a-ary tree pruned to depth d has ``(a**(d+1) - 1) / (a - 1)`` leaves (``2**(d+1) - 1`` for a = 2).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, replace
from typing import Iterable, Sequence

import numpy as np

from elasticity.errors import UserError

Leaf = tuple[tuple[int, ...], bool]  # (prefix, ended): see the module docstring
MAX_SEQUENCES = 2_000_000  # a generated tree holds every sequence up to its depth; beyond this, memory, not insight


@dataclass(frozen=True, eq=False)
class TokenTree:
    """A dataset as a distribution over token sequences (each implicitly followed by EOS).

    Attributes:
        alphabet_size: number of distinct tokens (EOS not counted); tokens are ``0..alphabet_size-1``.
        sequences: the distinct sequences with positive mass.
        masses: their probabilities (sum to 1), aligned with ``sequences``.
        size: ``|D|``, the number of sequences in the dataset; it weighs the dataset in a mixture.
    """

    alphabet_size: int
    sequences: tuple[tuple[int, ...], ...]
    masses: np.ndarray
    size: float = 1.0

    @classmethod
    def from_sequences(
        cls,
        sequences: Iterable[Sequence[int]],
        alphabet_size: int = 2,
        counts: Iterable[float] | None = None,
    ) -> "TokenTree":
        """Build a tree from explicit sequences; repeated sequences add up, and ``size`` is the total count.

        Two sequences, one of them twice; the root has EOS mass 0 (no empty sequence) and mass 1:

        >>> t = TokenTree.from_sequences([(0,), (0,), (1, 0)])
        >>> t.size, [round(float(m), 4) for m in t.masses], t.eos_mass(()), t.node_mass(())
        (3.0, [0.6667, 0.3333], 0.0, 1.0)
        """
        if isinstance(alphabet_size, bool) or not isinstance(alphabet_size, int) or alphabet_size < 1:
            raise UserError(f"alphabet size must be a positive integer, got {alphabet_size!r}")
        seqs = [tuple(int(t) for t in s) for s in sequences]
        weights = [1.0] * len(seqs) if counts is None else [float(c) for c in counts]
        if len(weights) != len(seqs):
            raise UserError(f"got {len(seqs)} sequences but {len(weights)} counts; give one count per sequence")
        total: dict[tuple[int, ...], float] = {}
        for s, w in zip(seqs, weights):
            if not math.isfinite(w) or w < 0:
                raise UserError(f"sequence {s}: count must be a finite number >= 0, got {w}")
            bad = [t for t in s if not 0 <= t < alphabet_size]
            if bad:
                raise UserError(f"sequence {s}: token {bad[0]} is outside the alphabet 0..{alphabet_size - 1}")
            total[s] = total.get(s, 0.0) + w
        size = sum(total.values())
        if size <= 0:
            raise UserError("a dataset needs at least one sequence with a positive count")
        kept = sorted(s for s, w in total.items() if w > 0)
        masses = np.array([total[s] for s in kept], dtype=float) / size
        return cls(alphabet_size, tuple(kept), masses, size)

    @property
    def depth(self) -> int:
        """Length of the longest sequence (the depth of the deepest EOS leaf)."""
        return max(len(s) for s in self.sequences)

    def resized(self, size: float) -> "TokenTree":
        """The same distribution with another dataset size ``|D|``."""
        if not math.isfinite(size) or size < 0:
            raise UserError(f"dataset size must be a finite number >= 0, got {size}")
        return replace(self, size=float(size))

    def eos_mass(self, prefix: Sequence[int]) -> float:
        """Mass of the EOS leaf of node ``prefix``: the probability that a sequence is exactly ``prefix``."""
        prefix = tuple(prefix)
        return float(sum(m for s, m in zip(self.sequences, self.masses) if s == prefix))

    def node_mass(self, prefix: Sequence[int]) -> float:
        """Mass of node ``prefix``: its EOS leaf plus its whole subtree (every sequence starting with it)."""
        prefix = tuple(prefix)
        n = len(prefix)
        return float(sum(m for s, m in zip(self.sequences, self.masses) if s[:n] == prefix))

    def prune(self, depth: int) -> dict[Leaf, float]:
        """Leaf masses of the tree pruned to ``depth`` (see the module docstring for the two kinds of leaf)."""
        if isinstance(depth, bool) or not isinstance(depth, int) or depth < 1:
            raise UserError(f"pruning depth d must be an integer >= 1, got {depth!r}")
        leaves: dict[Leaf, float] = {}
        for s, m in zip(self.sequences, self.masses):
            key = (s, True) if len(s) < depth else (s[:depth], False)
            leaves[key] = leaves.get(key, 0.0) + float(m)
        return leaves


def mix(trees: Sequence[TokenTree], weights: Sequence[float], size: float = 1.0) -> TokenTree:
    """The mixture ``sum_i w_i p_i / sum_i w_i`` of trees over one alphabet, as a new tree of the given size."""
    if not trees or len(trees) != len(weights):
        raise UserError(f"mix needs one weight per tree, got {len(trees)} trees and {len(weights)} weights")
    w = np.asarray(weights, dtype=float)
    if not np.all(np.isfinite(w)) or np.any(w < 0) or w.sum() <= 0:
        raise UserError(f"mixture weights must be finite, >= 0 and not all 0, got {list(weights)}")
    if len({t.alphabet_size for t in trees}) != 1:
        raise UserError("trees in a mixture must share one alphabet size")
    total: dict[tuple[int, ...], float] = {}
    for tree, wi in zip(trees, w / w.sum()):
        for s, m in zip(tree.sequences, tree.masses):
            total[s] = total.get(s, 0.0) + wi * float(m)
    kept = sorted(s for s, m in total.items() if m > 0)
    masses = np.array([total[s] for s in kept])
    return TokenTree(trees[0].alphabet_size, tuple(kept), masses / masses.sum(), float(size))


def all_sequences(alphabet_size: int, depth: int) -> list[tuple[int, ...]]:
    """Every sequence of length 0..depth, shortest first: the EOS leaves of a full a-ary tree of that depth."""
    count = depth + 1 if alphabet_size == 1 else (alphabet_size ** (depth + 1) - 1) // (alphabet_size - 1)
    if count > MAX_SEQUENCES:
        raise UserError(
            f"a full tree with alphabet {alphabet_size} and depth {depth} has {count} sequences (limit "
            f"{MAX_SEQUENCES}); lower tree.depth or tree.alphabet_size"
        )
    out: list[tuple[int, ...]] = []
    for n in range(depth + 1):
        out.extend(itertools.product(range(alphabet_size), repeat=n))
    return out


def pareto_components(
    alphabet_size: int,
    depth: int,
    n_components: int,
    shape: float,
    overlap: float = 0.0,
    seed: int = 0,
) -> list[TokenTree]:
    """Component distributions over the sequences of a full tree, with Pareto (Zipf-like) leaf masses.

    The sequences of length 0..depth are shuffled; the first ``round(overlap * n)`` are shared by every
    component and the rest are split evenly among the components (``overlap = 0``: disjoint supports;
    ``overlap = 1``: one shared support). Each component gives each of its sequences an independent mass
    drawn from a Pareto law with scale 1 and the given shape ``alpha`` (density ``alpha / x**(alpha + 1)``
    for x >= 1), then normalises. Sorted, the masses follow a rank-frequency power law with exponent about
    ``1/alpha``: the Zipf-like heavy tail the theorem assumes. ``alpha <= 0`` is no distribution at all.
    """
    if isinstance(alphabet_size, bool) or not isinstance(alphabet_size, int) or alphabet_size < 1:
        raise UserError(f"tree.alphabet_size must be an integer >= 1, got {alphabet_size!r}")
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 1:
        raise UserError(f"tree.depth must be an integer >= 1, got {depth!r}")
    if not math.isfinite(shape) or shape <= 0:
        raise UserError(
            f"tree.pareto_shape must be a finite number > 0 (a Pareto law with shape {shape} has no "
            "normalisable density); try 1.0"
        )
    if not 0.0 <= overlap <= 1.0:
        raise UserError(f"tree.overlap must lie in [0, 1] (the shared fraction of sequences), got {overlap}")
    seqs = all_sequences(alphabet_size, depth)
    n_shared = int(round(overlap * len(seqs)))
    if n_components < 1 or (len(seqs) - n_shared < n_components and n_shared == 0):
        raise UserError(
            f"cannot split {len(seqs)} sequences into {n_components} non-empty components; "
            "raise tree.depth or lower tree.components"
        )
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(seqs))
    shared, own = order[:n_shared], np.array_split(order[n_shared:], n_components)
    trees = []
    for c in range(n_components):
        idx = np.sort(np.concatenate([shared, own[c]]))
        if idx.size == 0:
            raise UserError(f"component {c} got no sequences; raise tree.depth or lower tree.components")
        masses = 1.0 + rng.pareto(shape, size=idx.size)  # numpy's pareto is Lomax; +1 gives classic Pareto
        trees.append(TokenTree(alphabet_size, tuple(seqs[i] for i in idx), masses / masses.sum(), 1.0))
    return trees
