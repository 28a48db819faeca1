"""Compression metrics: rolling windows, bits/token and bits/byte, response-only rates, KL, and the command.

Models are built locally: a byte-level tokenizer (259 tokens: 256 bytes + 3 specials, so one token a byte)
and tiny LLaMAs, some with hand-set weights whose next-token distribution is known exactly.
"""

from __future__ import annotations

import json
import math

import pytest
import torch

from elasticity.cli import main
from elasticity.codelength import (
    Totals,
    document_nats,
    response_kl,
    response_nll,
    rolling_nll,
    rolling_windows,
    score_sequences,
)
from elasticity.data.tokenize import encode_pair
from elasticity.models.tiny import build_tiny_model, train_tokenizer

V = 259
LOG2V = math.log2(V)
DOCS = ["ab", "héllo", "日本"]  # 2, 6 and 6 UTF-8 bytes (one token a byte)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tok():
    t = train_tokenizer(["hello world"], vocab_size=V)
    assert len(t) == V and t("héllo", add_special_tokens=False)["input_ids"].__len__() == 6
    return t


def _llama(vocab: int, tie: bool = True, seed: int = 0, layers: int = 2, max_length: int = 64):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=16, intermediate_size=32, num_hidden_layers=layers,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=max_length,
                      tie_word_embeddings=tie, rms_norm_eps=1e-5)
    return LlamaForCausalLM(cfg).eval()


def _cut_blocks(model) -> None:
    """Zero every block's output projections: the residual stream is then the current token's embedding."""
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()


def uniform_model():
    """Output weights zero (tied to the embeddings): every logit is 0, the next token uniform over V."""
    m = build_tiny_model("0.2m", V, 32, seed=0).eval()
    with torch.no_grad():
        m.lm_head.weight.zero_()
    return m


def constant_model(logits: torch.Tensor):
    """A model whose logits are `logits` at every position, whatever it reads (an order-0 model)."""
    m = _llama(V, tie=False)
    _cut_blocks(m)
    h = m.config.hidden_size
    c, eps = 1.0, m.config.rms_norm_eps
    with torch.no_grad():
        m.model.embed_tokens.weight.zero_()
        m.model.embed_tokens.weight[:, 0] = c  # every token's residual stream is (c, 0, ..., 0)
        m.model.norm.weight.zero_()
        m.model.norm.weight[0] = math.sqrt(c * c / h + eps) / c  # the final RMSNorm then gives (1, 0, ..., 0)
        m.lm_head.weight.zero_()
        m.lm_head.weight[:, 0] = logits
    return m


def markov_model(seed: int = 1):
    """A model whose next-token distribution depends on the current token only (an order-1 model)."""
    m = _llama(V, tie=False, seed=seed)
    _cut_blocks(m)
    with torch.no_grad():
        m.lm_head.weight.mul_(20.0)  # sharpen, so that a misaligned target would change the total a lot
    return m


# ---------------------------------------------------------------- windows


def test_rolling_windows_docstring_example():
    assert rolling_windows(6, 1, 2) == [(0, 1, 3), (2, 3, 5), (3, 5, 6)]


@pytest.mark.parametrize("n", [2, 3, 7, 16, 17, 40])
@pytest.mark.parametrize("start", [1, 4])
@pytest.mark.parametrize("L", [1, 2, 5, 16])
def test_rolling_windows_predict_every_target_once_with_the_longest_context(n, start, L):
    windows = rolling_windows(n, start, L)
    covered = [j for _, t, end in windows for j in range(t, end)]
    assert covered == list(range(start, n))  # each target exactly once, in order
    for lo, t, end in windows:
        assert 1 <= end - 1 - lo <= L  # the model reads at most L tokens
        assert lo <= t - 1  # the first scored target sees the token before it
        assert end - 1 - lo == min(L, end - 1)  # and the window is as long as fits
        assert end - t <= L


def test_rolling_windows_equal_lm_eval():
    utils = pytest.importorskip("lm_eval.utils")
    prefix = -1
    for n_tokens in range(1, 30):
        tokens = list(range(100, 100 + n_tokens))
        seq = [prefix] + tokens
        for L in (1, 2, 3, 7, 10, 40):
            theirs = [utils.make_disjoint_window(w)
                      for w in utils.get_rolling_token_windows(tokens, prefix, L, 1)]
            # lm-eval's HFLM feeds (context + continuation)[-(L+1):][:-1] and scores the continuation
            theirs = [((c + k)[-(L + 1):][:-1], k) for c, k in theirs]
            ours = [(seq[lo:end - 1], seq[t:end]) for lo, t, end in rolling_windows(len(seq), 1, L)]
            assert ours == theirs


# ---------------------------------------------------------------- rates


def test_totals_docstring_example():
    t = Totals(nats=2.0, tokens=2, bytes=3, docs=1) + Totals(nats=4.0, tokens=4, bytes=5, docs=1)
    assert t == Totals(6.0, 6, 8, 2)
    assert t.bits_per_token == pytest.approx(6 / (6 * math.log(2)))
    assert round(t.bits_per_token, 6) == 1.442695 and round(t.bits_per_byte, 6) == 1.082021


def test_uniform_model_costs_log2_vocab_bits_per_token(tok):
    model = uniform_model()
    one = rolling_nll(model, tok, ["héllo"], max_length=32)  # the docstring's example
    assert (one.tokens, one.bytes, one.docs) == (6, 6, 1)
    assert one.bits_per_token == pytest.approx(LOG2V, rel=1e-6)
    assert round(one.bits_per_token, 6) == round(one.bits_per_byte, 6) == 8.016808
    text = "the quick brown fox jumps over the lazy dog " * 3  # 132 tokens: many windows of 8
    many = rolling_nll(model, tok, DOCS + [text], max_length=8, batch_size=3)
    assert many.tokens == 2 + 6 + 6 + len(text)
    assert many.bits_per_token == pytest.approx(LOG2V, rel=1e-6)
    assert many.bits_per_byte == pytest.approx(LOG2V * many.tokens / many.bytes, rel=1e-6)
    assert rolling_nll(model, tok, DOCS, max_length=8, bf16=True).bits_per_token == pytest.approx(LOG2V, rel=1e-6)


def test_rolling_windows_give_each_token_once_under_an_order1_model(tok):
    """With an order-1 model every token's cost is fixed by the token before it, so any window size must
    give the same total as the direct sum over consecutive pairs; a missed, repeated or misaligned token
    would not."""
    model = markov_model()
    with torch.no_grad():
        table = model(input_ids=torch.arange(V)[:, None]).logits[:, 0].log_softmax(-1).double()  # (V, V)
    docs = ["abracadabra, a longer document than any window here " * 2, "ab", "héllo wörld"]
    expected = []
    for d in docs:
        seq = [tok.bos_token_id] + tok(d, add_special_tokens=False)["input_ids"]
        expected.append(-sum(table[a, b].item() for a, b in zip(seq, seq[1:])))
    for L in (1, 2, 5, 16, 64):
        nats, lengths = document_nats(model, tok, docs, max_length=L, batch_size=2)
        assert lengths == [len(tok(d, add_special_tokens=False)["input_ids"]) for d in docs]
        assert nats.tolist() == pytest.approx(expected, rel=1e-5)


def test_batched_scoring_equals_one_window_at_a_time(tok):
    """Sorting, padding, token-budget batches and logits_to_keep change nothing: a real (random) model scored
    window by window, each alone and unpadded, gives the same per-document nats."""
    model = build_tiny_model("0.2m", V, 64, seed=3).eval()
    docs = ["a" * 40, "short", "a medium length document.", "x", "mixed ünïcode text " * 3]
    seqs = [[tok.bos_token_id] + tok(d, add_special_tokens=False)["input_ids"] for d in docs]
    L = 12
    expected = []
    with torch.no_grad():
        for seq in seqs:
            total = 0.0
            for lo, t, end in rolling_windows(len(seq), 1, L):
                logp = model(input_ids=torch.tensor([seq[lo:end - 1]])).logits[0].log_softmax(-1)
                k = end - t
                total -= logp[-k:].gather(1, torch.tensor(seq[t:end])[:, None]).sum().item()
            expected.append(total)
    for batch_size in (1, 3, 8):
        nats, _ = score_sequences(model, seqs, [1] * len(seqs), L, batch_size)
        assert nats.tolist() == pytest.approx(expected, rel=1e-5, abs=1e-4)
    # a context that holds every document is one plain forward pass per document
    nats, _ = score_sequences(model, seqs, [1] * len(seqs), 64, 4)
    with torch.no_grad():
        for seq, got in zip(seqs, nats):
            logp = model(input_ids=torch.tensor([seq[:-1]])).logits[0].log_softmax(-1)
            assert got == pytest.approx(-logp.gather(1, torch.tensor(seq[1:])[:, None]).sum().item(), rel=1e-5)


def test_batching_across_documents_equals_one_document_at_a_time(tok):
    """Windows of all documents share batches (sorted by length, under one token budget): each document's nats
    equal scoring it alone, whatever the batch size, and so do the pooled totals. Equal to float32 rounding,
    not bit for bit: a window's logits depend on its batch's shape (matmul blocking, padded width) by about one
    float32 ulp (up to 8e-8 relative per document measured here), so the bound is lm-eval's 1e-6."""
    model = build_tiny_model("0.2m", V, 64, seed=3).eval()
    docs = ["a" * 40, "short", "a medium length document.", "x", "mixed ünïcode text " * 3,
            "the quick brown fox " * 7, "ok"]
    seqs = [[tok.bos_token_id] + tok(d, add_special_tokens=False)["input_ids"] for d in docs]
    for L in (4, 12, 64):  # many windows a document, a few, one
        alone = [score_sequences(model, [s], [1], L, 1)[0][0] for s in seqs]
        for batch_size in (1, 2, 3, 8, 64):
            nats, _ = score_sequences(model, seqs, [1] * len(seqs), L, batch_size)
            assert nats.tolist() == pytest.approx(alone, rel=1e-6)
            total = rolling_nll(model, tok, docs, max_length=L, batch_size=batch_size)
            assert total.nats == pytest.approx(math.fsum(alone), rel=1e-6)


def test_bits_per_byte_pools_nats_and_bytes_over_documents(tok):
    model = build_tiny_model("0.2m", V, 64, seed=4).eval()
    nats, lengths = document_nats(model, tok, DOCS, max_length=4)
    assert lengths == [2, 6, 6]
    total = rolling_nll(model, tok, DOCS, max_length=4)
    assert (total.tokens, total.bytes, total.docs) == (14, 14, 3)  # bytes: 2 + 6 + 6, counted by hand
    assert total.bits_per_byte == pytest.approx((nats[0] + nats[1] + nats[2]) / (14 * math.log(2)), rel=1e-12)
    mean_of_rates = sum(n / (b * math.log(2)) for n, b in zip(nats, [2, 6, 6])) / 3
    assert total.bits_per_byte != pytest.approx(mean_of_rates, rel=1e-3)  # divided once, not averaged


# ---------------------------------------------------------------- response-only and KL


def test_response_only_counts_and_masking(tok):
    pairs = [("ab", "héllo"), {"prompt": "Q: x", "response": "ok"}]
    # targets: 6 response bytes + EOS, then 2 + EOS; bytes: 6 + 2 (EOS has none); prompts never count
    t = response_nll(uniform_model(), tok, pairs, max_length=32)
    assert (t.tokens, t.bytes, t.docs) == (10, 8, 2)
    assert t.bits_per_token == pytest.approx(LOG2V, rel=1e-6)
    assert t.bits_per_byte == pytest.approx(10 * LOG2V / 8, rel=1e-6)
    one = response_nll(uniform_model(), tok, [("ab", "héllo")], max_length=32)  # the docstring's example
    assert round(one.bits_per_byte, 6) == 9.352943

    model = build_tiny_model("0.2m", V, 64, seed=5).eval()
    got = response_nll(model, tok, pairs, max_length=64)
    expected = 0.0
    with torch.no_grad():
        for prompt, response in [("ab", "héllo"), ("Q: x", "ok")]:
            ex = encode_pair(tok, prompt, response, 64)
            logp = model(input_ids=torch.tensor([ex.input_ids])).logits[0, :-1].log_softmax(-1)
            for pos, label in enumerate(ex.labels[1:]):
                if label != -100:
                    expected -= logp[pos, label].item()
    assert got.nats == pytest.approx(expected, rel=1e-5)
    # a context too short for prompt + response still scores every response token once
    short = response_nll(model, tok, pairs, max_length=3)
    assert short.tokens == 10


def test_kl_of_a_model_to_itself_is_zero(tok):
    model = build_tiny_model("0.2m", V, 64, seed=6).eval()
    pairs = [("ab", "héllo"), ("Q: x", "ok"), ("", "no prompt at all")]
    for direction in ("forward", "reverse"):
        kl = response_kl(model, model, tok, pairs, max_length=8, batch_size=2, direction=direction)
        assert kl.tokens == 7 + 3 + 17
        assert abs(kl.nats) < 1e-9
    other = build_tiny_model("0.2m", V, 64, seed=7).eval()
    assert response_kl(model, other, tok, pairs, max_length=8).nats_per_token > 1e-3


def test_kl_docstring_example(tok):
    big = -40.0  # e^-40: tokens that carry no mass
    p = torch.full((V,), big)
    p[:2] = torch.tensor([0.0, 0.0])  # (1/2, 1/2)
    q = torch.full((V,), big)
    q[:2] = torch.tensor([0.0, math.log(3)])  # (1/4, 3/4)
    mp, mq = constant_model(p), constant_model(q)
    pairs = [("ab", "héllo"), ("Q: x", "ok")]
    fwd = response_kl(mp, mq, tok, pairs, max_length=16)
    rev = response_kl(mp, mq, tok, pairs, max_length=16, direction="reverse")
    assert fwd.nats_per_token == pytest.approx(math.log(2) - 0.5 * math.log(3), rel=1e-5)
    assert round(fwd.nats_per_token, 6) == 0.143841 and round(fwd.bits_per_token, 6) == 0.207519
    assert rev.nats_per_token == pytest.approx(0.75 * math.log(3) - math.log(2), rel=1e-5)
    assert round(rev.nats_per_token, 6) == 0.130812


# ---------------------------------------------------------------- the command


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tok):
    d = tmp_path_factory.mktemp("tiny")
    build_tiny_model("0.2m", V, 16, seed=8).save_pretrained(d)
    tok.save_pretrained(d)
    (d / "docs.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in DOCS + ["x" * 40]))
    (d / "pairs.jsonl").write_text(json.dumps({"prompt": "ab", "response": "héllo"}) + "\n")
    return d


def test_compress_command_writes_and_prints_rates(model_dir, tmp_path, capsys, tok):
    from elasticity.models.hf import load_causal_lm

    runs = tmp_path / "runs"
    argv = ["compress", "--model", str(model_dir), "--data", str(model_dir / "docs.jsonl"),
            str(model_dir / "pairs.jsonl"), "--reference", str(model_dir), "--runs-dir", str(runs)]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "docs:" in out and "bits/token" in out and "bits/byte" in out and "KL(model || reference)" in out
    (run,) = runs.iterdir()
    assert {p.name for p in run.iterdir()} >= {"docs.json", "pairs.json", "results.json", "DONE", "meta.json"}
    docs = json.loads((run / "docs.json").read_text())
    assert docs["max_length"] == 16 and docs["kind"] == "text" and docs["tokens"] == 14 + 40
    model, loaded_tok = load_causal_lm(str(model_dir))
    api = rolling_nll(model, loaded_tok, DOCS + ["x" * 40], max_length=16)
    assert docs["bits_per_byte"] == pytest.approx(api.bits_per_byte, rel=1e-9)
    pairs = json.loads((run / "pairs.json").read_text())
    assert (pairs["kind"], pairs["tokens"], pairs["bytes"]) == ("pair", 7, 6)
    assert abs(pairs["kl"]["nats_per_token"]) < 1e-9
    assert json.loads((run / "results.json").read_text())["datasets"]["pairs"] == pairs


def test_compress_rejects_different_tokenizers(model_dir, tmp_path, capsys):
    other = tmp_path / "other"
    tok2 = train_tokenizer(["completely different text " * 20], vocab_size=280)
    build_tiny_model("0.2m", len(tok2), 16, seed=0).save_pretrained(other)
    tok2.save_pretrained(other)
    runs = tmp_path / "runs"
    argv = ["compress", "--model", str(model_dir), "--data", str(model_dir / "pairs.jsonl"),
            "--reference", str(other), "--runs-dir", str(runs)]
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "the tokenizers of" in err[0] and "differ" in err[0]
    assert not runs.exists()


@pytest.mark.parametrize(
    "content, needle",
    [
        (None, "not found"),
        ('{"text": "a"}\n{"text": "b"}\nnot json\n', ":3:"),
        ('{"text": "a"}\n{"body": "b"}\n', "line 2 has no field 'text'"),
        ('{"prompt": "a", "response": "b"}\n{"prompt": "c"}\n', "line 2 has no field 'response'"),
        ("\n\n", "empty"),
        ('{"body": "a"}\n', "neither"),
    ],
    ids=["missing-file", "bad-json-line", "missing-text", "missing-response", "empty", "unknown-fields"],
)
def test_bad_data_exits_2_and_writes_nothing(model_dir, tmp_path, capsys, content, needle):
    data = tmp_path / "data.jsonl"
    if content is not None:
        data.write_text(content)
    runs = tmp_path / "runs"
    assert main(["compress", "--model", str(model_dir), "--data", str(data), "--runs-dir", str(runs)]) == 2
    err = capsys.readouterr().err
    assert needle in err and len(err.strip().splitlines()) == 1
    assert not runs.exists()


def test_missing_model_exits_2_and_writes_nothing(model_dir, tmp_path, capsys):
    runs = tmp_path / "runs"
    argv = ["compress", "--model", str(tmp_path / "no-such-model"), "--data", str(model_dir / "docs.jsonl"),
            "--runs-dir", str(runs)]
    assert main(argv) == 2
    assert "model path does not exist" in capsys.readouterr().err
    assert not runs.exists()


def test_max_length_beyond_the_model_exits_2(model_dir, tmp_path, capsys):
    runs = tmp_path / "runs"
    argv = ["compress", "--model", str(model_dir), "--data", str(model_dir / "docs.jsonl"),
            "--max_length", "17", "--runs-dir", str(runs)]
    assert main(argv) == 2
    assert "exceeds the context length" in capsys.readouterr().err
    assert not runs.exists()
