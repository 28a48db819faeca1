"""The training loop's invariances: grad accumulation, resume, nested prefixes, stage caching."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from elasticity.cli import main
from elasticity.data.records import load_records
from elasticity.data.tokenize import tokenize_records
from elasticity.models.hf import load_tokenizer
from elasticity.models.tiny import build_tiny_model
from elasticity.runs import Run
from elasticity.train.loop import TrainConfig, train


def _setup(tiny_assets, n=48, kind="sft"):
    tok = load_tokenizer(str(tiny_assets["tok"]))
    records = load_records(tiny_assets[kind], ("prompt", "response") if kind == "sft" else ("text",))[:n]
    return tok, tokenize_records(records, tok, 64)


def _train(tok, examples, tmp_path, name, **overrides):
    cfg = dataclasses.replace(TrainConfig(lr=3e-3, batch_size=8, max_length=64, seed=1), **overrides)
    model = build_tiny_model("0.2m", len(tok), 64, seed=0)
    run = Run(tmp_path / name)
    run.path.mkdir(exist_ok=True)
    summary = train(model, tok, examples, cfg, run, progress_bar=False)
    return model, summary, run


def _assert_same_weights(a, b, atol=0.0):
    for (name, p), q in zip(a.named_parameters(), b.parameters()):
        assert torch.allclose(p, q, atol=atol, rtol=0), name


def test_grad_accumulation_equals_larger_batch(tiny_assets, tmp_path):
    tok, examples = _setup(tiny_assets)
    big, s_big, _ = _train(tok, examples, tmp_path, "big", batch_size=8, grad_accum=1)
    small, s_small, _ = _train(tok, examples, tmp_path, "small", batch_size=2, grad_accum=4)
    assert s_big["steps"] == s_small["steps"] == 6
    assert s_big["final_train_loss"] == pytest.approx(s_small["final_train_loss"], rel=1e-5)
    _assert_same_weights(big, small, atol=2e-5)  # only float summation order differs


def test_resumed_run_equals_uninterrupted(tiny_assets, tmp_path):
    tok, examples = _setup(tiny_assets)
    whole, _, whole_run = _train(tok, examples, tmp_path, "whole", save_every=2)

    def crash(progress, model):
        if progress.step == 5:
            raise KeyboardInterrupt

    cfg = TrainConfig(lr=3e-3, batch_size=8, max_length=64, seed=1, save_every=2)
    run = Run(tmp_path / "crashed")
    run.path.mkdir()
    with pytest.raises(KeyboardInterrupt):
        train(build_tiny_model("0.2m", len(tok), 64, seed=0), tok, examples, cfg, run, on_step=crash,
              progress_bar=False)
    assert run.file("resume.pt").exists()
    resumed = build_tiny_model("0.2m", len(tok), 64, seed=123)  # different init: the resume state must win
    summary = train(resumed, tok, examples, cfg, run, progress_bar=False)
    assert summary["steps"] == 6
    _assert_same_weights(whole, resumed)
    losses = [r["train/loss"] for r in run.metrics()]
    assert losses == [r["train/loss"] for r in whole_run.metrics()]
    assert not run.file("resume.pt").exists()


def test_nested_prefix_equals_separate_run(tiny_assets, tmp_path):
    """A checkpoint after q examples equals a run on exactly those q examples, even when q is not a
    multiple of the batch size (steps are cut at the checkpoint)."""
    tok, examples = _setup(tiny_assets)
    _, _, long_run = _train(tok, examples, tmp_path, "long", shuffle=False, checkpoint_examples=(20,))
    short, summary, _ = _train(tok, examples[:20], tmp_path, "short", shuffle=False)
    assert summary["steps"] == 3  # 8 + 8 + 4
    from transformers import AutoModelForCausalLM

    snapshot = AutoModelForCausalLM.from_pretrained(long_run.file("checkpoints") / "examples-20")
    _assert_same_weights(short, snapshot)


def test_checkpoints_at_step_and_token_milestones(tiny_assets, tmp_path):
    tok, examples = _setup(tiny_assets, kind="text", n=200)
    _, summary, run = _train(tok, examples, tmp_path, "ckpt", checkpoint_steps=(2,), checkpoint_tokens=(1000,))
    names = sorted(p.name for p in run.file("checkpoints").iterdir())
    assert names == ["step-2", "tokens-1000"]
    progress = json.loads((run.file("checkpoints") / "tokens-1000" / "progress.json").read_text())
    assert progress["tokens"] >= 1000 and progress["tokens"] - 8 * 64 < 1000  # first step past the mark


def test_finished_stage_is_not_recomputed(tiny_assets, tmp_path, monkeypatch):
    args = ["train", "--runs-dir", str(tmp_path), "--model.size", "0.2m", "--model.tokenizer",
            str(tiny_assets["tok"]), "--data", str(tiny_assets["sft"]), "--train.max_steps", "2",
            "--train.max_length", "64"]
    assert main(args) == 0
    (run_dir,) = [p for p in tmp_path.iterdir() if p.name.startswith("train-")]
    stamp = (run_dir / "model" / "model.safetensors").stat().st_mtime_ns

    import elasticity.train.command as command

    monkeypatch.setattr(command, "train", lambda *a, **k: pytest.fail("a finished stage was recomputed"))
    assert main(args) == 0
    assert (run_dir / "model" / "model.safetensors").stat().st_mtime_ns == stamp
    assert len([p for p in tmp_path.iterdir() if p.name.startswith("train-")]) == 1
    with pytest.raises(pytest.fail.Exception):  # a changed config is a new stage, so it must train
        main(args[:-2] + ["--train.max_length", "32"])


def test_bad_input_exits_2_and_writes_nothing(tiny_assets, tmp_path, capsys):
    base = ["train", "--runs-dir", str(tmp_path / "runs"), "--model.size", "0.2m",
            "--model.tokenizer", str(tiny_assets["tok"])]
    assert main(base + ["--data", str(tmp_path / "missing.jsonl")]) == 2
    assert "data file not found" in capsys.readouterr().err
    assert main(base + ["--data", str(tiny_assets["sft"]), "--train.lrr", "1"]) == 2
    assert "unknown config key 'train.lrr'" in capsys.readouterr().err
    assert main(base + ["--data", str(tiny_assets["sft"]), "--model.size", "7b"]) == 2
    assert "unknown model size preset" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


@pytest.mark.slow
@pytest.mark.parametrize("extra", [[], ["--train.pack_tokens", "96"]], ids=["padded", "packed"])
def test_two_processes_equal_gradient_accumulation(tiny_assets, tmp_path, extra):
    """`accelerate launch --multi_gpu --num_processes 2` (gloo on a CPU) equals one process accumulating 2; packed,
    each process takes every other packed row of a step, and the step is the same."""
    import subprocess
    import sys
    from pathlib import Path

    args = ["--model.size", "0.2m", "--model.tokenizer", str(tiny_assets["tok"]), "--data", str(tiny_assets["sft"]),
            "--train.max_steps", "3", "--train.max_length", "64", "--train.lr", "0.003", "--train.batch_size", "4",
            *extra]
    launcher = Path(sys.executable).with_name("accelerate")
    subprocess.run([str(launcher), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                    "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "elasticity", "train",
                    "--runs-dir", str(tmp_path / "two"), *args], check=True, capture_output=True)
    assert main(["train", "--runs-dir", str(tmp_path / "one"), *args, "--train.grad_accum", "2"]) == 0
    (two,), (one,) = (tmp_path / "two").glob("train-*"), (tmp_path / "one").glob("train-*")
    metrics = [Run(d).metrics() for d in (two, one)]
    assert [r["tokens"] for r in metrics[0]] == [r["tokens"] for r in metrics[1]]
    losses = [[r["train/loss"] for r in m] for m in metrics]
    assert len(losses[0]) == 3 and losses[0] == pytest.approx(losses[1], rel=1e-6)
    assert json.loads((two / "summary.json").read_text())["processes"] == 2
