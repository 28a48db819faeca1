"""Rebound with sharded parameters (FSDP2 or DeepSpeed ZeRO-3: `configs/accelerate/fsdp2.yaml`, `zero3.yaml`; two
processes over gloo on a CPU) equals one unsharded process accumulating two micro-batches, and every row is written
once; a sharded run resumes exactly."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
from test_ranks import _config

from elasticity.cli import main
from elasticity.files import read_jsonl

pytestmark = [pytest.mark.slow, pytest.mark.parametrize("sharding", ["fsdp2", "zero3"])]

ROOT = Path(__file__).resolve().parents[1]


def _launch(sharding: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    launcher = Path(sys.executable).with_name("accelerate")
    return subprocess.run([str(launcher), "launch", "--config_file", str(ROOT / f"configs/accelerate/{sharding}.yaml"),
                           "--num_processes", "2", *args], capture_output=True, text=True, cwd=cwd)


def _rows(path: Path) -> list[dict]:
    return list(csv.DictReader(open(path)))


def test_sharded_rebound_equals_one_process(sharding, tiny_assets, tmp_path):
    config = _config(tiny_assets, tmp_path)
    two = _launch(sharding, "-m", "elasticity", "rebound", "--config", str(config), "--runs-dir", str(tmp_path / "two"),
                  cwd=tmp_path)
    assert two.returncode == 0, two.stderr[-3000:]
    assert main(["rebound", "--config", str(config), "--runs-dir", str(tmp_path / "one"),
                 "--train.grad_accum", "2"]) == 0
    (two_run,), (one_run,) = ([r for r in (tmp_path / d).glob("rebound-*") if r.name.count("-") == 1]
                              for d in ("two", "one"))
    # each training step: the same loss and the same gradient norm (a gradient reduced wrongly, summed where it should
    # be averaged, would hardly move AdamW's results, but it moves the norm)
    def by_q1(d: Path) -> list[Path]:  # the negative stages in Q1 order (their names differ with grad_accum)
        return sorted(d.glob("rebound-negative-*"), key=lambda r: read_jsonl(r / "points.jsonl")[0]["q1"])

    stages = [[next(d.glob("rebound-positive-*")), *by_q1(d)] for d in (tmp_path / "two", tmp_path / "one")]
    for two_stage, one_stage in zip(*stages, strict=True):
        got, want = (read_jsonl(d / "metrics.jsonl") for d in (two_stage, one_stage))
        for key in ("train/loss", "train/grad_norm"):
            assert [r[key] for r in got] == pytest.approx([r[key] for r in want], rel=1e-5), (two_stage, key)
    for name in ("results.csv", "metrics.csv"):
        got, want = _rows(two_run / name), _rows(one_run / name)
        assert len(got) == len(want), name
        for g, w in zip(got, want):
            assert g.keys() == w.keys()
            for key in g:
                try:
                    assert float(g[key]) == pytest.approx(float(w[key]), rel=1e-4, abs=1e-6, nan_ok=True), (name, key)
                except ValueError:
                    assert g[key] == w[key], (name, key)
    for negative in (tmp_path / "two").glob("rebound-negative-*"):
        assert json.loads((negative / "summary.json").read_text())["sharding"] == sharding
        assert sorted(p["q2"] for p in read_jsonl(negative / "points.jsonl")) == [0, 4, 12]  # each point once


WORKER = """
import json, sys, torch
sys.path.insert(0, {tests!r})
from test_train import _setup
from elasticity.models.tiny import build_tiny_model
from elasticity.runs import Run
from elasticity.train.loop import TrainConfig, train

assets = {assets!r}
tok, examples = _setup({{k: __import__("pathlib").Path(v) for k, v in assets.items()}})
# the cut at 20 examples makes steps 3 and 7 one micro-batch each: the second process runs a zero-weighted forward
cfg = TrainConfig(lr=3e-3, batch_size=4, max_length=64, seed=1, save_every=2, checkpoint_steps=(7,),
                  checkpoint_examples=(20,), eval_every=3)
evals = {{"held": examples[:6]}}  # measured on every process, through the sharded model

def crash(progress, model):
    if progress.step == 5:
        raise KeyboardInterrupt

for name, on_step in (("whole", None), ("crashed", crash)):
    run = Run(__import__("pathlib").Path({out!r}) / name)
    run.path.mkdir(parents=True, exist_ok=True)
    try:
        summary = train(build_tiny_model("0.2m", len(tok), 64, seed=0), tok, examples, cfg, run, evals,
                        on_step=on_step, progress_bar=False)
    except KeyboardInterrupt:
        state = torch.load(run.file("resume.pt"))
        assert state["sharded"] == {sharding!r} and state["progress"]["step"] == 4, state["progress"]
        # ZeRO-3's shards are DeepSpeed's checkpoint of that step alone
        tags = [p.name for p in run.file("resume-zero3").iterdir() if p.is_dir()] if {sharding!r} == "zero3" else []
        assert tags == (["step-4"] if {sharding!r} == "zero3" else []), tags
        summary = train(build_tiny_model("0.2m", len(tok), 64, seed=123), tok, examples, cfg, run, evals,
                        progress_bar=False)
    assert summary["sharding"] == {sharding!r} and summary["processes"] == 2, summary
"""


def test_a_sharded_run_resumes_exactly_and_saves_the_whole_model(sharding, tiny_assets, tmp_path):
    """Interrupted at step 5 and resumed from its step-4 state (gathered whole onto the main process), a sharded run
    ends where the uninterrupted one does, to the bit; its saved models equal one process's run to rounding."""
    import torch
    from test_train import _setup

    from elasticity.models.hf import load_causal_lm
    from elasticity.models.tiny import build_tiny_model
    from elasticity.runs import Run
    from elasticity.train.loop import TrainConfig, train

    script = tmp_path / "worker.py"
    script.write_text(WORKER.format(tests=str(Path(__file__).parent), out=str(tmp_path / "sharded"),
                                    assets={k: str(v) for k, v in tiny_assets.items()}, sharding=sharding))
    done = _launch(sharding, str(script), cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    whole, crashed = (Run(tmp_path / "sharded" / n) for n in ("whole", "crashed"))
    assert crashed.metrics() == whole.metrics()  # every loss, gradient norm and evaluation, to the bit
    assert not crashed.file("resume.pt").exists() and not crashed.file("resume-zero3").exists()
    a, b = (load_causal_lm(str(r.file("model")))[0] for r in (whole, crashed))
    for (name, p), q in zip(a.named_parameters(), b.parameters(), strict=True):
        assert torch.equal(p, q), name

    # one unsharded process accumulating the two processes' micro-batches
    tok, examples = _setup(tiny_assets)
    one = Run(tmp_path / "one")
    one.path.mkdir()
    alone = build_tiny_model("0.2m", len(tok), 64, seed=0)
    train(alone, tok, examples, TrainConfig(lr=3e-3, batch_size=4, grad_accum=2, max_length=64, seed=1,
                                            checkpoint_examples=(20,), eval_every=3), one, {"held": examples[:6]},
          progress_bar=False)
    for key in ("train/loss", "eval/held/loss"):
        got, want = ([r[key] for r in run.metrics() if key in r] for run in (whole, one))
        assert len(got) == len(want) > 1 and got == pytest.approx(want, rel=1e-5), key
    assert [r["step"] for r in whole.metrics() if "train/loss" in r] == list(range(1, 8))
    kept = load_causal_lm(str(whole.file("checkpoints") / "step-7"))[0]
    for (name, p), q in zip(alone.named_parameters(), a.parameters(), strict=True):
        assert torch.allclose(p, q, atol=1e-4, rtol=0), name
    for p, q in zip(kept.parameters(), a.parameters(), strict=True):
        assert torch.equal(p, q)  # the last step's checkpoint is the final model


def test_a_sharded_resume_state_is_not_resumed_unsharded(sharding, tiny_assets, tmp_path):
    """A resume state names the sharding that wrote it; resuming it otherwise is refused in one line."""
    import torch
    from test_train import _setup

    from elasticity.errors import UserError
    from elasticity.models.tiny import build_tiny_model
    from elasticity.runs import Run
    from elasticity.train.loop import TrainConfig, train

    tok, examples = _setup(tiny_assets)
    run = Run(tmp_path / "run")
    run.path.mkdir()
    torch.save({"sharded": sharding, "progress": {"step": 1, "examples": 8, "tokens": 100}}, run.file("resume.pt"))
    written = {"fsdp2": "an FSDP2", "zero3": "a ZeRO-3"}[sharding]
    with pytest.raises(UserError, match=f"was written by {written} run: resume it launched as it was"):
        train(build_tiny_model("0.2m", len(tok), 64, seed=0), tok, examples, TrainConfig(batch_size=4, max_length=64),
              run, progress_bar=False)
