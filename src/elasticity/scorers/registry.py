"""The scorer registry: a plain dict whose keys are the CLI choices, and the config that builds one.

    oracle       the embedded world's exact oracle (needs `world`)
    classifier   any Hugging Face sequence classifier: probability of the aligned label(s), in [0, 1]
    score-model  a scalar-head reward/cost model read at the last token, times `sign` (optionally squashed)
    vader        VADER lexicon sentiment, (compound + 1) / 2 in [0, 1]; offline, no model

Every scorer returns one float per text, higher = more aligned. Heavy imports (torch, transformers) happen
only when a model-backed scorer is built.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Literal, Optional

from elasticity.config import InputPath
from elasticity.errors import UserError
from elasticity.scorers.base import Scorer


@dataclass(frozen=True)
class ScorerConfig:
    """Which scorer, and how to build it. Fields a scorer does not use keep their defaults.

    Attributes:
        name: a key of `SCORERS`: oracle, classifier, score-model or vader.
        model: classifier / score-model: a local model folder, a run directory, or a hub id.
        world: oracle: the embedded world's directory.
        labels: classifier: names of the aligned labels (from the model's `id2label`), e.g. POSITIVE.
        label_indices: classifier: indices of the aligned labels (joined with `labels`).
        sign: score-model: +1 for a reward model, -1 for a cost model, so that higher = more aligned.
        sigmoid: score-model: report sigmoid(sign * value) in (0, 1) instead of sign * value.
        append_eos: score-model: append the EOS token before reading the last token (safe-rlhf models).
        head_key: score-model: the checkpoint's name for the scalar head if not `score` (safe-rlhf: score_head).
        padding_side: score-model: pad batches on this side (the scores do not depend on it).
        batch_size: texts per forward pass.
        max_length: longest input in tokens; longer texts are truncated and counted.
        device: "auto" (CUDA if present, else CPU), "cpu", "cuda", "cuda:1", ...
        dtype: model weights' dtype; None = float32.
        trust_remote_code: let a hub checkpoint run its own modelling code (off unless asked).
        allow_pickle: classifier / score-model: read weights stored only as a pickle, which can run code when read
            (off: safetensors only).
    """

    name: str = "oracle"
    model: InputPath = ""
    world: InputPath = ""
    labels: tuple[str, ...] = ()
    label_indices: tuple[int, ...] = ()
    sign: int = 1
    sigmoid: bool = False
    append_eos: bool = False
    head_key: str = ""
    padding_side: Literal["right", "left"] = "right"
    batch_size: int = 16
    max_length: int = 512
    device: str = "auto"
    dtype: Optional[Literal["float32", "bfloat16", "float16"]] = None
    trust_remote_code: bool = False
    allow_pickle: bool = False


# Fields that change what a score means: setting one for a scorer that ignores it is a mistake worth a stop.
_ONLY_FOR = {
    "model": ("classifier", "score-model"),
    "labels": ("classifier",),
    "label_indices": ("classifier",),
    "sign": ("score-model",),
    "sigmoid": ("score-model",),
    "append_eos": ("score-model",),
    "head_key": ("score-model",),
    "allow_pickle": ("classifier", "score-model"),
}


def _need_model(cfg: ScorerConfig) -> str:
    if not cfg.model:
        raise UserError(f"scorer '{cfg.name}' needs a model: set scorer.model to a model folder or hub id")
    return cfg.model


def _oracle(cfg: ScorerConfig) -> Scorer:
    if not cfg.world:
        raise UserError("scorer 'oracle' needs the embedded world's directory: set scorer.world DIR")
    world = Path(cfg.world).expanduser()
    if not world.is_dir():
        raise UserError(f"scorer.world: no world directory at {world} (build one with `elasticity world`)")
    from elasticity.world.oracle import load_oracle  # imported late: the world package is heavy and optional

    return load_oracle(world)


def _classifier(cfg: ScorerConfig) -> Scorer:
    from elasticity.scorers.classifier import ClassifierScorer

    return ClassifierScorer.load(
        _need_model(cfg),
        cfg.labels,
        cfg.label_indices,
        batch_size=cfg.batch_size,
        max_length=cfg.max_length,
        device=cfg.device,
        dtype=cfg.dtype,
        trust_remote_code=cfg.trust_remote_code,
        allow_pickle=cfg.allow_pickle,
    )


def _score_model(cfg: ScorerConfig) -> Scorer:
    from elasticity.scorers.score_model import ScoreModelScorer

    return ScoreModelScorer.load(
        _need_model(cfg),
        head_key=cfg.head_key,
        dtype=cfg.dtype,
        trust_remote_code=cfg.trust_remote_code,
        allow_pickle=cfg.allow_pickle,
        sign=cfg.sign,
        sigmoid=cfg.sigmoid,
        append_eos=cfg.append_eos,
        padding_side=cfg.padding_side,
        batch_size=cfg.batch_size,
        max_length=cfg.max_length,
        device=cfg.device,
    )


def _vader(cfg: ScorerConfig) -> Scorer:
    from elasticity.scorers.lexicon import VaderScorer

    return VaderScorer()


SCORERS: dict[str, Callable[[ScorerConfig], Scorer]] = {
    "oracle": _oracle,
    "classifier": _classifier,
    "score-model": _score_model,
    "vader": _vader,
}


def check_scorer_config(cfg: ScorerConfig) -> None:
    """Reject what no scorer can use, before anything is loaded (so a bad run fails before it starts).

    Raises:
        UserError: an unknown name (listing the known ones), a bad size or sign, or a meaning-changing field
            set for a scorer that would ignore it.
    """
    if cfg.name not in SCORERS:
        raise UserError(f"unknown scorer '{cfg.name}' (known scorers: {', '.join(SCORERS)})")
    if cfg.batch_size < 1:
        raise UserError(f"scorer.batch_size must be at least 1, got {cfg.batch_size}")
    if cfg.max_length < (2 if cfg.append_eos else 1):
        raise UserError(f"scorer.max_length is too small: {cfg.max_length}")
    if cfg.sign not in (1, -1):
        raise UserError(f"scorer.sign must be 1 or -1, got {cfg.sign}")
    defaults = ScorerConfig()
    for key, users in _ONLY_FOR.items():
        if cfg.name not in users and getattr(cfg, key) != getattr(defaults, key):
            raise UserError(f"scorer.{key} does not apply to the '{cfg.name}' scorer (it is for {', '.join(users)})")


def build_scorer(cfg: ScorerConfig) -> Scorer:
    """Check `cfg` and build its scorer (loading a model where the scorer has one).

    Raises:
        UserError: see `check_scorer_config`; also a missing model path or world directory, an unreadable
            checkpoint, or an aligned label the classifier does not have.
    """
    check_scorer_config(cfg)
    return SCORERS[cfg.name](cfg)



class Reversed:
    """A scorer read the other way round, for rebound's `--reverse` (the negative behaviour is the aligned one):
    `lo + hi - s` for a scorer bounded in [lo, hi] (every scorer here but a score-model without sigmoid), else `-s`.
    So higher still means more aligned, and a bounded score keeps its range."""

    def __init__(self, scorer: Scorer, bounds: tuple[float, float] | None):
        self.inner, self.bounds, self.name = scorer, bounds, f"reversed-{scorer.name}"

    def score(self, texts: list[str]) -> list[float]:
        values = self.inner.score(texts)
        if self.bounds is None:
            return [-v for v in values]
        lo, hi = self.bounds
        return [lo + hi - v for v in values]


def score_bounds(cfg: ScorerConfig) -> tuple[float, float] | None:
    """The range a scorer's values lie in, or None where they are any real (a score-model without sigmoid)."""
    return None if cfg.name == "score-model" and not cfg.sigmoid else (0.0, 1.0)


def build_scorer_for(cfg: ScorerConfig, reverse: bool) -> Scorer:
    """`build_scorer`, read in the direction of the experiment (reversed when the negative side is aligned)."""
    scorer = build_scorer(cfg)
    return Reversed(scorer, score_bounds(cfg)) if reverse else scorer
