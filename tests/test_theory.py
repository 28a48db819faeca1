"""The theory package: token trees, the compression protocol and the theorem, against hand-computed answers."""

from __future__ import annotations

import csv
import json
import math
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from elasticity.cli import main
from elasticity.config import load_config
from elasticity.errors import UserError
from elasticity.theory.command import Config, summary_lines
from elasticity.theory.protocol import (
    align,
    compression_rates,
    cross_entropy,
    entropy,
    huffman_lengths,
    kl,
    kraft_sum,
    mixture,
    rates_of,
)
from elasticity.theory.theorem import fit_loglog, flip_point, make_setting, sweep_depth
from elasticity.theory.trees import TokenTree, all_sequences, mix, pareto_components

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def _random_dists(n: int = 30, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        m = int(rng.integers(2, 300))
        raw = rng.pareto(1.0, m) + 1 if i % 2 else rng.random(m) + 1e-3
        out.append(raw / raw.sum())
    return out


# ---- token trees -------------------------------------------------------------------------------------------


def test_from_sequences_merges_repeats_and_counts_size():
    tree = TokenTree.from_sequences([(0,), (0,), (1, 0)])
    assert tree.size == 3
    assert dict(zip(tree.sequences, tree.masses)) == pytest.approx({(0,): 2 / 3, (1, 0): 1 / 3})
    assert tree.eos_mass(()) == 0.0 and tree.node_mass(()) == pytest.approx(1.0)


def test_every_node_mass_is_its_eos_leaf_plus_its_children():
    seqs = [(), (0,), (0, 1), (0, 1, 2), (2,), (2, 2)]
    tree = TokenTree.from_sequences(seqs, alphabet_size=3, counts=[1, 2, 3, 1, 2, 1])
    for prefix in [(), (0,), (0, 1), (2,), (1,)]:
        children = sum(tree.node_mass(prefix + (c,)) for c in range(3))
        assert tree.node_mass(prefix) == pytest.approx(tree.eos_mass(prefix) + children)
    assert tree.eos_mass((0,)) == pytest.approx(2 / 10)
    assert tree.node_mass((0,)) == pytest.approx(6 / 10)


def test_prune_keeps_eos_leaves_above_d_and_cuts_nodes_at_d():
    tree = TokenTree.from_sequences([(), (0,), (0, 1), (0, 1, 1), (1, 1, 0)], counts=[1, 1, 1, 1, 4])
    assert tree.prune(2) == pytest.approx(
        {((), True): 1 / 8, ((0,), True): 1 / 8, ((0, 1), False): 2 / 8, ((1, 1), False): 4 / 8}
    )
    # a full a-ary tree pruned to d has (a^(d+1) - 1) / (a - 1) leaves
    full = TokenTree.from_sequences(all_sequences(3, 4), alphabet_size=3)
    assert len(full.prune(2)) == (3**3 - 1) // 2 == 13
    assert len(all_sequences(2, 3)) == 2**4 - 1


def test_tree_input_errors_are_user_errors():
    with pytest.raises(UserError, match="outside the alphabet"):
        TokenTree.from_sequences([(0, 2)], alphabet_size=2)
    with pytest.raises(UserError, match="count"):
        TokenTree.from_sequences([(0,)], counts=[-1])
    with pytest.raises(UserError, match="depth d"):
        TokenTree.from_sequences([(0,)]).prune(0)


def test_pareto_components_disjoint_or_overlapping():
    comps = pareto_components(2, 6, 3, 1.0, overlap=0.0, seed=1)
    supports = [set(c.sequences) for c in comps]
    assert sum(len(s) for s in supports) == 2**7 - 1  # every sequence belongs to exactly one component
    assert not (supports[0] & supports[1]) and not (supports[1] & supports[2])
    assert all(c.masses.sum() == pytest.approx(1.0) and np.all(c.masses > 0) for c in comps)
    shared = pareto_components(2, 6, 3, 1.0, overlap=1.0, seed=1)
    assert all(set(c.sequences) == set(all_sequences(2, 6)) for c in shared)
    assert not np.allclose(shared[0].masses, shared[1].masses)  # same support, own masses


@pytest.mark.parametrize("shape", [0.0, -1.0, float("inf"), float("nan")])
def test_pareto_shape_without_a_distribution_is_rejected(shape):
    with pytest.raises(UserError, match="pareto_shape"):
        pareto_components(2, 4, 3, shape)


# ---- the protocol ------------------------------------------------------------------------------------------


def test_docstring_example_huffman_entropy_cross_entropy():
    p, q = np.array([0.5, 0.25, 0.25]), np.array([0.25, 0.25, 0.5])
    assert list(huffman_lengths(p)) == [1, 2, 2]
    assert kraft_sum(huffman_lengths(p)) == 1.0
    assert entropy(p) == pytest.approx(1.5)
    assert cross_entropy(p, q) == pytest.approx(1.75)
    assert kl(p, q) == pytest.approx(0.25)


def test_huffman_lengths_satisfy_kraft_equality_exactly():
    for p in _random_dists():
        lengths = huffman_lengths(p)
        assert sum(Fraction(1, 2 ** int(n)) for n in lengths) == 1
    assert list(huffman_lengths(np.array([1.0]))) == [0]  # one leaf: nothing to send, Kraft sum 2^0 = 1


def test_huffman_expected_length_within_one_bit_of_entropy():
    for p in _random_dists(seed=3):
        h, length = entropy(p), float(p @ huffman_lengths(p))
        assert h - 1e-12 <= length < h + 1


def test_uniform_leaves_give_exactly_log2_m():
    # 8 sequences of length 3, pruned at d = 3: 8 equiprobable leaves
    tree = TokenTree.from_sequences(all_sequences(2, 3)[7:])
    rates = compression_rates([tree], depth=3)
    assert rates.leaves == 8
    assert rates.entropy[0] * 3 == 3.0 and rates.huffman[0] * 3 == 3.0  # exactly log2(8) bits per leaf
    assert rates.ideal[0] == 1.0 and rates.normalised_log_m[0] == 0.0  # 1 bit per token
    # M = 5 is not a power of two: the entropy is log2(5) and Huffman pays 12/5 = 2.4 bits (lengths 2,2,2,3,3)
    five = np.full(5, 0.2)
    assert entropy(five) == pytest.approx(math.log2(5), abs=1e-15)
    assert sorted(huffman_lengths(five)) == [2, 2, 2, 3, 3]


def test_mixture_weights_are_dataset_sizes():
    assert list(mixture(np.array([[1.0, 0.0], [0.0, 1.0]]), [3, 1])) == [0.75, 0.25]
    d1 = TokenTree.from_sequences([(0,), (0,), (0,)])  # size 3
    d2 = TokenTree.from_sequences([(1,)])  # size 1
    rates = compression_rates([d1, d2], depth=1)
    assert rates.ideal == pytest.approx([-math.log2(0.75), 2.0])
    rates = compression_rates([d1.resized(1), d2.resized(3)], depth=1)
    assert rates.ideal == pytest.approx([2.0, -math.log2(0.75)])
    with pytest.raises(UserError, match="sizes"):
        mixture(np.eye(2), [1, -1])
    with pytest.raises(UserError, match="size"):
        d1.resized(-2)


def test_cross_entropy_under_own_distribution_is_entropy():
    tree = TokenTree.from_sequences([(0,), (1, 0), (1, 1)], counts=[2, 1, 1])  # leaves 1/2, 1/4, 1/4 at d = 2
    rates = compression_rates([tree], depth=2)
    assert rates.ideal[0] * 2 == pytest.approx(1.5) and rates.entropy[0] * 2 == pytest.approx(1.5)
    assert rates.normalised[0] == pytest.approx(0.0, abs=1e-15)
    for p in _random_dists(8, seed=5):
        assert cross_entropy(p, p) == pytest.approx(entropy(p), rel=1e-12)
        r = rates_of(p[None, :], p, depth=4)
        assert r.ideal[0] == pytest.approx(r.entropy[0], rel=1e-12)


def test_dataset_with_mass_outside_the_model_cannot_be_coded():
    _, dists = align([TokenTree.from_sequences([(0,)]), TokenTree.from_sequences([(1,)])], depth=1)
    r = rates_of(dists, dists[0], depth=1)
    assert r.ideal[0] == 0.0 and math.isinf(r.ideal[1])


# ---- the theorem -------------------------------------------------------------------------------------------


def _disjoint_setting(depth: int = 2):
    """Three single-leaf components on disjoint leaves; D_p = 0.6 C0 + 0.2 C1 + 0.2 C2, D_a = C1, D_t = C2."""
    comps = [TokenTree.from_sequences([s]) for s in [(0, 0), (0, 1), (1, 0)]]
    return make_setting(comps, (0.6, 0.2, 0.2), 1, 2, depth)


def test_theorem_closed_form_for_disjoint_components():
    s = _disjoint_setting()
    k, l, w_t, d = 10.0, 0.1, 0.2, 2
    der = s.derivatives(k, np.array([l]))[:, 0]
    # D_a shares no leaf with D_t: d gamma_a / dl = 1 / (K d ln 2), K = k + 1 + l
    assert der[1] == pytest.approx(1 / ((k + 1 + l) * d * math.log(2)))
    # the ratio is (k w_t + l) / (w_t - l (1 - w_t)) = 2.1 / 0.12 = 17.5
    assert -der[1] / der[0] == pytest.approx((k * w_t + l) / (w_t - l * (1 - w_t))) == pytest.approx(17.5)
    # gamma_p turns at l* = w_t / (1 - w_t) = 0.25, for every k
    for other_k in (3.0, 100.0):
        assert flip_point(s, other_k, 0) == pytest.approx(w_t / (1 - w_t), rel=1e-9)
    assert math.isinf(flip_point(s, k, 1))  # gamma_a rises for every l
    # the Hooke balance k dgamma_p + dgamma_a + l dgamma_t = 0 holds exactly
    assert k * der[0] + der[1] + l * der[2] == pytest.approx(0.0, abs=1e-15)


def test_theorem_signs_and_ratio_on_a_pareto_tree():
    comps = pareto_components(2, 7, 3, 1.0, 0.0, seed=0)
    s = make_setting(comps, (0.6, 0.2, 0.2), 1, 2, 7)
    ks, ls = [10.0, 100.0, 1000.0], np.array([0.0, 0.05, 0.1, 0.15, 0.3])
    rows, flips = sweep_depth(s, ks, ls, alignment_size=100.0)
    for r in rows:
        if r["l"] < 0.25:  # disjoint components at full depth: l* = w_t / (1 - w_t) = 0.25
            assert r["dgamma_p_dl"] < 0 < r["dgamma_a_dl"], r
        else:
            assert r["dgamma_p_dl"] > 0, r  # past l*, gamma_p rises too
        if r["l"] == 0.0:
            assert r["ratio"] == pytest.approx(r["k"], rel=1e-9)  # exactly k at l = 0
        # the exact derivative agrees with an independent central difference
        assert r["dgamma_a_dl_fd"] == pytest.approx(r["dgamma_a_dl"], rel=1e-6)
        assert r["dgamma_p_dl_fd"] == pytest.approx(r["dgamma_p_dl"], rel=1e-4)
    assert [f["l_star_p"] for f in flips] == pytest.approx([0.25] * 3, rel=1e-9)
    # ideal rates really are rising / falling in l
    gp = [r["gamma_p_ideal"] for r in rows if r["k"] == 10.0]
    ga = [r["gamma_a_ideal"] for r in rows if r["k"] == 10.0]
    assert gp[0] > gp[1] > gp[2] and ga[0] < ga[1] < ga[2] < ga[3]


def test_fit_loglog_slope_and_standard_error():
    exact = fit_loglog([1, 10, 100], [3, 30, 300])
    assert exact["slope"] == pytest.approx(1.0) and exact["se"] == pytest.approx(0.0, abs=1e-12)
    assert exact["intercept"] == pytest.approx(math.log(3))
    # log y = (0, 1, 3) at log x = (0, 1, 2): slope 1.5, residuals (1/6, -1/3, 1/6), SE = sqrt((1/6)/1/2)
    fit = fit_loglog([1, math.e, math.e**2], [1, math.e, math.e**3])
    assert fit["slope"] == pytest.approx(1.5) and fit["se"] == pytest.approx(math.sqrt(1 / 12))
    assert fit_loglog([1, 2, 3, 4], [1, -1, 2, 3])["excluded"] == 1


# ---- configuration and command -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["theory.yaml", "theory-quick.yaml"])
def test_presets_load(name):
    cfg = load_config(Config, CONFIGS / name)
    assert cfg.sweep.k_max / cfg.sweep.k_min >= 1000  # the issue asks for three orders of magnitude in k
    assert max(cfg.sweep.depths) <= cfg.tree.depth


def test_mixing_trees_weights_components():
    a, b = TokenTree.from_sequences([(0,)]), TokenTree.from_sequences([(1,)])
    m = mix([a, b], [3, 1])
    assert dict(zip(m.sequences, m.masses)) == pytest.approx({(0,): 0.75, (1,): 0.25})


@pytest.mark.parametrize(
    "flags, words",
    [
        (["--sweep.depths", "0"], "d must be >= 1"),
        (["--sweep.depths", "3", "-2"], "d must be >= 1"),
        (["--sweep.alignment_size", "-5"], "alignment_size"),
        (["--sweep.k_min", "1"], "k_min must be > 1"),
        (["--sweep.k_min", "0.5"], "k_min must be > 1"),
        (["--tree.pareto_shape", "0"], "pareto_shape"),
        (["--tree.pareto_shape", "-1.5"], "pareto_shape"),
        (["--tree.pretrain_weights", "1", "-1", "1"], "pretrain_weights"),
        (["--sweep.depths", "12"], "exceeds tree.depth"),
    ],
)
def test_invalid_parameters_exit_2_with_one_line(tmp_path, capsys, flags, words):
    runs = tmp_path / "runs"
    assert main(["theory", "--runs-dir", str(runs), *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and words in err
    assert not runs.exists()  # nothing half-written


@pytest.mark.slow  # matplotlib: a few seconds on a busy machine
def test_command_writes_every_number_and_figure(tmp_path, capsys):
    runs = tmp_path / "runs"
    flags = ["--tree.depth", "6", "--sweep.depths", "2", "6", "--sweep.k_points", "4", "--sweep.l_points", "6",
             "--sweep.l_max", "0.3", "--sweep.seeds", "2"]
    assert main(["theory", "--runs-dir", str(runs), *flags]) == 0
    printed = capsys.readouterr().out
    (run_dir,) = list(runs.iterdir())
    for name in ("rates.csv", "slopes.csv", "flips.csv", "seeds.csv", "summary.json", "rates_vs_l.png",
                 "ratio_vs_k.png", "slope_vs_l.png", "depth_and_volume.png", "DONE"):
        assert (run_dir / name).is_file(), name
    rows = list(csv.DictReader(open(run_dir / "rates.csv")))
    assert len(rows) == 2 * 4 * 6  # depths x k x l
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["reference"] == {"d": 6, "l": pytest.approx(0.06)}
    ref = summary["slope_reference"]
    # deterministic numpy: the fit of log ratio on log k at d = 6, l = 0.06, pinned
    assert (ref["slope"], ref["se"], ref["n"]) == (pytest.approx(0.9960356747587641, rel=1e-9),
                                                   pytest.approx(0.001921836127897577, rel=1e-6), 4)
    from elasticity.runs import Run

    lines = summary_lines(Run(run_dir))
    assert lines and all(line in printed for line in lines)
    assert "slope" in lines[1] and "+/-" in lines[1]


def test_hooke_balance_and_ratio_k_at_l0_hold_for_overlapping_trees_too():
    comps = pareto_components(3, 4, 4, 0.7, overlap=0.5, seed=2)
    for d in (1, 2, 4):
        s = make_setting(comps, (0.4, 0.3, 0.2, 0.1), 3, 1, d)
        for k in (2.0, 50.0):
            ls = np.array([0.0, 0.2, 1.0])
            der = s.derivatives(k, ls)
            assert k * der[0] + der[1] + ls * der[2] == pytest.approx(np.zeros(3), abs=1e-12)
            assert -der[1, 0] / der[0, 0] == pytest.approx(k, rel=1e-9)
