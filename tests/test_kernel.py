"""The one NLL/KL kernel: today's numbers pinned at every call site, chunking that changes nothing, any model.

The pinned values were computed by the code before the kernel existed (the training loop's own cross-entropy,
rebound's `nll_and_kl`, the loop's `evaluate`, and `compress`'s batched windows) on these fixed tiny models;
the kernel reproduces them to 1e-6. The training loop's weights equal, bit for bit, those of the plainest loop
over the model's own forward (a hash of them pinned once differed between this machine's CPU kinds).
"""

from __future__ import annotations

import math

import pytest
import torch

from elasticity.codelength import document_nats, response_kl, response_nll, rolling_nll
from elasticity.data.batching import collate
from elasticity.data.records import load_records
from elasticity.data.tokenize import IGNORE, encode_pair, encode_text, tokenize_records
from elasticity.likelihood import kl_divergence, teacher_forced, token_scores
from elasticity.models.hf import load_tokenizer
from elasticity.models.tiny import build_tiny_model
from elasticity.runs import Run
from elasticity.train.loop import TrainConfig, plan, train

pytestmark = pytest.mark.usefixtures("one_thread")

PINNED_SFT_LOSSES = [5.687851822421578, 5.308995338002587, 5.056437739619502, 4.793854760341957,
                     4.554968986337044, 4.3118470657703485, 4.117528762260493, 3.9072347252564588,
                     3.71328858316163, 3.6206601072086517]
PINNED_TEXT_LOSSES = [5.684486994667659, 5.328373500279018, 5.0690201047867065, 4.8299657428075395,
                      4.600969587053571, 4.395453559027778, 4.181433299231151, 3.950993129185268,
                      3.8328755696614585, 3.6507335844494047]
SFT_RECIPE = TrainConfig(lr=3e-3, batch_size=8, max_length=64, seed=1, max_steps=10)


def _plain_loop(tok, examples, cfg: TrainConfig):
    """The same steps trained by the plainest loop: the model's own forward, its float32 log-softmax, AdamW."""
    model = build_tiny_model("0.2m", len(tok), 64, seed=0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=cfg.betas, weight_decay=0.0, eps=1e-8,
                                  fused=True)
    for step in plan(examples, cfg):
        for idx in step.micro_batches:
            batch = collate([examples[i] for i in idx], tok.pad_token_id)
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            logp, targets = logits[:, :-1].float().log_softmax(-1), batch["labels"][:, 1:]
            nll = torch.where(targets != IGNORE, -logp.gather(-1, targets.clamp(min=0)[..., None])[..., 0], 0.0)
            (nll.sum() / step.n_targets).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return model


@pytest.fixture(scope="module")
def fixed(tiny_assets, tmp_path_factory):
    """The tokenizer, the records, an untrained 0.2m model and the same model after 10 SFT steps."""
    tok = load_tokenizer(str(tiny_assets["tok"]))
    pairs = load_records(tiny_assets["sft"], ("prompt", "response"))
    texts = [r["text"] for r in load_records(tiny_assets["text"], ("text",))]
    root = tmp_path_factory.mktemp("kernel")
    runs = {}
    for kind in ("sft", "text"):
        records = pairs[:96] if kind == "sft" else [{"text": t} for t in texts[:200]]
        examples = tokenize_records(records, tok, 64, pack=kind == "text")
        model = build_tiny_model("0.2m", len(tok), 64, seed=0)
        run = Run(root / kind)
        run.path.mkdir()
        train(model, tok, examples, SFT_RECIPE, run, progress_bar=False, save_final=False)
        runs[kind] = (model.eval(), run)
    base = build_tiny_model("0.2m", len(tok), 64, seed=0).eval()
    return {"tok": tok, "pairs": pairs, "texts": texts, "trained": runs["sft"][0], "base": base, "runs": runs,
            "sft_examples": tokenize_records(pairs[:96], tok, 64)}


# ---- today's numbers, pinned ---------------------------------------------------------------------------------


def test_training_loop_first_ten_step_losses_are_pinned(fixed):
    for kind, pinned in (("sft", PINNED_SFT_LOSSES), ("text", PINNED_TEXT_LOSSES)):
        losses = [r["train/loss"] for r in fixed["runs"][kind][1].metrics() if "train/loss" in r]
        assert losses == pytest.approx(pinned, rel=1e-6, abs=0), kind
    plain = _plain_loop(fixed["tok"], fixed["sft_examples"], SFT_RECIPE)
    assert all(torch.equal(p, q) for p, q in zip(fixed["trained"].parameters(), plain.parameters()))


def test_teacher_forced_numbers_are_pinned(fixed):
    """The loop's evaluation, the pre-training table and resistance's losses (no reference); rebound's and
    resistance's KL (a reference, in both orders)."""
    tok, pairs, texts = fixed["tok"], fixed["pairs"], fixed["texts"]
    ev_pairs = [encode_pair(tok, p["prompt"], p["response"], 64) for p in pairs[300:340]]
    ev_texts = [encode_text(tok, t, 64) for t in texts[300:340]]
    trained, base = fixed["trained"], fixed["base"]
    s = teacher_forced(trained, ev_pairs, tok.pad_token_id, 16, reference=base)
    assert (s.nats, s.kl, s.tokens) == (pytest.approx(4543.308157444, rel=1e-6), pytest.approx(1300.1099536418915,
                                                                                           rel=1e-6), 1310)
    s = teacher_forced(trained, ev_texts, tok.pad_token_id, 16, reference=base)
    assert (s.nats, s.kl, s.tokens) == (pytest.approx(5485.738311052322, rel=1e-6), pytest.approx(1546.3885812163353,
                                                                                            rel=1e-6), 1555)
    s = teacher_forced(base, ev_pairs, tok.pad_token_id, 16, reference=trained)
    assert (s.nats, s.kl) == (pytest.approx(7424.43639087677, rel=1e-6), pytest.approx(970.5085906088352, rel=1e-6))
    alone = teacher_forced(trained, ev_pairs, tok.pad_token_id, 16)
    assert (alone.nats, alone.kl) == (pytest.approx(4543.3082275390625, rel=1e-6), 0.0)
    assert alone.loss == pytest.approx(4543.308157444 / 1310, rel=1e-6)


def test_compress_numbers_are_pinned(fixed):
    tok, pairs, texts, trained, base = (fixed[k] for k in ("tok", "pairs", "texts", "trained", "base"))
    docs = texts[340:360] + [" ".join(texts[360:370])]
    rolled = rolling_nll(trained, tok, docs, max_length=16, batch_size=4)
    assert (rolled.tokens, rolled.bytes, rolled.docs) == (1110, 2572, 21)
    assert rolled.nats == pytest.approx(4096.359134197235, rel=1e-6)
    nats, _ = document_nats(trained, tok, docs, max_length=16, batch_size=4)
    assert nats[:3].tolist() == pytest.approx([55.343653202056885, 92.86530017852783, 122.44997096061707], rel=1e-6)
    assert nats[-1] == pytest.approx(1266.4298555850983, rel=1e-6)  # a document of many windows
    assert response_nll(trained, tok, pairs[340:360], max_length=64).nats == pytest.approx(2320.0169241428375,
                                                                                          rel=1e-6)
    kl = response_kl(trained, base, tok, pairs[340:360], max_length=16)
    assert (kl.nats, kl.tokens) == (pytest.approx(501.99301824346185, rel=1e-6), 661)
    rev = response_kl(trained, base, tok, pairs[340:360], max_length=16, direction="reverse")
    assert rev.nats == pytest.approx(369.45086546614766, rel=1e-6)


# ---- chunks change nothing, and hold little --------------------------------------------------------------------


def _batch(fixed, n=12):
    tok = fixed["tok"]
    examples = [encode_pair(tok, p["prompt"], p["response"], 64) for p in fixed["pairs"][:n]]
    b = collate(examples, tok.pad_token_id)
    return b["input_ids"], b["labels"][:, 1:], b["attention_mask"]


def test_chunked_scores_equal_one_chunk(fixed):
    ids, targets, mask = _batch(fixed)
    trained, base = fixed["trained"], fixed["base"]
    vocab = trained.get_output_embeddings().weight.shape[0]
    with torch.inference_mode():
        whole = token_scores(trained, ids, targets, mask, reference=base)
        for positions in (1, 3, 7):  # chunks of that many positions of every row
            for direction in ("forward", "reverse"):
                part = token_scores(trained, ids, targets, mask, reference=base, direction=direction,
                                    chunk_floats=positions * ids.shape[0] * vocab)
                want = whole if direction == "forward" else token_scores(trained, ids, targets, mask,
                                                                         reference=base, direction="reverse")
                torch.testing.assert_close(part.nll, want.nll, rtol=1e-6, atol=1e-6)
                torch.testing.assert_close(part.kl, want.kl, rtol=1e-6, atol=1e-7)
    assert bool((whole.nll[~whole.mask] == 0).all()) and bool((whole.kl[~whole.mask] == 0).all())
    assert float(whole.kl.sum()) > 1.0  # the two models differ: not a vacuous match


def test_no_chunk_holds_more_logits_than_its_budget(fixed):
    ids, targets, mask = _batch(fixed)
    model = fixed["trained"]
    vocab = model.get_output_embeddings().weight.shape[0]
    sizes = []
    hook = model.get_output_embeddings().register_forward_hook(lambda m, i, out: sizes.append(out.numel()))
    budget = 5 * ids.shape[0] * vocab  # five positions of the batch
    try:
        with torch.inference_mode():
            token_scores(model, ids, targets, mask, chunk_floats=budget)
    finally:
        hook.remove()
    whole = ids.shape[0] * ids.shape[1] * vocab
    assert len(sizes) == math.ceil(targets.shape[1] / 5) and max(sizes) <= budget < whole / 4


def test_chunked_training_gradient_equals_one_chunk(fixed):
    """Several chunks under grad recompute their logits in the backward pass; the gradient is the same."""
    ids, targets, mask = _batch(fixed, n=6)
    grads = []
    vocab = fixed["base"].get_output_embeddings().weight.shape[0]
    for budget in (2**26, 4 * ids.shape[0] * vocab):
        model = build_tiny_model("0.2m", vocab, 64, seed=0)
        loss = token_scores(model, ids, targets, mask, chunk_floats=budget).nll.sum()
        loss.backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    for a, b in zip(*grads):  # the same sums in another order: equal up to float32 rounding
        assert float((a - b).norm()) <= 1e-5 * float(a.norm()) and float(a.norm()) > 0


def test_reference_cache_replaces_the_reference(fixed):
    ids, targets, mask = _batch(fixed)
    trained, base = fixed["trained"], fixed["base"]
    cache: dict = {}
    with torch.inference_mode():
        first = token_scores(trained, ids, targets, mask, reference=base, reference_cache=cache)

        class Absent(torch.nn.Module):  # a reference that must not run again
            def forward(self, *a, **k):
                raise AssertionError("the cached reference ran")

        absent = Absent()
        absent.weight = torch.nn.Parameter(torch.zeros(1))
        again = token_scores(trained, ids, targets, mask, reference=absent, reference_cache=cache)
    assert list(cache) == [0] and torch.equal(first.kl, again.kl)


# ---- any causal LM -----------------------------------------------------------------------------------------------


def _tiny(kind: str, vocab: int):
    import transformers as tf

    common = dict(vocab_size=vocab, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                  num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64)
    torch.manual_seed(0)
    if kind == "llama":
        return tf.LlamaForCausalLM(tf.LlamaConfig(**common))
    if kind == "qwen2":
        return tf.Qwen2ForCausalLM(tf.Qwen2Config(**common))
    if kind == "gemma2":  # squashes its logits: tanh(logits / cap) * cap
        return tf.Gemma2ForCausalLM(tf.Gemma2Config(**common, head_dim=8, final_logit_softcapping=0.5))
    if kind == "gpt2":
        return tf.GPT2LMHeadModel(tf.GPT2Config(vocab_size=vocab, n_embd=16, n_layer=2, n_head=2, n_positions=64,
                                                resid_pdrop=0, embd_pdrop=0, attn_pdrop=0,
                                                activation_function="gelu"))
    if kind == "cohere":  # scales its logits in its own forward: the kernel must notice and fall back
        return tf.CohereForCausalLM(tf.CohereConfig(**common, logit_scale=0.25))
    raise ValueError(kind)


@pytest.mark.parametrize("kind", ["llama", "qwen2", "gemma2", "gpt2", "cohere"])
def test_kernel_equals_the_models_own_logits(kind):
    model = _tiny(kind, 50).eval()
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 50, (3, 9), generator=gen)
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    targets = torch.where(mask[:, 1:] == 1, ids[:, 1:], IGNORE)
    with torch.inference_mode():
        logp = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float().log_softmax(-1)
        want = -logp.gather(-1, targets.clamp(min=0)[..., None])[..., 0] * (targets != IGNORE)
        one = token_scores(model, ids, targets, mask)
        several = token_scores(model, ids, targets, mask, chunk_floats=2 * 3 * 50)
    torch.testing.assert_close(one.nll, want, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(several.nll, want, rtol=1e-6, atol=1e-6)
    if kind == "gemma2":  # the squashing matters here: without it the numbers would differ
        plain = model.get_output_embeddings()(model.base_model(input_ids=ids).last_hidden_state)[:, :-1]
        assert not torch.allclose(plain.float().log_softmax(-1), logp, atol=1e-3)


def test_kl_takes_zero_log_zero_as_zero():
    logp = torch.tensor([[0.0, -math.inf, -math.inf]])  # all mass on the first token
    logq = torch.tensor([[math.log(0.5), math.log(0.25), math.log(0.25)]])
    assert kl_divergence(logp, logq).tolist() == [pytest.approx(math.log(2))]  # 1 * (0 - ln 0.5); 0 log 0 = 0
    assert kl_divergence(logq, logp).tolist() == [math.inf]  # q puts mass where p has none
