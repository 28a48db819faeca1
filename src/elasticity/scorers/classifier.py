"""Any Hugging Face sequence classifier as a behaviour scorer: the probability of the aligned label(s).

The paper's IMDb task scores sentiment with a RoBERTa classifier; `siebert/sentiment-roberta-large-english`
with aligned label POSITIVE is that use. Labels are chosen by name (from the model's `config.id2label`) or by
index, so a checkpoint whose labels are only `LABEL_0`/`LABEL_1` works too.
"""

from __future__ import annotations

from typing import Any, Sequence

from elasticity.data.tokenize import pad_id
from elasticity.errors import UserError
from elasticity.scorers.hf import (
    encode,
    length_batches,
    load_sequence_classifier,
    log,
    note_truncation,
    pad,
    resolve_device,
)

_UNBOUNDED = 1_000_000  # tokenizers without a limit report model_max_length = 1e30


def resolve_labels(id2label: dict[int, str], names: Sequence[str], indices: Sequence[int]) -> tuple[int, ...]:
    """Indices of the aligned labels, from label names and/or indices (their union, sorted).

    A name matches exactly, else case-insensitively if that match is unique.

    Raises:
        UserError: no label given, a name or index the model does not have, or every label chosen
            (the score would be 1 for every text).
    """
    id2label = {int(k): str(v) for k, v in id2label.items()}
    known = ", ".join(f"{i}={n}" for i, n in sorted(id2label.items()))
    if not names and not indices:
        raise UserError(
            f"classifier scorer: say which label is aligned: scorer.labels NAME... or scorer.label_indices I... "
            f"(this model's labels: {known})"
        )
    chosen: set[int] = set()
    for name in names:
        exact = [i for i, n in id2label.items() if n == name]
        loose = [i for i, n in id2label.items() if n.lower() == name.lower()]
        if exact or len(loose) == 1:
            chosen.add((exact or loose)[0])
        else:
            raise UserError(f"classifier scorer: the model has no label '{name}' (its labels: {known})")
    for index in indices:
        if index not in id2label:
            raise UserError(f"classifier scorer: the model has no label index {index} (its labels: {known})")
        chosen.add(index)
    if len(chosen) == len(id2label):
        raise UserError(f"classifier scorer: every label is marked aligned, so every score would be 1 ({known})")
    return tuple(sorted(chosen))


class ClassifierScorer:
    """Probability that a sequence classifier assigns to the aligned label(s).

    Score: `sum_{l in aligned} softmax(logits)_l`, in [0, 1]; higher = more aligned. Texts are scored as
    they are (no template), with the tokenizer's special tokens, right-padded in batches of similar length;
    the model pools as it was trained to (RoBERTa reads `<s>`, decoder classifiers their last non-pad token).
    Texts longer than `max_length` tokens are truncated and counted in `truncated` (and logged).

    Example:
        Labels (NEGATIVE, NEUTRAL, POSITIVE) with logits (0, ln 3, ln 4) have softmax (1/8, 3/8, 4/8):
        aligned POSITIVE scores 0.5; aligned NEUTRAL and POSITIVE (indices 1, 2) scores 0.875.
    """

    name = "classifier"

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        aligned: Sequence[int],
        batch_size: int = 16,
        max_length: int = 512,
        device: str = "auto",
    ) -> None:
        problem = getattr(model.config, "problem_type", None)
        if problem == "multi_label_classification":
            # Independent sigmoid labels: a softmax over them would be meaningless.
            raise UserError("classifier scorer: multi-label classifiers are not supported (softmax over labels)")
        self.device = resolve_device(device)
        self.model = model.to(self.device).eval()
        self.tokenizer = tokenizer
        self.aligned = tuple(aligned)
        self.aligned_names = tuple(str(model.config.id2label.get(i, i)) for i in self.aligned)
        self.batch_size = batch_size
        self.max_length = _effective_max_length(model, tokenizer, max_length)
        self.truncated = 0
        self.empty = 0
        self.scored = 0

    @classmethod
    def load(
        cls,
        source: str,
        labels: Sequence[str] = (),
        label_indices: Sequence[int] = (),
        *,
        batch_size: int = 16,
        max_length: int = 512,
        device: str = "auto",
        dtype: str | None = None,
        trust_remote_code: bool = False,
        allow_pickle: bool = False,
    ) -> "ClassifierScorer":
        """Load a classifier from a folder or hub id and pick its aligned labels (see `resolve_labels`)."""
        model, tokenizer = load_sequence_classifier(source, trust_remote_code=trust_remote_code, dtype=dtype,
                                                    allow_pickle=allow_pickle)
        aligned = resolve_labels(model.config.id2label, labels, label_indices)
        return cls(model, tokenizer, aligned, batch_size=batch_size, max_length=max_length, device=device)

    def describe(self) -> dict:
        """What the score means, for provenance files."""
        return {
            "name": self.name,
            "model": getattr(self.model.config, "_name_or_path", ""),
            "aligned_labels": dict(zip(map(str, self.aligned), self.aligned_names)),
            "range": [0.0, 1.0],
            "max_length": self.max_length,
            "truncated": self.truncated,
            "empty": self.empty,
            "scored": self.scored,
        }

    def probabilities(self, texts: Sequence[str]) -> list[list[float]]:
        """The full softmax over labels per text, (N, num_labels)."""
        import torch

        texts = list(texts)
        ids, truncated, empty = encode(self.tokenizer, texts, self.max_length)
        self.truncated += truncated
        self.empty += empty
        self.scored += len(texts)
        note_truncation(self.name, truncated, empty, len(texts), self.max_length)
        pad_token = pad_id(self.tokenizer)
        out: list[list[float]] = [[] for _ in texts]
        with torch.inference_mode():
            for batch in length_batches(ids, self.batch_size):
                input_ids, mask, _ = pad([ids[i] for i in batch], pad_token, side="right")  # (B, T)
                logits = self.model(input_ids=input_ids.to(self.device), attention_mask=mask.to(self.device)).logits
                probs = logits.float().softmax(-1)  # (B, num_labels)
                for i, row in zip(batch, probs.tolist()):
                    out[i] = row
        return out

    def score(self, texts: list[str]) -> list[float]:
        """Probability of the aligned label(s) per text, in [0, 1]."""
        return [sum(p[i] for i in self.aligned) for p in self.probabilities(texts)]


def _effective_max_length(model: Any, tokenizer: Any, requested: int) -> int:
    """The requested length, capped by what the tokenizer or position table allows (logged if capped)."""
    limits = [requested]
    tok_limit = getattr(tokenizer, "model_max_length", None)
    if isinstance(tok_limit, int) and tok_limit < _UNBOUNDED:
        limits.append(tok_limit)
    pos_limit = getattr(model.config, "max_position_embeddings", None)
    if isinstance(pos_limit, int):
        # RoBERTa-family position tables reserve the rows up to the pad id (2 rows for RoBERTa itself).
        offset = (model.config.pad_token_id or 0) + 1 if "roberta" in getattr(model.config, "model_type", "") else 0
        limits.append(pos_limit - offset)
    effective = min(limits)
    if effective < requested:
        log.warning("scorer classifier: max_length %d capped to the model's limit %d", requested, effective)
    return effective
