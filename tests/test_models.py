"""Model loading: local folders, run directories, LoRA adapters, clear errors."""

from __future__ import annotations

import torch

from elasticity.cli import main
from elasticity.models.hf import load_causal_lm, load_tokenizer
from elasticity.models.tiny import SIZES, build_tiny_model, count_parameters


def test_size_presets_span_the_promised_range():
    counts = {s: count_parameters(build_tiny_model(s, 1024, 128, seed=0)) for s in SIZES}
    assert 0.15e6 < counts["0.2m"] < 0.25e6 and 0.9e6 < counts["1m"] < 1.1e6 and 4.5e6 < counts["5m"] < 6e6
    a, b = build_tiny_model("0.2m", 300, 64, seed=5), build_tiny_model("0.2m", 300, 64, seed=5)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


def test_lora_run_saves_an_adapter_that_loads_merged(tiny_assets, tmp_path):
    args = ["train", "--runs-dir", str(tmp_path), "--model.size", "0.2m", "--model.tokenizer",
            str(tiny_assets["tok"]), "--data", str(tiny_assets["sft"]), "--train.max_steps", "3",
            "--train.max_length", "64", "--train.lr", "0.01"]
    assert main(args) == 0
    (base_run,) = tmp_path.glob("train-*")
    assert main(["train", "--runs-dir", str(tmp_path / "lora"), "--model.path", str(base_run), "--model.lora_r", "4",
                 "--data", str(tiny_assets["sft"]), "--train.max_steps", "3", "--train.max_length", "64",
                 "--train.lr", "0.01"]) == 0
    (lora_run,) = (tmp_path / "lora").glob("train-*")
    assert (lora_run / "model" / "adapter_config.json").exists()
    merged, tok = load_causal_lm(str(lora_run))
    base, _ = load_causal_lm(str(base_run))
    ids = tok("the movie was good", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        assert not torch.allclose(merged(ids).logits, base(ids).logits)  # the adapter changed the model
    assert load_tokenizer(str(lora_run)).vocab_size == tok.vocab_size


def test_missing_model_path_exits_2(tmp_path, capsys, tiny_assets):
    assert main(["train", "--runs-dir", str(tmp_path), "--model.path", str(tmp_path / "nope"),
                 "--data", str(tiny_assets["sft"])]) == 2
    assert "model path does not exist" in capsys.readouterr().err
