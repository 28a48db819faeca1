"""Rebound over two processes (`accelerate launch --multi_gpu --num_processes 2`, gloo on a CPU) equals one process
accumulating two micro-batches, byte for byte, and every row is written once."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from test_rebound import BAD, FILLER, GOOD, _jsonl, _pairs

from elasticity.cli import main
from elasticity.config import dump_yaml
from elasticity.files import read_jsonl

pytestmark = pytest.mark.slow


def _config(tiny_assets, tmp_path: Path) -> Path:
    from elasticity.experiments.rebound import Config, Evaluation
    from elasticity.generate import DecodingPolicy
    from elasticity.models.hf import load_tokenizer
    from elasticity.models.tiny import build_tiny_model
    from elasticity.scorers import ScorerConfig
    from elasticity.train.loop import TrainConfig

    tok = load_tokenizer(str(tiny_assets["tok"]))
    build_tiny_model("0.2m", len(tok), 64, seed=0).save_pretrained(tmp_path / "base")
    tok.save_pretrained(tmp_path / "base")
    cfg = Config(model=str(tmp_path / "base"), positive=_jsonl(tmp_path / "pos.jsonl", _pairs(GOOD, 20, 1)),
                 negative=_jsonl(tmp_path / "neg.jsonl", _pairs(BAD, 18, 2)),
                 prompts=_jsonl(tmp_path / "prompts.jsonl", [{"prompt": p["prompt"]} for p in _pairs(FILLER, 3, 3)]),
                 heldout=(str(tiny_assets["text"]),), scorer=ScorerConfig(name="vader"), q1=(8, 12), q2=(0, 4, 12),
                 seeds=(0,), train=TrainConfig(lr=3e-3, batch_size=2, max_length=64),
                 policy=DecodingPolicy(temperature=1.0, max_new_tokens=6, samples_per_prompt=2),
                 eval=Evaluation(prompts=3, pairs=6, docs=4))
    path = tmp_path / "rebound.yaml"
    path.write_text(dump_yaml(cfg))
    return path


def test_two_processes_write_once_and_equal_one_process(tiny_assets, tmp_path):
    config = _config(tiny_assets, tmp_path)
    launcher = Path(sys.executable).with_name("accelerate")
    two = subprocess.run([str(launcher), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                          "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "elasticity", "rebound",
                          "--config", str(config), "--runs-dir", str(tmp_path / "two")],
                         capture_output=True, text=True, cwd=tmp_path)
    assert two.returncode == 0, two.stderr[-2000:]
    # one process, the same micro-batches: 2 examples each, two of them accumulated per step
    assert main(["rebound", "--config", str(config), "--runs-dir", str(tmp_path / "one"),
                 "--train.grad_accum", "2"]) == 0
    (two_run,), (one_run,) = ([r for r in (tmp_path / d).glob("rebound-*") if r.name.count("-") == 1]
                              for d in ("two", "one"))
    for name in ("results.csv", "results.jsonl", "metrics.csv"):
        assert (two_run / name).read_bytes() == (one_run / name).read_bytes(), name
    for negative in (tmp_path / "two").glob("rebound-negative-*"):
        q2s = [p["q2"] for p in read_jsonl(negative / "points.jsonl")]
        assert sorted(q2s) == [0, 4, 12], q2s  # each point once
        summary = json.loads((negative / "summary.json").read_text())
        assert summary["processes"] == 2
    base = next((tmp_path / "two").glob("rebound-base-*"))
    assert len(read_jsonl(base / "points.jsonl")) == 1
