"""Theorem 4.2 (elasticity) checked numerically: sweep l = |D_t|/|D_a| and k = |D_p|/|D_a| at several depths.

Three datasets on one pruned leaf list (sizes in units of ``|D_a|``): ``D_p`` (weight k, a mixture of
components), ``D_a`` (weight 1, like one component) and ``D_t`` (weight l, like another). The model is

    q(l) = (k p + a + l t) / K,    K = k + 1 + l,    dq/dl = (t - q) / K

so the ideal rate ``gamma_i = -sum_x p_i(x) log2 q(x) / d`` has the exact derivative

    d gamma_i / dl = -(A_i - 1) / (K d ln 2),    A_i = sum_x p_i(x) t(x) / q(x)

which is what every derivative here uses (the Huffman rate is a step function of l: its derivative is 0
almost everywhere, so it is shown and fitted by a secant, never differentiated). Because ``q`` is the
size-weighted mean of the datasets, ``k A_p + A_a + l A_t = K``, i.e. the Hooke balance

    k d(gamma_p)/dl + d(gamma_a)/dl + l d(gamma_t)/dl = 0

holds exactly; at l -> 0 the theorem's ratio ``-d(gamma_a)/d(gamma_p)`` is exactly k, and for l > 0 it is
``k + l * d(gamma_t)/d(gamma_p)``. With disjoint components (D_t has weight w_t in D_p) this is
``(k w_t + l) / (w_t - l (1 - w_t))``: gamma_p falls only while ``l < l* = w_t / (1 - w_t)``, where the
model's share of D_t's component reaches its share in D_p; there the ratio diverges and beyond it
gamma_p rises too.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from elasticity.stats import LN2
from elasticity.theory.protocol import align, huffman_lengths
from elasticity.theory.trees import TokenTree, mix


@dataclass(frozen=True)
class Setting:
    """D_p, D_a and D_t pruned to one depth, as leaf distributions on a shared leaf list."""

    depth: int
    p: np.ndarray  # (M,)
    a: np.ndarray  # (M,)
    t: np.ndarray  # (M,)

    @property
    def leaves(self) -> int:
        return int(self.p.size)

    def model(self, k: float, l: np.ndarray) -> np.ndarray:
        """The model learned from sizes (k, 1, l): one row per l, shape (L, M)."""
        l = np.atleast_1d(np.asarray(l, dtype=float))[:, None]
        return (k * self.p + self.a + l * self.t) / (k + 1.0 + l)

    def rates(self, k: float, l: np.ndarray) -> np.ndarray:
        """Ideal rates (bits/token) of D_p, D_a, D_t: shape (3, L)."""
        logq = np.log2(self.model(k, l))  # (L, M)
        return -np.stack([logq @ self.p, logq @ self.a, logq @ self.t]) / self.depth

    def entropies(self) -> np.ndarray:
        """Own entropy per token of D_p, D_a, D_t: the normaliser (KL = rate - entropy)."""
        out = []
        for x in (self.p, self.a, self.t):
            nz = x > 0
            out.append(-(x[nz] * np.log2(x[nz])).sum() / self.depth)
        return np.array(out)

    def derivatives(self, k: float, l: np.ndarray) -> np.ndarray:
        """Exact d gamma_i / dl (bits/token per unit l) of D_p, D_a, D_t: shape (3, L)."""
        l = np.atleast_1d(np.asarray(l, dtype=float))
        q = self.model(k, l)
        g = (self.t - q) / ((k + 1.0 + l)[:, None] * q)  # d ln q / dl, (L, M)
        return -np.stack([g @ self.p, g @ self.a, g @ self.t]) / (self.depth * LN2)

    def finite_difference(self, k: float, l: np.ndarray, h: float = 1e-4) -> np.ndarray:
        """Central difference ``(gamma(l + h) - gamma(l - h)) / 2h`` of D_p, D_a, D_t: an independent check.

        ``log q(l+h) - log q(l-h)`` is formed as ``log1p(dq / q(l-h))`` with ``dq`` simplified by hand, since
        subtracting two nearly equal logs would lose the 1/k^2-small change of gamma_p at large k.
        """
        l = np.atleast_1d(np.asarray(l, dtype=float))[:, None]
        base, k0 = k * self.p + self.a, k + 1.0
        dq = 2 * h * (self.t * k0 - base) / ((k0 + l + h) * (k0 + l - h))  # q(l+h) - q(l-h), (L, M)
        step = np.log1p(dq / ((base + (l - h) * self.t) / (k0 + l - h))) / LN2
        return -np.stack([step @ self.p, step @ self.a, step @ self.t]) / (self.depth * 2 * h)

    def huffman_rates(self, k: float, l: np.ndarray) -> np.ndarray:
        """Huffman-code rates (bits/token) of D_p, D_a, D_t: shape (3, L); piecewise constant in l."""
        out = np.empty((3, np.size(l)))
        for j, q in enumerate(self.model(k, l)):
            lengths = huffman_lengths(q)
            out[:, j] = [self.p @ lengths, self.a @ lengths, self.t @ lengths]
        return out / self.depth


def make_setting(
    components: Sequence[TokenTree], weights: Sequence[float], a_index: int, t_index: int, depth: int
) -> Setting:
    """D_p = the weighted mixture of all components, D_a = component a_index, D_t = component t_index."""
    pre = mix(components, weights)
    _, dists = align([pre, components[a_index], components[t_index]], depth)
    keep = dists.sum(axis=0) > 0
    return Setting(depth, *dists[:, keep])


def flip_point(s: Setting, k: float, which: int = 0, l_hi: float = 1e4) -> float:
    """The l at which d gamma_which / dl changes sign (0 = D_p: from falling; 1 = D_a: from rising).

    Returns 0.0 if the theorem's sign already fails at l = 0, ``inf`` if it holds up to ``l_hi``.
    """
    want = -1.0 if which == 0 else 1.0

    def ok(l: float) -> bool:
        return want * float(s.derivatives(k, np.array([l]))[which, 0]) > 0

    if not ok(0.0):
        return 0.0
    if ok(l_hi):
        return math.inf
    lo, hi = 0.0, l_hi
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if ok(mid) else (lo, mid)
        if hi - lo <= 1e-12 * max(1.0, hi):
            break
    return 0.5 * (lo + hi)


def fit_loglog(x: Sequence[float], y: Sequence[float]) -> dict:
    """Least-squares line ``log y = b0 + b1 log x`` with the standard error of the slope b1.

    Points with y <= 0 (or non-finite) are left out and counted in ``excluded``; fewer than 3 kept points
    give NaN (a standard error needs at least one residual degree of freedom). y = 3 x exactly gives slope 1,
    intercept log 3 and standard error 0:

    >>> fit = fit_loglog([1, 2, 4, 8], [3, 6, 12, 24])
    >>> round(fit["slope"], 12), round(fit["intercept"], 12) == round(math.log(3), 12), round(fit["se"], 12)
    (1.0, True, 0.0)
    """
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    good = np.isfinite(y) & (y > 0) & np.isfinite(x) & (x > 0)
    n = int(good.sum())
    out = {"slope": math.nan, "se": math.nan, "intercept": math.nan, "n": n, "excluded": int(x.size - n)}
    if n < 3:
        return out
    lx, ly = np.log(x[good]), np.log(y[good])
    xc = lx - lx.mean()
    sxx = float(xc @ xc)
    slope = float(xc @ (ly - ly.mean()) / sxx)
    intercept = float(ly.mean() - slope * lx.mean())
    resid = ly - intercept - slope * lx
    out.update(slope=slope, intercept=intercept, se=math.sqrt(float(resid @ resid) / (n - 2) / sxx))
    return out


def secant_slope(l: np.ndarray, y: np.ndarray) -> float:
    """Least-squares slope of y against l: the Huffman rate's average trend (its pointwise slope is 0 a.e.)."""
    if len(l) < 2 or np.ptp(l) == 0:
        return math.nan
    if np.ptp(y) == 0:  # no Huffman step in range: exactly flat (avoid reporting rounding noise as a trend)
        return 0.0
    lc = l - l.mean()
    return float(lc @ (y - y.mean()) / (lc @ lc))


def sweep_depth(
    s: Setting, ks: Sequence[float], ls: np.ndarray, alignment_size: float, huffman: bool = True
) -> tuple[list[dict], list[dict]]:
    """Every number at one depth: a row per (k, l), and a row per k about the sign flips and Huffman trends.

    Rows hold the ideal and Huffman rates, the normalised rates (KL / d, our normaliser, and rate - log2 M / d,
    the paper's), the exact derivatives and a central finite-difference check of them, the theorem's ratio
    ``-d(gamma_a)/d(gamma_p)`` and the Hooke forces ``F_i = |D_i| * (KL_i(l) - KL_i(0)) / d``.
    """
    ls = np.asarray(ls, dtype=float)
    ent = s.entropies()
    log_m = math.log2(s.leaves) / s.depth
    rows, per_k = [], []
    for k in ks:
        rates = s.rates(k, ls)
        der = s.derivatives(k, ls)
        fd = s.finite_difference(k, ls)
        hub = s.huffman_rates(k, ls) if huffman else np.full_like(rates, math.nan)
        kl = rates - ent[:, None]
        kl0 = s.rates(k, np.array([0.0]))[:, 0] - ent
        sizes = np.stack([np.full_like(ls, k), np.ones_like(ls), ls]) * alignment_size
        force = sizes * (kl - kl0[:, None])
        l_star_p, l_star_a = flip_point(s, k, 0), flip_point(s, k, 1)
        for j, l in enumerate(ls):
            row = {"d": s.depth, "k": float(k), "l": float(l), "leaves": s.leaves}
            row.update({f"size_{n}": float(sizes[i, j]) for i, n in enumerate("pat")})
            for i, n in enumerate("pat"):
                row[f"gamma_{n}_ideal"] = float(rates[i, j])
                row[f"gamma_{n}_huffman"] = float(hub[i, j])
                row[f"gamma_{n}_normalised"] = float(kl[i, j])
                row[f"gamma_{n}_normalised_log_m"] = float(rates[i, j] - log_m)
                row[f"dgamma_{n}_dl"] = float(der[i, j])
                row[f"dgamma_{n}_dl_fd"] = float(fd[i, j])
                row[f"force_{n}"] = float(force[i, j])
            # at l* itself d(gamma_p)/dl is rounding noise (~1e-20): no sign, no ratio
            flat_p = abs(der[0, j]) <= 1e-9 * abs(der[0, 0])
            row["ratio"] = float(-der[1, j] / der[0, j]) if not flat_p else math.nan
            # at l = 0 both forces are 0 and their ratio is rounding noise
            row["hooke_balance"] = float(-force[1, j] / force[0, j]) if l > 0 and force[0, j] != 0 else math.nan
            row["signs_ok"] = bool(der[0, j] < 0 < der[1, j]) and not flat_p
            rows.append(row)
        below = ls < l_star_p * (1 - 1e-8)  # the Huffman secant is fitted where the ideal derivative keeps one sign
        hp = secant_slope(ls[below], hub[0, below]) if huffman else math.nan
        ha = secant_slope(ls[below], hub[1, below]) if huffman else math.nan
        per_k.append(
            {
                "d": s.depth,
                "k": float(k),
                "l_star_p": l_star_p,
                "l_star_a": l_star_a,
                "huffman_secant_p": hp,
                "huffman_secant_a": ha,
                "huffman_signs_ok": bool(hp < 0 < ha),
                "huffman_steps_p": int(np.unique(np.round(hub[0, below], 12)).size) if huffman else 0,
                "huffman_steps_a": int(np.unique(np.round(hub[1, below], 12)).size) if huffman else 0,
            }
        )
    return rows, per_k


def slope_table(rows: list[dict], tol_abs: float = 1e-9) -> list[dict]:
    """The log-log fit of the ratio against k at every (d, l), using only points where both signs hold.

    ``within_2se``: |slope - 1| <= 2 SE (+ ``tol_abs`` for float rounding when the fit is exact).
    """
    cells: dict[tuple[int, float], list[dict]] = {}
    for r in rows:
        cells.setdefault((r["d"], r["l"]), []).append(r)
    out = []
    for (d, l), rs in sorted(cells.items()):
        ks = [r["k"] for r in rs]
        ratios = [r["ratio"] if r["signs_ok"] else math.nan for r in rs]
        fit = fit_loglog(ks, ratios)
        fit.update(d=d, l=l)
        fit["within_2se"] = bool(abs(fit["slope"] - 1) <= 2 * fit["se"] + tol_abs) if fit["n"] >= 3 else False
        out.append({"d": d, "l": l, **{k: fit[k] for k in ("slope", "se", "intercept", "n", "excluded")},
                    "within_2se": fit["within_2se"]})
    return out


def seed_check(s: Setting, ks: Sequence[float], l_ref: float) -> dict:
    """Cheap per-seed check at one depth: do the signs hold at l = 0 for every k, and the slope at l_ref.

    At l = 0 the signs hold iff ``A_a < 1``, i.e. iff the depth-d model tells D_a and D_t apart well enough
    (by the balance, ``k (A_p - 1) = 1 - A_a`` there); ``A_a`` is reported at k = k_min.
    """
    ks = np.asarray(ks, dtype=float)
    d0 = np.stack([s.derivatives(k, np.array([0.0]))[:, 0] for k in ks])  # (K, 3)
    dl = np.stack([s.derivatives(k, np.array([l_ref]))[:, 0] for k in ks])
    ok_l = (dl[:, 0] < 0) & (dl[:, 1] > 0)
    fit = fit_loglog(ks, np.where(ok_l, -dl[:, 1] / np.where(dl[:, 0] == 0, 1.0, dl[:, 0]), np.nan))
    q = s.model(float(ks[0]), np.array([0.0]))[0]
    return {
        "d": s.depth,
        "signs_ok_at_l0": bool(np.all((d0[:, 0] < 0) & (d0[:, 1] > 0))),
        "a_overlap": float((s.a * s.t / q).sum()),
        "slope": fit["slope"],
        "se": fit["se"],
        "l_star_p_at_k_min": flip_point(s, float(ks[0]), 0),
    }
