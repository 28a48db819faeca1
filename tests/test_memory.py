"""What the loop and the measurement do to fit large models: gradient checkpointing, bfloat16 weights, marks
that write no model, token-sized measuring batches, models brought to their device only while used."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from elasticity.data.records import load_records
from elasticity.data.tokenize import encode_text, pad_id, tokenize_records
from elasticity.errors import UserError
from elasticity.experiments.measurement import OnDemand, resident
from elasticity.likelihood import teacher_forced
from elasticity.models.hf import load_tokenizer
from elasticity.models.tiny import build_tiny_model
from elasticity.runs import Run
from elasticity.train.loop import TrainConfig, train

pytestmark = pytest.mark.usefixtures("one_thread")


def _setup(tiny_assets, n=32):
    tok = load_tokenizer(str(tiny_assets["tok"]))
    records = load_records(tiny_assets["sft"], ("prompt", "response"))[:n]
    return tok, tokenize_records(records, tok, 64)


def _train(tok, examples, tmp_path, name, model=None, **overrides):
    cfg = dataclasses.replace(TrainConfig(lr=3e-3, batch_size=8, max_length=64, seed=1), **overrides)
    model = model if model is not None else build_tiny_model("0.2m", len(tok), 64, seed=0)
    run = Run(tmp_path / name)
    run.path.mkdir(exist_ok=True)
    summary = train(model, tok, examples, cfg, run, progress_bar=False)
    return model, summary, run


def test_gradient_checkpointing_changes_no_number(tiny_assets, tmp_path):
    tok, examples = _setup(tiny_assets)
    plain, _, run_plain = _train(tok, examples, tmp_path, "plain")
    ckpt, _, run_ckpt = _train(tok, examples, tmp_path, "ckpt", gradient_checkpointing=True)
    assert ckpt.model.gradient_checkpointing and not plain.model.gradient_checkpointing
    losses = [[r["train/loss"] for r in run.metrics()] for run in (run_plain, run_ckpt)]
    assert len(losses[0]) == 4 and losses[0] == pytest.approx(losses[1], rel=1e-6, abs=0)
    for (name, p), q in zip(plain.named_parameters(), ckpt.parameters()):
        assert torch.allclose(p, q, atol=1e-6, rtol=0), name


def test_marks_without_checkpoints_cut_steps_and_write_no_model(tiny_assets, tmp_path):
    tok, examples = _setup(tiny_assets)
    cfg = TrainConfig(lr=3e-3, batch_size=8, max_length=64, seed=1, checkpoint_examples=(4, 20))
    seen, resume_at = [], []
    run = Run(tmp_path / "marks")
    run.path.mkdir()

    def on_step(progress, model):
        seen.append(progress.examples)
        resume_at.append(run.file("resume.pt").exists())

    train(build_tiny_model("0.2m", len(tok), 64, seed=0), tok, examples, cfg, run, on_step=on_step,
          progress_bar=False, save_final=False, keep_checkpoints=False)
    assert seen == [4, 12, 20, 28, 32]  # steps cut at both marks
    assert not run.file("checkpoints").exists() and not run.file("model").exists()
    assert not run.file("resume.pt").exists()  # removed at the end; written at the marks (before on_step's next)
    assert resume_at[1] and resume_at[3]


def test_bfloat16_weights_train_and_save_in_bfloat16(tiny_assets, tmp_path):
    from safetensors import safe_open

    tok, examples = _setup(tiny_assets, n=16)
    model = build_tiny_model("0.2m", len(tok), 64, seed=0).to(torch.bfloat16)
    before = model.model.layers[0].mlp.up_proj.weight.detach().clone()
    _, summary, run = _train(tok, examples, tmp_path, "bf16", model=model, lr=1e-2)
    after = model.model.layers[0].mlp.up_proj.weight
    assert after.dtype == torch.bfloat16 and not torch.equal(before, after)
    assert summary["final_train_loss"] == summary["final_train_loss"]  # a number, not nan
    with safe_open(str(run.file("model") / "model.safetensors"), "pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.bfloat16}


def test_adamw8bit_needs_cuda(tiny_assets, tmp_path):
    tok, examples = _setup(tiny_assets, n=8)
    with pytest.raises(UserError, match="adamw8bit"):
        _train(tok, examples, tmp_path, "8bit", optimizer="adamw8bit")
    with pytest.raises(UserError, match="train.optimizer must be adamw or adamw8bit"):
        TrainConfig(optimizer="sgd").check()


def test_token_budget_batches_give_the_same_sums(tiny_assets):
    tok = load_tokenizer(str(tiny_assets["tok"]))
    texts = [r["text"] for r in load_records(tiny_assets["text"], ("text",))[:40]]
    examples = [encode_text(tok, t, 64) for t in texts]
    model, base = build_tiny_model("0.2m", len(tok), 64, seed=0), build_tiny_model("0.2m", len(tok), 64, seed=1)
    whole = teacher_forced(model, examples, pad_id(tok), 64, reference=base)
    budget = teacher_forced(model, examples, pad_id(tok), 64, reference=base, batch_tokens=100)
    assert budget.tokens == whole.tokens > 0
    assert budget.nats == pytest.approx(whole.nats, rel=1e-6) and budget.kl == pytest.approx(whole.kl, rel=1e-5)


class _Scorer:
    name = "toy"

    def __init__(self):
        self.model = torch.nn.Linear(2, 1)
        self.calls = 0

    def score(self, texts):
        self.calls += 1
        return [float(len(t)) for t in texts]


def test_on_demand_scorer_passes_through_on_a_cpu():
    inner = _Scorer()
    scorer = OnDemand(inner)
    assert scorer.score(["ab", "c"]) == [2.0, 1.0] and scorer.calls == 1 and scorer.name == "toy"
    assert next(inner.model.parameters()).device.type == "cpu"
    with resident(inner.model, torch.device("cpu")):  # a CPU device is a no-op
        assert next(inner.model.parameters()).device.type == "cpu"


def test_base_log_probs_on_disk_equal_those_in_memory_and_the_base_is_loaded_once(tiny_assets, tmp_path,
                                                                                   monkeypatch):
    """With the base's log-probabilities too large for memory (CACHE_FLOATS 0 here), the base stage writes them
    to disk and every later measurement reads them: the results are byte-identical, and the base model is
    loaded for the base stage alone (a resumed or later process would not load it at all)."""
    from test_ranks import _config

    import elasticity.experiments.measurement as measurement
    from elasticity.config import load_config
    from elasticity.experiments.rebound import Config, rebound_stage
    from elasticity.experiments.skeleton import Models

    cfg = load_config(Config, _config(tiny_assets, tmp_path))
    memory = rebound_stage(cfg, tmp_path / "memory")
    loads = []
    get = Models.get
    monkeypatch.setattr(Models, "get", lambda self, source: loads.append(source) or get(self, source))
    monkeypatch.setattr(measurement, "CACHE_FLOATS", 0)
    disk = rebound_stage(cfg, tmp_path / "disk")
    for name in ("results.csv", "metrics.csv"):
        assert (disk.path / name).read_bytes() == (memory.path / name).read_bytes(), name
    assert loads == [cfg.model]
    (base,) = (tmp_path / "disk").glob("rebound-base-*")
    sets = sorted(p.name for p in (base / "base_logprobs").iterdir())
    assert len(sets) == 3 and all((base / "base_logprobs" / s / "complete").is_file() for s in sets)
    assert not (next((tmp_path / "memory").glob("rebound-base-*")) / "base_logprobs").exists()
