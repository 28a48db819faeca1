"""`elasticity algorithms` end to end on a tiny world: one rebound per (order, algorithm), heatmaps, ordering."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest

from elasticity.cli import main
from elasticity.config import load_config
from elasticity.experiments.algorithms import Config, algorithms_stage
from elasticity.stats import t_interval

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]
TINY = "configs/algorithms-tiny.yaml"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("algorithms")
    cfg = load_config(Config, TINY, {})
    return cfg, algorithms_stage(cfg, root / "runs"), root


def test_heatmap_cells_are_the_rebounds_means(tiny):
    cfg, run, root = tiny
    heat = list(csv.DictReader(run.file("heatmap.csv").open()))
    assert len(heat) == len(cfg.orders) * len(cfg.algorithms) * 2 * 3
    assert run.file("heatmaps.png").stat().st_size > 10_000
    inputs = json.loads(run.file("meta.json").read_text())["inputs"]
    for (order, algorithm) in [("forward", "dpo"), ("reverse", "kto")]:
        folder = Path(inputs[f"{order}:{algorithm}"])
        rows = [json.loads(line) for line in (folder / "results.jsonl").read_text().splitlines()]
        want = t_interval([r["score"] for r in rows if (r["q1"], r["q2"]) == (24, 16)])
        got = next(h for h in heat if (h["order"], h["algorithm"], h["q1"], h["q2"]) == (order, algorithm, "24", "16"))
        assert float(got["score"]) == pytest.approx(want.mean, abs=1e-12)


def test_reverse_reads_the_oracle_the_other_way(tiny):
    _, run, root = tiny
    inputs = json.loads(run.file("meta.json").read_text())["inputs"]

    def base(order):
        folder = Path(inputs[f"{order}:sft"])
        return json.loads((folder / "results.jsonl").read_text().splitlines()[0])["score"]

    assert base("reverse") == pytest.approx(1 - base("forward"), abs=1e-12)


def test_ordering_table_has_every_space(tiny):
    cfg, run, _ = tiny
    rows = [json.loads(line) for line in run.file("ordering.jsonl").read_text().splitlines()]
    assert {(r["order"], r["algorithm"], r["space"]) for r in rows} == {
        (o, a, s) for o in cfg.orders for a in cfg.algorithms for s in ("score", "log_odds", "kl_response")}
    assert all(r["revert_direction"] in ("up", "down", "unclear", "-") for r in rows)  # "-": not reached
    assert all((r["same_as_sft"] is None) == (r["algorithm"] == "sft") for r in rows)
    assert not any(math.isnan(float(h["score"])) for h in csv.DictReader(run.file("heatmap.csv").open()))


@pytest.mark.parametrize("flags, message", [
    (["--algorithms", "sft", "ppo"], "algorithms: unknown 'ppo' (known: sft, dpo, ipo, simpo, kto, rloo, grpo)"),
    (["--orders", "sideways"], "orders: unknown 'sideways'"),
    (["--reverse", "true"], "algorithms sets perturb and reverse itself"),
])
def test_bad_input_exits_2(tmp_path, capsys, flags, message):
    assert main(["algorithms", "--config", TINY, "--runs-dir", str(tmp_path / "runs"), *flags]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not (tmp_path / "runs").exists()


def test_ordering_directions_by_hand():
    """A trend's direction is its interval's side of 0; the ordering holds where both directions match SFT's."""
    from elasticity.report.algorithms import ordering_rows, same_as_sft

    def trend(metric, mean, lo, hi, view="score"):
        return {"group": "trend", "view": view, "metric": metric, "q1": "all", "mean": mean, "lo": lo, "hi": hi}

    def per_q1(q1, metric, mean, lo=math.nan):
        return {"group": "revert", "view": "score", "metric": metric, "q1": q1, "mean": mean, "lo": lo, "hi": math.nan}

    sft = [trend("samples_to_revert", 200, 150, 250), trend("initial_slope", 1e-4, -1e-4, 3e-4),
           per_q1(100, "samples_to_revert", 90), per_q1(1000, "samples_to_revert", math.inf),
           per_q1(100, "slope_ratio", 2.5, 1.2), per_q1(1000, "slope_ratio", 0.5, -0.1)]
    dpo = [trend("samples_to_revert", 150, 20, 280), trend("initial_slope", -2e-4, -3e-4, -1e-4)]
    rows = ordering_rows("forward", "sft", sft) + ordering_rows("forward", "dpo", dpo)
    same_as_sft(rows)
    score = {r["algorithm"]: r for r in rows if r["space"] == "score"}
    assert score["sft"]["samples_to_revert"] == "90 / not reached"
    assert (score["sft"]["revert_direction"], score["sft"]["initial_slope_direction"]) == ("up", "unclear")
    assert score["sft"]["fast_then_slow_q1"] == "100" and score["sft"]["same_as_sft"] is None
    assert (score["dpo"]["revert_direction"], score["dpo"]["initial_slope_direction"]) == ("up", "down")
    assert score["dpo"]["same_as_sft"] is False  # its initial slope resolves, SFT's does not
    assert score["dpo"]["revert_per_decade"] == "150 [20, 280]"
