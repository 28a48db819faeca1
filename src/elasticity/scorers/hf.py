"""Shared plumbing of the Hugging Face scorers: loading a sequence-classification model, encoding with
counted truncation, and padding by hand.

Why pad by hand: the scorers decide which position is read (the classifier leaves that to the model; the
score model reads the last attended token itself), and counting truncation needs the untruncated lengths
anyway. Loading refuses a checkpoint whose head would be freshly initialised (the classic silent failure
of `AutoModelForSequenceClassification` on a causal-LM or custom-head checkpoint).
"""

from __future__ import annotations

import logging
from typing import Any, Sequence

from elasticity.errors import UserError
from elasticity.models.hf import hub_arguments, load_tokenizer, resolve_model_source, use_safetensors
from elasticity.models.hf import resolve_device as _resolve_device

log = logging.getLogger("elasticity.scorers")


def resolve_device(device: str):
    """"auto" -> the first CUDA device if there is one, else the CPU; anything else is passed to torch."""
    return _resolve_device(device, key="scorer.device")


def load_sequence_classifier(
    source: str,
    *,
    trust_remote_code: bool = False,
    dtype: str | None = None,
    num_labels: int | None = None,
    head_key: str = "",
    allow_pickle: bool = False,
) -> tuple[Any, Any]:
    """Return (model, tokenizer) for an `AutoModelForSequenceClassification` checkpoint, in eval mode.

    Args:
        source: a local model folder, one of our run directories, or a hub id.
        trust_remote_code: run the checkpoint's own modelling code (off unless asked).
        dtype: "float32", "bfloat16" or "float16"; None loads float32.
        num_labels: force the head's output count (1 for a score model, whose config may not say so).
        head_key: the checkpoint's name for the head when it is not the model's own (e.g. "score_head" in
            safe-rlhf checkpoints); its weights are renamed onto the model's head at load time.
        allow_pickle: read weights stored only as a pickle (refused otherwise: loading a pickle can run code).

    Raises:
        UserError: missing path, unreadable checkpoint, a head of the wrong size, or head weights that
            the checkpoint does not have (the model would score with random weights).
    """
    import torch
    from transformers import AutoModelForSequenceClassification

    source = resolve_model_source(source)
    kwargs: dict[str, Any] = {
        "trust_remote_code": trust_remote_code,
        "dtype": getattr(torch, dtype) if dtype else torch.float32,
        "output_loading_info": True,
    }
    kwargs["use_safetensors"] = use_safetensors(source, allow_pickle, "scorer.allow_pickle")
    name, hub = hub_arguments(source)
    kwargs.update(hub)
    if num_labels is not None:
        kwargs["num_labels"] = num_labels
    if head_key:
        kwargs["key_mapping"] = {f"^{head_key}\\.": "score."}
    try:
        model, info = AutoModelForSequenceClassification.from_pretrained(name, **kwargs)
    except (OSError, ValueError) as e:
        raise UserError(f"cannot load a sequence classifier from '{source}': {str(e).splitlines()[0]}") from None
    except RuntimeError as e:  # transformers raises this for a head whose size does not match
        first = str(e).splitlines()[0]
        raise UserError(f"cannot load '{source}' with a {num_labels}-output head ({first})") from None
    missing = sorted(info.get("missing_keys") or ())
    unexpected = sorted(info.get("unexpected_keys") or ())
    if missing:
        hint = _head_hint(unexpected)
        raise UserError(
            f"'{source}' has no weights for {', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''}: "
            f"they would be random{hint}"
        )
    head_left = [k for k in unexpected if k.startswith("score.") or (head_key and k.startswith(head_key + "."))]
    if head_left:
        raise UserError(
            f"'{source}': head weights {', '.join(head_left)} have no place in {type(model).__name__} "
            "(e.g. a head bias where the model's head has none); this checkpoint needs its own model class"
        )
    if unexpected:  # e.g. an unused lm_head or safe-rlhf's normaliser buffers: reported, not fatal
        log.warning("scorer: '%s': ignoring checkpoint weights %s", source, ", ".join(unexpected[:5]))
    model.eval()
    tokenizer = load_tokenizer(source, trust_remote_code)
    if getattr(model.config, "pad_token_id", None) is None:
        # Decoder classifiers refuse batches without a pad id; ours are masked, so any id works.
        model.config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def _head_hint(unexpected: Sequence[str]) -> str:
    # Top-level `<name>.weight` tensors other than a language-model head are candidate scalar heads.
    heads = sorted(k[: -len(".weight")] for k in unexpected if k.count(".") == 1 and k.endswith(".weight"))
    heads = [h for h in heads if h != "lm_head"]
    if heads:
        return f"; the checkpoint has {', '.join(heads)}: pass scorer.head_key {heads[0]} to use it as the head"
    return "; is this a causal LM rather than a trained classifier/score model?"


def encode(
    tokenizer: Any,
    texts: Sequence[str],
    max_length: int,
    append_eos: bool = False,
) -> tuple[list[list[int]], int, int]:
    """Token ids per text with the tokenizer's special tokens, truncated to `max_length`.

    Truncation is the tokenizer's own (so a RoBERTa `</s>` survives it); with `append_eos` the EOS id is
    appended after truncation to `max_length - 1`, so it is always the last token. A text that encodes to
    no token at all becomes one EOS (or BOS) token so that it still gets a score.

    Returns:
        (ids, number of texts truncated, number of empty texts).
    """
    if not texts:
        return [], 0, 0
    room = max_length - 1 if append_eos else max_length
    full = tokenizer(list(texts), add_special_tokens=True, verbose=False)["input_ids"]
    ids, truncated, empty = [], 0, 0
    for text, row in zip(texts, full):
        if len(row) > room:
            truncated += 1
            row = tokenizer(text, add_special_tokens=True, truncation=True, max_length=room)["input_ids"]
        row = list(row)
        if append_eos:
            row.append(tokenizer.eos_token_id)
        if not row:
            empty += 1
            fill = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.bos_token_id
            if fill is None:
                raise UserError("scorer: an empty text cannot be scored: the tokenizer has no EOS or BOS token")
            row = [fill]
        ids.append(row)
    return ids, truncated, empty


def pad(rows: Sequence[Sequence[int]], pad_id: int, side: str = "right"):
    """(input_ids, attention_mask, position_ids) as (B, T) long tensors; positions count attended tokens
    from 0, so a left-padded row sees the same positions as the unpadded text."""
    import torch

    width = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)  # (B, T)
    mask = torch.zeros((len(rows), width), dtype=torch.long)  # (B, T)
    for i, r in enumerate(rows):
        span = slice(0, len(r)) if side == "right" else slice(width - len(r), width)
        input_ids[i, span] = torch.tensor(r, dtype=torch.long)
        mask[i, span] = 1
    positions = (mask.cumsum(-1) - 1).clamp(min=0)  # (B, T)
    return input_ids, mask, positions


def length_batches(rows: Sequence[Sequence[int]], batch_size: int) -> list[list[int]]:
    """Indices grouped into batches of similar length (longest first), to waste little on padding."""
    order = sorted(range(len(rows)), key=lambda i: -len(rows[i]))
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def note_truncation(name: str, truncated: int, empty: int, total: int, max_length: int) -> None:
    """Say (never silently) that texts were cut or were empty."""
    if truncated:
        log.warning("scorer %s: %d of %d texts truncated to %d tokens", name, truncated, total, max_length)
    if empty:
        log.warning("scorer %s: %d of %d texts were empty (scored as a lone EOS token)", name, empty, total)
