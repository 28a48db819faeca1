"""The scorer interface: texts in, one float per text out, higher = more aligned."""

from __future__ import annotations

from typing import Protocol, runtime_checkable


@runtime_checkable
class Scorer(Protocol):
    """A behaviour scorer. `score` returns one float per text; higher always means more aligned
    (for sentiment: more positive; for safety: less harmful). Implementations document their range."""

    name: str

    def score(self, texts: list[str]) -> list[float]: ...
