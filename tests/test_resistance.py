"""Resistance: paired forward/inverse runs, slice provenance, reproducibility, hand-checked numbers, bad input."""

from __future__ import annotations

import csv
import json
import math
import random
from dataclasses import replace

import pytest
from conftest import write_jsonl

from elasticity.analysis.resistance import final_loss, pair_row, summarise
from elasticity.experiments.resistance import Config, Evaluation, resistance_stage, slice_marks
from elasticity.files import read_jsonl
from elasticity.generate import DecodingPolicy
from elasticity.results import PathEnd
from elasticity.train.loop import TrainConfig

GOOD = "good great wonderful liked loved excellent".split()
FILLER = "the movie was plot actor scene film it and very".split()


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def setup(tiny_assets, tmp_path_factory):
    """A 0.2m base model saved locally, an alignment set of upbeat reviews, prompts, a small config."""
    from elasticity.models.hf import load_tokenizer
    from elasticity.models.tiny import build_tiny_model

    root = tmp_path_factory.mktemp("resistance")
    tok = load_tokenizer(str(tiny_assets["tok"]))
    build_tiny_model("0.2m", len(tok), 64, seed=0).save_pretrained(root / "base")
    tok.save_pretrained(root / "base")
    rng = random.Random(0)
    opening = [" ".join(rng.choice(FILLER) for _ in range(3)) for _ in range(60)]
    alignment = [{"prompt": p, "response": " " + " ".join(rng.choice(GOOD) for _ in range(6))} for p in opening[:36]]
    cfg = Config(
        model=str(root / "base"),
        alignment=str(write_jsonl(root / "align.jsonl", alignment)),
        prompts=str(write_jsonl(root / "prompts.jsonl", [{"prompt": p} for p in opening[36:52]])),
        slices=3, seeds=(0, 1),
        align=TrainConfig(lr=3e-3, batch_size=4, max_length=48),
        finetune=TrainConfig(lr=3e-3, batch_size=4, max_length=48),
        policy=DecodingPolicy(temperature=1.0, max_new_tokens=8),
        eval=Evaluation(heldout_prompts=4, loss_window=2),
    )
    return cfg, root


@pytest.fixture(scope="module")
def full(setup):
    cfg, root = setup
    return resistance_stage(cfg, root / "runs")


# ---- numbers by hand ----------------------------------------------------------------------------------------


def test_slice_marks_and_final_loss_by_hand():
    assert slice_marks(600, 3) == (200, 400, 600)
    assert slice_marks(10, 3) == (3, 7, 10)
    assert slice_marks(5, 2) == (2, 5)  # round half to even: 2.5 -> 2
    assert final_loss([3.0, 2.0, 1.5, 1.0], 2) == 1.25
    assert final_loss([2.0], 5) == 2.0
    assert math.isnan(final_loss([], 3))


def _hand_row(seed, fwd_curve, inv_curve):
    loss = {(0, 1): 2.0, (0, 2): 2.5, (1, 1): 1.0, (2, 2): 1.2, (1, 2): 1.6, (2, 1): 1.3}  # (model, dataset)
    kl = {(2, 1): 0.20, (1, 2): 0.30}  # (target, model): KL(theta_target || theta_model)
    ends = {"forward": PathEnd(steps=3, examples=12, tokens=100, kl_target_end=0.10, kl_moved=0.25,
                               heldout_loss_end=1.4),
            "inverse": PathEnd(steps=3, examples=12, tokens=90, kl_target_end=0.05, kl_moved=0.15,
                               heldout_loss_end=1.1)}
    return pair_row(seed, 1, 2, {"forward": fwd_curve, "inverse": inv_curve}, 2, loss, kl, ends)


def test_pair_row_and_summary_by_hand():
    row = _hand_row(0, [2.0, 1.6, 1.4], [1.5, 1.2, 1.1])
    r = row.to_record()
    assert r["forward_loss"] == pytest.approx(1.5) and r["inverse_loss"] == pytest.approx(1.15)
    assert r["difference"] == pytest.approx(0.35) and r["inverse_lower"]
    assert r["target_gap"] == pytest.approx(0.2)  # H(D_2) - H(D_1) = 1.2 - 1.0
    assert r["excess_difference"] == pytest.approx(0.15)  # (1.5 - 1.2) - (1.15 - 1.0)
    assert (r["start_forward"], r["start_inverse"]) == (1.6, 1.3)  # theta_1 on D_2, theta_2 on D_1
    assert r["kl_change_forward"] == pytest.approx(0.20 - 0.10)  # KL(theta_2 || theta_1) before, 0.10 after
    assert r["kl_change_inverse"] == pytest.approx(0.30 - 0.05)
    assert r["kl_end_difference"] == pytest.approx(0.05)  # 0.10 vs 0.05 left
    assert r["kl_left_forward"] == pytest.approx(0.5) and r["kl_left_inverse"] == pytest.approx(0.05 / 0.30)
    assert r["kl_left_difference"] == pytest.approx(0.5 - 1 / 6) and r["inverse_closed_more"]
    # a second seed where the forward path ends lower: counted, and the interval straddles 0
    row2 = _hand_row(1, [2.0, 1.0, 1.0], [1.5, 1.2, 1.2])
    r2 = row2.to_record()
    assert r2["difference"] == pytest.approx(-0.2) and not r2["inverse_lower"]
    pair, overall = summarise([row, row2], (0, 1))
    assert pair.pair == "2/1" and (pair.inverse_lower, pair.cells) == (1, 2)
    assert pair["difference"].mean == pytest.approx(0.075)
    half = 12.706 * math.sqrt(((0.35 - 0.075) ** 2 + (-0.2 - 0.075) ** 2) / 1) / math.sqrt(2)
    assert pair["difference"].hi == pytest.approx(0.075 + half)
    assert pair.to_record()["difference_hi"] == pytest.approx(0.075 + half)
    assert overall.pair == "all" and overall["difference"].mean == pytest.approx(0.075)


# ---- the small experiment -----------------------------------------------------------------------------------


def test_forward_and_inverse_see_the_same_examples_and_steps(full, setup):
    cfg, _ = setup
    rows = read_jsonl(full.file("results.jsonl"))
    assert sorted((r["seed"], r["pair"]) for r in rows) == [(s, p) for s in (0, 1) for p in ("2/1", "3/1", "3/2")]
    for r in rows:
        assert r["examples_forward"] == r["examples_inverse"] == 12  # 16 prompts - 4 for KL, 1 sample each
        assert r["steps_forward"] == r["steps_inverse"] == 3
        assert math.isfinite(r["difference"]) and r["kl_moved_forward"] > 0 and r["kl_moved_inverse"] > 0
    with open(full.file("curves.csv")) as f:
        curve = list(csv.DictReader(f))
    for s in (0, 1):
        for p in ("2/1", "3/1", "3/2"):
            steps = {d: [c["step"] for c in curve if c["seed"] == str(s) and c["pair"] == p and c["direction"] == d]
                     for d in ("forward", "inverse")}
            assert steps["forward"] == steps["inverse"] == ["1", "2", "3"]
    import matplotlib.image

    for name in ("loss_2_1.png", "loss_3_1.png", "loss_3_2.png"):
        assert matplotlib.image.imread(full.file(name)).shape[0] > 200, name  # a real, decodable figure
    assert [line.split(",")[0] for line in full.file("table.csv").read_text().splitlines()] == [
        "pair", "2/1", "3/1", "3/2", "all"]
    assert len(full.file("difficulty.md").read_text().splitlines()) == 4 + 4  # caption, blank, head, rule, 4 models
    assert full.file("summary.txt").read_text().count("\n  pair ") == 3


def test_a_slice_dataset_is_that_slice_s_answers(full, setup):
    """Regenerate from the model named in each record with the recorded policy: the same answers."""
    from elasticity.generate import DecodingPolicy, generate
    from elasticity.models.hf import load_causal_lm

    cfg, root = setup
    slices = [p for p in (root / "runs").glob("resistance-slices-*")]
    assert len(slices) == 2
    run = slices[0]
    gen = json.loads((run / "generation.json").read_text())
    policy = DecodingPolicy(**{**gen["policy"]})
    prompts = [json.loads(x)["prompt"] for x in open(cfg.prompts)]
    answers = {}
    assert not (run / "data-0.jsonl").exists()  # the base trains on no D: it answers the held-out prompts only
    for k in range(4):
        data = (read_jsonl(run / f"data-{k}.jsonl") if k else []) + read_jsonl(run / f"heldout-{k}.jsonl")
        assert {r["slice"] for r in data} == {k} and len(data) == (4 if k == 0 else 16)
        source = cfg.model if data[0]["model"] == "base" else str(run / data[0]["model"])
        assert data[0]["alignment_examples"] == (0, 12, 24, 36)[k]
        model, tok = load_causal_lm(source)
        again = [r for r in generate(model, tok, prompts, policy) if k or r["prompt_index"] >= 12]
        assert [(r["prompt_index"], r["response"]) for r in data] == [(r["prompt_index"], r["response"]) for r in again]
        answers[k] = [r["response"] for r in data]
    assert answers[1] != answers[3]  # the slices differ, so the pairs compare different datasets


def test_table_is_reproducible_with_a_fixed_seed(full, setup):
    cfg, root = setup
    again = resistance_stage(cfg, root / "runs-again")  # every stage computed again, in a runs root of its own
    for name in ("results.csv", "table.csv", "difficulty.csv", "curves.csv"):
        assert again.file(name).read_text() == full.file(name).read_text(), name


def test_result_files_are_the_recorded_ones(full):
    """Resistance's files as they were when it was rebuilt on the experiment skeleton (byte-identical then)."""
    from conftest import assert_matches_golden

    assert_matches_golden(full.path, ["results.csv", "table.csv", "difficulty.csv", "curves.csv"], "resistance")


def test_a_lora_resistance_fine_tunes_adapters_on_merged_slices(setup, tmp_path):
    """Slices are adapters of the base; every path trains a new adapter on its merged start slice."""
    from elasticity.models.spec import LoraSettings

    cfg, _ = setup
    run = resistance_stage(replace(cfg, lora=LoraSettings(r=4), seeds=(0,), slices=2), tmp_path / "runs")
    assert (run.path / "results.csv").is_file()
    (slices,) = (tmp_path / "runs").glob("resistance-slices-*")
    for checkpoint in (slices / "checkpoints").iterdir():
        assert (checkpoint / "adapter_model.safetensors").is_file() and not (checkpoint / "model.safetensors").exists()
    ends = [json.loads(p.read_text()) for p in (tmp_path / "runs").glob("resistance-path-*/path.json")]
    assert sorted(e["direction"] for e in ends) == ["forward", "inverse"] and all(e["kl_moved"] > 0 for e in ends)


@pytest.mark.parametrize("flags, message", [
    (["--slices", "1"], "slices must be >= 2"),
    (["--eval.heldout_prompts", "14"], "too few prompts for the slices"),
    (["--align.batch_size", "64"], "fewer than one batch"),
    (["--examples", "3"], "fewer than one batch"),
    (["--eval.loss_window", "9"], "eval.loss_window = 9"),
    (["--device", "tpu9"], "not a torch device"),
])
def test_bad_input_exits_2_and_writes_nothing(setup, tmp_path, capsys, flags, message):
    from elasticity.cli import main

    cfg, _ = setup
    args = ["resistance", "--runs-dir", str(tmp_path / "runs"), "--model", cfg.model, "--alignment",
            cfg.alignment, "--prompts", cfg.prompts, "--finetune.batch_size", "4", "--align.batch_size", "4",
            "--eval.heldout_prompts", "4", *flags]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not (tmp_path / "runs").exists()
