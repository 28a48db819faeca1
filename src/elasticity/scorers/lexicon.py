"""An offline lexicon sentiment scorer: VADER (`vaderSentiment` on PyPI, which ships its lexicon).

No model, no download, no GPU: a sanity check beside a classifier, and a sentiment scorer for machines that
cannot fetch one. VADER was built for short social-media text; on long reviews it saturates near 0 or 1.
"""

from __future__ import annotations

from typing import Any

from elasticity.errors import UserError


class VaderScorer:
    """VADER's compound polarity mapped to [0, 1]: `score = (compound + 1) / 2`; higher = more positive.

    `compound` sums the valences of the words VADER knows (with its rules for negation, intensifiers,
    "but", capitals and punctuation) and squashes the sum `x` as `x / sqrt(x^2 + 15)`. A text with no
    sentiment word scores 0.5.

    "good" has valence 1.9 in the lexicon: compound = 1.9 / sqrt(1.9^2 + 15) = 0.4404, so the score is
    (0.4404 + 1) / 2 = 0.7202:

    >>> [round(s, 4) for s in VaderScorer().score(["good", "the movie"])]
    [0.7202, 0.5]
    """

    name = "vader"

    def __init__(self) -> None:
        try:
            from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer
        except ImportError:
            raise UserError("the vader scorer needs the vaderSentiment package: pip install vaderSentiment") from None
        self._analyzer: Any = SentimentIntensityAnalyzer()  # reads the lexicon files inside the package

    def describe(self) -> dict:
        """What the score means, for provenance files."""
        return {"name": self.name, "formula": "(compound + 1) / 2", "range": [0.0, 1.0]}

    def compound(self, text: str) -> float:
        """VADER's compound polarity of one text, in [-1, 1]."""
        return float(self._analyzer.polarity_scores(text)["compound"])

    def score(self, texts: list[str]) -> list[float]:
        """(compound + 1) / 2 per text, in [0, 1]."""
        return [(self.compound(t) + 1.0) / 2.0 for t in texts]
