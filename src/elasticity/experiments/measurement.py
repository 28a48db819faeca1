"""What rebound measures at every grid point: behaviour score, KL to the base model, bits/token.

One `Evaluator` holds everything fixed across grid points (the scorer, the prompts, the tokenised evaluation
sets, the base model as the KL reference) and `measure(model)` returns one flat record:

    score, score_se     mean scorer output over prompts x samples; SE clustered by prompt (sd of the
                        per-prompt means / sqrt(prompts)), since samples of one prompt are not independent
    log_odds            empirical logit of the mean score over its `samples` texts (see elasticity_metrics)
    kl_response         KL(model || base) in nats per response token, teacher-forced on the held-out
                        positive and negative prompt/response pairs (response tokens and EOS only)
    bpt_positive, bpt_negative
                        response-only bits/token on the held-out positive / negative pairs
    bpt_<name>, kl_<name>
                        bits/token and KL(model || base) per token on each held-out pre-training text set
                        (every token of the document and its EOS is a target, as in training)

Teacher-forced numbers use the training loop's own tokenisation (`encode_pair`, `encode_text`) and
truncation length, so a bits/token here is the loss the training loop would report, divided by ln 2.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from elasticity.data.batching import collate
from elasticity.data.tokenize import IGNORE, Example, encode_pair, encode_text
from elasticity.experiments.elasticity_metrics import log_odds
from elasticity.generate import DecodingPolicy, generate

LN2 = math.log(2)
CACHE_FLOATS = 64 * 2**20  # 256 MB of float32 base log-probabilities at most


@torch.inference_mode()
def nll_and_kl(model, base, examples: list[Example], pad_id: int, batch_size: int = 32,
               cache: dict | None = None) -> tuple[float, float, int]:
    """Summed NLL (nats) of `model` and summed KL(model || base) over the target tokens, and their count.

    Example: if `base` is `model` itself the KL is exactly 0 and the NLL is the training loop's
    `evaluate` total. `cache` (a dict kept by the caller for these very examples) keeps the base's
    log-probabilities, so later calls run one model instead of two.
    """
    device = next(model.parameters()).device
    order = sorted(range(len(examples)), key=lambda i: len(examples[i].input_ids))
    nats, kl, n = 0.0, 0.0, 0
    for start in range(0, len(order), batch_size):
        batch = collate([examples[i] for i in order[start:start + batch_size]], pad_id)
        ids, mask = batch["input_ids"].to(device), batch["attention_mask"].to(device)
        targets = batch["labels"][:, 1:].to(device)  # (B, T-1)
        keep = targets != IGNORE
        logp = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float().log_softmax(-1)  # (B, T-1, V)
        nll = -logp.gather(-1, targets.clamp(min=0)[..., None])[..., 0]  # (B, T-1)
        nats += float((nll * keep).sum(dtype=torch.float64))
        if base is not None:
            logq = cache.get(start) if cache is not None else None
            if logq is None:  # the base may sit on another device than the model (e.g. after accelerate moved it)
                bdev = next(base.parameters()).device
                logq = base(input_ids=ids.to(bdev), attention_mask=mask.to(bdev)).logits[:, :-1].float()
                logq = logq.log_softmax(-1).to(device)
                if cache is not None:
                    cache[start] = logq
            kl += float(((logp.exp() * (logp - logq)).sum(-1) * keep).sum(dtype=torch.float64))
        n += int(keep.sum())
    return nats, kl, n


def clustered_mean_se(values: list[float], groups: list[int]) -> tuple[float, float]:
    """Mean of all values and the standard error of the mean of per-group means.

    Example: values (1, 0, 1, 1) in groups (0, 0, 1, 1): group means 0.5 and 1.0, mean 0.75,
    SE = sd(0.5, 1.0) / sqrt(2) = 0.35355 / 1.41421 = 0.25.
    """
    by: dict[int, list[float]] = {}
    for v, g in zip(values, groups):
        by.setdefault(g, []).append(v)
    means = np.array([np.mean(v) for v in by.values()])
    se = float(np.std(means, ddof=1) / math.sqrt(len(means))) if len(means) > 1 else math.nan
    return float(np.mean(values)), se


@dataclass
class Evaluator:
    """The fixed measuring kit of one rebound experiment.

    Attributes:
        scorer: behaviour scorer (higher = more aligned).
        tok: the tokenizer every model shares.
        base: the base model (KL reference), in eval mode.
        prompts: evaluation prompts.
        policy: decoding policy of the samples.
        pairs: named held-out prompt/response sets ("positive", "negative").
        texts: named held-out pre-training text sets.
        max_length: truncation length of teacher-forced examples (the training one).
        score_prompt: score prompt + response (True) or the response alone.
        batch_size: sequences per teacher-forced forward pass.
    """

    scorer: object
    tok: object
    base: object
    prompts: list[str]
    policy: DecodingPolicy
    pairs: dict[str, list[dict]]
    texts: dict[str, list[str]]
    max_length: int
    score_prompt: bool = True
    batch_size: int = 32

    def __post_init__(self) -> None:
        self._pairs = {k: [encode_pair(self.tok, r["prompt"], r["response"], self.max_length) for r in v]
                       for k, v in self.pairs.items()}
        self._texts = {k: [encode_text(self.tok, t, self.max_length) for t in v] for k, v in self.texts.items()}
        self.truncated = sum(ex.truncated for v in [*self._pairs.values(), *self._texts.values()] for ex in v)
        self.pad_id = self.tok.pad_token_id if self.tok.pad_token_id is not None else self.tok.eos_token_id
        # The base's log-probabilities on the fixed sets are the same at every grid point: keep them if they fit
        # in CACHE_FLOATS (a tiny model's ~10^7 floats), else recompute them (a 7B model's vocabulary would not).
        positions = sum(len(ex.input_ids) for v in [*self._pairs.values(), *self._texts.values()] for ex in v)
        vocab = self.base.get_output_embeddings().weight.shape[0] if self.base is not None else 0
        self._cache = {} if positions * vocab <= CACHE_FLOATS else None

    def _cached(self, name: str) -> dict | None:
        return None if self._cache is None else self._cache.setdefault(name, {})

    def measure(self, model, with_samples: bool = False) -> dict:
        """One record of every measurement for `model` (restored to its train/eval mode afterwards)."""
        was_training = model.training
        model.eval()
        try:
            record = self._measure(model)
            samples = record.pop("_samples")
        finally:
            model.train(was_training)
        return (record, samples) if with_samples else record

    def _measure(self, model) -> dict:
        samples = generate(model, self.tok, self.prompts, self.policy)
        texts = [(s["prompt"] + s["response"]) if self.score_prompt else s["response"] for s in samples]
        scores = [float(v) for v in self.scorer.score(texts)]
        mean, se = clustered_mean_se(scores, [s["prompt_index"] for s in samples])
        rec = {"score": mean, "score_se": se, "log_odds": log_odds(mean, len(scores)), "samples": len(scores),
               "finished_share": float(np.mean([s["finished"] for s in samples])),
               "new_tokens": float(np.mean([s["new_tokens"] for s in samples]))}
        kl_nats, kl_tokens = 0.0, 0
        for name, examples in self._pairs.items():
            nats, kl, n = nll_and_kl(model, self.base, examples, self.pad_id, self.batch_size, self._cached(name))
            rec[f"bpt_{name}"] = nats / n / LN2
            kl_nats, kl_tokens = kl_nats + kl, kl_tokens + n
        rec["kl_response"] = kl_nats / kl_tokens if kl_tokens else math.nan
        for name, examples in self._texts.items():
            nats, kl, n = nll_and_kl(model, self.base, examples, self.pad_id, self.batch_size,
                                     self._cached("text:" + name))
            rec[f"bpt_{name}"] = nats / n / LN2
            rec[f"kl_{name}"] = kl / n
        for s, v in zip(samples, scores):
            s["score"] = v
        rec["_samples"] = samples
        return rec
