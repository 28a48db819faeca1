"""Tokenisation: prompt/response pairs with the prompt masked out of the loss, and plain documents.

A pair is encoded as `encode(prompt, with special tokens) + encode(response) + [eos]`: the two parts are
tokenised separately, so the mask falls exactly on the boundary (no token straddles prompt and response).
Targets use the usual HF convention: `labels` is aligned with `input_ids` and the loss at position t
predicts token t from tokens < t; prompt positions hold `IGNORE`.
Truncation is never silent: encoders return a flag and callers count and log it.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

IGNORE = -100


@dataclass(frozen=True)
class Example:
    input_ids: list[int]
    labels: list[int]  # IGNORE where there is no loss (prompt tokens)
    truncated: bool = False

    @property
    def n_targets(self) -> int:
        """Tokens that are predicted (label set and not the first position, which nothing predicts)."""
        return sum(1 for t in self.labels[1:] if t != IGNORE)


def encode_pair(tok, prompt: str, response: str, max_length: int) -> Example:
    """Prompt tokens (with the tokenizer's own BOS, if it adds one) are masked; response + EOS are targets."""
    p = tok(prompt, add_special_tokens=True)["input_ids"]
    r = tok(response, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    ids = p + r
    labels = [IGNORE] * len(p) + r
    truncated = len(ids) > max_length
    return Example(ids[:max_length], labels[:max_length], truncated)


def encode_text(tok, text: str, max_length: int | None = None) -> Example:
    """A whole document with EOS appended; every token is a target. Truncated only if max_length is set."""
    ids = tok(text, add_special_tokens=True)["input_ids"] + [tok.eos_token_id]
    truncated = max_length is not None and len(ids) > max_length
    if truncated:
        ids = ids[:max_length]
    return Example(ids, list(ids), truncated)


def pad_id(tok) -> int:
    """The id that pads batches: the tokenizer's pad token, else its EOS, else 0 (padded positions are always
    masked, so any id will do)."""
    for candidate in (tok.pad_token_id, tok.eos_token_id):
        if candidate is not None:
            return candidate
    return 0


def pack_blocks(examples: list[Example], block: int) -> list[Example]:
    """Concatenate documents (each BOS ... EOS) and cut full blocks of `block` tokens: no padding.

    A short tail is dropped. Every token of a block is a target.
    """
    stream = [t for ex in examples for t in ex.input_ids]
    n = len(stream) // block
    return [Example(stream[i * block:(i + 1) * block], stream[i * block:(i + 1) * block]) for i in range(n)]


def tokenize_records(records: list[dict], tok, max_length: int, name: str = "data", pack: bool = False,
                     report: bool = True) -> list[Example]:
    """Tokenise text or prompt/response records; truncation is counted and reported, never silent.

    With `pack`, text documents are encoded whole and cut into full blocks of `max_length` tokens. With
    `report` off the caller says it (`tokenize_note`), e.g. once its own checks have passed.
    """
    is_pair = "prompt" in records[0]
    if is_pair:
        examples = [encode_pair(tok, r["prompt"], r["response"], max_length) for r in records]
    else:
        examples = [encode_text(tok, r["text"], None if pack else max_length) for r in records]
    if pack and not is_pair:
        examples = pack_blocks(examples, max_length)
    if report and (note := tokenize_note(records, examples, name, max_length, pack)):
        print(note, file=sys.stderr)
    return examples


def tokenize_note(records: list[dict], examples: list[Example], name: str, max_length: int, pack: bool) -> str:
    """What tokenising changed, in one line ("" if nothing): blocks packed, or examples truncated."""
    if pack and "prompt" not in records[0]:
        return f"[data] {name}: {len(records)} documents packed into {len(examples)} blocks of {max_length} tokens"
    n_trunc = sum(ex.truncated for ex in examples)
    return f"[data] {name}: {n_trunc} of {len(examples)} examples truncated to {max_length} tokens" if n_trunc else ""
