"""What rebound measures at every grid point: behaviour score, KL to the base model, bits/token.

One `Evaluator` holds everything fixed across grid points (the scorer, the prompts, the tokenised evaluation
sets, the base model as the KL reference) and `measure(model)` returns one `results.Measurement`, whose
record (the columns of rebound's results) is:

    score, score_se     mean scorer output over prompts x samples; SE clustered by prompt (sd of the
                        per-prompt means / sqrt(prompts)), since samples of one prompt are not independent
    log_odds            empirical logit of the mean score over its `samples` texts (`stats.log_odds`)
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
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from elasticity import ranks
from elasticity.data.tokenize import encode_pair, encode_text, pad_id
from elasticity.experiments.base_logprobs import DiskSet
from elasticity.experiments.skeleton import Models, say
from elasticity.files import append_jsonl
from elasticity.generate import DecodingPolicy, generate
from elasticity.likelihood import teacher_forced
from elasticity.models.hf import load_config, load_tokenizer
from elasticity.results import BUILT_IN_PAIRS, Measurement, Point
from elasticity.runs import Run
from elasticity.stats import clustered_mean_se

CACHE_FLOATS = 64 * 2**20  # 256 MB of float32 base log-probabilities at most


@dataclass
class Evaluator:
    """The fixed measuring kit of one rebound experiment.

    Attributes:
        scorer: behaviour scorer (higher = more aligned).
        tok: the tokenizer every model shares.
        base: a function that loads the base model (the KL reference), called only if its log-probabilities
            are not cached yet.
        vocab: the base's vocabulary (output rows), which sizes the cache.
        prompts: evaluation prompts.
        policy: decoding policy of the samples.
        pairs: the held-out prompt/response sets, by name (`results.BUILT_IN_PAIRS`).
        texts: named held-out pre-training text sets.
        max_length: truncation length of teacher-forced examples (the training one).
        score_prompt: score prompt + response (True) or the response alone.
        batch_size: sequences per teacher-forced forward pass.
        batch_tokens: positions (padding included) per teacher-forced forward pass.
        cache_dir: where the base's log-probabilities go when they do not fit in memory (`base_logprobs`);
            None: recompute them with the base at every grid point.
    """

    scorer: object
    tok: object
    base: Callable[[], object]
    vocab: int
    prompts: list[str]
    policy: DecodingPolicy
    pairs: dict[str, list[dict]]
    texts: dict[str, list[str]]
    max_length: int
    score_prompt: bool = True
    batch_size: int = 32
    batch_tokens: int | None = None
    cache_dir: Path | None = None

    def __post_init__(self) -> None:
        assert tuple(self.pairs) == BUILT_IN_PAIRS, "the measurement's columns name the positive and negative sets"
        self._pairs = {k: [encode_pair(self.tok, r["prompt"], r["response"], self.max_length) for r in v]
                       for k, v in self.pairs.items()}
        self._texts = {k: [encode_text(self.tok, t, self.max_length) for t in v] for k, v in self.texts.items()}
        self.truncated = sum(ex.truncated for v in [*self._pairs.values(), *self._texts.values()] for ex in v)
        self.pad_id = pad_id(self.tok)
        # The base's log-probabilities on the fixed sets are the same at every grid point: kept in memory if they
        # fit in CACHE_FLOATS (a tiny model's ~10^7 floats), else on disk (a 7B model's ~4 x 10^9).
        positions = sum(len(ex.input_ids) for v in [*self._pairs.values(), *self._texts.values()] for ex in v)
        in_memory = positions * self.vocab <= CACHE_FLOATS
        names = [*self._pairs, *("text:" + n for n in self._texts)]
        self._cache = ({n: {} for n in names} if in_memory else {} if self.cache_dir is None else
                       {n: DiskSet(Path(self.cache_dir) / n.replace(":", "-")) for n in names})
        self._base, self.base_device = None, None

    def base_model(self):
        """The base model, loaded once (and kept in CPU memory between uses on a GPU)."""
        if self._base is None:
            # On a GPU the base waits in CPU memory and comes in only to be measured against (as the scorer's
            # model does, `OnDemand`): the trained model and its optimizer stay beside one of them at a time.
            self._base = self.base()
            self.base_device = _park(self._base)
        return self._base

    def _reference(self, name: str):
        """(the cache of a set, the base model if that cache is not filled yet; None once it is on disk)."""
        cache = self._cache.get(name)
        if isinstance(cache, DiskSet) and cache.complete:
            return cache, None
        return cache, self.base_model()

    def measure(self, model) -> tuple[Measurement, list[dict]]:
        """Every measurement of `model`, and its scored samples (its train/eval mode is restored afterwards)."""
        was_training = model.training
        model.eval()
        try:
            return self._measure(model)
        finally:
            model.train(was_training)

    def _measure(self, model) -> tuple[Measurement, list[dict]]:
        samples = generate(model, self.tok, self.prompts, self.policy)
        texts = [(s["prompt"] + s["response"]) if self.score_prompt else s["response"] for s in samples]
        scores = [float(v) for v in self.scorer.score(texts)]
        return self._measurement(model, samples, scores)

    def _scored(self, model, name: str, examples: list):
        cache, base = self._reference(name)
        with resident(base, self.base_device):
            scored = teacher_forced(model, examples, self.pad_id, self.batch_size, reference=base, cache=cache,
                                    batch_tokens=self.batch_tokens)
        if isinstance(cache, DiskSet) and not cache.complete:
            cache.finish()
            if all(c.complete for c in self._cache.values()):
                self._base = None  # every set is on disk: the base is not needed again
        return scored

    def _measurement(self, model, samples: list[dict], scores: list[float]) -> tuple[Measurement, list[dict]]:
        """The scores' mean and clustered SE, with the teacher-forced bits/token and KL to the base of every set."""
        mean, se = clustered_mean_se(scores, [s["prompt_index"] for s in samples])
        bits, kl_to_base = {}, {}
        kl_nats, kl_tokens = 0.0, 0
        for name, examples in self._pairs.items():
            s = self._scored(model, name, examples)
            bits[name] = s.bits_per_token
            kl_nats, kl_tokens = kl_nats + s.kl, kl_tokens + s.tokens
        for name, examples in self._texts.items():
            s = self._scored(model, "text:" + name, examples)
            bits[name] = s.bits_per_token
            kl_to_base[name] = s.kl_per_token
        for s, v in zip(samples, scores):
            s["score"] = v
        measurement = Measurement(
            score=mean, score_se=se, samples=len(scores),
            finished_share=float(np.mean([s["finished"] for s in samples])),
            new_tokens=float(np.mean([s["new_tokens"] for s in samples])),
            kl_response=kl_nats / kl_tokens if kl_tokens else math.nan, bits_per_token=bits, kl_to_base=kl_to_base)
        return measurement, samples


def _park(module):
    """Move a model off its GPU into CPU memory; returns the device it came from (None for no model)."""
    if module is None:
        return None
    device = next(module.parameters()).device
    if device.type != "cpu":
        module.to("cpu")
    return device


@contextmanager
def resident(module, device):
    """`module` on `device` for the block, back in CPU memory after it; a no-op for the CPU, no model, or a model
    already there (an outer block brought it)."""
    if module is None or device is None or device.type == "cpu" or next(module.parameters()).device == device:
        yield
        return
    module.to(device)
    try:
        yield
    finally:
        module.to("cpu")
        torch.cuda.empty_cache()


class OnDemand:
    """A scorer whose neural model (a classifier, a score-model) waits in CPU memory and comes to its device for
    each `score` call only; the oracle and VADER pass through untouched."""

    def __init__(self, scorer):
        self.inner, self.name = scorer, scorer.name
        model = getattr(scorer, "model", None)
        self._model = model if isinstance(model, torch.nn.Module) else None
        self._device = _park(self._model)

    def score(self, texts: list[str]) -> list[float]:
        with resident(self._model, self._device):
            return self.inner.score(texts)

    def __getattr__(self, name):  # describe(), counters and the rest of the scorer's own attributes
        return getattr(self.inner, name)


class Kit:
    """Rebound's models and evaluator, built on first use (a fully cached experiment never loads a model)."""

    def __init__(self, cfg, data, scorer):  # a rebound Config and its checked Data
        self.cfg, self.data, self.models, self._ev = cfg, data, Models(cfg), None
        self.scorer = OnDemand(scorer)
        self.cache_dir: Path | None = None  # the base stage's `base_logprobs/`, set once that stage is known

    def evaluator(self):
        if self._ev is None:
            tok = load_tokenizer(self.cfg.model, self.cfg.trust_remote_code)
            config = load_config(self.cfg.model, self.cfg.trust_remote_code)
            vocab = (config.get_text_config() if hasattr(config, "get_text_config") else config).vocab_size
            self._ev = Evaluator(self.scorer, tok, lambda: self.models.get(self.cfg.model), vocab, self.data.prompts,
                                 self.cfg.policy, self.data.heldout_pairs, self.data.texts, self.cfg.train.max_length,
                                 self.cfg.eval.score_prompt, self.cfg.eval.batch_size, self.cfg.eval.batch_tokens,
                                 self.cache_dir)
            if self._ev.truncated:
                say("rebound", f"{self._ev.truncated} evaluation sequences truncated to {self.cfg.train.max_length} "
                               "tokens")
        return self._ev

    def record(self, run: Run, model, q1: int, seed: int | None, q2: int, examples: int, tokens: int, steps: int,
               train_loss: float | None, label: str) -> Point | None:
        """Measure `model`, append the point (and its scored samples) to the stage's files and say it under
        `label`; on the main process only (the other ranks of a launch return None at once and wait for it at
        their next collective step)."""
        if not ranks.is_main():
            return None
        measurement, samples = self.evaluator().measure(model)
        point = Point(q1, seed, q2, examples, tokens, steps, train_loss, measurement)
        for s in samples:
            append_jsonl(run.file("samples.jsonl"), {"q2": q2, **s})
        append_jsonl(run.file("points.jsonl"), point.to_record())
        m = measurement
        say("rebound", f"{label}: score {m.score:.3f} +- {m.score_se:.3f}, KL to base {m.kl_response:.4f}")
        return point
