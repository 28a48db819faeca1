"""Typed result rows: what experiments measure, what analyses derive, what tables and figures read.

Names never carry numbers or meaning that code parses back: a metric is an enum with its threshold in a
field, a measured quantity on a dataset is a `View`. Every row turns into one flat record (`to_record`), the
form the CSV/JSONL result files hold, one column per number.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from enum import Enum

from elasticity.stats import Interval, log_odds

BUILT_IN_PAIRS = ("positive", "negative")  # rebound's held-out prompt/response sets


class Quantity(str, Enum):
    """A measured quantity of a model; the last two are per dataset."""

    SCORE = "score"  # mean scorer output over prompts x samples (higher = more aligned)
    LOG_ODDS = "log_odds"  # empirical logit of the score
    KL_RESPONSE = "kl_response"  # KL(model || base) per response token on the held-out pairs
    BITS_PER_TOKEN = "bpt"  # bits per target token on a held-out set
    KL_TO_BASE = "kl"  # KL(model || base) per token on a held-out text set


@dataclass(frozen=True)
class View:
    """A quantity, on a dataset where it has one: a curve of a rebound figure, a column of its results.

    >>> View(Quantity.BITS_PER_TOKEN, "heldout_neutral").column, View(Quantity.SCORE).column
    ('bpt_heldout_neutral', 'score')
    """

    quantity: Quantity
    dataset: str | None = None

    @property
    def column(self) -> str:
        return self.quantity.value if self.dataset is None else f"{self.quantity.value}_{self.dataset}"

    @property
    def falls(self) -> bool:
        """Views whose rebound is a fall (faster = more negative): behaviour and KL to the base."""
        return self.quantity in (Quantity.SCORE, Quantity.LOG_ODDS, Quantity.KL_RESPONSE)

    def of(self, point: Point) -> float:
        m = point.measurement
        if self.quantity is Quantity.BITS_PER_TOKEN:
            return m.bits_per_token[self.dataset]
        if self.quantity is Quantity.KL_TO_BASE:
            return m.kl_to_base[self.dataset]
        return getattr(m, self.quantity.value)


SCORE, LOG_ODDS, KL_RESPONSE = View(Quantity.SCORE), View(Quantity.LOG_ODDS), View(Quantity.KL_RESPONSE)


@dataclass(frozen=True)
class Measurement:
    """Everything measured of one model at one point (see `experiments.measurement`)."""

    score: float
    score_se: float
    samples: int  # scored texts behind the score
    finished_share: float  # samples that ended with EOS
    new_tokens: float  # mean sampled tokens
    kl_response: float
    bits_per_token: dict[str, float]  # per held-out set: positive, negative, then each text set
    kl_to_base: dict[str, float]  # per held-out text set

    @property
    def log_odds(self) -> float:
        return log_odds(self.score, self.samples)

    @property
    def texts(self) -> list[str]:
        return list(self.kl_to_base)

    def views(self) -> list[View]:
        """Every curve of a rebound: behaviour first, then the compression views in column order."""
        out = [SCORE, LOG_ODDS, KL_RESPONSE]
        out += [View(Quantity.BITS_PER_TOKEN, name) for name in BUILT_IN_PAIRS]
        for name in self.texts:
            out += [View(Quantity.BITS_PER_TOKEN, name), View(Quantity.KL_TO_BASE, name)]
        return out

    def to_record(self) -> dict:
        rec = {"score": self.score, "score_se": self.score_se, "samples": self.samples, "log_odds": self.log_odds,
               "kl_response": self.kl_response, "finished_share": self.finished_share,
               "new_tokens": self.new_tokens}
        rec.update({f"bpt_{name}": self.bits_per_token[name] for name in BUILT_IN_PAIRS})
        for name in self.texts:
            rec[f"bpt_{name}"] = self.bits_per_token[name]
            rec[f"kl_{name}"] = self.kl_to_base[name]
        return rec

    @classmethod
    def from_record(cls, rec: dict, texts: list[str]) -> Measurement:
        return cls(rec["score"], rec["score_se"], rec["samples"], rec["finished_share"], rec["new_tokens"],
                   rec["kl_response"], {name: rec[f"bpt_{name}"] for name in (*BUILT_IN_PAIRS, *texts)},
                   {name: rec[f"kl_{name}"] for name in texts})


@dataclass(frozen=True)
class Point:
    """One rebound grid point: a model after Q1 positive and Q2 negative examples (the base: q1 = 0, no seed)."""

    q1: int
    seed: int | None
    q2: int
    examples: int  # negative examples seen
    tokens: int  # negative training tokens seen
    steps: int
    train_loss: float | None  # mean training loss of the steps since the previous Q2
    measurement: Measurement

    @property
    def is_base(self) -> bool:
        return self.q1 == 0

    def to_record(self) -> dict:
        m = self.measurement.to_record()
        first = {"q1": self.q1, "seed": self.seed, "q2": self.q2, "examples": self.examples, "tokens": self.tokens,
                 "steps": self.steps, "train_loss": self.train_loss}
        first.update({k: m.pop(k) for k in ("score", "score_se", "samples", "log_odds", "kl_response")})
        return {**first, **m}

    @classmethod
    def from_record(cls, rec: dict, texts: list[str]) -> Point:
        return cls(rec["q1"], rec["seed"], rec["q2"], rec["examples"], rec["tokens"], rec["steps"],
                   rec["train_loss"], Measurement.from_record(rec, texts))


class Group(str, Enum):
    SHAPE = "shape"  # slopes of one curve
    REVERT = "revert"  # how many negatives bring a curve to a level
    TREND = "trend"  # a per-Q1 metric against log10 Q1: its change per tenfold more alignment data
    DEPTH = "depth"  # how far alignment moved the model


class Metric(str, Enum):
    INITIAL_SLOPE = "initial_slope"
    LATE_SLOPE = "late_slope"
    SLOPE_RATIO = "slope_ratio"
    SAMPLES_TO_REVERT = "samples_to_revert"  # the level is the row's threshold
    MEAN_EXCESS = "mean_excess"  # the curve's mean height above the level (the threshold) over the Q2 grid
    KL_MIN = "kl_min"
    Q2_AT_KL_MIN = "q2_at_kl_min"
    SCORE_GAIN = "score_gain"
    DELTA_BITS_PER_TOKEN = "delta_bits_per_token"
    KL_TO_BASE = "kl_to_base"


@dataclass(frozen=True)
class MetricRow:
    """One elasticity metric of a rebound, per seed and with its t-interval over seeds.

    `q1` is None for a trend (over every Q1). `threshold` is the level a samples-to-revert metric (or the trend
    of one) counts down to: the base model's score, or KL epsilon.
    """

    group: Group
    view: View
    metric: Metric
    q1: int | None
    interval: Interval
    per_seed: list[float | None]
    threshold: float | None = None

    @property
    def reached(self) -> bool:
        return self.interval.n > 0

    def to_record(self) -> dict:
        return {"group": self.group.value, "view": self.view.column, "metric": self.metric.value,
                "threshold": self.threshold, "q1": "all" if self.q1 is None else self.q1,
                **self.interval.to_dict(), "per_seed": self.per_seed}


@dataclass(frozen=True)
class CurveBand:
    """A figure's point: a view's mean over seeds at (Q1, Q2) with its 95% t-interval."""

    view: View
    q1: int
    q2: int
    interval: Interval

    def to_record(self) -> dict:
        iv = self.interval
        return {"view": self.view.column, "q1": self.q1, "q2": self.q2, "mean": iv.mean, "lo": iv.lo, "hi": iv.hi,
                "n": iv.n}


@dataclass(frozen=True)
class Savings:
    """Training tokens of the nested runs against one run per grid cell."""

    nested_tokens: int
    naive_tokens: int
    runs_nested: int
    runs_naive: int

    @property
    def saving_factor(self) -> float:
        return self.naive_tokens / self.nested_tokens if self.nested_tokens else math.nan

    def to_record(self) -> dict:
        return {"nested_tokens": self.nested_tokens, "naive_tokens": self.naive_tokens,
                "saved_tokens": self.naive_tokens - self.nested_tokens, "saving_factor": self.saving_factor,
                "runs_nested": self.runs_nested, "runs_naive": self.runs_naive}


@dataclass(frozen=True)
class ReboundGrid:
    """What a rebound's tables say about its own set-up."""

    q1: tuple[int, ...]
    q2: tuple[int, ...]
    seeds: tuple[int, ...]
    lr: float
    early: int  # the initial slope's end (0: no shape metrics)
    late: int  # the late slope's start
    kl_epsilon: float
    texts: tuple[str, ...]  # held-out text sets; the first measures alignment depth


@dataclass(frozen=True)
class PathEnd:
    """The end of one resistance fine-tune, measured on its target's held-out answers (`path.json`)."""

    steps: int
    examples: int
    tokens: int
    kl_target_end: float  # KL(theta_target || fine-tuned)
    kl_moved: float  # KL(fine-tuned || start model)
    heldout_loss_end: float  # the fine-tuned model's loss on them

    @classmethod
    def from_record(cls, rec: dict) -> PathEnd:
        return cls(**{f.name: rec[f.name] for f in fields(cls)})


@dataclass(frozen=True)
class PairRow:
    """Every number of one (seed, pair k < l) of a resistance experiment (see `analysis.resistance`)."""

    seed: int
    k: int
    l: int  # noqa: E741 - the paper's name
    forward_loss: float
    inverse_loss: float
    entropy_target_forward: float
    entropy_target_inverse: float
    start_forward: float
    start_inverse: float
    base_on_target_forward: float
    base_on_target_inverse: float
    kl_start_forward: float
    kl_start_inverse: float
    forward: PathEnd
    inverse: PathEnd

    @property
    def pair(self) -> str:
        return f"{self.l}/{self.k}"

    def to_record(self) -> dict:
        fwd, inv = self.forward_loss, self.inverse_loss
        h_l, h_k = self.entropy_target_forward, self.entropy_target_inverse
        rec = {"seed": self.seed, "k": self.k, "l": self.l, "pair": self.pair, "forward_loss": fwd,
               "inverse_loss": inv, "difference": fwd - inv, "inverse_lower": inv < fwd,
               "entropy_target_forward": h_l, "entropy_target_inverse": h_k, "target_gap": h_l - h_k,
               "excess_forward": fwd - h_l, "excess_inverse": inv - h_k, "excess_difference": (fwd - h_l) - (inv - h_k),
               "start_forward": self.start_forward, "start_inverse": self.start_inverse,
               "base_on_target_forward": self.base_on_target_forward,
               "base_on_target_inverse": self.base_on_target_inverse}
        for d, start, end in (("forward", self.kl_start_forward, self.forward),
                              ("inverse", self.kl_start_inverse, self.inverse)):
            rec[f"kl_start_{d}"] = start
            rec[f"kl_end_{d}"] = end.kl_target_end
            rec[f"kl_change_{d}"] = start - end.kl_target_end
            rec[f"kl_left_{d}"] = end.kl_target_end / start if start > 0 else math.nan
            rec[f"kl_moved_{d}"] = end.kl_moved
            rec[f"heldout_loss_{d}"] = end.heldout_loss_end
            for key in ("steps", "examples", "tokens"):
                rec[f"{key}_{d}"] = getattr(end, key)
        rec["kl_end_difference"] = rec["kl_end_forward"] - rec["kl_end_inverse"]
        rec["kl_left_difference"] = rec["kl_left_forward"] - rec["kl_left_inverse"]
        rec["inverse_closed_more"] = rec["kl_left_inverse"] < rec["kl_left_forward"]
        return rec


@dataclass(frozen=True)
class PairSummary:
    """Per pair, or over all pairs ("all"): each compared number's t-interval over seeds, and the counts."""

    pair: str
    cells: int
    inverse_lower: int
    inverse_closed_more: int
    intervals: dict[str, Interval] = field(default_factory=dict)

    def __getitem__(self, key: str) -> Interval:
        return self.intervals[key]

    def to_record(self) -> dict:
        rec = {"pair": self.pair, "cells": self.cells, "inverse_lower": self.inverse_lower,
               "inverse_closed_more": self.inverse_closed_more}
        for key, iv in self.intervals.items():
            rec.update({key: iv.mean, f"{key}_lo": iv.lo, f"{key}_hi": iv.hi, f"{key}_n": iv.n})
        return rec


@dataclass(frozen=True)
class LossCurve:
    """The training loss of every step of one resistance fine-tune."""

    seed: int
    k: int
    l: int  # noqa: E741
    direction: str  # "forward" (theta_k on D_l) or "inverse" (theta_l on D_k)
    losses: list[float]


@dataclass(frozen=True)
class ModelLoss:
    """A model's loss on a slice's answers before any fine-tune (model 0: the base; `difficulty.jsonl`)."""

    seed: int
    model: int
    dataset: int
    loss: float
    targets: int


@dataclass(frozen=True)
class SliceScore:
    """The mean score of one model's held-out answers (slice 0: the base)."""

    seed: int
    slice: int
    score: float


@dataclass(frozen=True)
class ResistanceSetup:
    """What a resistance experiment's tables say about its own set-up."""

    marks: tuple[int, ...]  # alignment examples seen by slices 1..n
    prompts: int  # prompts behind each D_k
    samples_per_prompt: int
    seeds: tuple[int, ...]
    lr: float  # of the pair fine-tunes
    loss_window: int
    pairs: tuple[tuple[int, int], ...]
