"""Generation: batch-invariant sampling, greedy equal to transformers' generate, the recorded policy."""

from __future__ import annotations

import json

import pytest
import torch

from elasticity.cli import main
from elasticity.generate import DecodingPolicy, generate
from elasticity.models.hf import load_tokenizer
from elasticity.models.tiny import build_tiny_model

PROMPTS = ["the movie", "i liked the plot and", "bad", "the actor was very good but the scene"]


def _model(tiny_assets):
    tok = load_tokenizer(str(tiny_assets["tok"]))
    model = build_tiny_model("0.2m", len(tok), 128, seed=3)
    with torch.no_grad():  # sharpen the random model so that sampled texts differ clearly
        model.lm_head.weight.mul_(4.0)
    return model.eval(), tok


def test_samples_do_not_depend_on_batching(tiny_assets):
    model, tok = _model(tiny_assets)
    policy = DecodingPolicy(temperature=0.8, top_p=0.9, max_new_tokens=12, samples_per_prompt=3, seed=7)
    one = generate(model, tok, PROMPTS, DecodingPolicy(**{**policy.__dict__, "batch_size": 1}))
    many = generate(model, tok, PROMPTS, DecodingPolicy(**{**policy.__dict__, "batch_size": 12}))
    assert [r["response"] for r in one] == [r["response"] for r in many]
    assert len(one) == 12 and {r["sample_index"] for r in one} == {0, 1, 2}
    assert len({r["response"] for r in one if r["prompt_index"] == 0}) > 1  # samples differ per seed
    other_seed = generate(model, tok, PROMPTS, DecodingPolicy(**{**policy.__dict__, "seed": 8}))
    assert [r["response"] for r in other_seed] != [r["response"] for r in one]
    # answering only some prompts draws exactly the samples a full run draws for them
    part = generate(model, tok, PROMPTS, policy, indices=[3, 1])
    assert [(r["prompt_index"], r["response"]) for r in part] == \
        [(r["prompt_index"], r["response"]) for r in many if r["prompt_index"] in (1, 3)]


def test_a_large_prompt_pass_keeps_the_last_logits_only(tiny_assets, monkeypatch):
    """Past CHUNK_FLOATS prompt logits, the prompt pass asks the model for its last position alone (a 152k
    vocabulary would otherwise hold every prompt position's): the samples are the same."""
    import elasticity.generate as g

    model, tok = _model(tiny_assets)
    policy = DecodingPolicy(temperature=0.8, top_p=0.9, max_new_tokens=12, samples_per_prompt=3, seed=7)
    whole = generate(model, tok, PROMPTS, policy)
    kept = []
    forward = model.forward
    monkeypatch.setattr(model, "forward", lambda *a, **k: kept.append(k.get("logits_to_keep")) or forward(*a, **k))
    monkeypatch.setattr(g, "CHUNK_FLOATS", 0)
    last = generate(model, tok, PROMPTS, policy)
    assert set(kept) == {1} and [r["response"] for r in last] == [r["response"] for r in whole]


def test_greedy_equals_transformers_generate(tiny_assets):
    model, tok = _model(tiny_assets)
    ours = generate(model, tok, PROMPTS, DecodingPolicy(temperature=0, max_new_tokens=10, batch_size=4))
    for r in ours:
        ids = tok(r["prompt"], return_tensors="pt")["input_ids"]
        ref = model.generate(ids, do_sample=False, max_new_tokens=10, pad_token_id=tok.pad_token_id,
                             eos_token_id=tok.eos_token_id)
        assert r["response"] == tok.decode(ref[0, ids.shape[1]:], skip_special_tokens=True)


def test_generate_command_records_policy(tiny_assets, tmp_path, capsys):
    model, tok = _model(tiny_assets)
    model.save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
    args = ["generate", "--runs-dir", str(tmp_path / "runs"), "--model", str(tmp_path / "m"), "--prompts",
            str(prompts), "--policy.max_new_tokens", "5", "--policy.samples_per_prompt", "2"]
    assert main(args) == 0
    (run,) = (tmp_path / "runs").iterdir()
    samples = [json.loads(x) for x in (run / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 8 and all(s["new_tokens"] <= 5 for s in samples)
    assert json.loads((run / "policy.json").read_text())["samples_per_prompt"] == 2
    capsys.readouterr()
    assert main(args[:-2] + ["--policy.top_p", "1.5"]) == 2
    assert "0 < top_p <= 1" in capsys.readouterr().err


def test_rotary_positions_generate_past_the_context(tiny_assets):
    """A LLaMA's positions are rotary: a generation may run past the context it was built with (the world's
    reviews are sampled with max_new_tokens 160 from a 128-token model), while a prompt longer than it is refused."""
    from elasticity.errors import UserError
    from elasticity.models.hf import load_tokenizer
    from elasticity.models.tiny import build_tiny_model

    tok = load_tokenizer(str(tiny_assets["tok"]))
    model = build_tiny_model("0.2m", len(tok), 16, seed=0)  # a 16-token context
    out = generate(model, tok, ["the movie was"], DecodingPolicy(temperature=1.0, max_new_tokens=30, seed=3))
    assert len(tok(out[0]["prompt"])["input_ids"]) + out[0]["new_tokens"] > 16  # it did run past the context
    with pytest.raises(UserError, match="prompt 0 is longer than the model's context"):
        generate(model, tok, [" ".join(["the movie was good"] * 10)], DecodingPolicy(max_new_tokens=1))
