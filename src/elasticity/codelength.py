"""Code lengths of text under a causal LM: rolling log-likelihood, response-only rates, KL to a reference.

The numbers come from the one kernel, `likelihood.token_scores`; this module decides which windows it reads.

Every target token is predicted exactly once. A sequence longer than the model's context is cut into
windows with the semantics of lm-evaluation-harness's `loglikelihood_rolling` (`get_rolling_token_windows`
+ `make_disjoint_window`, context_len 1): the targets are taken in consecutive blocks of `max_length`, and
each block is scored by one forward pass over the `max_length` tokens that end just before its last target
(or from the sequence's start). A document is `[prefix] + tokens`, where the prefix is the tokenizer's BOS
(EOS if it has none) and `tokens` is the text encoded without special tokens (lm-eval's HFLM with
`add_bos_token=False`; for tokenizers that add nothing, such as GPT-2's or ours, its default too).

Nats and counts are summed over everything and divided once (nanochat's `evaluate_bpb`):

    bits/token = sum nats / (tokens * ln 2)        bits/byte = sum nats / (UTF-8 bytes * ln 2)

Windows from all sequences are sorted by length and batched, so padding is only what batching needs;
right padding needs no attention mask in a causal model, and logits are computed only where they are scored.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from elasticity.data.tokenize import IGNORE, encode_pair
from elasticity.likelihood import Direction, token_scores
from elasticity.models.hf import context_length
from elasticity.stats import LN2


@dataclass(frozen=True)
class Totals:
    """Summed nats and counts; rates are derived by dividing once.

    Example: two documents of 3 and 5 UTF-8 bytes, 2 and 4 target tokens, costing 2.0 and 4.0 nats:

    >>> t = Totals(nats=2.0, tokens=2, bytes=3, docs=1) + Totals(nats=4.0, tokens=4, bytes=5, docs=1)
    >>> round(t.bits_per_token, 6), round(t.bits_per_byte, 6)   # 6/(6 ln 2), 6/(8 ln 2)
    (1.442695, 1.082021)

    For a KL result `nats` holds the summed per-token divergence, so `nats_per_token` is the mean KL.
    """

    nats: float = 0.0
    tokens: int = 0
    bytes: int = 0
    docs: int = 0

    def __add__(self, other: Totals) -> Totals:
        return Totals(self.nats + other.nats, self.tokens + other.tokens, self.bytes + other.bytes,
                      self.docs + other.docs)

    @property
    def nats_per_token(self) -> float:
        return self.nats / self.tokens if self.tokens else math.nan

    @property
    def bits_per_token(self) -> float:
        return self.nats / (self.tokens * LN2) if self.tokens else math.nan

    @property
    def bits_per_byte(self) -> float:
        return self.nats / (self.bytes * LN2) if self.bytes else math.nan

    def to_dict(self) -> dict:
        return {
            "nats": self.nats, "tokens": self.tokens, "bytes": self.bytes, "docs": self.docs,
            "nats_per_token": self.nats_per_token, "bits_per_token": self.bits_per_token,
            "bits_per_byte": self.bits_per_byte,
        }


def rolling_windows(n: int, start: int, max_length: int) -> list[tuple[int, int, int]]:
    """Windows `(lo, t, end)` that predict each target `seq[start:n]` exactly once.

    The model reads `seq[lo:end-1]` (at most `max_length` tokens) and its last `end - t` positions score the
    targets `seq[t:end]`. Blocks of `max_length` targets follow each other; each block reads the
    `max_length` tokens ending just before its last target, which is lm-eval's rolling window.

    Example: a document `a b c d e` with prefix `P`, so `seq = P a b c d e` (n=6, start=1), context 2:

    >>> rolling_windows(6, 1, 2)
    [(0, 1, 3), (2, 3, 5), (3, 5, 6)]

    i.e. `P a` scores `a b`; `b c` scores `c d`; `c d` scores only `e`.
    """
    if start < 1 or max_length < 1:
        raise ValueError("the first target needs a token before it (start >= 1) and max_length >= 1")
    out = []
    t = start
    while t < n:
        end = min(t + max_length, n)
        out.append((max(0, end - 1 - max_length), t, end))
        t = end
    return out


def _prefix_id(tok) -> int:
    return tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id


def _device(model):
    return next(model.parameters()).device


def _batches(items: list[tuple], budget: int, min_fill: float = 0.9) -> Iterator[list[tuple]]:
    """Consecutive runs of the (longest-first) windows: at most `budget` padded tokens a batch, at least
    `min_fill` of them real. Short windows share a forward pass; a batch ends before padding grows."""
    b = 0
    while b < len(items):
        width = items[b][0]
        n, real = 1, width
        while b + n < len(items) and (n + 1) * width <= budget:
            if real + items[b + n][0] < min_fill * (n + 1) * width:
                break
            real += items[b + n][0]
            n += 1
        yield items[b:b + n]
        b += n


def score_sequences(
    model,
    seqs: Sequence[Sequence[int]],
    starts: Sequence[int],
    max_length: int,
    batch_size: int = 8,
    bf16: bool = False,
    reference=None,
    direction: Direction = "forward",
) -> tuple[np.ndarray, np.ndarray | None]:
    """Per-sequence summed NLL (nats) of the targets `seq[start:]`, and the summed KL if `reference` is given.

    Args:
        model: a Hugging Face causal LM (any device; inputs follow the model).
        seqs: token id sequences; `starts[i]` is the index of the first target of `seqs[i]` (>= 1).
        max_length: tokens one forward pass may read.
        batch_size: full-length windows per forward pass; shorter windows fill the same token budget.
        bf16: run the forward passes under bfloat16 autocast (log-probabilities stay float32).
        reference: a second causal LM with the same tokenizer; teacher-forced on the same windows.
        direction: "forward" for KL(model || reference), "reverse" for KL(reference || model).

    Returns:
        (nats, kl): float64 arrays with one entry per sequence; kl is None without a reference.
    """
    import torch

    # (input length, scored length, sequence, lo, t, end); sorted longest first so batches pad little
    items = []
    for i, (seq, start) in enumerate(zip(seqs, starts)):
        for lo, t, end in rolling_windows(len(seq), start, max_length):
            items.append((end - 1 - lo, end - t, i, lo, t, end))
    items.sort(key=lambda w: (-w[0], -w[1]))
    device = _device(model)
    nats_parts, kl_parts, owners = [], [], []
    with torch.inference_mode():
        for batch in _batches(items, batch_size * max_length):
            width = batch[0][0]
            # windows of equal length need logits only over the longest scored tail; in a padded batch the
            # tails end at different positions, so it keeps them all (such windows are short anyway)
            keep = max(w[1] for w in batch) if all(w[0] == width for w in batch) else width
            ids, labels = [], []
            for n_in, n_sc, i, lo, t, end in batch:
                seq = seqs[i]
                ids.append(list(seq[lo:end - 1]) + [0] * (width - n_in))  # pad id is never scored
                # target seq[t] is predicted at input position t-1-lo; the kept slice starts at width-keep
                first = t - 1 - lo - (width - keep)
                labels.append([IGNORE] * first + list(seq[t:end]) + [IGNORE] * (keep - first - n_sc))
            ids_t = torch.tensor(ids, dtype=torch.long, device=device)  # (B, T)
            labels_t = torch.tensor(labels, dtype=torch.long, device=device)  # (B, keep)
            scores = token_scores(model, ids_t, labels_t, offset=width - keep, reference=reference,
                                  direction=direction, bf16=bf16)
            nats_parts.append(scores.nll.sum(1, dtype=torch.float64))
            if scores.kl is not None:
                kl_parts.append(scores.kl.sum(1, dtype=torch.float64))
            owners.extend(w[2] for w in batch)
    owner = np.asarray(owners, dtype=np.int64)

    def per_seq(parts):
        vals = torch.cat(parts).cpu().numpy() if parts else np.zeros(0)  # one device sync at the end
        return np.bincount(owner, weights=vals, minlength=len(seqs)).astype(np.float64)

    return per_seq(nats_parts), (per_seq(kl_parts) if reference is not None else None)


def encode_documents(tok, texts: Sequence[str]) -> tuple[list[list[int]], list[int]]:
    """Each document as `[prefix] + tokens` (no special tokens added), its first target at index 1."""
    encoded = tok(list(texts), add_special_tokens=False)["input_ids"] if len(texts) else []
    prefix = _prefix_id(tok)
    return [[prefix] + list(ids) for ids in encoded], [1] * len(encoded)


def document_nats(model, tok, texts: Sequence[str], max_length: int | None = None, batch_size: int = 8,
                  bf16: bool = False) -> tuple[np.ndarray, list[int]]:
    """Per-document rolling NLL in nats and the number of tokens scored in each (lm-eval's semantics)."""
    max_length = max_length or context_length(model.config, tok)
    seqs, starts = encode_documents(tok, texts)
    nats, _ = score_sequences(model, seqs, starts, max_length, batch_size, bf16)
    return nats, [len(s) - 1 for s in seqs]


def rolling_nll(model, tok, texts: Sequence[str], max_length: int | None = None, batch_size: int = 8,
                bf16: bool = False) -> Totals:
    """Rolling code length of whole documents: every token predicted once, with lm-eval's windows.

    Example: a model whose next-token distribution is uniform over V = 259 tokens costs ln 259 nats a token,
    so a document of 6 tokens and 6 UTF-8 bytes (such as "héllo" under a byte-level tokenizer) gives
    bits/token = log2(259) = 8.016808 and bits/byte = 6 log2(259) / 6 = 8.016808.

    Args:
        model: a Hugging Face causal LM (eval mode).
        tok: its tokenizer.
        texts: documents; bytes are counted as UTF-8.
        max_length: tokens one forward pass may read (default: the model's context length).
        batch_size: full-length windows per forward pass (shorter ones fill the same number of tokens).
        bf16: bfloat16 autocast for the forward passes.
    """
    nats, lengths = document_nats(model, tok, texts, max_length, batch_size, bf16)
    return Totals(float(math.fsum(nats)), sum(lengths), sum(len(t.encode("utf-8")) for t in texts), len(texts))


def _pair(p: tuple[str, str] | Mapping[str, str]) -> tuple[str, str]:
    return (p["prompt"], p["response"]) if isinstance(p, Mapping) else (p[0], p[1])


def encode_responses(tok, pairs: Sequence[tuple[str, str] | Mapping[str, str]]) -> tuple[list[list[int]], list[int]]:
    """Each pair as `encode_pair` tokenises it (never truncated), and the index of its first response token."""
    prefix = _prefix_id(tok)
    seqs, starts = [], []
    for p in pairs:
        prompt, response = _pair(p)
        ex = encode_pair(tok, prompt, response, max_length=sys.maxsize)
        start = next(j for j, lab in enumerate(ex.labels) if lab != IGNORE)
        ids = list(ex.input_ids)
        if start == 0:  # an empty prompt without BOS: the first response token still needs a context
            ids, start = [prefix] + ids, 1
        seqs.append(ids)
        starts.append(start)
    return seqs, starts


def _response_totals(values: np.ndarray, seqs, starts, pairs) -> Totals:
    return Totals(
        float(math.fsum(values)),
        sum(len(s) - st for s, st in zip(seqs, starts)),
        sum(len(_pair(p)[1].encode("utf-8")) for p in pairs),
        len(pairs),
    )


def response_nll(model, tok, pairs: Sequence[tuple[str, str] | Mapping[str, str]], max_length: int | None = None,
                 batch_size: int = 8, bf16: bool = False) -> Totals:
    """Response-only code length: targets are the response tokens and the EOS after them, never the prompt.

    Bytes are the UTF-8 bytes of the responses (EOS has none). A response longer than the context is
    scored in rolling windows; one that fits reads as much of the prompt as fits before it.

    Example: with a byte-level tokenizer (one token a byte) and no BOS, the pair ("ab", "héllo") has
    2 prompt tokens and 6 response tokens + EOS = 7 targets over 6 bytes; a uniform model over 259 tokens
    gives 7 ln 259 nats: bits/token = log2(259) = 8.016808, bits/byte = 7 log2(259) / 6 = 9.352943.
    """
    pairs = list(pairs)
    max_length = max_length or context_length(model.config, tok)
    seqs, starts = encode_responses(tok, pairs)
    nats, _ = score_sequences(model, seqs, starts, max_length, batch_size, bf16)
    return _response_totals(nats, seqs, starts, pairs)


def response_kl(model, reference, tok, pairs: Sequence[tuple[str, str] | Mapping[str, str]],
                max_length: int | None = None, batch_size: int = 8, bf16: bool = False,
                direction: Direction = "forward") -> Totals:
    """Per-token KL divergence between `model` and `reference` on response tokens, teacher-forced.

    At each response target t with context c (the same windows as `response_nll`), with p = model and
    q = reference, "forward" sums KL(p||q) = sum_v p(v|c) (ln p(v|c) - ln q(v|c)); "reverse" swaps them.
    The result's `nats_per_token` is the mean divergence in nats, `bits_per_token` in bits.

    Example: if at every target p = (1/2, 1/2) and q = (1/4, 3/4), KL(p||q) = ln 2 - 1/2 ln 3 = 0.143841
    nats (0.207519 bits) per token, and KL(q||p) = 3/4 ln 3 - ln 2 = 0.130812 nats. KL of a model to itself is 0.

    Both models must share `tok`; the caller checks that their tokenizers agree.
    """
    pairs = list(pairs)
    max_length = max_length or context_length(model.config, tok)
    seqs, starts = encode_responses(tok, pairs)
    _, kl = score_sequences(model, seqs, starts, max_length, batch_size, bf16, reference, direction)
    return _response_totals(kl, seqs, starts, pairs)
