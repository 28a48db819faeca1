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


# ---- LoRA adapter folders: merged on load, trainable, found from any working directory -------------------------


def _llama_and_adapter(tok_folder, root):
    """A tiny LLaMA saved under root/base (built from LlamaConfig) and a peft LoRA adapter of it, with random B so
    that it changes the model, saved under root/adapter as `save_pretrained` writes it."""
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = load_tokenizer(str(tok_folder))
    torch.manual_seed(0)
    base = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                        num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64,
                                        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id))
    base.save_pretrained(root / "base")
    tok.save_pretrained(root / "base")
    base, _ = load_causal_lm(str(root / "base"))  # its name_or_path: the absolute folder
    adapter = get_peft_model(base, LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False))
    adapter.save_pretrained(root / "adapter")
    tok.save_pretrained(root / "adapter")
    return adapter.eval(), tok


def test_an_adapter_folder_loads_merged_and_trains_like_any_model(tiny_assets, tmp_path):
    import json

    from elasticity.models.hf import load_config, parameter_count

    unmerged, tok = _llama_and_adapter(tiny_assets["tok"], tmp_path)
    merged, _ = load_causal_lm(str(tmp_path / "adapter"))
    ids = tok("the movie was good", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        assert torch.allclose(merged(ids).logits, unmerged(ids).logits, atol=1e-5)  # the adapter is in the weights
    assert all(p.requires_grad for p in merged.parameters())  # peft loaded it frozen; merged it trains
    assert load_config(str(tmp_path / "adapter")).hidden_size == 16  # the checks read the base's config
    assert parameter_count(str(tmp_path / "adapter")) == parameter_count(str(tmp_path / "base"))
    common = ["--data", str(tiny_assets["sft"]), "--train.max_steps", "2", "--train.max_length", "64",
              "--train.lr", "0.01"]
    # every weight trained from the adapter folder (this failed: "optimizer got an empty parameter list") ...
    assert main(["train", "--runs-dir", str(tmp_path / "full"), "--model.path", str(tmp_path / "adapter"),
                 *common]) == 0
    (full,) = (tmp_path / "full").glob("train-*")
    assert (full / "model" / "model.safetensors").is_file()
    # ... and a new LoRA on the merged adapter: its base is the adapter folder, loaded merged in turn
    assert main(["train", "--runs-dir", str(tmp_path / "chain"), "--model.path", str(tmp_path / "adapter"),
                 "--model.lora_r", "2", *common]) == 0
    (chain,) = (tmp_path / "chain").glob("train-*")
    config = json.loads((chain / "model" / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str((tmp_path / "adapter").resolve())
    twice, _ = load_causal_lm(str(chain))
    with torch.no_grad():
        assert not torch.allclose(twice(ids).logits, merged(ids).logits)  # trained on top of the first adapter


def test_an_adapter_names_its_base_absolutely_and_keeps_a_hub_revision(tiny_assets, tmp_path, monkeypatch):
    import json

    from elasticity.models.hf import adapter_base
    from elasticity.models.spec import LoraSettings, save_model, with_lora

    _llama_and_adapter(tiny_assets["tok"], tmp_path)
    monkeypatch.chdir(tmp_path)
    model, tok = load_causal_lm("base")  # a relative path ...
    save_model(with_lora(model, LoraSettings(r=2)), tmp_path / "mine")
    assert sorted(p.name for p in (tmp_path / "mine").iterdir()) == ["adapter_config.json",
                                                                       "adapter_model.safetensors"]
    config = json.loads((tmp_path / "mine" / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str((tmp_path / "base").resolve())  # ... saved absolute
    monkeypatch.chdir(tmp_path / "adapter")
    load_causal_lm(str(tmp_path / "mine"))  # found from another working directory (no tokenizer: the base's)
    model, _ = load_causal_lm(str(tmp_path / "base"))
    model.name_or_path = "EleutherAI/pythia-160m@step3000"  # as load_causal_lm names a hub model at a revision
    save_model(with_lora(model, LoraSettings(r=2)), tmp_path / "hub")
    config = json.loads((tmp_path / "hub" / "adapter_config.json").read_text())
    assert (config["base_model_name_or_path"], config["revision"]) == ("EleutherAI/pythia-160m", "step3000")
    assert adapter_base(str(tmp_path / "hub")) == "EleutherAI/pythia-160m@step3000"


def test_lora_adapters_are_drawn_from_their_seed_alone(tiny_assets, tmp_path):
    from elasticity.models.spec import LoraSettings, with_lora

    _llama_and_adapter(tiny_assets["tok"], tmp_path)
    adapters = []
    for _ in range(2):
        torch.manual_seed(len(adapters))  # whatever the global state ...
        before = torch.get_rng_state()
        model = with_lora(load_causal_lm(str(tmp_path / "base"))[0], LoraSettings(r=2), seed=3)
        assert torch.equal(torch.get_rng_state(), before)  # ... it is left as it was
        adapters.append({k: v for k, v in model.state_dict().items() if "lora_A" in k})
    assert adapters[0] and all(torch.equal(v, adapters[1][k]) for k, v in adapters[0].items())
