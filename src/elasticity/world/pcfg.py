"""A small probabilistic context-free grammar: sampling, exact inside and prefix probabilities, closed forms.

The embedded world's components are PCFGs over *surface tokens* (words as written, with their capitals, and
punctuation marks). A grammar is a table `nonterminal -> [(probability, right-hand side)]`; a right-hand side
is a tuple of symbols, and a symbol that starts with `$` is a nonterminal, anything else a terminal. The
grammar must be *acyclic* (no nonterminal reaches itself), so every derivation is finite and the closed forms
below are sums over a topological order instead of fixed points.

Text <-> tokens: tokens are joined with single spaces, except that punctuation attaches to the word before
it. `split` inverts `render` and returns None for text that `render` could not have produced (double spaces,
unknown characters), so a string has at most one token sequence and likelihoods are likelihoods of strings.

Probabilities in `inside` are plain floats: a document of the world has probability above 1e-100, far from
float64's underflow at 1e-308.
"""

from __future__ import annotations

import math
import random
import re
from bisect import bisect_right
from dataclasses import dataclass, field
from itertools import accumulate

PUNCT = frozenset(".,!?:;")
_TOKEN = re.compile(r"[A-Za-z0-9']+|[.,!?:;]")


def render(tokens: list[str] | tuple[str, ...]) -> str:
    """Join surface tokens into text: `['I', 'loved', 'it', '.'] -> 'I loved it.'`."""
    out: list[str] = []
    for t in tokens:
        if out and t not in PUNCT:
            out.append(" ")
        out.append(t)
    return "".join(out)


def split(text: str) -> list[str] | None:
    """The token sequence whose `render` is exactly `text`, or None if no token sequence renders to it."""
    tokens = _TOKEN.findall(text)
    return tokens if render(tokens) == text else None


def surface_tokens(text: str) -> list[str]:
    """The tokens in `text`, ignoring spacing and any character the world never writes."""
    return _TOKEN.findall(text)


def is_nt(symbol: str) -> bool:
    return symbol.startswith("$")


@dataclass
class Sample:
    """One derivation: its tokens, its log-probability (nats), and the token spans of the root's children."""

    tokens: list[str]
    logp: float
    parts: list[tuple[str, int, int]] = field(default_factory=list)  # (symbol, start, end) under the root

    @property
    def text(self) -> str:
        return render(self.tokens)


class Grammar:
    """An acyclic PCFG. `rules[A]` is a list of `(prob, rhs)` with probabilities summing to 1."""

    def __init__(self, rules: dict[str, list[tuple[float, tuple[str, ...]]]]):
        self.rules = {a: [(float(p), tuple(rhs)) for p, rhs in alts] for a, alts in rules.items()}
        self._check()
        self._order = self._topological()
        self._cum = {a: list(accumulate(p for p, _ in alts)) for a, alts in self.rules.items()}
        self._logp = {a: [math.log(p) for p, _ in alts] for a, alts in self.rules.items()}
        self._marked = {a: [tuple((s, is_nt(s)) for s in rhs) for _, rhs in alts] for a, alts in self.rules.items()}
        self._nullable = self._compute_nullable()
        self._first = self._compute_first()

    # ---- construction and checks -------------------------------------------------------------------
    def _check(self) -> None:
        for a, alts in self.rules.items():
            if not is_nt(a):
                raise ValueError(f"nonterminal names start with '$': {a!r}")
            if not alts:
                raise ValueError(f"{a} has no rules")
            total = sum(p for p, _ in alts)
            if abs(total - 1.0) > 1e-9 or any(p <= 0 for p, _ in alts):
                raise ValueError(f"{a}: rule probabilities must be positive and sum to 1 (sum {total})")
            for _, rhs in alts:
                for s in rhs:
                    if is_nt(s) and s not in self.rules:
                        raise ValueError(f"{a} uses undefined nonterminal {s}")

    def _topological(self) -> list[str]:
        """Nonterminals, parents before children; raises on a cycle (the closed forms need acyclicity)."""
        order: list[str] = []
        state: dict[str, int] = {}  # 1 = on the stack, 2 = done

        def visit(a: str) -> None:
            stack = [(a, iter(self._children(a)))]
            state[a] = 1
            while stack:
                node, it = stack[-1]
                child = next(it, None)
                if child is None:
                    state[node] = 2
                    order.append(node)
                    stack.pop()
                elif state.get(child) == 1:
                    raise ValueError(f"the grammar has a cycle through {child}")
                elif child not in state:
                    state[child] = 1
                    stack.append((child, iter(self._children(child))))

        for a in self.rules:
            if a not in state:
                visit(a)
        return order[::-1]

    def _children(self, a: str) -> list[str]:
        return sorted({s for _, rhs in self.rules[a] for s in rhs if is_nt(s)})

    def _compute_nullable(self) -> set[str]:
        nullable: set[str] = set()
        for a in reversed(self._order):  # children first
            if any(all(s in nullable for s in rhs) for _, rhs in self.rules[a]):
                nullable.add(a)
        return nullable

    def _compute_first(self) -> dict[str, list[frozenset[str] | None]]:
        """Per rule, the terminals that can start it (None: the rule can derive the empty string)."""
        nt_first: dict[str, set[str]] = {}
        rule_first: dict[str, list[frozenset[str] | None]] = {}
        for a in reversed(self._order):
            firsts = []
            for _, rhs in self.rules[a]:
                f: set[str] = set()
                empty = True
                for s in rhs:
                    if not is_nt(s):
                        f.add(s)
                        empty = False
                        break
                    f |= nt_first[s]
                    if s not in self._nullable:
                        empty = False
                        break
                firsts.append(None if empty else frozenset(f))
            nt_first[a] = set().union(*(f for f in firsts if f is not None))
            rule_first[a] = firsts
        return rule_first

    def to_json(self) -> dict:
        return {a: [[p, list(rhs)] for p, rhs in alts] for a, alts in self.rules.items()}

    @classmethod
    def from_json(cls, data: dict) -> "Grammar":
        return cls({a: [(p, tuple(rhs)) for p, rhs in alts] for a, alts in data.items()})

    def terminals(self, root: str) -> set[str]:
        """Every terminal that some derivation from `root` can emit."""
        return {s for a in self.reachable(root) for _, rhs in self.rules[a] for s in rhs if not is_nt(s)}

    def reachable(self, root: str) -> set[str]:
        seen, todo = {root}, [root]
        while todo:
            for c in self._children(todo.pop()):
                if c not in seen:
                    seen.add(c)
                    todo.append(c)
        return seen

    # ---- sampling ------------------------------------------------------------------------------------
    def sample(self, root: str, rng: random.Random) -> Sample:
        """Draw one derivation top-down; `logp` sums the log-probabilities of the rules it used."""
        tokens: list[str] = []
        logp = 0.0
        parts: list[tuple[str, int, int]] = []

        def expand(a: str, depth: int) -> None:
            nonlocal logp
            cum = self._cum[a]
            k = min(bisect_right(cum, rng.random() * cum[-1]), len(cum) - 1)
            logp += self._logp[a][k]
            for s, nonterminal in self._marked[a][k]:
                start = len(tokens)
                if nonterminal:
                    expand(s, depth + 1)
                else:
                    tokens.append(s)
                if depth == 0:
                    parts.append((s, start, len(tokens)))

        expand(root, 0)
        return Sample(tokens, logp, parts)

    # ---- exact likelihoods ---------------------------------------------------------------------------
    def inside(self, tokens: list[str], root: str, prefix: bool = False, partial: bool = False) -> float:
        """P(root derives exactly `tokens`), or with `prefix`, P(root's yield starts with `tokens`).

        Memoised top-down parsing that sums over every derivation, so it is exact for ambiguous grammars too.
        In prefix mode, reaching the end of the input inside a symbol contributes probability 1 for the rest
        of the derivation (every nonterminal's rules sum to 1 and derivations are finite). With `partial`, the
        last token may be the beginning of a longer terminal (text cut inside a word).
        """
        n = len(tokens)
        memo: dict[tuple[str, int], dict[int, float]] = {}
        rules, marked, first, nullable = self.rules, self._marked, self._first, self._nullable

        def spans(a: str, i: int) -> dict[int, float]:
            key = (a, i)
            hit = memo.get(key)
            if hit is not None:
                return hit
            out: dict[int, float] = {}
            if prefix and i == n:
                out[n] = 1.0
                memo[key] = out
                return out
            tok = tokens[i] if i < n else None
            loose = partial and i == n - 1
            for (p, _), rhs, f in zip(rules[a], marked[a], first[a]):
                if f is not None and not loose and tok not in f:
                    continue  # the rule cannot start with this token
                cur = {i: p}
                for s, nonterminal in rhs:
                    nxt: dict[int, float] = {}
                    for j, q in cur.items():
                        if prefix and j == n:
                            nxt[n] = nxt.get(n, 0.0) + q
                        elif nonterminal:
                            if j == n and s not in nullable:
                                continue
                            for k, r in spans(s, j).items():
                                nxt[k] = nxt.get(k, 0.0) + q * r
                        elif j < n and (tokens[j] == s or (partial and j == n - 1 and s.startswith(tokens[j]))):
                            nxt[j + 1] = nxt.get(j + 1, 0.0) + q
                    cur = nxt
                    if not cur:
                        break
                for j, q in cur.items():
                    out[j] = out.get(j, 0.0) + q
            memo[key] = out
            return out

        return spans(root, 0).get(n, 0.0)

    # ---- closed forms --------------------------------------------------------------------------------
    def expected_counts(self, root: str) -> dict[str, float]:
        """E[number of times each nonterminal is expanded] in one derivation from `root`."""
        counts = {a: 0.0 for a in self.rules}
        counts[root] = 1.0
        for a in self._order:
            c = counts[a]
            if c == 0.0:
                continue
            for p, rhs in self.rules[a]:
                for s in rhs:
                    if is_nt(s):
                        counts[s] += c * p
        return counts

    def expected_terminals(self, root: str) -> dict[str, float]:
        """E[number of times each terminal is emitted] in one derivation from `root`."""
        out: dict[str, float] = {}
        for a, c in self.expected_counts(root).items():
            if c == 0.0:
                continue
            for p, rhs in self.rules[a]:
                for s in rhs:
                    if not is_nt(s):
                        out[s] = out.get(s, 0.0) + c * p
        return out

    def derivation_entropy(self, root: str) -> float:
        """Entropy (nats) of a derivation from `root`: sum over nonterminals of E[count] x H(its rules).

        For an unambiguous grammar this is exactly the entropy of the documents themselves.
        """
        counts = self.expected_counts(root)
        return sum(c * -sum(p * math.log(p) for p, _ in self.rules[a]) for a, c in counts.items() if c > 0)
