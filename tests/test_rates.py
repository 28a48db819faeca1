"""Theory meets experiment: the finite-difference ratio, its log-log fit and Hooke's forces by hand; the ideal
code's secant against the theory module; the world's exact pair entropies; `elasticity rates` on a tiny rebound."""

from __future__ import annotations

import csv
import json
import math
import random
from pathlib import Path

import numpy as np
import pytest

from elasticity.analysis.rates import Series, derivative, fits, hooke_rows, hooke_summary, ideal_ratio, ratio_rows
from elasticity.cli import main
from elasticity.errors import UserError
from elasticity.theory.theorem import Setting
from elasticity.world.likelihood import log_likelihood
from elasticity.world.truth import pair_nats
from elasticity.world.world import World

ROOT = Path(__file__).resolve().parents[1]


def _series(seed, gamma_a, gamma_p, gamma_t, model="m", q1=10, pretrain=1000.0, align=10):
    """One negative run measured at Q2 = 0, 5, 10 (as many as gamma values), one token per example."""
    q2 = (0, 5, 10)[: len(gamma_a)]
    return Series(model, 1e6, pretrain, q1, seed, align, q2, q2,
                  {"a": tuple(gamma_a), "p": tuple(gamma_p), "t": tuple(gamma_t)})


def test_the_finite_difference_ratio_and_the_forces_by_hand():
    """|D_p| = 1000 and |D_a| = 10 tokens (k = 100); 5 and 10 negative tokens (l = 0.5, 1).
    Seed 0: gamma_a 0.10 -> 0.13 and gamma_p 0.0500 -> 0.0497 over l = 0.5, so d gamma_a/dl = 0.06, d gamma_p/dl =
    -0.0006 and the ratio is 0.06 / 0.0006 = 100. Seed 1: 0.02 / 0.0004 = 50. Mean 75, sd 35.355, t = 12.706:
    75 +- 12.706 * 35.355 / sqrt(2) = 75 +- 317.65. The forces at Q2 = 5 (seed 0): F_p = 1000 * -0.0003 = -0.3,
    F_a = 10 * 0.03 = 0.3, F_t = 5 * -0.1 = -0.5: a Hooke ratio F_a / -F_p of 1 and a balance of -0.5 / 0.3."""
    s0 = _series(0, (0.10, 0.13, 0.20), (0.0500, 0.0497, 0.0495), (0.3, 0.2, 0.1))
    s1 = _series(1, (0.10, 0.11, 0.14), (0.0500, 0.0498, 0.0497), (0.3, 0.25, 0.2))
    assert s0.k == 100 and s0.l_values == (0.0, 0.5, 1.0)
    (row,) = ratio_rows([s0, s1], span=1, share=0.3)
    assert row.per_seed == pytest.approx({0: 100.0, 1: 50.0})
    assert row.d_align.mean == pytest.approx(0.04) and row.d_pretrain.mean == pytest.approx(-0.0005)
    assert (row.ratio.mean, row.ratio.lo, row.ratio.hi) == pytest.approx((75.0, 75 - 317.65, 75 + 317.65), abs=0.01)
    assert row.pretrain_fell == 2 and row.align_rose == 2 and row.k == 100 and row.l == 0.5
    assert row.ideal == pytest.approx(ideal_ratio(100.0, 0.5, 0.3))
    # span 2: least squares over l = 0, 0.5, 1 (seed 0: gamma_a slope 0.1, gamma_p slope -0.0005 -> 200)
    assert derivative(s0.l_values, s0.gamma["a"], 2) == pytest.approx(0.1)
    (wide,) = ratio_rows([s0], span=2)
    assert wide.per_seed[0] == pytest.approx(200.0) and wide.ideal == 100.0  # share unknown: the theorem's k
    first = hooke_rows([s0, s1])[0]
    assert first.q2 == 5 and first.forces["p"].mean == pytest.approx((-0.3 - 0.2) / 2)
    f0 = {r: s0.force(r, 1) for r in "pat"}
    assert f0 == pytest.approx({"p": -0.3, "a": 0.3, "t": -0.5})
    assert first.hooke.mean == pytest.approx((1.0 + 0.1 / 0.2) / 2)  # seed 1: F_a 0.1, F_p -0.2
    assert first.balance.mean == pytest.approx(((-0.5 / 0.3) + (-0.2 + 0.1 - 0.25) / 0.2) / 2)
    (summary,) = hooke_summary([s0, s1])  # log10 of 1 and of 0.5, one cell: per-seed values 0 and -0.30103
    assert summary.per_seed == pytest.approx({0: 0.0, 1: math.log10(0.5)})


def test_a_ratio_with_the_wrong_sign_is_kept_but_left_out_of_the_logarithms():
    up = _series(0, (0.10, 0.13, 0.2), (0.05, 0.0503, 0.05), (0.3, 0.2, 0.1))  # gamma_p rose
    (row,) = ratio_rows([up])
    assert row.per_seed[0] == pytest.approx(-100.0) and row.pretrain_fell == 0
    assert fits([row]) == []  # one cell, and it has no logarithm


def _cells(ratio_of):
    """Two models (|D_p| 1e4 and 1e5) x two Q1 (|D_a| 10 and 100) x two seeds; ratio = ratio_of(seed, k, q1)."""
    out = []
    for model, pretrain in (("early", 1e4), ("late", 1e5)):
        for q1, align in ((10, 10), (100, 100)):
            for seed in (0, 1):
                k = pretrain / align
                r = ratio_of(seed, k, q1)
                out.append(_series(seed, (0.1, 0.1 + r * 1e-6), (0.05, 0.05 - 1e-6), (0.3, 0.2), model, q1, pretrain,
                                   align))
    return ratio_rows(out)


def test_the_log_log_slope_is_fitted_per_seed_along_each_direction():
    """Ratio = k^2 in seed 0 and k in seed 1: slope 2 and 1 in every direction, mean 1.5. A ratio that depends on
    Q1 alone (100 / Q1, whatever the volume): k moves with Q1 within a model (slope 1 there) and with volume
    within a Q1 (slope 0 there)."""
    by = {f.along: f for f in fits(_cells(lambda seed, k, q1: k ** (2 - seed)))}
    assert set(by) == {"all", "q1", "volume"}
    for f in by.values():
        assert f.per_seed == pytest.approx({0: 2.0, 1: 1.0}) and f.slope.mean == pytest.approx(1.5)
        assert f.cells == 4 and f.left_out == 0 and (f.k_min, f.k_max) == (100, 10000)
    by = {f.along: f for f in fits(_cells(lambda seed, k, q1: 1000 / q1))}
    assert by["q1"].slope.mean == pytest.approx(1.0) and by["volume"].slope.mean == pytest.approx(0.0, abs=1e-9)
    # pooled over every cell: log10 ratio (2, 1, 2, 1) against log10 k (3, 2, 4, 3): slope 0.5
    assert by["all"].slope.mean == pytest.approx(0.5)


def test_the_ideal_secant_equals_the_theory_modules_code_on_disjoint_components():
    """D_p a 0.5 / 0.2 / 0.3 mixture of three components on disjoint leaves, D_a the second, D_t the third: the
    theory module's exact ideal rates give the same secant ratio as the closed form, and k at l -> 0."""
    a, t, n = np.array([0.7, 0.3]), np.array([0.5, 0.5]), np.array([0.6, 0.4])
    z = np.zeros(2)
    s = Setting(1, np.concatenate([0.5 * n, 0.2 * a, 0.3 * t]), np.concatenate([z, a, z]), np.concatenate([z, z, t]))
    for k, l in ((100.0, 0.5), (20.0, 0.1), (5.0, 0.3), (50.0, 0.9)):
        r = s.rates(k, np.array([0.0, l]))
        assert ideal_ratio(k, l, 0.3) == pytest.approx(-(r[1, 1] - r[1, 0]) / (r[0, 1] - r[0, 0]), rel=1e-9)
    assert ideal_ratio(100.0, 1e-7, 0.3) == pytest.approx(100.0, rel=1e-5)
    assert ideal_ratio(100.0, 0.5, 0.0) == pytest.approx(-1.0)  # D_t outside D_p: gamma_p rises as gamma_a does


@pytest.fixture(scope="module")
def world() -> World:
    return World.build({"neutral": 0.5, "positive": 0.2, "negative": 0.3})


def test_a_pairs_exact_code_length_is_the_conditional_of_its_component(world):
    """-log p(response | prompt, c) = -log p(doc | c) + log P(a document of c starts with the prompt): with an empty
    prompt it is the document's own code length, and the halves of one document add up."""
    rng = random.Random(3)
    doc = world.sample("positive", rng)
    assert pair_nats(world, "", doc.text) == ("positive", pytest.approx(-doc.logp, rel=1e-9))
    words = doc.text.split(" ")
    prompt, response = " ".join(words[:6]), " " + " ".join(words[6:])
    c, nats = pair_nats(world, prompt, response)
    prefix = log_likelihood(world, prompt, "positive", prefix=True)
    assert c == "positive" and nats == pytest.approx(-doc.logp + prefix, rel=1e-9) and 0 < nats < -doc.logp
    with pytest.raises(UserError, match="not a document of this world"):
        pair_nats(world, "I watched a film.", " It was purple.")


@pytest.mark.slow
def test_rates_on_a_tiny_scaling_run_equal_their_hand_reading_for_every_normaliser(scaling_tiny, tmp_path, capsys):
    """configs/scaling-tiny.yaml: the rates report's per-seed ratio is -(Delta bpt_positive) / (Delta bpt of the
    held-out mixture) from each rebound's own results over its first Q2; `elasticity rates` on the same rebound
    normalised by the base model, or by a reference, gives the same ratio and forces (only changes enter), and the
    entropy normaliser is the world's exact code length per predicted token."""
    runs, out = scaling_tiny
    summary = (out / "summary.txt").read_text()
    rates = Path(summary.split("Rates, ratio and Hooke tables: ")[1].split()[0])
    assert "theorem 4.2 measured" in summary
    models = {m["model"]: m for m in csv.DictReader(open(rates / "models.csv"))}
    ratios = [json.loads(line) for line in (rates / "ratio.jsonl").read_text().splitlines()]
    assert {r["model"] for r in ratios} == set(models) == {"0.1m", "0.2m", "0.2m@12,288"}
    for name in ("rates.csv", "hooke.csv", "fits.csv", "table.md", "ratio_vs_k.png", "rates_vs_l.png"):
        assert (rates / name).stat().st_size > 0, name
    rebound = Path(next(m for m in csv.DictReader(open(out / "models.csv")) if m["label"] == "0.2m")["result"])
    points = [json.loads(line) for line in (rebound / "results.jsonl").read_text().splitlines()]
    marks = {}
    for key, name in json.loads((rebound / "meta.json").read_text())["inputs"].items():
        if key.startswith("positive:"):
            marks[int(key.split(":")[1])] = json.loads((rebound.parent / Path(name).name / "marks.json").read_text())
    row = next(r for r in ratios if r["model"] == "0.2m" and r["q1"] == 8)
    by = {(p["seed"], p["q2"]): p for p in points if p["q1"] == 8}
    assert row["seed_list"] == [0, 1]
    for seed, value in zip(row["seed_list"], row["per_seed"]):
        d_pos = by[(seed, 8)]["bpt_positive"] - by[(seed, 0)]["bpt_positive"]
        d_mix = by[(seed, 8)]["bpt_heldout_mixture"] - by[(seed, 0)]["bpt_heldout_mixture"]
        assert value == pytest.approx(-d_pos / d_mix, rel=1e-12)
    assert row["k"] == pytest.approx(np.mean([float(models["0.2m"]["pretrain_tokens"]) / marks[s]["8"]["tokens"]
                                              for s in (0, 1)]), rel=1e-12)
    # the entropy normaliser of the held-out mixture: the world's nats over the tokens the model predicts
    world = next(runs.glob("world-*"))
    docs = [json.loads(line) for line in (world / "heldout_mixture.jsonl").read_text().splitlines()]
    config = (rebound / "config.yaml").read_text()
    n_docs = int(config.split("docs: ")[1].split()[0])
    exact = sum(d["nats"] for d in docs[:n_docs]) / sum(d["tokens"] for d in docs[:n_docs]) / math.log(2)
    assert float(models["0.2m"]["normaliser_heldout_mixture"]) == pytest.approx(exact, rel=1e-12)
    assert 0 < float(models["0.2m"]["normaliser_positive"]) < float(points[0]["bpt_positive"])
    # normalised by the base model instead, and by a reference: the same ratios and forces
    entropy = {(r["model"], r["q1"], r["seed"], r["q2"]): r for r in csv.DictReader(open(rates / "rates.csv"))}
    for extra in (["--normaliser", "base"], ["--normaliser", "reference", "--reference", "positive=0.5",
                                             "negative=0.6", "heldout_mixture=0.7"]):
        capsys.readouterr()
        assert main(["rates", "--runs-dir", str(tmp_path), "--rebound", str(rebound), "--labels", "0.2m",
                     "--pretrain_tokens", models["0.2m"]["pretrain_tokens"].split(".")[0], *extra]) == 0
        other = Path(capsys.readouterr().out.strip().splitlines()[-1])
        again = next(json.loads(line) for line in (other / "ratio.jsonl").read_text().splitlines() if line
                     and json.loads(line)["q1"] == 8)
        assert again["per_seed"] == pytest.approx(row["per_seed"], rel=1e-9)  # only changes enter
        for r in csv.DictReader(open(other / "rates.csv")):
            e = entropy[(r["model"], r["q1"], r["seed"], r["q2"])]
            if r["force_a"]:
                assert float(r["force_a"]) == pytest.approx(float(e["force_a"]), rel=1e-9, abs=1e-12)
                assert float(r["force_p"]) == pytest.approx(float(e["force_p"]), rel=1e-9, abs=1e-12)
        base = next(r for r in csv.DictReader(open(other / "rates.csv")) if r["q1"] == "0")
        if extra[1] == "base":
            assert float(base["gamma_positive"]) == 0.0


@pytest.mark.slow
def test_a_rebound_moved_without_its_runs_is_one_line(scaling_tiny, tmp_path, capsys):
    """A rebound directory copied away from its positive runs, then with them but its data gone: one line, exit
    2, and no run directory written."""
    import shutil

    runs, out = scaling_tiny
    rebound = Path(next(csv.DictReader(open(out / "models.csv")))["result"])
    alone = tmp_path / "moved" / rebound.name
    shutil.copytree(rebound, alone)
    config = alone / "config.yaml"
    config.write_text(config.read_text().replace(str(next(runs.glob("world-*")) / "sft_positive.jsonl"), "gone.jsonl"))

    def fails(message: str) -> None:
        capsys.readouterr()
        assert main(["rates", "--runs-dir", str(tmp_path / "r"), "--rebound", str(alone)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], err
        assert not (tmp_path / "r").exists()

    fails("has no rebound-positive-")
    for name in json.loads((rebound / "meta.json").read_text())["inputs"].values():
        if "positive" in name:
            shutil.copytree(runs / Path(name).name, alone.parent / Path(name).name)
    fails("its held-out data cannot be read")
