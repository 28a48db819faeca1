"""Figures of the theory sweep (matplotlib, Agg backend); each one's numbers are in the run's CSV files."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from elasticity.files import save_png  # noqa: E402


def _save(fig: plt.Figure, path: Path) -> Path:
    return save_png(fig, path, dpi=100)


def _pick(values: list[float], n: int = 4) -> list[float]:
    """Up to n values spread evenly over a sorted list (first and last included)."""
    if len(values) <= n:
        return values
    idx = np.unique(np.round(np.linspace(0, len(values) - 1, n)).astype(int))
    return [values[i] for i in idx]


def _series(rows: list[dict], d: int, k: float, key: str) -> tuple[np.ndarray, np.ndarray]:
    rs = sorted((r for r in rows if r["d"] == d and r["k"] == k), key=lambda r: r["l"])
    return np.array([r["l"] for r in rs]), np.array([r[key] for r in rs])


def rates_vs_l(rows: list[dict], flips: list[dict], d: int, path: Path) -> Path:
    """Change of the rates of D_a and D_p with l at depth d: ideal code (top, log scale) and Huffman (bottom).

    Top: ``Delta gamma_a`` and ``-Delta gamma_p`` (both > 0 where the theorem's signs hold; D_p's change is
    about k times smaller, so only a log axis shows both). A curve of D_p ends where gamma_p is back at its
    l = 0 level, past l* (dotted). Bottom: the Huffman code's rates, step functions of l, on a linear axis.
    """
    ks = _pick(sorted({r["k"] for r in rows if r["d"] == d}))
    colours = plt.cm.viridis(np.linspace(0, 0.9, len(ks)))
    fig, axes = plt.subplots(2, 2, figsize=(11, 7.5), sharex=True)
    for k, c in zip(ks, colours):
        for col, (name, sign) in enumerate((("a", 1.0), ("p", -1.0))):
            l, ideal = _series(rows, d, k, f"gamma_{name}_ideal")
            _, huff = _series(rows, d, k, f"gamma_{name}_huffman")
            change = sign * (ideal - ideal[0])
            shown = np.where(change > 0, change, np.nan)  # log axis: the sign flip shows as the curve's end
            axes[0, col].semilogy(l, shown, color=c, label=f"k = {k:g}")
            if np.all(np.isfinite(huff)):
                axes[1, col].step(l, huff - huff[0], where="post", color=c, label=f"k = {k:g}")
        l_star = next(f["l_star_p"] for f in flips if f["d"] == d and f["k"] == k)
        if math.isfinite(l_star) and l_star <= max(r["l"] for r in rows):
            for ax in axes.ravel():
                ax.axvline(l_star, color=c, ls=":", lw=1)
    axes[0, 0].set_title(f"D_a, ideal code: gamma_a(l) - gamma_a(0)  (d = {d})")
    axes[0, 1].set_title(f"D_p, ideal code: gamma_p(0) - gamma_p(l)  (d = {d})")
    axes[1, 0].set_title("D_a, Huffman code: gamma_a(l) - gamma_a(0)  (steps)")
    axes[1, 1].set_title("D_p, Huffman code: gamma_p(l) - gamma_p(0)  (steps)")
    for ax in axes.ravel():
        ax.set_ylabel("bits / token")
        ax.grid(alpha=0.3)
    for ax in axes[1]:
        ax.axhline(0, color="grey", lw=0.5)
        ax.set_xlabel("l = |D_t| / |D_a|   (dotted: l*, where gamma_p stops falling)")
    axes[0, 0].legend(fontsize=8)
    return _save(fig, path)


def ratio_vs_k(rows: list[dict], slopes: list[dict], d: int, l_ref: float, path: Path) -> Path:
    """The theorem's ratio -d(gamma_a)/d(gamma_p) against k, log-log, with the line of slope 1 (ratio = k).

    Left: depth d at several l below l*. Right: every depth at l = l_ref.
    """
    fig, axes = plt.subplots(1, 2, figsize=(12, 5), sharey=True)
    fit = {(s["d"], s["l"]): s for s in slopes}
    fitted_ls = sorted(s["l"] for s in slopes if s["d"] == d and math.isfinite(s["slope"]))
    panels = [
        (axes[0], [(d, l) for l in _pick(fitted_ls, 5)], f"d = {d}", "l"),
        (axes[1], sorted((dd, l_ref) for dd in {r["d"] for r in rows}), f"l = {l_ref:g}", "d"),
    ]
    ks = np.array(sorted({r["k"] for r in rows}))
    for ax, cells, title, vary in panels:
        colours = plt.cm.plasma(np.linspace(0, 0.85, max(len(cells), 1)))
        for (dd, l), c in zip(cells, colours):
            rs = sorted((r for r in rows if r["d"] == dd and r["l"] == l and r["signs_ok"]), key=lambda r: r["k"])
            if not rs:
                continue
            s = fit.get((dd, l), {})
            value = l if vary == "l" else dd
            tag = f"{vary} = {value:g}: slope {s.get('slope', math.nan):.4f} +/- {s.get('se', math.nan):.1e}"
            ax.loglog([r["k"] for r in rs], [r["ratio"] for r in rs], "o-", ms=3, color=c, label=tag)
        ax.loglog(ks, ks, "k--", lw=1, label="slope 1 (ratio = k)")
        ax.set_title(f"-d(gamma_a)/dl / d(gamma_p)/dl vs k, {title}")
        ax.set_xlabel("k = |D_p| / |D_a|")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    axes[0].set_ylabel("ratio (exact derivatives of the ideal code length)")
    return _save(fig, path)


def slope_vs_l(slopes: list[dict], path: Path) -> Path:
    """Fitted log-log slope (+/- 2 SE) of the ratio against k, as a function of l, one curve per depth."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    depths = sorted({s["d"] for s in slopes})
    for d, c in zip(depths, plt.cm.viridis(np.linspace(0, 0.9, len(depths)))):
        ss = [s for s in slopes if s["d"] == d and math.isfinite(s["slope"])]
        ax.errorbar([s["l"] for s in ss], [s["slope"] for s in ss], yerr=[2 * s["se"] for s in ss],
                    color=c, marker="o", ms=3, capsize=2, label=f"d = {d}")
    ax.axhline(1.0, color="k", ls="--", lw=1)
    ax.set_xlabel("l = |D_t| / |D_a|  (curves end at l*, beyond which gamma_p rises)")
    ax.set_ylabel("slope of log ratio vs log k")
    ax.set_title("Where the ratio grows like k")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def depth_and_volume(rows: list[dict], flips: list[dict], path: Path) -> Path:
    """How rates and derivatives move with the model's depth d and the pre-training volume k (at l = 0)."""
    depths = sorted({r["d"] for r in rows})
    ks = sorted({r["k"] for r in rows})
    at0 = [r for r in rows if r["l"] == 0.0]
    fig, axes = plt.subplots(1, 3, figsize=(17, 5))
    for d, c in zip(depths, plt.cm.viridis(np.linspace(0, 0.9, len(depths)))):
        rs = sorted((r for r in at0 if r["d"] == d), key=lambda r: r["k"])
        axes[0].loglog([r["k"] for r in rs], [r["gamma_a_normalised"] for r in rs], "-", color=c, label=f"D_a, d = {d}")
        axes[0].loglog([r["k"] for r in rs], [r["gamma_p_normalised"] for r in rs], ":", color=c)
    axes[0].set_title("normalised rate KL / d at l = 0\n(solid: D_a, dotted: D_p)")
    axes[0].set_xlabel("k = |D_p| / |D_a|")
    axes[0].set_ylabel("bits / token")
    for k, c in zip(_pick(ks), plt.cm.plasma(np.linspace(0, 0.85, len(_pick(ks))))):
        rs = sorted((r for r in at0 if r["k"] == k), key=lambda r: r["d"])
        dd = np.array([r["d"] for r in rs])
        per_token = np.array([(k + 1) * r["dgamma_a_dl"] for r in rs])
        axes[1].plot(dd, per_token * dd, "o-", color=c, label=f"per block, k = {k:g}")
        axes[1].plot(dd, per_token, "s:", color=c, label=f"per token, k = {k:g}")
        fs = sorted((f for f in flips if f["k"] == k), key=lambda f: f["d"])
        axes[2].plot([f["d"] for f in fs], [f["l_star_p"] for f in fs], "o-", color=c, label=f"k = {k:g}")
    axes[1].set_title(
        "(k + 1) * d gamma_a / dl at l = 0\n(= (1 - A_a) / ln 2 per block: how well d separates D_a from D_t)"
    )
    axes[1].set_xlabel("depth d (model capacity)")
    axes[1].set_ylabel("bits per unit l")
    axes[2].set_title("l*: gamma_p falls only for l < l*")
    axes[2].set_xlabel("depth d (model capacity)")
    axes[2].set_ylabel("l*")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return _save(fig, path)
