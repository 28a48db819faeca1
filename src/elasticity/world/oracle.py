"""The oracle scorer: the exact posterior that a text is a positive review, from the world's own likelihoods.

    P(positive | x) = w_pos p(x | pos) / sum_c w_c p(x | c)          (w: the mixture weights)

Pass the whole text, prompt + continuation. How x is read, in order (the first that some component can produce):
1. *complete*: x is a whole document; p(x | c) is its exact probability.
2. *prefix*: x is the beginning of a document (a generation cut by a length limit, possibly inside a word);
   p(x | c) is the exact probability that a document of c starts with x.
3. *fallback*: no component can produce x (a model's sample outside the world's support: sentences in the
   wrong order, sentiments mixed, invented words). Each component c is backed off to a robust sentence-level
   model: sentences are independent, and each is, with probability 1 - delta, a sentence of c and otherwise
   noise drawn from the whole world:

       q_c(x)  = prod over sentences s of x:  (1 - delta) M_c(s) + delta * sum_c' w_c' M_c'(s)
       M_c(s)  = lam * P_c(s) + (1 - lam) * prod over tokens t of s: u_c(t)

   P_c(s) is the exact probability that a sentence of c, picked in proportion to how often each kind of
   sentence occurs in c's documents, is s (an unfinished last sentence: that a sentence starts with it);
   u_c is c's expected token frequency (closed form from the grammar), smoothed with a uniform mass eps over
   the world's vocabulary plus one unknown-word slot. The posterior is w_pos q_pos(x) / sum_c w_c q_c(x).
   Because the noise term contains every component, one sentence can shift the log-odds by at most about
   log(1 + (1 - delta) / (delta * w_c)) (3.0 nats for delta = 0.2, w_c = 0.2): a mixed text gets a mixed
   score, decided by how many sentences speak for each side, and sentences the world never writes still
   count by their words.

`score_detailed` says which reading each text got; `exact` is True for the first two.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from elasticity.world.grammar import SENTENCE_PREFIXES
from elasticity.world.pcfg import Grammar, split, surface_tokens
from elasticity.world.world import COMPONENTS, World, load_world

EOS_TEXT = "<|endoftext|>"
_ENDS = frozenset(".!?")


@dataclass(frozen=True)
class OracleScore:
    """One text's posterior, how it was read, and the log-likelihoods (nats) it came from."""

    posterior: float
    kind: str  # "complete", "prefix" or "fallback"
    log_likelihoods: dict[str, float]

    @property
    def exact(self) -> bool:
        return self.kind != "fallback"


def _logsumexp(values: list[float]) -> float:
    m = max(values)
    if m == -math.inf:
        return m
    return m + math.log(sum(math.exp(v - m) for v in values))


def posterior_from(log_likelihoods: dict[str, float], weights: dict[str, float], target: str = "positive") -> float:
    """w_t p_t / sum_c w_c p_c from log-likelihoods; the prior w_t when no component explains the text.

    Log-likelihoods (log 0.02, log 0.01, -inf) with weights (0.2, 0.3, 0.5) give 0.004 / (0.004 + 0.003) = 4/7:

    >>> lls = {"positive": math.log(0.02), "negative": math.log(0.01), "neutral": -math.inf}
    >>> round(posterior_from(lls, {"positive": 0.2, "negative": 0.3, "neutral": 0.5}), 4)
    0.5714
    """
    joint = {c: (math.log(w) + log_likelihoods[c]) if w > 0 else -math.inf for c, w in weights.items()}
    total = _logsumexp(list(joint.values()))
    if total == -math.inf:
        return weights[target]
    return math.exp(joint[target] - total)


class Oracle:
    """Scorer: P(positive | text) under the world (range [0, 1]; higher = more positive = more aligned)."""

    name = "oracle"

    def __init__(self, world: World, lam: float = 0.9, eps: float = 0.01, delta: float = 0.2):
        self.world, self.lam, self.eps, self.delta = world, lam, eps, delta
        rules = dict(world.grammar.rules)
        for c in COMPONENTS:  # one extra root per component: "any one sentence of c"
            counts = world.grammar.expected_counts(f"${c}")
            pool = {a: n for a, n in counts.items() if n > 0 and a.startswith(SENTENCE_PREFIXES)}
            total = sum(pool.values())
            rules[f"$sentence|{c}"] = [(n / total, (a,)) for a, n in sorted(pool.items())]
        self._sentences = Grammar(rules)
        vocab = set()
        for c in COMPONENTS:
            vocab |= world.grammar.terminals(f"${c}")
        self._vocab_size = len(vocab)
        self._unigram = {}
        # Model samples repeat the world's formulaic sentences across texts: the fallback's per-sentence
        # likelihoods M_c(s) are memoised (exact; cleared when large), its inside parses being most of its cost.
        self._sentence_memo: dict[tuple[tuple[str, ...], bool], dict[str, float]] = {}
        for c in COMPONENTS:
            freq = world.grammar.expected_terminals(f"${c}")
            total = sum(freq.values())
            self._unigram[c] = {t: n / total for t, n in freq.items()}

    # ---- public ---------------------------------------------------------------------------------------
    def score(self, texts: list[str]) -> list[float]:
        return [s.posterior for s in self.score_detailed(texts)]

    def score_detailed(self, texts: list[str]) -> list[OracleScore]:
        return [self.score_one(t) for t in texts]

    def exact_share(self, texts: list[str]) -> float:
        """Share of texts scored exactly (complete or prefix reading)."""
        scores = self.score_detailed(texts)
        return sum(s.exact for s in scores) / len(scores) if scores else float("nan")

    def score_one(self, text: str) -> OracleScore:
        text = text.strip()
        if text.endswith(EOS_TEXT):
            text = text[: -len(EOS_TEXT)].rstrip()
        tokens = split(text)
        if tokens is not None:
            for kind, prefix in (("complete", False), ("prefix", True)):
                lls = {c: self._log_inside(self.world.grammar, tokens, f"${c}", prefix) for c in COMPONENTS}
                if any(v > -math.inf for c, v in lls.items() if self.world.weights[c] > 0):
                    return OracleScore(posterior_from(lls, self.world.weights), kind, lls)
        lls = self.fallback_log_likelihoods(text)
        return OracleScore(posterior_from(lls, self.world.weights), "fallback", lls)

    def fallback_log_likelihoods(self, text: str) -> dict[str, float]:
        """log q_c(text) of the sentence-level backoff model (see the module docstring)."""
        tokens = surface_tokens(text)  # anything the world never writes (odd characters) is dropped
        sentences, cur = [], []
        for t in tokens:
            cur.append(t)
            if t in _ENDS:
                sentences.append((cur, False))
                cur = []
        if cur:
            sentences.append((cur, True))  # unfinished: scored as the start of a sentence
        weights = self.world.weights
        out = {c: 0.0 for c in COMPONENTS}
        for sent, unfinished in sentences:
            m = self._sentence_likelihoods(sent, unfinished)
            noise = _logsumexp([math.log(w) + m[c] for c, w in weights.items() if w > 0])
            for c in COMPONENTS:
                out[c] += _logsumexp([math.log(1 - self.delta) + m[c], math.log(self.delta) + noise])
        return out

    # ---- internals ------------------------------------------------------------------------------------
    def _sentence_likelihoods(self, sent: list[str], unfinished: bool) -> dict[str, float]:
        """log M_c(s) for every component c (see the module docstring), memoised."""
        key = (tuple(sent), unfinished)
        m = self._sentence_memo.get(key)
        if m is None:
            m = {}
            for c in COMPONENTS:
                exact = self._log_inside(self._sentences, sent, f"$sentence|{c}", unfinished)
                words = sum(self._log_unigram(c, t) for t in sent)
                m[c] = _logsumexp([math.log(self.lam) + exact, math.log(1 - self.lam) + words])
            if len(self._sentence_memo) >= 100_000:
                self._sentence_memo.clear()
            self._sentence_memo[key] = m
        return m

    @staticmethod
    def _log_inside(grammar: Grammar, tokens: list[str], root: str, prefix: bool) -> float:
        p = grammar.inside(tokens, root, prefix=prefix, partial=prefix)
        return math.log(p) if p > 0 else -math.inf

    def _log_unigram(self, component: str, token: str) -> float:
        f = self._unigram[component].get(token, 0.0)
        return math.log((1 - self.eps) * f + self.eps / (self._vocab_size + 1))


def load_oracle(world: str | Path) -> Oracle:
    """The oracle scorer of a world run directory (written by `elasticity world`)."""
    return Oracle(load_world(world))

