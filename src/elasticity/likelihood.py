"""The one teacher-forced kernel: per-token NLL and KL of any batch under a causal LM, in chunks of positions.

Every number the toolkit derives from a model's next-token distribution (the training loss, rebound's
bits/token and KL to the base, resistance's losses and distances, the pre-training table, `compress`) is
computed by `token_scores`. It runs the model's backbone once over the batch and its output head on chunks of
positions, so that a batch's full-vocabulary float32 logits never exist at once: a chunk holds at most
`chunk_floats` logits (64 MB of float32 by default; Qwen's 151,936-token vocabulary at 8 x 512 positions
would be 2.5 GB a tensor, and a chunk's softmax, KL and gradient take about six such temporaries). A batch
that fits in one chunk is computed exactly as the model's own forward computes it (the same operations on the
same tensors), so chunking changes no number of a small model.

Conventions:
    targets[b, j] is the token that input position `offset + j` predicts (IGNORE where there is none), so a
    language-model batch passes `labels[:, 1:]` with offset 0;
    KL "forward" is KL(model || reference) = sum_v p(v) (ln p(v) - ln q(v)), p = model, q = reference;
    "reverse" swaps p and q; 0 log 0 = 0 (a token the first distribution gives no mass costs nothing).
"""

from __future__ import annotations

import inspect
import weakref
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Literal

import torch
from torch.utils.checkpoint import checkpoint

from elasticity.data.batching import collate
from elasticity.data.tokenize import IGNORE, Example
from elasticity.errors import UserError
from elasticity.stats import LN2

Direction = Literal["forward", "reverse"]
CHUNK_FLOATS = 2**24  # logits one chunk may hold (each same-sized temporary too): 64 MB of float32. Smaller chunks
# cost speed where a batch takes many (a 152k-vocabulary rebound at 8 x 512 measured 17% slower than at 2^26)

_PARTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> (backbone, head) or None
_PACKED_OK: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # models whose packed examples stay apart


@dataclass(frozen=True)
class TokenScores:
    """Per-position numbers of one batch: (B, P) tensors, 0 where there is no target."""

    nll: torch.Tensor  # nats; carries the gradient when the kernel ran with grad enabled
    kl: torch.Tensor | None  # nats, if a reference was given
    mask: torch.Tensor  # True at target positions


def _language_model(model):
    """The causal LM inside a peft wrapper (its LoRA layers are in place), or the model itself."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def _takes(module, name: str) -> bool:
    try:
        return name in inspect.signature(module.forward).parameters
    except (TypeError, ValueError):
        return False


def _hidden(backbone, input_ids, attention_mask, position_ids=None):
    kwargs = {"use_cache": False} if _takes(backbone, "use_cache") else {}
    if position_ids is not None:
        kwargs["position_ids"] = position_ids
    return backbone(input_ids=input_ids, attention_mask=attention_mask, **kwargs).last_hidden_state  # (B, T, H)


def _head_function(lm):
    head = lm.get_output_embeddings()
    cfg = lm.config.get_text_config() if hasattr(lm.config, "get_text_config") else lm.config
    cap = getattr(cfg, "final_logit_softcapping", None)  # Gemma 2 and 3 squash their logits
    if not cap:
        return head
    return lambda h: torch.tanh(head(h) / cap) * cap


@contextmanager
def _probing(lm):
    """Eval mode (no dropout in a comparison) without gradients; the model's mode is restored after."""
    was_training = lm.training
    lm.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        lm.train(was_training)


def _parts(model):
    """(backbone, head function) whose composition is the model's logits, or None (then the model's own
    forward gives full logits and only the float32 work is chunked).

    The split is checked once per model on a two-token probe against the model's own logits, so an
    architecture that scales its logits in a way not handled here falls back instead of going wrong.
    """
    lm = _language_model(model)
    if lm in _PARTS:
        return _PARTS[lm]
    parts = None
    backbone = getattr(lm, "base_model", None)
    if backbone is not None and backbone is not lm and getattr(lm, "get_output_embeddings", lambda: None)():
        head = _head_function(lm)
        probe = torch.tensor([[0, 1]], device=next(lm.parameters()).device)
        with _probing(lm):
            want = lm(input_ids=probe, use_cache=False).logits.float()
            got = head(_hidden(backbone, probe, None)).float()
        if got.shape == want.shape and torch.allclose(got, want, rtol=1e-5, atol=1e-6):
            parts = (backbone, head)
    _PARTS[lm] = parts
    return parts


def use_own_forward(model) -> None:
    """Score `model` through its own forward (full logits, float32 work still chunked) instead of its backbone and
    a chunked head: a model sharded by FSDP gathers its embeddings and head in its root's forward only."""
    _PARTS[_language_model(model)] = None


def check_packed_attention(model) -> None:
    """Refuse a model whose attention would let packed examples see each other.

    Transformers builds a block-diagonal mask from the positions of packed examples for most architectures; the
    check packs two short examples and compares the outputs with each example run alone, once per model.

    Raises:
        UserError: one line, when the outputs differ.
    """
    lm = _language_model(model)
    if lm in _PACKED_OK:
        return
    device = next(lm.parameters()).device
    first, second = torch.tensor([[1, 2, 3]], device=device), torch.tensor([[4, 5]], device=device)
    with _probing(lm):
        alone = torch.cat([lm(input_ids=x, use_cache=False).logits for x in (first, second)], 1).float()
        packed = lm(input_ids=torch.cat([first, second], 1), position_ids=torch.tensor([[0, 1, 2, 0, 1]],
                    device=device), use_cache=False).logits.float()
    if not torch.allclose(packed, alone, rtol=1e-4, atol=1e-5):
        name = type(lm).__name__
        raise UserError(f"{name} lets packed examples attend to each other here (attention "
                        f"'{getattr(lm.config, '_attn_implementation', '?')}'): set train.pack_tokens 0")
    _PACKED_OK[lm] = True


def _chunk_positions(rows: int, vocab: int, chunk_floats: int) -> int:
    return max(1, chunk_floats // max(1, rows * vocab))


def _chunks(model, input_ids, attention_mask, offset: int, width: int, chunk_floats: int, position_ids=None):
    """Yield (a, h, head, keep): the logits of target positions a .. a + keep are head(h)[:, :keep].

    h is a slice of the final hidden states (or, for a model that cannot be split, of its full logits with
    head = None). One chunk takes every position from `offset` on, as the model's own forward would.
    """
    parts = _parts(model)
    if parts is None:
        given = {} if position_ids is None else {"position_ids": position_ids}
        full = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False, **given).logits
        head, states, vocab = None, full, full.shape[-1]
    else:
        backbone, head = parts
        states = _hidden(backbone, input_ids, attention_mask, position_ids)  # (B, T, H)
        vocab = _language_model(model).get_output_embeddings().weight.shape[0]
    step = _chunk_positions(states.shape[0], vocab, chunk_floats)
    if step >= width:
        yield 0, states[:, offset:], head, width
        return
    for a in range(0, width, step):
        keep = min(step, width - a)
        yield a, states[:, offset + a:offset + a + keep], head, keep


def _log_probs(h, head, keep: int) -> torch.Tensor:
    return (h if head is None else head(h))[:, :keep].float().log_softmax(-1)  # (B, c, V)


def kl_divergence(logp: torch.Tensor, logq: torch.Tensor) -> torch.Tensor:
    """sum_v p (ln p - ln q) over the last axis, with 0 log 0 = 0 (a logit of -inf in p costs nothing).

    >>> import math
    >>> p, q = torch.tensor([0.5, 0.5, 0.0]).log(), torch.tensor([0.25, 0.75, 0.0]).log()
    >>> round(kl_divergence(p, q).item(), 6), round(math.log(2) - 0.5 * math.log(3), 6)
    (0.143841, 0.143841)
    """
    p = logp.exp()
    return torch.where(p > 0, p * (logp - logq), 0.0).sum(-1)


def _reference_log_probs(reference, input_ids, attention_mask, offset, width, chunk_floats, device, position_ids):
    """The reference's log-probabilities, chunk by chunk, on the model's device (never with a gradient)."""
    ref_device = next(reference.parameters()).device
    mask = attention_mask.to(ref_device) if attention_mask is not None else None
    positions = position_ids.to(ref_device) if position_ids is not None else None
    with torch.no_grad():
        for a, h, head, keep in _chunks(reference, input_ids.to(ref_device), mask, offset, width, chunk_floats,
                                        positions):
            yield a, _log_probs(h, head, keep).to(device)


def token_scores(model, input_ids: torch.Tensor, targets: torch.Tensor, attention_mask: torch.Tensor | None = None,
                 *, offset: int = 0, reference=None, direction: Direction = "forward",
                 reference_cache: dict | None = None, bf16: bool = False,
                 chunk_floats: int = CHUNK_FLOATS, position_ids: torch.Tensor | None = None) -> TokenScores:
    """Per-token NLL of `targets` under `model` and, with a reference, the per-token KL between them.

    Args:
        model: a Hugging Face causal LM (or a peft wrapper of one); the inputs follow its device.
        input_ids: (B, T) token ids; right padding needs no `attention_mask` in a causal model.
        targets: (B, P) with P <= T - offset: the token each input position offset + j predicts, or IGNORE.
        attention_mask: (B, T), or None.
        offset: the input position of targets[:, 0].
        reference: a second causal LM on the same tokens (any device); teacher-forced on the same inputs.
        direction: "forward" for KL(model || reference), "reverse" for KL(reference || model).
        reference_cache: a mapping the caller keeps for this very batch (chunk offset -> log-probabilities): the
            reference's are stored there on the first call and read back on later ones (the reference then does
            not run, and may be None).
        bf16: bfloat16 autocast for the forward passes (log-probabilities stay float32).
        chunk_floats: the most logits one chunk may hold.
        position_ids: (B, T) positions of packed examples (`batching.collate_packed`, no attention mask): each
            example attends to itself only; check the model with `check_packed_attention` first.

    With grad enabled (training) the NLL carries the gradient; when a batch takes several chunks, each one's
    logits are recomputed in the backward pass rather than kept (activation checkpointing per chunk).
    """
    width = targets.shape[1]
    mask = targets != IGNORE  # (B, P)
    autocast = torch.autocast(input_ids.device.type, dtype=torch.bfloat16) if bf16 else nullcontext()
    nll_parts, kl_parts = [], []
    with autocast:
        # a filled cache stands for the reference, which then need not be given (nor loaded) at all
        cached = reference_cache is not None and 0 in reference_cache
        references = None
        if reference is not None and not cached:
            references = _reference_log_probs(reference, input_ids, attention_mask, offset, width, chunk_floats,
                                              input_ids.device, position_ids)
        for a, h, head, keep in _chunks(model, input_ids, attention_mask, offset, width, chunk_floats, position_ids):
            tgt, m = targets[:, a:a + keep], mask[:, a:a + keep]
            logq = None
            if cached:
                logq = reference_cache[a].to(input_ids.device)  # a cache on disk holds CPU tensors
            elif reference is not None:
                logq = next(references)[1]
                if reference_cache is not None:
                    reference_cache[a] = logq

            def chunk(h, head=head, keep=keep, tgt=tgt, m=m, logq=logq):
                logp = _log_probs(h, head, keep)
                nll = torch.where(m, -logp.gather(-1, tgt.clamp(min=0)[..., None])[..., 0], 0.0)  # (B, c)
                if logq is None:
                    return nll, None
                if logq.shape[-1] != logp.shape[-1]:
                    raise ValueError(f"model and reference disagree on vocabulary size ({logp.shape[-1]} vs "
                                     f"{logq.shape[-1]})")
                first, second = (logp, logq) if direction == "forward" else (logq, logp)
                return nll, torch.where(m, kl_divergence(first, second), 0.0)

            if torch.is_grad_enabled() and keep < width:
                nll, kl = checkpoint(chunk, h, use_reentrant=False)
            else:
                nll, kl = chunk(h)
            nll_parts.append(nll)
            if kl is not None:
                kl_parts.append(kl)
    nll = torch.cat(nll_parts, 1) if len(nll_parts) > 1 else nll_parts[0]
    kl = (torch.cat(kl_parts, 1) if len(kl_parts) > 1 else kl_parts[0]) if kl_parts else None
    return TokenScores(nll, kl, mask)


@dataclass(frozen=True)
class Scored:
    """Summed nats (and KL) over the target tokens of a set of examples; rates are derived by dividing once."""

    nats: float
    kl: float
    tokens: int

    @property
    def loss(self) -> float:
        """Mean NLL per target token (nats): the training loop's loss on these examples."""
        return self.nats / self.tokens

    @property
    def bits_per_token(self) -> float:
        return self.nats / self.tokens / LN2

    @property
    def kl_per_token(self) -> float:
        return self.kl / self.tokens


def _batches(lengths: list[int], batch_size: int, batch_tokens: int | None) -> list[tuple[int, int]]:
    """(start, stop) of consecutive batches over ascending `lengths`: at most batch_size rows and, with a token
    budget, at most batch_tokens padded positions (a longer sequence than the budget goes alone).

    >>> _batches([2, 3, 3, 8, 9], 4, None), _batches([2, 3, 3, 8, 9], 4, 10)
    ([(0, 4), (4, 5)], [(0, 3), (3, 4), (4, 5)])
    """
    out, start = [], 0
    for i, n in enumerate(lengths):
        full = i - start == batch_size or (batch_tokens is not None and (i - start + 1) * n > batch_tokens)
        if full and i > start:
            out.append((start, i))
            start = i
    return out + [(start, len(lengths))] if lengths else out


@torch.no_grad()  # not inference_mode: a sharded (FSDP2) model's weights gathered in it could not be written by the
# next training forward
def teacher_forced(model, examples: list[Example], pad: int, batch_size: int = 32, *, reference=None,
                   direction: Direction = "forward", cache: dict | None = None, bf16: bool = False,
                   accelerator=None, batch_tokens: int | None = None) -> Scored:
    """NLL of `model` (and its KL to `reference`) summed over the target tokens of tokenised examples.

    Examples are sorted by length and right-padded in batches of `batch_size` (the training loop's `collate`),
    so the loss of a set is exactly what training reports on it; with `batch_tokens`, a batch also holds at most
    that many positions, padding included (long sequences then come fewer at a time: activations and attention
    scale with positions, not with sequences). `cache` (a dict the caller keeps for these
    very examples) keeps the reference's log-probabilities, so that later calls run one model instead of two.
    With an `accelerator`, the batches are shared out over its processes and the sums reduced.

    A reference identical to the model gives kl = 0 exactly, whatever the examples (tested).
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    order = sorted(range(len(examples)), key=lambda i: len(examples[i].input_ids))
    rank, world = (accelerator.process_index, accelerator.num_processes) if accelerator else (0, 1)
    batches = _batches([len(examples[i].input_ids) for i in order], batch_size, batch_tokens)[rank::world]
    totals = torch.zeros(3, dtype=torch.float64, device=device)  # nats, kl, targets
    for start, stop in batches:
        batch = {k: v.to(device) for k, v in collate([examples[i] for i in order[start:stop]], pad).items()}
        scores = token_scores(model, batch["input_ids"], batch["labels"][:, 1:], batch["attention_mask"],
                              reference=reference, direction=direction, bf16=bf16,
                              reference_cache=None if cache is None else cache.setdefault(start, {}))
        totals[0] += scores.nll.sum(dtype=torch.float64)
        if scores.kl is not None:
            totals[1] += scores.kl.sum(dtype=torch.float64)
        totals[2] += scores.mask.sum()
    if world > 1:
        totals = accelerator.reduce(totals, reduction="sum")
    model.train(was_training)
    nats, kl, tokens = totals.tolist()
    return Scored(nats, kl, int(tokens))
