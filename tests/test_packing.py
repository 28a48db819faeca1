"""Padding-free micro-batches: packed examples at their own positions give the padded numbers, step by step."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from transformers import LlamaForCausalLM

from elasticity.data.batching import Step, collate, collate_packed, pack_step
from elasticity.data.records import load_records
from elasticity.data.tokenize import IGNORE, Example, tokenize_records
from elasticity.errors import UserError
from elasticity.likelihood import check_packed_attention, token_scores
from elasticity.models.hf import load_tokenizer
from elasticity.models.tiny import build_tiny_model
from elasticity.runs import Run
from elasticity.train.loop import TrainConfig, plan, train

pytestmark = pytest.mark.usefixtures("one_thread")


def _example(ids: list[int], first_target: int) -> Example:
    return Example(ids, [IGNORE] * first_target + ids[first_target:])


def test_a_packed_row_restarts_positions_and_never_targets_across_examples():
    a, b = _example([5, 6, 7], 1), _example([8, 9], 0)  # b's label at its first token must not survive
    batch = collate_packed([a, b])
    assert batch["input_ids"].tolist() == [[5, 6, 7, 8, 9]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 0, 1]]
    assert batch["labels"].tolist() == [[IGNORE, 6, 7, IGNORE, 9]]  # 7 never predicts 8


def test_a_step_is_cut_by_tokens_and_keeps_its_examples():
    examples = [Example([1] * n, [1] * n) for n in (3, 4, 5, 9, 2)]
    step = Step([[0, 1], [2, 3], [4]], n_targets=23)
    packed = pack_step(examples, step, tokens=9)
    assert packed.micro_batches == [[0, 1], [2], [3], [4]]  # 3+4, 5 (5+9 > 9), 9 alone, 2
    assert packed.n_targets == step.n_targets
    assert pack_step(examples, step, tokens=100).micro_batches == [[0, 1, 2, 3, 4]]


def test_an_example_scores_the_same_alone_padded_and_packed(tiny_assets):
    tok = load_tokenizer(str(tiny_assets["tok"]))
    records = load_records(tiny_assets["sft"], ("prompt", "response"))[:5]
    examples = tokenize_records(records, tok, 64)
    model = build_tiny_model("0.2m", len(tok), 64, seed=0).eval()
    padded = collate(examples, 0)
    packed = collate_packed(examples)
    with torch.no_grad():
        by_row = token_scores(model, padded["input_ids"], padded["labels"][:, 1:], padded["attention_mask"]).nll
        flat = token_scores(model, packed["input_ids"], packed["labels"][:, 1:],
                            position_ids=packed["position_ids"]).nll[0]
    start = 0
    for row, ex in enumerate(examples):
        n = len(ex.input_ids)
        # the last position of an example has no target in either layout
        assert torch.allclose(flat[start:start + n - 1], by_row[row, :n - 1], atol=1e-5, rtol=0), row
        start += n


def _setup(tiny_assets, kind: str):
    tok = load_tokenizer(str(tiny_assets["tok"]))
    fields = ("prompt", "response") if kind == "sft" else ("text",)
    return tok, tokenize_records(load_records(tiny_assets[kind], fields)[:48], tok, 64)


def _train(tok, examples, tmp_path, name, **overrides):
    cfg = dataclasses.replace(TrainConfig(lr=3e-3, batch_size=4, grad_accum=2, max_length=64, seed=1), **overrides)
    model = build_tiny_model("0.2m", len(tok), 64, seed=0)
    run = Run(tmp_path / name)
    run.path.mkdir()
    summary = train(model, tok, examples, cfg, run, progress_bar=False)
    return model, summary, [r["train/loss"] for r in run.metrics()]


@pytest.mark.parametrize("kind", ["sft", "text"])
def test_padding_free_training_has_the_padded_losses(tiny_assets, tmp_path, kind):
    tok, examples = _setup(tiny_assets, kind)
    padded, s_padded, l_padded = _train(tok, examples, tmp_path, "padded")
    packed, s_packed, l_packed = _train(tok, examples, tmp_path, "packed", pack_tokens=96)
    cfg = TrainConfig(batch_size=4, grad_accum=2, max_length=64, seed=1)
    assert len(plan(examples, dataclasses.replace(cfg, pack_tokens=96))) == len(plan(examples, cfg)) == 6
    assert (s_packed["steps"], s_packed["examples"], s_packed["tokens"]) == (
        s_padded["steps"], s_padded["examples"], s_padded["tokens"])
    assert l_packed == pytest.approx(l_padded, abs=1e-6)  # six steps of lr 3e-3 apart: float rounding only
    for (name, p), q in zip(padded.named_parameters(), packed.parameters()):
        assert torch.allclose(p, q, atol=2e-5, rtol=0), (name, float((p - q).abs().max()))  # as grad accum


def test_packing_takes_fewer_micro_batches_than_padding(tiny_assets):
    _, examples = _setup(tiny_assets, "sft")
    cfg = TrainConfig(batch_size=2, grad_accum=4, max_length=64, seed=1)
    packed = plan(examples, dataclasses.replace(cfg, pack_tokens=2 * 64))  # what 2 padded examples may take
    assert max(sum(len(examples[i].input_ids) for i in mb) for s in packed for mb in s.micro_batches) <= 128
    assert (sum(len(s.micro_batches) for s in plan(examples, cfg)), sum(len(s.micro_batches) for s in packed)) == (
        24, 20)


class _MaskingLlama(LlamaForCausalLM):
    """A model whose forward always builds an attention mask (as some remote code does): packing mixes examples."""

    def forward(self, input_ids=None, attention_mask=None, **kwargs):
        if attention_mask is None and input_ids is not None:
            attention_mask = torch.ones_like(input_ids)
        return super().forward(input_ids=input_ids, attention_mask=attention_mask, **kwargs)


def test_a_model_that_mixes_packed_examples_is_refused(tiny_assets):
    tok = load_tokenizer(str(tiny_assets["tok"]))
    good = build_tiny_model("0.1m", len(tok), 64, seed=0)
    check_packed_attention(good)
    bad = _MaskingLlama(good.config)
    with pytest.raises(UserError, match="set train.pack_tokens 0"):
        check_packed_attention(bad)


def test_pack_tokens_must_hold_an_example():
    with pytest.raises(UserError, match="train.pack_tokens must be 0 .* or at least max_length"):
        TrainConfig(max_length=64, pack_tokens=32).check()

