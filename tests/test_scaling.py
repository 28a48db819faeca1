"""Scaling: trends along size and volume by hand, the tiny preset end to end, a model that fails mid-list."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest

from elasticity.analysis.curves import trend
from elasticity.analysis.scaling import BASE_LEVEL, ModelResult, axis_groups, metric_key, trends
from elasticity.cli import main

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--config", str(ROOT / "configs" / "scaling-tiny.yaml")]

pytestmark = pytest.mark.usefixtures("one_thread")


def _record(metric: str, view: str, per_seed: list, q1=100, threshold=None, group="shape") -> dict:
    return {"group": group, "view": view, "metric": metric, "threshold": threshold, "q1": q1, "per_seed": per_seed,
            "mean": sum(per_seed) / len(per_seed), "lo": math.nan, "hi": math.nan, "n": len(per_seed)}


def _model(label, parameters, tokens, slope_seeds, revert_seeds, base_score):
    return ModelResult(label, parameters, tokens, [
        _record("initial_slope", "score", slope_seeds),
        _record("samples_to_revert", "score", revert_seeds, threshold=base_score, group="revert")])


def test_trends_per_decade_of_size_and_of_volume_by_hand():
    """Three sizes on 1M tokens and a second volume of the largest: per seed, the least-squares slope against
    log10 of the axis, then a t-interval over the two seeds (t = 12.706)."""
    models = [_model("s", 1e5, 1e6, [0.0, 1.0], [10.0, 20.0], 0.41),
              _model("m", 1e6, 1e6, [1.0, 1.0], [30.0, 20.0], 0.45),
              _model("l", 1e7, 1e6, [2.0, 1.0], [50.0, 20.0], 0.39),
              _model("l-early", 1e7, 1e5, [5.0, 3.0], [20.0, 26.0], 0.50),
              _model("unknown size", 0, 1e6, [9.0, 9.0], [9.0, 9.0], 0.40)]  # on no size axis: its size is unknown
    assert [[m.label for m in g] for g in axis_groups(models, "size")] == [["s", "m", "l"]]
    assert [[m.label for m in g] for g in axis_groups(models, "volume")] == [["l-early", "l"]]
    rows = {(t.axis, t.key[2]): t for t in trends(models)}
    size = rows[("size", "initial_slope")]
    assert size.per_seed == pytest.approx([1.0, 0.0]) and size.models == ("s", "m", "l") and size.fixed == 1e6
    assert size.interval.mean == pytest.approx(0.5)
    assert size.interval.hi - size.interval.mean == pytest.approx(12.706 * math.sqrt(0.5) / math.sqrt(2), rel=1e-4)
    assert size.direction == "no clear change"
    # samples_to_revert counts down to each model's own base score: one key across models, level "base"
    revert = rows[("size", "samples_to_revert")]
    assert revert.key[4] == BASE_LEVEL and revert.per_seed == pytest.approx([20.0, 0.0])
    volume = rows[("volume", "initial_slope")]  # one decade of tokens: 5 -> 2 and 3 -> 1
    assert volume.per_seed == pytest.approx([-3.0, -2.0]) and volume.fixed == 1e7
    assert (volume.interval.lo, volume.interval.hi) == pytest.approx((-2.5 - 6.353, -2.5 + 6.353), abs=1e-3)
    steeper = trends([_model("a", 1e6, 1e6, [0.0, 0.1], [1.0, 1.0], 0.4),
                      _model("b", 1e7, 1e6, [-1.0, -0.8], [1.0, 1.0], 0.4)])
    assert next(t for t in steeper if t.key[2] == "initial_slope").direction == "shrinks"  # [-1.0, -0.9]: clear


def test_a_metric_level_is_the_base_in_score_space_and_the_threshold_in_kl():
    assert metric_key(_record("samples_to_revert", "score", [1.0], threshold=0.43, group="revert"))[4] == BASE_LEVEL
    assert metric_key(_record("mean_excess", "log_odds", [1.0], threshold=-0.2, group="revert"))[4] == BASE_LEVEL
    assert metric_key(_record("samples_to_revert", "kl_response", [1.0], threshold=0.01, group="revert"))[4] == 0.01


@pytest.mark.slow
def test_scaling_tiny_runs_end_to_end_and_is_cached(scaling_tiny, capsys):
    """configs/scaling-tiny.yaml through the CLI: two sizes and a checkpoint, one rebound each, then trends that
    equal the slopes of the per-model metrics; a second call reuses every stage."""
    tmp_path, out = scaling_tiny
    assert out.name.startswith("scaling-")
    models = list(csv.DictReader(open(out / "models.csv")))
    assert [m["label"] for m in models] == ["0.1m", "0.2m", "0.2m@12,288"]
    assert [int(m["parameters"]) for m in models] == [92360, 196928, 196928]
    for m in models:
        assert (Path(m["result"]) / "DONE").exists()
        assert float(m["bpt_neutral"]) > 0 and float(m["pretrain_lr"]) in (0.004, 0.003)
    for name in ("trends.csv", "trends.md", "model_metrics.csv", "summary.txt", "metrics_size.png",
                 "metrics_volume.png", "curves_size_score.png", "curves_volume_kl_response.png"):
        assert (out / name).stat().st_size > 0, name
    rows = [json.loads(line) for line in (out / "trends.jsonl").read_text().splitlines()]
    assert {r["axis"] for r in rows} == {"size", "volume"}
    per_model = {(r["model"], r["view"], r["metric"], r["q1"]): r["per_seed"] for r in map(
        json.loads, (out / "model_metrics.jsonl").read_text().splitlines()) if r["group"] == "shape"}
    row = next(r for r in rows if r["axis"] == "size" and r["view"] == "score" and r["metric"] == "initial_slope"
               and r["q1"] == 8)
    expected = [trend([92360, 196928], [per_model[("0.1m", "score", "initial_slope", 8)][s],
                                        per_model[("0.2m", "score", "initial_slope", 8)][s]]) for s in (0, 1)]
    assert row["per_seed"] == pytest.approx(expected, rel=1e-9)
    stamp, dirs = (out / "DONE").stat().st_mtime_ns, sorted(tmp_path.iterdir())
    assert main(["scaling", "--runs-dir", str(tmp_path), *TINY]) == 0
    assert (out / "DONE").stat().st_mtime_ns == stamp and sorted(tmp_path.iterdir()) == dirs
    # with resistance per model: the rebounds are reused, each model's forward - inverse gets its trends too
    preset = tmp_path.parent / "resistance-tiny.yaml"
    preset.write_text("prompt_limit: 8\nslices: 2\nexamples: 16\nseeds: [0, 1]\nalign: {lr: 1.0e-3, batch_size: 4, "
                      "max_length: 128}\nfinetune: {lr: 1.0e-3, batch_size: 4, max_length: 128}\npolicy: "
                      "{max_new_tokens: 16}\neval: {heldout_prompts: 2, loss_window: 1}\n")
    capsys.readouterr()
    assert main(["scaling", "--runs-dir", str(tmp_path), *TINY, "--resistance", "true", "--resistance_preset",
                 str(preset)]) == 0
    with_resistance = Path(capsys.readouterr().out.strip().splitlines()[-1])
    assert all(d in sorted(tmp_path.iterdir()) for d in dirs) and with_resistance != out
    rows = [json.loads(line) for line in (with_resistance / "trends.jsonl").read_text().splitlines()]
    difference = [r for r in rows if r["view"] == "resistance" and r["metric"] == "difference"]
    assert {r["axis"] for r in difference} == {"size", "volume"} and all(r["n"] == 2 for r in difference)
    # the full grid: every size's checkpoints, so a size axis at each volume and a volume axis at each size
    capsys.readouterr()
    assert main(["scaling", "--runs-dir", str(tmp_path), *TINY, "--volume_size", "all"]) == 0
    grid = Path(capsys.readouterr().out.strip().splitlines()[-1])
    assert [m["label"] for m in csv.DictReader(open(grid / "models.csv"))] == [
        "0.1m", "0.2m", "0.1m@12,288", "0.2m@12,288"]
    rows = [json.loads(line) for line in (grid / "trends.jsonl").read_text().splitlines()]
    assert {(r["axis"], r["models"]) for r in rows} == {
        ("size", "0.1m@12,288 0.2m@12,288"), ("size", "0.1m 0.2m"), ("volume", "0.1m@12,288 0.1m"),
        ("volume", "0.2m@12,288 0.2m")}


def _pairs(path: Path, words: list[str], n: int) -> str:
    path.write_text("".join(json.dumps({"prompt": f"the film {i % 5}", "response": " " + " ".join(
        words[(i + j) % len(words)] for j in range(6))}) + "\n" for i in range(n)))
    return str(path)


@pytest.mark.slow
def test_a_model_that_fails_to_load_mid_list_stops_in_one_line_and_keeps_the_finished(tiny_assets, tmp_path,
                                                                                      capsys):
    """Three local models, the second with cut-short weights: the first model's rebound finishes, the second stops
    the command with one error line (exit 2), nothing of it is left; once its weights are whole, a rerun reuses
    the first model's results and finishes the rest."""
    from elasticity.models.hf import load_tokenizer
    from elasticity.models.tiny import build_tiny_model

    tok = load_tokenizer(str(tiny_assets["tok"]))
    for i, name in enumerate(("a", "b", "c")):
        build_tiny_model("0.1m", len(tok), 64, seed=i).save_pretrained(tmp_path / name)
        tok.save_pretrained(tmp_path / name)
    whole = (tmp_path / "b" / "model.safetensors").read_bytes()
    (tmp_path / "b" / "model.safetensors").write_bytes(whole[: len(whole) // 2])  # a download cut short
    runs = tmp_path / "runs"
    flags = ["scaling", "--runs-dir", str(runs), "--models", *(str(tmp_path / n) for n in "abc"),
             "--positive", _pairs(tmp_path / "pos.jsonl", "good great fine nice".split(), 20),
             "--negative", _pairs(tmp_path / "neg.jsonl", "bad awful dull weak".split(), 20),
             "--prompts", _pairs(tmp_path / "prompts.jsonl", ["the"], 3), "--scorer.name", "vader",
             "--q1", "8", "--q2", "0", "4", "--seeds", "0", "--train.lr", "1e-3", "--train.max_length", "64",
             "--policy.max_new_tokens", "6", "--policy.samples_per_prompt", "1",
             "--eval.prompts", "3", "--eval.pairs", "4", "--eval.docs", "4"]
    capsys.readouterr()
    assert main(flags) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("elasticity: error:")]
    assert len(errors) == 1 and "cannot load a causal LM from" in errors[0] and str(tmp_path / "b") in errors[0]
    assert "Traceback" not in err
    first = [d for d in runs.glob("rebound-*") if (d / "DONE").exists()]
    assert len(first) == 4  # model a's base, positive, negative and report (one seed, one Q1); nothing of b
    assert not list(runs.glob("scaling-*")) and all((d / "DONE").exists() for d in runs.iterdir())
    stamps = {d: (d / "DONE").stat().st_mtime_ns for d in first}
    (tmp_path / "b" / "model.safetensors").write_bytes(whole)
    assert main(flags) == 0
    assert all((d / "DONE").stat().st_mtime_ns == s for d, s in stamps.items())
    (out,) = runs.glob("scaling-*")
    assert [r["label"] for r in csv.DictReader(open(out / "models.csv"))] == [str(tmp_path / n) for n in "abc"]


@pytest.mark.parametrize("flags, message", [
    (["--volume_size", "2m"], "volume_size 2m is not one of pretrain.sizes"),
    (["--volumes", "5000"], "volumes 5000 is not one of pretrain.checkpoint_tokens"),
    (["--model", "somewhere"], "scaling runs one rebound per base model"),
    (["--pretrain.lrs", "0.001"], "lrs must give one positive learning rate per size"),
])
def test_bad_input_exits_2_before_any_run(tmp_path, capsys, flags, message):
    assert main(["scaling", "--runs-dir", str(tmp_path / "runs"), *TINY, *flags]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_the_world_ladder_spans_four_sizes_and_a_decade_of_parameters():
    """scaling-world (read here, not run: it takes ~40 minutes) has at least 4 sizes spanning at least 10x
    parameters with the world's 1024-token vocabulary, each with its own learning rate, and loads as a config."""
    from elasticity.config import load_config, read_yaml
    from elasticity.experiments.scaling import Config
    from elasticity.models.tiny import build_tiny_model, count_parameters

    path = ROOT / "configs" / "scaling-world.yaml"
    cfg = load_config(Config, str(path), {})
    sizes = read_yaml(path)["pretrain"]["sizes"]
    assert list(cfg.pretrain.sizes) == sizes and len(sizes) >= 4 and len(cfg.pretrain.lrs) == len(sizes)
    counts = [count_parameters(build_tiny_model(s, 1024, 128, 0)) for s in sizes]
    assert counts == sorted(counts) and counts[-1] / counts[0] >= 10
