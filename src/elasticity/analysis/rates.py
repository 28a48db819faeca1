"""Theorem 4.2 measured: normalised compression rates through the perturbation, the ratio against k, Hooke's form.

Three datasets, in the theorem's names: D_p (pre-training text; a held-out sample of it), D_a (the alignment
data: held-out positive pairs) and D_t (the perturbation data: held-out negative pairs). Sizes are tokens:
|D_p| the base model's pre-training tokens, |D_a| the tokens of the Q1 aligned examples, |D_t| the tokens of the
negative examples seen at a grid point, so

    k = |D_p| / |D_a|          l = |D_t| / |D_a|

A normalised rate gamma_i (bits/token) is the model's rate on D_i minus a normaliser of D_i alone: on the world its
exact entropy (then gamma_i is the excess code length, the KL per token from the truth to the model), on real
models the base model's rate or a given reference. The ratio and the forces below use only changes of gamma,
so any normaliser that does not move with the model gives the same numbers.

Per (model, Q1, seed) the derivatives near l = 0 are finite differences: the least-squares slope of gamma against
l over Q2 = 0 and the first `span` grid points after it (span 1: (gamma(l_1) - gamma(0)) / l_1), and

    ratio = -(d gamma_a / dl) / (d gamma_p / dl)        (the theorem: Theta(k); the ideal code: exactly k at l -> 0)

is summarised per (model, Q1) as a mean with a 95% t-interval over seeds. Its log-log slope against k is fitted
per seed by least squares over the cells where the ratio is positive (gamma_p fell, as the theorem says), then a
t-interval over seeds: over every cell of a group of models that share a parameter count ("all"), within each
model (k moved by Q1 alone: "q1") and within each Q1 (k moved by pre-training volume alone: "volume").

Hooke's form: the "force" on D_i at a grid point is F_i = |D_i| x Delta gamma_i (bits: the change of the whole
dataset's code length since Q2 = 0). The ideal code balances them exactly to first order, F_p + F_a + F_t = 0,
with F_a = -F_p at l -> 0 (`theory.theorem`); the Hooke ratio F_a / (-F_p) says whether the forces on the
alignment and the pre-training data are equal (1) across the grid.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from elasticity.stats import Interval, t_interval

ROLES = ("p", "a", "t")  # pre-training, alignment, perturbation
ROLE_NAMES = {"p": "pre-training (D_p)", "a": "alignment (D_a)", "t": "perturbation (D_t)"}
ALONG = ("all", "q1", "volume")


@dataclass(frozen=True)
class Series:
    """One negative fine-tune (model, Q1, seed): its normalised rates at every Q2, Q2 = 0 first."""

    model: str
    parameters: float  # 0 = unknown
    pretrain_tokens: float  # |D_p|
    q1: int
    seed: int
    align_tokens: int  # |D_a|: tokens of the Q1 aligned examples
    q2: tuple[int, ...]
    perturb_tokens: tuple[int, ...]  # |D_t| at each Q2
    gamma: dict[str, tuple[float, ...]]  # role (p, a, t) -> normalised rate at each Q2, bits/token

    @property
    def k(self) -> float:
        return self.pretrain_tokens / self.align_tokens

    @property
    def l_values(self) -> tuple[float, ...]:  # l = |D_t| / |D_a| at each Q2
        return tuple(t / self.align_tokens for t in self.perturb_tokens)

    def force(self, role: str, i: int) -> float:
        """F_i at the i-th Q2 (bits): the dataset's size x the change of its normalised rate since Q2 = 0."""
        size = {"p": self.pretrain_tokens, "a": self.align_tokens, "t": self.perturb_tokens[i]}[role]
        return size * (self.gamma[role][i] - self.gamma[role][0])


def derivative(l: Sequence[float], gamma: Sequence[float], span: int = 1) -> float:
    """d gamma / dl near l = 0: the least-squares slope over the first `span` + 1 points (l_0 = 0 included).

    With span 1 it is the forward difference: l = (0, 0.5), gamma = (0.10, 0.13) give 0.03 / 0.5 = 0.06.

    >>> l, gamma = [0.0, 0.5, 1.0], [0.10, 0.13, 0.20]
    >>> round(derivative(l, gamma), 6), round(derivative(l, gamma, span=2), 6)
    (0.06, 0.1)
    """
    if span < 1 or len(l) < span + 1:
        raise ValueError(f"a finite difference over {span} points needs {span + 1} values, got {len(l)}")
    x, y = np.asarray(l[: span + 1], dtype=float), np.asarray(gamma[: span + 1], dtype=float)
    dx = x - x.mean()
    return float((dx * (y - y.mean())).sum() / (dx * dx).sum())


def ratio(d_align: float, d_pretrain: float) -> float:
    """-(d gamma_a/dl) / (d gamma_p/dl); NaN where gamma_p did not move."""
    return -d_align / d_pretrain if d_pretrain != 0 else math.nan


def ideal_ratio(k: float, l: float, share: float | None) -> float:
    """The ideal code's ratio for the same k: exactly k at l = 0; at l > 0 the secant -Delta gamma_a / Delta gamma_p
    over [0, l] of the model q(l) = (k p + a + l t) / (k + 1 + l) when D_a and D_t are disjoint components of
    D_p and D_t's share of D_p is `share` (on the world, the negative reviews' weight). Sizes are counted in
    tokens as if every dataset's documents were equally long. Then, in nats per token,

        Delta gamma_a = ln(1 + l / (k + 1))       Delta gamma_p = Delta gamma_a - share * ln(1 + l / (k share))

    (`share` None: unknown, the l -> 0 value k.) With share 0.3, gamma_p falls while l < 0.3 / 0.7 and its secant
    while l < 2 * 0.3 / 0.7 (to second order), so the ideal ratio grows from k at l = 0 and changes sign near
    l = 0.86:

    >>> ideal_ratio(100.0, 0.0, 0.3), round(ideal_ratio(100.0, 0.5, 0.3), 1), ideal_ratio(100.0, 0.5, None)
    (100.0, 240.8, 100.0)
    """
    if l == 0 or share is None:
        return k
    d_align = math.log1p(l / (k + 1.0))
    d_pretrain = d_align - (share * math.log1p(l / (k * share)) if share > 0 else 0.0)
    return -d_align / d_pretrain if d_pretrain != 0 else math.nan


@dataclass(frozen=True)
class RatioRow:
    """The measured ratio of one (model, Q1), per seed and over seeds, beside the theory's."""

    model: str
    parameters: float
    pretrain_tokens: float
    q1: int
    k: float  # mean over seeds (|D_a| differs a little between seeds' orders)
    l: float  # l at the last point of the finite difference, mean over seeds
    d_align: Interval  # d gamma_a / dl, bits/token per unit l
    d_pretrain: Interval
    d_perturb: Interval
    ratio: Interval
    per_seed: dict[int, float]  # seed -> ratio
    per_seed_k: dict[int, float]
    pretrain_fell: int  # seeds where gamma_p fell (the theorem's sign)
    align_rose: int  # seeds where gamma_a rose
    ideal: float  # the ideal code's secant ratio at this (k, l); k where the share is unknown

    def to_record(self) -> dict:
        rec = {"model": self.model, "parameters": self.parameters, "pretrain_tokens": self.pretrain_tokens,
               "q1": self.q1, "k": self.k, "l": self.l, "theory_k": self.k, "ideal_secant": self.ideal}
        for name in ("d_align", "d_pretrain", "d_perturb", "ratio"):
            iv = getattr(self, name)
            rec |= {name: iv.mean, f"{name}_lo": iv.lo, f"{name}_hi": iv.hi}
        seeds = len(self.per_seed)
        return rec | {"seeds": seeds, "pretrain_fell": self.pretrain_fell, "align_rose": self.align_rose,
                      "seed_list": list(self.per_seed), "per_seed": list(self.per_seed.values())}


def _by_cell(series: list[Series]) -> dict[tuple[str, int], list[Series]]:
    """(model, Q1) -> its negative runs, one per seed, in the order first seen."""
    cells: dict[tuple[str, int], list[Series]] = {}
    for s in series:
        cells.setdefault((s.model, s.q1), []).append(s)
    return cells


def ratio_rows(series: list[Series], span: int = 1, share: float | None = None) -> list[RatioRow]:
    """One RatioRow per (model, Q1), in the order first seen."""
    cells = _by_cell(series)
    rows = []
    for (model, q1), runs in cells.items():
        d = {role: [derivative(s.l_values, s.gamma[role], span) for s in runs] for role in ROLES}
        ratios = [ratio(a, p) for a, p in zip(d["a"], d["p"])]
        k, l = float(np.mean([s.k for s in runs])), float(np.mean([s.l_values[span] for s in runs]))
        rows.append(RatioRow(
            model, runs[0].parameters, runs[0].pretrain_tokens, q1, k, l, t_interval(d["a"]), t_interval(d["p"]),
            t_interval(d["t"]), t_interval(ratios), {s.seed: r for s, r in zip(runs, ratios)},
            {s.seed: s.k for s in runs}, sum(v < 0 for v in d["p"]), sum(v > 0 for v in d["a"]),
            ideal_ratio(k, l, share)))
    return rows


def within_slope(x: Sequence[float], y: Sequence[float], groups: Sequence) -> float:
    """Least-squares slope of y on x with one intercept per group (x and y centred within each group); NaN when x
    does not vary within any group.

    Two groups: x = (1, 2) with y = (1, 3), and x = (1, 3) with y = (5, 7). Centred: x (-0.5, 0.5, -1, 1),
    y (-1, 1, -1, 1), so the slope is (0.5 + 0.5 + 1 + 1) / (0.25 + 0.25 + 1 + 1) = 3 / 2.5 = 1.2:

    >>> within_slope([1, 2, 1, 3], [1, 3, 5, 7], ["a", "a", "b", "b"])
    1.2
    """
    x, y, g = np.asarray(x, dtype=float), np.asarray(y, dtype=float), list(groups)
    dx, dy = np.empty_like(x), np.empty_like(y)
    for key in set(g):
        idx = np.array([i for i, v in enumerate(g) if v == key])
        dx[idx], dy[idx] = x[idx] - x[idx].mean(), y[idx] - y[idx].mean()
    ss = float((dx * dx).sum())
    return float((dx * dy).sum() / ss) if ss > 1e-12 else math.nan


@dataclass(frozen=True)
class Fit:
    """The log-log slope of the measured ratio against k in one group of models (the theory: 1)."""

    group: str  # the models' parameter count, as text
    along: str  # all | q1 (within each model) | volume (within each Q1)
    models: tuple[str, ...]
    slope: Interval
    per_seed: dict[int, float]
    cells: int  # (model, Q1) cells
    left_out: int  # (cell, seed) values not positive (gamma_p did not fall): no logarithm
    k_min: float
    k_max: float

    def to_record(self) -> dict:
        return {"group": self.group, "along": self.along, "models": " ".join(self.models), "slope": self.slope.mean,
                "slope_lo": self.slope.lo, "slope_hi": self.slope.hi, "seeds": self.slope.n, "theory": 1.0,
                "cells": self.cells, "left_out": self.left_out, "k_min": self.k_min, "k_max": self.k_max,
                "seed_list": list(self.per_seed), "per_seed": list(self.per_seed.values())}


def _group_name(parameters: float) -> str:
    return f"{parameters:,.0f} parameters" if parameters else "parameters unknown"


def fits(rows: list[RatioRow]) -> list[Fit]:
    """Per group of models that share a parameter count, the slope of log10 ratio on log10 k, per seed, along
    each direction that has k varying (a direction needs two k values within one of its groups)."""
    out = []
    for params in dict.fromkeys(r.parameters for r in rows):
        group = [r for r in rows if r.parameters == params]
        seeds = sorted({s for r in group for s in r.per_seed})
        models = tuple(dict.fromkeys(r.model for r in group))
        for along in ALONG if len(models) > 1 else ("all",):  # one model: within it is every cell
            key = {"all": lambda r: 0, "q1": lambda r: r.model, "volume": lambda r: r.q1}[along]
            per_seed, left_out = {}, 0
            for seed in seeds:
                pts = [(r, r.per_seed[seed]) for r in group if seed in r.per_seed]
                left_out += sum(not (v > 0) for _, v in pts)
                pts = [(r, v) for r, v in pts if v > 0]
                slope = within_slope([math.log10(r.per_seed_k[seed]) for r, _ in pts], [math.log10(v) for _, v in pts],
                                     [key(r) for r, _ in pts]) if len(pts) > 1 else math.nan
                if math.isfinite(slope):
                    per_seed[seed] = slope
            if per_seed:
                out.append(Fit(_group_name(params), along, models,
                               t_interval(list(per_seed.values())), per_seed, len(group), left_out,
                               min(r.k for r in group), max(r.k for r in group)))
    return out


@dataclass(frozen=True)
class HookeRow:
    """The forces on the three datasets at one (model, Q1, Q2 > 0), over seeds, and their ratio."""

    model: str
    q1: int
    q2: int
    l: float
    forces: dict[str, Interval]  # role -> F_i (bits)
    hooke: Interval  # F_a / (-F_p): 1 when the forces are equal
    balance: Interval  # (F_p + F_a + F_t) / |F_p|: 0 in the ideal code (to first order)

    def to_record(self) -> dict:
        rec = {"model": self.model, "q1": self.q1, "q2": self.q2, "l": self.l}
        for role, iv in self.forces.items():
            rec |= {f"force_{role}": iv.mean, f"force_{role}_lo": iv.lo, f"force_{role}_hi": iv.hi}
        return rec | {"hooke_ratio": self.hooke.mean, "hooke_ratio_lo": self.hooke.lo,
                      "hooke_ratio_hi": self.hooke.hi, "balance": self.balance.mean, "balance_lo": self.balance.lo,
                      "balance_hi": self.balance.hi}


def hooke_rows(series: list[Series]) -> list[HookeRow]:
    """One HookeRow per (model, Q1, Q2 > 0)."""
    cells = _by_cell(series)
    rows = []
    for (model, q1), runs in cells.items():
        for i, q2 in enumerate(runs[0].q2):
            if q2 == 0:
                continue
            f = {role: [s.force(role, i) for s in runs] for role in ROLES}
            hooke = [a / -p if p != 0 else math.nan for a, p in zip(f["a"], f["p"])]
            balance = [(p + a + t) / abs(p) if p != 0 else math.nan for p, a, t in zip(f["p"], f["a"], f["t"])]
            rows.append(HookeRow(model, q1, q2, float(np.mean([s.l_values[i] for s in runs])),
                                 {role: t_interval(v) for role, v in f.items()}, t_interval(hooke),
                                 t_interval(balance)))
    return rows


@dataclass(frozen=True)
class HookeSummary:
    """Per group, the geometric mean over cells of the Hooke ratio at the first Q2 (the theory's l -> 0 regime)."""

    group: str
    log10: Interval  # mean over cells of log10 F_a / (-F_p), per seed, then over seeds
    per_seed: dict[int, float] = field(default_factory=dict)
    left_out: int = 0  # (cell, seed) values that were not positive

    def to_record(self) -> dict:
        iv = self.log10
        return {"group": self.group, "hooke_ratio": 10 ** iv.mean, "hooke_ratio_lo": 10 ** iv.lo,
                "hooke_ratio_hi": 10 ** iv.hi, "log10": iv.mean, "log10_lo": iv.lo, "log10_hi": iv.hi,
                "seeds": iv.n, "left_out": self.left_out, "theory": 1.0}


def hooke_summary(series: list[Series]) -> list[HookeSummary]:
    """Per group of models that share a parameter count: per seed, the mean over (model, Q1) cells of log10 of
    F_a / (-F_p) at the first Q2 > 0 (with span 1 it is the measured ratio / k), then a t-interval over seeds."""
    out = []
    for params in dict.fromkeys(s.parameters for s in series):
        group = [s for s in series if s.parameters == params]
        per_seed, left_out = {}, 0
        for seed in sorted({s.seed for s in group}):
            forces = [(s.force("a", 1), s.force("p", 1)) for s in group if s.seed == seed and len(s.q2) > 1]
            vals = [a / -p if p != 0 else math.nan for a, p in forces]
            left_out += sum(not (v > 0) for v in vals)
            logs = [math.log10(v) for v in vals if v > 0]
            if logs:
                per_seed[seed] = float(np.mean(logs))
        if per_seed:
            out.append(HookeSummary(_group_name(params), t_interval(list(per_seed.values())), per_seed, left_out))
    return out
