"""Rebound: nested runs equal separate ones, hand-checked elasticity metrics, resume, bad input."""

from __future__ import annotations

import dataclasses
import json
import math
import random
import re
from pathlib import Path

import pytest
import torch

from elasticity.analysis import curves as em
from elasticity.experiments.rebound import Config, Evaluation, Metrics, rebound_stage
from elasticity.generate import DecodingPolicy
from elasticity.results import Group, Measurement, Metric, Point, Quantity, ReboundGrid, View
from elasticity.scorers import ScorerConfig
from elasticity.stats import clustered_mean_se, log_odds, t_interval
from elasticity.train.loop import TrainConfig

GOOD = "good great wonderful liked loved excellent".split()
BAD = "bad awful terrible hated boring weak".split()
FILLER = "the movie was plot actor scene film it and very".split()


def _pairs(words: list[str], n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        prompt = " ".join(rng.choice(FILLER) for _ in range(3))
        body = [rng.choice(words if rng.random() < 0.5 else FILLER) for _ in range(rng.randint(4, 10))]
        out.append({"prompt": prompt, "response": " " + " ".join(body)})
    return out


def _jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return str(path)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def setup(tiny_assets, tmp_path_factory):
    """A 0.2m base model saved locally, positive / negative / prompt / held-out files, a small config."""
    from elasticity.models.hf import load_tokenizer
    from elasticity.models.tiny import build_tiny_model

    root = tmp_path_factory.mktemp("rebound")
    tok = load_tokenizer(str(tiny_assets["tok"]))
    model = build_tiny_model("0.2m", len(tok), 64, seed=0)
    model.save_pretrained(root / "base")
    tok.save_pretrained(root / "base")
    cfg = Config(
        model=str(root / "base"),
        positive=_jsonl(root / "pos.jsonl", _pairs(GOOD, 30, 1)),
        negative=_jsonl(root / "neg.jsonl", _pairs(BAD, 22, 2)),
        prompts=_jsonl(root / "prompts.jsonl", [{"prompt": p["prompt"]} for p in _pairs(FILLER, 4, 3)]),
        heldout=(str(tiny_assets["text"]),),
        scorer=ScorerConfig(name="vader"),
        q1=(8, 20), q2=(0, 6, 12), seeds=(0, 1),
        train=TrainConfig(lr=3e-3, batch_size=8, max_length=64, log_every=1),
        policy=DecodingPolicy(temperature=1.0, max_new_tokens=8, samples_per_prompt=2),
        eval=Evaluation(prompts=4, pairs=6, docs=8),
        metrics=Metrics(early_q2=6, late_q2=6),
    )
    return cfg, root


@pytest.fixture(scope="module")
def full(setup):
    """The whole small experiment, uninterrupted."""
    cfg, root = setup
    return cfg, rebound_stage(cfg, root / "runs")


# ---- metrics on hand-made curves -------------------------------------------------------------------------


def test_slopes_ratio_and_log_odds_by_hand():
    x, y = (0, 10, 50, 100), (0.9, 0.6, 0.45, 0.4)
    shape = em.curve_shape(x, y, early=10, late=50)
    assert shape.initial_slope == pytest.approx((0.6 - 0.9) / 10)  # -0.03
    assert shape.late_slope == pytest.approx((0.4 - 0.45) / 50)  # -0.001
    assert shape.slope_ratio == pytest.approx(30.0)
    lo = log_odds(list(y))
    assert lo[0] == pytest.approx(math.log(9)) and lo[3] == pytest.approx(math.log(0.4 / 0.6))
    # in log-odds the same curve's initial slope is (ln 1.5 - ln 9) / 10
    assert em.curve_shape(x, lo, 10, 50).initial_slope == pytest.approx((math.log(1.5) - math.log(9)) / 10)
    assert log_odds(1.0) == pytest.approx(math.log((1 - 1e-4) / 1e-4))  # clipped, finite
    assert log_odds(1.0, n=64) == pytest.approx(math.log(129))  # empirical logit: 64 samples resolve no more
    assert log_odds(0.75, n=4) == pytest.approx(math.log(3.5 / 1.5))
    assert log_odds(0.5, n=64) == 0.0
    with pytest.raises(ValueError):
        em.secant_slope(x, y, 0, 20)  # 20 is not a grid point


def test_samples_to_revert_interpolates_and_reports_not_reached():
    x, y = (0, 10, 50), (0.9, 0.6, 0.4)
    assert em.samples_to_revert(x, y, 0.5) == pytest.approx(30.0)  # 10 + 0.1 / 0.2 * 40
    assert em.samples_to_revert(x, y, 0.6) == pytest.approx(10.0)  # reached exactly at a grid point
    assert em.samples_to_revert(x, y, 0.95) == 0.0  # the aligned model is already there
    assert em.samples_to_revert(x, y, 0.3) is None  # not reached within the grid
    kl = (0.2, 0.05, 0.008, 0.02)  # KL to base dips below epsilon, then rises again: the first crossing counts
    assert em.samples_to_revert((0, 10, 50, 100), kl, 0.01) == pytest.approx(10 + 0.04 / 0.042 * 40)


def test_intervals_trend_and_clustered_se_by_hand():
    i = t_interval([1.0, 2.0, 3.0])
    assert (i.mean, i.n) == (2.0, 3)
    assert i.lo == pytest.approx(2 - 4.303 / math.sqrt(3)) and i.hi == pytest.approx(2 + 4.303 / math.sqrt(3))
    missing = t_interval([10.0, None, 14.0])  # a seed that never reverted is left out and counted
    assert (missing.mean, missing.n, missing.n_total, missing.complete) == (12.0, 2, 3, False)
    assert missing.hi - missing.mean == pytest.approx(12.706 * math.sqrt(8) / math.sqrt(2))
    assert em.trend((100, 1000, 10000), (-0.01, -0.02, -0.03)) == pytest.approx(-0.01)
    assert math.isnan(em.trend((100, 1000), (None, -0.02)))
    assert clustered_mean_se([1, 0, 1, 1], [0, 0, 1, 1]) == pytest.approx((0.75, 0.25))


def _hand_point(q1, seed, q2, score, kl, samples=1_000_000):
    """A hand-made grid point: the score and KL given, every other number irrelevant (0)."""
    m = Measurement(score, 0.0, samples, 1.0, 0.0, kl, {"positive": 0.0, "negative": 0.0}, {})
    return Point(q1, seed, q2, 0, 0, 0, None, m)


def test_analysis_on_hand_made_rows():
    """Two Q1 curves x two seeds, with known crossings and slopes; the larger Q1 falls faster in log-odds
    but needs more negatives in probability space (the prototype's flip)."""
    from elasticity.analysis.rebound import analyse, verdict

    points = [_hand_point(0, None, 0, 0.4, 0.0)]
    curves = {100: (0.8, 0.5, 0.3), 1000: (0.99, 0.6, 0.35)}  # score at Q2 = 0, 10, 50
    for q1, ys in curves.items():
        for seed, shift in ((0, 0.0), (1, 0.005)):
            for q2, y, kl in zip((0, 10, 50), ys, (0.1, 0.02, 0.005)):
                points.append(_hand_point(q1, seed, q2, y - shift, kl))
    grid = ReboundGrid(q1=(100, 1000), q2=(0, 10, 50), seeds=(0, 1), lr=1e-4, early=10, late=10, kl_epsilon=0.01,
                       texts=())
    rows = analyse(points, grid)
    m = {(r.group, r.view.column, r.metric, r.q1): r for r in rows}
    rev = m[(Group.REVERT, "score", Metric.SAMPLES_TO_REVERT, 100)]
    assert rev.threshold == 0.4  # the base model's score: a field, never part of the name
    assert rev.per_seed[0] == pytest.approx(10 + (0.5 - 0.4) / 0.2 * 40)  # 30
    assert rev.per_seed[1] == pytest.approx(10 + (0.495 - 0.4) / 0.2 * 40)  # 29
    kl_rev = m[(Group.REVERT, "kl_response", Metric.SAMPLES_TO_REVERT, 100)]
    assert kl_rev.threshold == 0.01 and kl_rev.per_seed[0] == pytest.approx(10 + 0.01 / 0.015 * 40)
    assert m[(Group.SHAPE, "score", Metric.INITIAL_SLOPE, 1000)].interval.mean == pytest.approx(-0.039)
    assert m[(Group.SHAPE, "score", Metric.SLOPE_RATIO, 100)].per_seed[0] == pytest.approx(-0.03 / -0.005)
    # per decade of Q1 (one decade here): probability space slower start ... log-odds space faster
    t_score = m[(Group.TREND, "score", Metric.INITIAL_SLOPE, None)]
    t_lo = m[(Group.TREND, "log_odds", Metric.INITIAL_SLOPE, None)]
    assert t_score.per_seed[0] == pytest.approx(-0.039 - -0.03)
    slope = lambda a, b: (log_odds(b, 1_000_000) - log_odds(a, 1_000_000)) / 10
    assert t_lo.per_seed[0] == pytest.approx(slope(0.99, 0.6) - slope(0.8, 0.5))
    assert t_lo.interval.hi < 0 and verdict(t_lo) == "falls faster with more alignment"
    t_rev = m[(Group.TREND, "score", Metric.SAMPLES_TO_REVERT, None)]
    assert t_rev.interval.lo > 0 and verdict(t_rev) == "more negatives needed with more alignment"
    # the mean height above the base score: excess (0.4, 0.1, -0.1) at Q2 = (0, 10, 50) -> (2.5 + 0) / 50
    excess = m[(Group.REVERT, "score", Metric.MEAN_EXCESS, 100)]
    assert excess.threshold == 0.4 and excess.per_seed[0] == pytest.approx(0.05)
    assert m[(Group.TREND, "log_odds", Metric.MEAN_EXCESS, None)].threshold == pytest.approx(log_odds(0.4, 1_000_000))
    assert m[(Group.REVERT, "kl_response", Metric.KL_MIN, 100)].interval.mean == pytest.approx(0.005)
    assert m[(Group.REVERT, "kl_response", Metric.Q2_AT_KL_MIN, 100)].per_seed == [50.0, 50.0]
    depth = m[(Group.DEPTH, "score", Metric.SCORE_GAIN, 1000)]
    assert depth.interval.mean == pytest.approx(0.99 - 0.0025 - 0.4)
    # every file row names its metric without a number in it
    assert {r.to_record()["metric"] for r in rows} <= {metric.value for metric in Metric}
    assert View(Quantity.BITS_PER_TOKEN, "positive") in {r.view for r in rows}


# ---- the experiment's own code path -----------------------------------------------------------------------

MEASURED = ("tokens", "steps", "train_loss", "score", "score_se", "kl_response", "bpt_positive", "bpt_negative",
            "bpt_text", "kl_text")


def _rows(run):
    return [json.loads(line) for line in run.file("results.jsonl").read_text().splitlines()]


def _point(rows, q1, seed, q2):
    return next(r for r in rows if (r["q1"], r["seed"], r["q2"]) == (q1, seed, q2))


@pytest.mark.slow
def test_nested_snapshot_equals_separate_run(full, setup):
    """Q2 = 6 after Q1 = 20, inside runs that go on to Q1 = 20 (cut at 8) and Q2 = 12, measures exactly as an
    experiment whose runs stop at 20 positives and 6 negatives (batch 8: steps 8+8+4 and 6 either way)."""
    cfg, root = setup
    _, nested = full
    separate = rebound_stage(dataclasses.replace(cfg, q1=(20,), q2=(0, 6), seeds=(1,), metrics=Metrics()), root / "separate")
    a, b = _point(_rows(nested), 20, 1, 6), _point(_rows(separate), 20, 1, 6)
    assert a["steps"] == 1
    for key in MEASURED:
        assert a[key] == b[key], key
    assert _point(_rows(nested), 20, 1, 0)["kl_response"] > 0  # alignment moved the model: not a vacuous match


@pytest.mark.slow
def test_outputs_and_token_saving(full, setup):
    """Tidy rows, metric files and figures exist; the saving is recomputed from the data by hand."""
    from elasticity.data.records import load_records
    from elasticity.data.tokenize import encode_pair
    from elasticity.experiments.skeleton import seed_order
    from elasticity.models.hf import load_tokenizer

    cfg, _ = setup
    _, run = full
    rows = _rows(run)
    assert len(rows) == 1 + 2 * 2 * 3 and rows[0]["q1"] == 0 and rows[0]["seed"] is None
    assert rows[0]["kl_response"] == 0.0 and rows[0]["kl_text"] == 0.0  # the base against itself
    import matplotlib.image

    for name in ("score.png", "log_odds.png", "kl_response.png"):
        assert matplotlib.image.imread(run.file(name)).shape[0] > 200, name  # a real, decodable figure
    metrics = json.loads(run.file("metrics.json").read_text())["metrics"]
    assert len(run.file("metrics.csv").read_text().splitlines()) == len(metrics) + 1
    assert len(run.file("metrics.md").read_text().splitlines()) == len(metrics) + 2  # head, rule, rows
    assert [line.split(",")[0] for line in run.file("revert.csv").read_text().splitlines()] == ["q1", "8", "20"]
    assert len(run.file("revert.md").read_text().splitlines()) == 2 + 2
    assert len(run.file("curves.csv").read_text().splitlines()) == 1 + 3 * 2 * 3  # views x Q1 x Q2
    assert len(run.file("results.csv").read_text().splitlines()) == len(rows) + 1
    lines = run.lines("summary.txt")
    assert lines[0].startswith("rebound: base score") and lines[-1].endswith(run.path.name)
    tok = load_tokenizer(cfg.model)

    def tokens(path, n_pool, seed, q):
        pool = load_records(path, ("prompt", "response"))[:n_pool]
        return sum(len(encode_pair(tok, pool[i]["prompt"], pool[i]["response"], 64).input_ids)
                   for i in seed_order(len(pool), seed)[:q])

    pos = {(s, q): tokens(cfg.positive, 24, s, q) for s in (0, 1) for q in (8, 20)}
    neg = {(s, q): tokens(cfg.negative, 16, s, q) for s in (0, 1) for q in (0, 6, 12)}
    naive = sum(pos[s, q1] + neg[s, q2] for s in (0, 1) for q1 in (8, 20) for q2 in (0, 6, 12))
    nested = sum(pos[s, 20] + 2 * neg[s, 12] for s in (0, 1))
    save = json.loads(run.file("savings.json").read_text())
    assert (save["naive_tokens"], save["nested_tokens"]) == (naive, nested)
    assert (save["runs_nested"], save["runs_naive"]) == (2 + 4, 2 * 2 * 3)
    assert _point(rows, 8, 0, 12)["tokens"] == neg[0, 12]


def test_the_golden_comparison_tells_another_cpu_s_rounding_from_a_change(tmp_path, monkeypatch):
    import conftest

    monkeypatch.setattr(conftest, "GOLDEN", tmp_path / "golden")
    monkeypatch.setattr(conftest, "cpu_kind", lambda: "this")
    recorded = tmp_path / "golden" / "other" / "demo"
    recorded.mkdir(parents=True)
    (recorded / "r.csv").write_text("name,x,per_seed\na,0.5,0.25;0.125\n")
    run = tmp_path / "run"
    run.mkdir()
    for text, ok in (("a,0.5000004,0.2500001;0.125\n", True),  # another CPU's rounding
                     ("a,0.5006,0.25;0.125\n", False), ("a,0.5,0.25;0.1252\n", False), ("b,0.5,0.25;0.125\n", False)):
        (run / "r.csv").write_text("name,x,per_seed\n" + text)
        if ok:
            conftest.assert_matches_golden(run, ["r.csv"], "demo")
        else:
            with pytest.raises(AssertionError):
                conftest.assert_matches_golden(run, ["r.csv"], "demo")
    (tmp_path / "golden" / "this" / "demo").mkdir(parents=True)  # this CPU's own recording: 1e-6
    (tmp_path / "golden" / "this" / "demo" / "r.csv").write_text("name,x,per_seed\na,0.5,0.25;0.125\n")
    (run / "r.csv").write_text("name,x,per_seed\na,0.500002,0.25;0.125\n")  # passes against another kind
    with pytest.raises(AssertionError):
        conftest.assert_matches_golden(run, ["r.csv"], "demo")


@pytest.mark.slow
def test_result_files_are_the_recorded_ones(full):
    """Rebound's files as they were when rebound was rebuilt on the experiment skeleton (byte-identical then)."""
    from conftest import assert_matches_golden

    _, run = full
    assert_matches_golden(run.path, ["results.csv", "metrics.csv", "revert.csv", "curves.csv"], "rebound")


@pytest.mark.slow
def test_interrupted_rebound_resumes_without_redoing_points(full, setup, monkeypatch):
    from elasticity.experiments.measurement import Evaluator

    cfg, root = setup
    cfg = dataclasses.replace(cfg, seeds=(0,))  # a seed's runs do not depend on the other seeds
    measure = Evaluator.measure
    calls = []

    def crash_on_fourth(self, model):
        calls.append(1)
        if len(calls) == 4:  # base, Q1=8 at Q2 = 0 and 6, then crash inside the training loop at Q2 = 12
            raise KeyboardInterrupt
        return measure(self, model)

    monkeypatch.setattr(Evaluator, "measure", crash_on_fourth)
    with pytest.raises(KeyboardInterrupt):
        rebound_stage(cfg, root / "resume")
    # no final result from a crashed experiment, and the crashed negative run is not marked finished
    assert not [p for p in (root / "resume").iterdir() if re.fullmatch(r"rebound-[0-9a-f]{12}", p.name)]
    (crashed,) = (root / "resume").glob("rebound-negative-*")
    assert not (crashed / "DONE").exists() and (crashed / "resume.pt").exists()
    redone = []

    def counting(self, model):
        redone.append(1)
        return measure(self, model)

    monkeypatch.setattr(Evaluator, "measure", counting)
    resumed = rebound_stage(cfg, root / "resume")
    assert len(redone) == 4  # Q1 = 8 at Q2 = 12 (resumed from its Q2 = 6 state), Q1 = 20's three points
    _, uninterrupted = full
    want = [r for r in _rows(uninterrupted) if r["seed"] in (0, None)]
    got = _rows(resumed)
    assert len(got) == len(want)
    for a, b in zip(got, want):
        for key in MEASURED:
            assert a[key] == b[key], (a["q1"], a["q2"], key)


# ---- bad input --------------------------------------------------------------------------------------------


def _preference_file(root, with_rejected=True):
    good, bad = _pairs(GOOD, 40, 7), _pairs(BAD, 40, 8)
    return _jsonl(root / ("prefs.jsonl" if with_rejected else "chosen-only.jsonl"),
                  [{"prompt": g["prompt"], "chosen": g["response"], **({"rejected": b["response"]} if with_rejected
                                                                       else {})} for g, b in zip(good, bad)])


def test_preference_perturbation_and_reverse(setup, tmp_path):
    """SFT alignment then a DPO perturbation on pairs (Q2 counts pairs); the same reversed reads the scorer the
    other way round: the reversed run's base score is 1 - the plain run's (vader is bounded in [0, 1])."""
    cfg, root = setup
    pairs = _preference_file(tmp_path)
    plain = dataclasses.replace(cfg, pairs=pairs, perturb="dpo", q1=(8,), q2=(0, 6, 12), seeds=(0,))
    run = rebound_stage(plain, tmp_path / "runs")
    rows = _rows(run)
    assert [(r["q1"], r["q2"]) for r in rows if r["q1"]] == [(8, 0), (8, 6), (8, 12)]
    neg = next(p for p in (tmp_path / "runs").iterdir() if p.name.startswith("rebound-negative"))
    assert (neg / "reference_logps.pt").is_file()  # the aligned model's log-probs, computed once
    assert [r["examples"] for r in rows if r["q1"]] == [0, 6, 12]
    reverse = rebound_stage(dataclasses.replace(plain, reverse=True, align="kto"), tmp_path / "runs")
    base, base_reversed = _rows(run)[0], _rows(reverse)[0]
    assert base_reversed["score"] == pytest.approx(1 - base["score"], abs=1e-12)


def test_on_policy_pairs_are_the_aligned_models_own_ranked_by_the_scorer(setup, tmp_path):
    from elasticity.scorers import ScorerConfig, build_scorer

    cfg, _ = setup
    more = _jsonl(tmp_path / "neg.jsonl", _pairs(BAD, 100, 9))  # many prompts: few pairs of samples differ
    on_policy = dataclasses.replace(cfg, negative=more, perturb="ipo", on_policy=True, q1=(8,), q2=(0, 4), seeds=(0,),
                                    policy=dataclasses.replace(cfg.policy, max_new_tokens=16))
    rows = _rows(rebound_stage(on_policy, tmp_path / "runs"))
    assert [r["q2"] for r in rows if r["q1"]] == [0, 4]
    neg = next(p for p in (tmp_path / "runs").iterdir() if p.name.startswith("rebound-negative"))
    pairs = [json.loads(line) for line in (neg / "on_policy_pairs.jsonl").read_text().splitlines()]
    vader = build_scorer(ScorerConfig(name="vader"))
    assert len(pairs) == 4
    for r in pairs:  # the perturbation prefers the less positive sample
        chosen, rejected = vader.score([r["prompt"] + r["chosen"], r["prompt"] + r["rejected"]])
        assert chosen < rejected


def test_rl_steps_count_prompts(setup, tmp_path):
    """Alignment by GRPO and perturbation by RLOO through TRL, rewarded by the scorer: Q1 and Q2 count prompts,
    every Q2 is measured once, the perturbed model has moved (KL to the aligned one's grows from 0)."""
    from elasticity.train.rl import RLConfig

    cfg, _ = setup
    rl = dataclasses.replace(cfg, align="grpo", perturb="rloo", q1=(8,), q2=(0, 6, 12), seeds=(0,),
                             rl=RLConfig(prompts_per_step=2, num_generations=4))
    rows = _rows(rebound_stage(rl, tmp_path / "runs"))
    assert [(r["q1"], r["q2"], r["steps"]) for r in rows if r["q1"]] == [(8, 0, 0), (8, 6, 3), (8, 12, 6)]
    aligned = next(p for p in (tmp_path / "runs").iterdir() if p.name.startswith("rebound-positive"))
    assert json.loads((aligned / "marks.json").read_text())["8"]["steps"] == 4
    assert rows[0]["kl_response"] == 0 and all(r["kl_response"] > 0 for r in rows[1:])
    assert not any(p.name == "trl" for p in aligned.iterdir())


def test_the_rl_kl_reference_is_the_starting_model_whatever_its_config_names(setup, tmp_path):
    """TRL loads its reference from the path in the model's config; a model merged from an adapter names its base
    there. Here the config names the untrained base while the weights have moved: the first step's KL is 0."""
    import torch

    from elasticity.generate import DecodingPolicy
    from elasticity.models.hf import load_causal_lm
    from elasticity.train.loop import TrainConfig
    from elasticity.train.rl import RLConfig, rl_train

    cfg, _ = setup
    model, tok = load_causal_lm(cfg.model)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(1.5)  # no longer the weights at model.config's path
    summary = rl_train("rloo", model, tok, ["a good", "the film"] * 2, lambda texts: [float(len(t)) for t in texts],
                       False, RLConfig(prompts_per_step=2, num_generations=2, beta=0.1), TrainConfig(lr=1e-3),
                       DecodingPolicy(max_new_tokens=4), (2,), 0, tmp_path / "trl", lambda *a: None)
    assert summary["first_step_kl"] == pytest.approx(0.0, abs=1e-6)


# ---- LoRA ---------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def lora(setup, tmp_path_factory):
    """A rebound with rank-4 LoRA adapters (one seed, Q1 = 8), and a copy of every trained model's weights as
    it was handed to training: (config, rebound run, [(model, weights before)])."""
    from elasticity.experiments.skeleton import Models
    from elasticity.models.spec import LoraSettings

    cfg, _ = setup
    cfg = dataclasses.replace(cfg, lora=LoraSettings(r=4), q1=(8,), seeds=(0,))
    trained, trainable = [], Models.trainable

    def keep(self, source, seed=0):
        model, tok = trainable(self, source, seed)
        trained.append((model, {k: v.clone() for k, v in model.state_dict().items()}))
        return model, tok

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Models, "trainable", keep)
        run = rebound_stage(cfg, tmp_path_factory.mktemp("lora") / "runs")
    return cfg, run, trained


def test_a_lora_rebound_trains_the_adapters_alone_and_keeps_them_as_checkpoints(lora):
    from pathlib import Path

    from elasticity.models.hf import load_causal_lm

    cfg, run, trained = lora
    rows = _rows(run)
    assert [(r["q1"], r["q2"]) for r in rows] == [(0, 0), (8, 0), (8, 6), (8, 12)]
    assert all(r["kl_response"] > 0 for r in rows[1:])  # the adapters moved the model
    assert len(trained) == 2  # the alignment and the perturbation: only trained models are wrapped
    for model, before in trained:
        after = model.state_dict()
        lora_keys = [k for k in after if "lora_" in k]
        assert lora_keys and all(not torch.equal(after[k], before[k]) for k in lora_keys if "lora_B" in k)
        assert all(torch.equal(after[k], before[k]) for k in after if "lora_" not in k)  # base weights untouched
    (aligned,) = run.path.parent.glob("rebound-positive-*")
    checkpoint = aligned / "checkpoints" / "examples-8"
    assert not (checkpoint / "model.safetensors").exists()
    config = json.loads((checkpoint / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(Path(cfg.model).resolve()) and config["r"] == 4
    adapter, full = (checkpoint / "adapter_model.safetensors").stat().st_size, (Path(cfg.model) /
                                                                                 "model.safetensors").stat().st_size
    assert 1_000 < adapter < full / 5  # a full checkpoint is the model's size
    merged, tok = load_causal_lm(str(checkpoint))
    base, _ = load_causal_lm(cfg.model)
    ids = tok("the movie was good", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        assert not torch.allclose(merged(ids).logits, base(ids).logits)


def test_lora_makes_the_trained_stages_other_stages(setup, monkeypatch):
    """A LoRA run never reuses a full fine-tune's aligned or perturbed runs (the base measurement it may); without
    LoRA the trained stages' keys are what they were before the option existed."""
    from elasticity.experiments import rebound
    from elasticity.models.spec import LoraSettings

    cfg, _ = setup
    keys: dict[str, list] = {}
    from elasticity.runs import Run

    def stage(root, name, key, *a, **k):
        keys.setdefault(name, []).append(key)
        return Run(Path(root) / name)

    monkeypatch.setattr(rebound, "stage", stage)
    rebound_stage(cfg, setup[1] / "unused")
    full, keys = keys, {}
    rebound_stage(dataclasses.replace(cfg, lora=LoraSettings(r=4)), setup[1] / "unused")
    assert full["rebound-base"] == keys["rebound-base"]
    for name in ("rebound-positive", "rebound-negative"):
        assert all("lora" not in k for k in full[name]) and all(k["lora"].r == 4 for k in keys[name])
        assert all(a != b for a, b in zip(full[name], keys[name]))


def test_an_interrupted_lora_rebound_resumes_from_its_adapters(lora, setup, tmp_path, monkeypatch):
    """Killed inside the perturbation after Q2 = 6: the resume state holds the adapters, and the resumed run
    measures Q2 = 12 exactly as the uninterrupted one."""
    from elasticity.experiments.measurement import Evaluator

    cfg, uninterrupted, _ = lora
    measure, calls = Evaluator.measure, []

    def crash_on_fourth(self, model):
        calls.append(1)
        if len(calls) == 4:  # base, Q2 = 0 and 6, then Q2 = 12 inside the training loop
            raise KeyboardInterrupt
        return measure(self, model)

    monkeypatch.setattr(Evaluator, "measure", crash_on_fourth)
    with pytest.raises(KeyboardInterrupt):
        rebound_stage(cfg, tmp_path)
    (crashed,) = tmp_path.glob("rebound-negative-*")
    state = torch.load(crashed / "resume.pt", weights_only=True)["model"]
    assert any("lora_A" in k for k in state)
    monkeypatch.setattr(Evaluator, "measure", measure)
    got, want = _rows(rebound_stage(cfg, tmp_path)), _rows(uninterrupted)
    assert len(got) == len(want)
    for a, b in zip(got, want):
        for key in MEASURED:
            assert a[key] == b[key], (a["q2"], key)


def test_rl_trains_lora_adapters_through_trl(setup, tmp_path):
    from elasticity.models.spec import LoraSettings
    from elasticity.train.rl import RLConfig

    cfg, _ = setup
    rl = dataclasses.replace(cfg, align="grpo", perturb="rloo", q1=(8,), q2=(0, 4), seeds=(0,),
                             rl=RLConfig(prompts_per_step=2, num_generations=4), lora=LoraSettings(r=4))
    rows = _rows(rebound_stage(rl, tmp_path / "runs"))
    assert [(r["q2"], r["steps"]) for r in rows if r["q1"]] == [(0, 0), (4, 2)]
    assert all(r["kl_response"] > 0 for r in rows[1:])
    (aligned,) = (tmp_path / "runs").glob("rebound-positive-*")
    # the trained adapter alone (not TRL's frozen copy, its KL reference)
    assert sorted(p.name for p in (aligned / "checkpoints" / "examples-8").iterdir()) == [
        "adapter_config.json", "adapter_model.safetensors", "progress.json", "tokenizer.json", "tokenizer_config.json"]


@pytest.mark.parametrize("flags, message", [
    (["--perturb", "dpo", "--pairs", "NO_REJECTED"], "line 1 has no field 'rejected'"),
    (["--align", "simpo"], "--align simpo --perturb sft trains on preference pairs: set --pairs"),
    (["--perturb", "ppo"], "perturb must be one of sft, dpo, ipo, simpo, kto, rloo, grpo, got 'ppo'"),
    (["--perturb", "rloo", "--scorer.name", ""], "--perturb rloo is rewarded by the scorer: set --scorer.name"),
    (["--perturb", "grpo", "--rl.prompts_per_step", "4"], "q2 6 is not a multiple of rl.prompts_per_step (4)"),
    (["--pairs", "PAIRS"], "pairs is read only by a preference objective"),
    (["--on_policy", "true"], "on_policy makes a preference step's pairs: set --align or --perturb"),
    (["--q2", "0", "6", "40"], "q2 asks for 40 negative examples"),
    (["--scorer.name", "sentiment-magic"], "unknown scorer 'sentiment-magic'"),
    (["--prompts", "/nonexistent/prompts.jsonl"], "data file not found: /nonexistent/prompts.jsonl"),
    (["--config", "EMPTY_Q1"], "q1 is empty"),
])
def test_bad_input_exits_2_and_writes_nothing(setup, tmp_path, capsys, flags, message):
    from elasticity.cli import main

    cfg, _ = setup
    flags = [_preference_file(tmp_path, f == "PAIRS") if f in ("PAIRS", "NO_REJECTED") else f for f in flags]
    if "EMPTY_Q1" in flags:
        (tmp_path / "bad.yaml").write_text("q1: []\n")
        flags = ["--config", str(tmp_path / "bad.yaml")]
    q1 = [] if "--config" in flags else ["--q1", "8"]  # a flag would override the file's empty list
    args = ["rebound", "--runs-dir", str(tmp_path / "runs"), "--model", cfg.model, "--positive", cfg.positive,
            "--negative", cfg.negative, "--prompts", cfg.prompts, "--scorer.name", "vader", *q1,
            "--q2", "0", "6", "--eval.pairs", "6", *flags]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not (tmp_path / "runs").exists()
