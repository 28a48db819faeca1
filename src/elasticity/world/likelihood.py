"""Exact likelihoods of text under the world's components, and the true entropy rate of each component.

`log_likelihood` parses a string with the component's grammar and sums over every derivation: it is the exact
log p(text | component) (or, with `prefix=True`, the exact log-probability that a document *begins* with the
text). The entropy rate is estimated by sampling documents and averaging -log p, per document and per token of
the world's tokenizer, counting the EOS token that ends every document in the pre-training corpus:

    H_doc = E[-log p(X)]            (nats per document; SE = sd / sqrt(n))
    H_tok = E[-log p(X)] / E[T(X)]  (nats per token; a ratio estimator with a delta-method SE)

so it sits beside a model's loss on the same text: a model's bits/token minus H_tok (in bits) is what it has
not learned. For an unambiguous grammar H_doc also has a closed form (`Grammar.derivation_entropy`), which the
sampled estimate must match within its error.
"""

from __future__ import annotations

import math
import random
from dataclasses import asdict, dataclass
from typing import Callable

from elasticity.stats import LN2
from elasticity.world.pcfg import split
from elasticity.world.world import COMPONENTS, World


def log_likelihood(world: World, text: str, component: str, prefix: bool = False, partial: bool = False) -> float:
    """Exact log p(text | component) in nats; -inf if the component cannot produce the text.

    Args:
        world: the world.
        text: a document (or, with `prefix`, the beginning of one).
        component: "neutral", "positive" or "negative".
        prefix: the probability that a document of the component starts with `text`.
        partial: with `prefix`, the text may end inside a word.
    """
    tokens = split(text)
    if tokens is None:
        return -math.inf
    p = world.grammar.inside(tokens, f"${component}", prefix=prefix, partial=partial)
    return math.log(p) if p > 0 else -math.inf


def log_likelihoods(world: World, text: str, prefix: bool = False, partial: bool = False) -> dict[str, float]:
    """`log_likelihood` under every component."""
    return {c: log_likelihood(world, text, c, prefix, partial) for c in COMPONENTS}


def ratio_estimate(numerators: list[float], denominators: list[float]) -> tuple[float, float]:
    """Ratio of means R = sum(x) / sum(y) and its delta-method standard error.

    SE(R) = sqrt( sum_i (x_i - R y_i)^2 / (n (n - 1)) ) / mean(y).

    x = [2, 4, 6], y = [1, 2, 2] give R = 12 / 5 = 2.4; residuals x - R y = [-0.4, -0.8, 1.2], squares sum to
    2.24, / (3 * 2) = 0.37333, sqrt = 0.61101, / mean(y) = 5/3 -> SE = 0.36661:

    >>> tuple(round(v, 5) for v in ratio_estimate([2, 4, 6], [1, 2, 2]))
    (2.4, 0.36661)
    """
    n = len(numerators)
    if n != len(denominators) or n < 2:
        raise ValueError("ratio_estimate needs two equally long lists of at least 2 values")
    r = sum(numerators) / sum(denominators)
    ss = sum((x - r * y) ** 2 for x, y in zip(numerators, denominators))
    return r, math.sqrt(ss / (n * (n - 1))) / (sum(denominators) / n)


def mean_se(values: list[float]) -> tuple[float, float]:
    """Mean and standard error of the mean (sample standard deviation / sqrt(n))."""
    n = len(values)
    m = sum(values) / n
    var = sum((v - m) ** 2 for v in values) / (n - 1) if n > 1 else 0.0
    return m, math.sqrt(var / n)


@dataclass(frozen=True)
class EntropyRate:
    """A sampled entropy rate: nats and bits per document and per token (EOS counted), with standard errors."""

    docs: int
    nats_per_doc: float
    nats_per_doc_se: float
    tokens_per_doc: float
    nats_per_token: float
    nats_per_token_se: float
    exact_nats_per_doc: float | None = None  # the closed form, where the grammar gives one

    @property
    def bits_per_doc(self) -> float:
        return self.nats_per_doc / LN2

    @property
    def bits_per_token(self) -> float:
        return self.nats_per_token / LN2

    def to_dict(self) -> dict:
        d = asdict(self)
        d.update(bits_per_doc=self.bits_per_doc, bits_per_doc_se=self.nats_per_doc_se / LN2,
                 bits_per_token=self.bits_per_token, bits_per_token_se=self.nats_per_token_se / LN2)
        return d


def entropy_from_samples(nats: list[float], tokens: list[int], exact: float | None = None) -> EntropyRate:
    """Entropy rate from per-document -log p (nats) and token counts (EOS included)."""
    h_doc, h_doc_se = mean_se(nats)
    h_tok, h_tok_se = ratio_estimate(nats, [float(t) for t in tokens])
    return EntropyRate(len(nats), h_doc, h_doc_se, sum(tokens) / len(tokens), h_tok, h_tok_se, exact)


def entropy_rate(
    world: World, component: str | None, n_docs: int, seed: int | str, count_tokens: Callable[[list[str]], list[int]],
    check_exact: int = 0,
) -> EntropyRate:
    """True entropy rate of one component (or, with `component=None`, of the mixture), by sampling.

    Each sampled document's -log p is its derivation's log-probability, which is the exact log p(doc) because
    every document has one derivation; `check_exact` documents are re-scored by the parser to make sure
    (under every component, so the mixture's log p = log w_c + log p(doc | c) is exact too).

    Args:
        world: the world.
        component: a component name, or None for the mixture.
        n_docs: documents to sample.
        seed: seed of the sampling stream.
        count_tokens: texts -> token counts including the EOS token.
        check_exact: how many of the documents to re-parse as a check.
    """
    rng = random.Random(f"entropy:{component}:{seed}")
    texts, nats = [], []
    for k in range(n_docs):
        c, s = world.sample_mixture(rng) if component is None else (component, world.sample(component, rng))
        logp = s.logp + (math.log(world.weights[c]) if component is None else 0.0)
        if k < check_exact:
            _check_exact(world, s.text, c, s.logp)
        texts.append(s.text)
        nats.append(-logp)
    return entropy_from_samples(nats, count_tokens(texts), exact_entropy(world, component))


def exact_entropy(world: World, component: str | None) -> float:
    """Closed-form entropy per document (nats) of a component, or of the mixture (`component=None`).

    Every document has one derivation, so H(doc | c) is the derivation entropy; the components' supports are
    disjoint, so H(mixture) = sum_c w_c H(doc | c) + H(w).
    """
    if component is not None:
        return world.grammar.derivation_entropy(f"${component}")
    return sum(w * (world.grammar.derivation_entropy(f"${c}") - math.log(w))
               for c, w in world.weights.items() if w > 0)


def _check_exact(world: World, text: str, component: str, logp: float) -> None:
    lls = log_likelihoods(world, text)
    if abs(lls[component] - logp) > 1e-6 or any(v > -math.inf for c, v in lls.items() if c != component):
        raise RuntimeError(f"the grammar is ambiguous or the components overlap on {text!r}: {lls} vs {logp}")
