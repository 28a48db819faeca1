"""A world: the grammar, its mixture weights, and how to sample it. Saved in and loaded from a run directory.

A world run directory holds `grammar.json` (every rule, so the oracle never depends on the code version that
built it) and `world_card.json` (mixture weights among other facts); `load_world(run_dir)` reads both.
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass
from pathlib import Path

from elasticity.errors import UserError
from elasticity.files import atomic_write
from elasticity.world.grammar import ROOTS, build_grammar, opening_symbol
from elasticity.world.lexicon import STRONG_PROB
from elasticity.world.pcfg import Grammar, Sample, render

COMPONENTS = ROOTS  # ("neutral", "positive", "negative")
GRAMMAR_FILE = "grammar.json"
CARD_FILE = "world_card.json"


def normalise_weights(weights: dict[str, float]) -> dict[str, float]:
    """Mixture weights scaled to sum to 1; negative or all-zero weights are a `UserError`."""
    for c, w in weights.items():
        if c not in COMPONENTS:
            raise UserError(f"unknown world component '{c}' (components: {', '.join(COMPONENTS)})")
        if not math.isfinite(w) or w < 0:
            raise UserError(f"mixture weight of '{c}' must be a non-negative number, got {w}")
    total = sum(weights.values())
    if total <= 0:
        raise UserError("mixture weights are all zero; give at least one component a positive weight")
    return {c: weights.get(c, 0.0) / total for c in COMPONENTS}


@dataclass(frozen=True)
class World:
    """The generative world: `p(doc) = sum_c weights[c] * p(doc | c)`."""

    grammar: Grammar
    weights: dict[str, float]

    @classmethod
    def build(cls, weights: dict[str, float], zipf_a: float = 1.1, zipf_b: float = 1.0) -> "World":
        return cls(build_grammar(zipf_a, zipf_b), normalise_weights(weights))

    @property
    def positive_share_of_reviews(self) -> float:
        """P(positive | review) = w_pos / (w_pos + w_neg): the rate a model prompted with a review opening
        should write positive reviews at (NaN if the mixture has no reviews)."""
        den = self.weights["positive"] + self.weights["negative"]
        return self.weights["positive"] / den if den > 0 else float("nan")

    def sample(self, component: str, rng: random.Random) -> Sample:
        return self.grammar.sample(f"${component}", rng)

    def sample_component(self, rng: random.Random) -> str:
        u, acc = rng.random(), 0.0
        for c in COMPONENTS:
            acc += self.weights[c]
            if u < acc:
                return c
        return max(COMPONENTS, key=lambda c: self.weights[c])  # float round-off at u ~ 1

    def sample_mixture(self, rng: random.Random) -> tuple[str, Sample]:
        c = self.sample_component(rng)
        return c, self.sample(c, rng)

    def sample_review_split(self, component: str, rng: random.Random) -> tuple[str, str]:
        """A review as (opening, rest): `opening + rest` is the document; `rest` starts with a space."""
        s = self.sample(component, rng)
        k = opening_symbol(s.parts)
        prompt, full = render(s.tokens[:k]), s.text
        return prompt, full[len(prompt):]

    def sample_pair(self, rng: random.Random) -> tuple[str, str, str]:
        """(opening, positive rest, negative rest): one review opening continued both ways, each continuation
        exactly as the world writes it after that opening. A review is opening | body | closing with the body and
        closing drawn given the genre (fixed by the opening) and a fresh intensity, so the negative side
        re-expands the negative root's body and closing for the positive review's genre."""
        s = self.sample("positive", rng)
        k = opening_symbol(s.parts)
        genre = next(sym for sym, _, _ in s.parts if sym.startswith("$opening|")).split("|", 1)[1]
        intensity = "strong" if rng.random() < STRONG_PROB else "mild"
        tail = [t for part in (f"$body|negative|{genre}|{intensity}", f"$closing|negative|{genre}|{intensity}")
                for t in self.grammar.sample(part, rng).tokens]
        prompt = render(s.tokens[:k])
        return prompt, s.text[len(prompt):], render(s.tokens[:k] + tail)[len(prompt):]

    def sample_opening(self, rng: random.Random) -> str:
        """A review opening (identically distributed in both review components, so it carries no sentiment)."""
        genre = self.grammar.sample("$positive", rng)  # reuse the root's genre draw, then discard the rest
        k = opening_symbol(genre.parts)
        return render(genre.tokens[:k])

    def save(self, run_dir: Path) -> None:
        atomic_write(Path(run_dir) / GRAMMAR_FILE, json.dumps(self.grammar.to_json(), separators=(",", ":")))


def load_world(world: str | Path) -> World:
    """The world of a finished `elasticity world` run directory (its grammar and mixture weights)."""
    run_dir = Path(world)
    gpath, cpath = run_dir / GRAMMAR_FILE, run_dir / CARD_FILE
    if not gpath.is_file() or not cpath.is_file():
        raise UserError(f"{run_dir} is not a world run directory (no {GRAMMAR_FILE} / {CARD_FILE}); "
                        f"build one with `elasticity world`")
    try:
        grammar = Grammar.from_json(json.loads(gpath.read_text()))
        weights = json.loads(cpath.read_text())["mixture_weights"]
    except (json.JSONDecodeError, KeyError, ValueError) as e:
        raise UserError(f"{run_dir}: damaged world files ({e}); rebuild with `elasticity world`") from None
    return World(grammar, normalise_weights(weights))
