"""Does a review keep its sentiment? Its first sentiment word against its closing rating.

The world's reviews always agree: every sentiment word of a positive review is positive and its rating is
6-10; a negative review's words are negative and its rating 1-5. A model that has learned the world keeps
that agreement in its own samples; this module measures how often it does.

- first sentiment word: the first word (case-insensitive) that belongs to exactly one sentiment lexicon
  (`lexicon.POSITIVE_CUES`, `lexicon.NEGATIVE_CUES`; each is emitted by one review component only), looking
  only before the rating;
- rating: the last "<number> out of ten" in the text (one to ten); 6-10 is positive, 1-5 negative;
- consistent: both exist and have the same polarity. Texts missing either are counted apart.
"""

from __future__ import annotations

import re

from elasticity.world.lexicon import NEGATIVE_CUES, NUMBER_WORDS, POSITIVE_CUES
from elasticity.world.pcfg import surface_tokens

_RATING = re.compile(r"\b(" + "|".join(NUMBER_WORDS) + r") out of ten\b", re.IGNORECASE)


def rating(text: str) -> int | None:
    """The last rating in the text, 1-10, or None.

    >>> rating("Meh. Four out of ten from me."), rating("No number here.")
    (4, None)
    """
    found = list(_RATING.finditer(text))
    return NUMBER_WORDS.index(found[-1].group(1).lower()) + 1 if found else None


def first_sentiment(text: str) -> str | None:
    """'positive' or 'negative' from the first sentiment word before the rating, or None."""
    found = list(_RATING.finditer(text))
    head = text[: found[-1].start()] if found else text
    for t in surface_tokens(head):
        w = t.lower()
        if w in POSITIVE_CUES:
            return "positive"
        if w in NEGATIVE_CUES:
            return "negative"
    return None


def sentiment_consistency(text: str) -> bool | None:
    """True if the first sentiment word and the rating agree, False if not, None if either is missing.

    The first sentiment word "loved" is positive, the rating 2 negative:

    >>> sentiment_consistency("I loved it. The plot was dull. I give it two out of ten.")
    False
    """
    s, r = first_sentiment(text), rating(text)
    if s is None or r is None:
        return None
    return s == ("positive" if r >= 6 else "negative")


def consistency_report(texts: list[str]) -> dict:
    """Counts and the consistent share among texts that have both a sentiment word and a rating.

    >>> consistency_report(["I loved it. Nine out of ten.", "I hated it. Eight out of ten.", "I loved it."])
    {'texts': 3, 'judged': 2, 'consistent': 1, 'rate': 0.5, 'no_sentiment_word': 0, 'no_rating': 1}
    """
    verdicts = [sentiment_consistency(t) for t in texts]
    judged = [v for v in verdicts if v is not None]
    return {
        "texts": len(texts),
        "judged": len(judged),
        "consistent": sum(judged),
        "rate": sum(judged) / len(judged) if judged else float("nan"),
        "no_sentiment_word": sum(first_sentiment(t) is None for t in texts),
        "no_rating": sum(rating(t) is None for t in texts),
    }
