"""Behaviour scorers behind one interface: texts in, one float per text out, higher = more aligned.

`build_scorer(ScorerConfig(name=...))` builds one; `SCORERS` lists the names (the CLI's choices). Importing
this package loads no model and no heavy library.
"""

from elasticity.scorers.base import Scorer
from elasticity.scorers.registry import SCORERS, ScorerConfig, build_scorer, check_scorer_config

__all__ = ["SCORERS", "Scorer", "ScorerConfig", "build_scorer", "check_scorer_config"]
