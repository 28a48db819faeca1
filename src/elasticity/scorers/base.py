"""The scorer interface: texts in, one float per text out, higher = more aligned.

The scorers in this package and their ranges:

    oracle       the embedded world's exact oracle (its range is documented in elasticity.world.oracle)
    classifier   P(aligned labels | text) from a sequence classifier, in [0, 1]
    score-model  sign * v, v = a scalar head at the last attended token; reals, or (0, 1) with sigmoid
    vader        (compound + 1) / 2 from the VADER lexicon, in [0, 1]; 0.5 = no sentiment words
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable


@runtime_checkable
class Scorer(Protocol):
    """A behaviour scorer. `score` returns one float per text; higher always means more aligned
    (for sentiment: more positive; for safety: less harmful). Implementations document their range."""

    name: str

    def score(self, texts: list[str]) -> list[float]: ...
