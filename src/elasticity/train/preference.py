"""Preference objectives for the one training loop: DPO, IPO, SimPO and KTO, each equal to TRL's loss.

A preference example is a `Pair`: one prompt with a chosen and a rejected response, tokenised as two SFT
examples that share the prompt's tokens. A step's loss is the mean of its loss terms (one per pair; KTO: one
per response), and the loop divides a step's summed terms by their count (`Pair.n_targets`), so micro-batches
and gradient accumulation leave the gradient unchanged and steps cut at pair counts keep nested runs nested.

The reference model is the model being trained as it starts (the aligned checkpoint for a perturbation, the
base for an alignment). Its log-probabilities are computed once, before the first step, and kept on disk in
the run (`reference_logps.pt`), so no second model is in memory while training and a resumed run reads them
back instead of recomputing them from a model that has moved.

With c, r the summed log-probabilities of the chosen and rejected responses under the policy, c0, r0 the
reference's, and |c|, |r| their token counts (TRL 1.16's losses; `tests/test_preference.py` checks each):

    dpo    -log sigmoid(beta * ((c - c0) - (r - r0)))                        DPOTrainer, loss_type sigmoid
    ipo    ((c - c0) / |c| - (r - r0) / |r| - 1 / (2 beta))^2                DPOTrainer, loss_type ipo
    simpo  -log sigmoid(beta * (c / |c| - r / |r|) - gamma)  (no reference)  CPOTrainer, loss_type simpo
    kto    chosen 1 - sigmoid(beta * (c - c0 - z)), rejected 1 - sigmoid(beta * (z - (r - r0)))   KTOTrainer
           z = max(0, mean (logp - logp0) over the step's mismatched pairs), without gradient: every response
           of the step, in the order [chosen..., rejected...], paired with the prompt of the next one (TRL's
           rotation of completions by one within a batch)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from elasticity.data.batching import Step, collate
from elasticity.data.tokenize import IGNORE, Example
from elasticity.errors import UserError
from elasticity.likelihood import token_scores

ALGORITHMS = ("sft", "dpo", "ipo", "simpo", "kto")  # the training objectives of rebound's two steps
PREFERENCE = ALGORITHMS[1:]
REFERENCE_FILE = "reference_logps.pt"


@dataclass(frozen=True)
class PreferenceConfig:
    """The preference objectives' settings (TRL's defaults)."""

    beta: float = 0.1  # dpo / kto: the pull toward the reference; ipo: its regulariser; simpo: the reward scale
    gamma: float = 0.5  # simpo: the target reward margin
    desirable_weight: float = 1.0  # kto: weight of the chosen responses' terms
    undesirable_weight: float = 1.0  # kto: weight of the rejected responses' terms

    def check(self) -> None:
        if not self.beta > 0:
            raise UserError(f"preference.beta must be > 0, got {self.beta}")
        if self.gamma < 0 or self.desirable_weight <= 0 or self.undesirable_weight <= 0:
            raise UserError("preference.gamma must be >= 0 and its weights > 0")


@dataclass(frozen=True)
class Pair:
    """One preference example; `n_targets` is the number of loss terms it adds to its step's mean."""

    chosen: Example
    rejected: Example
    terms: int = 1

    @property
    def input_ids(self) -> list[int]:  # only its length is read: buckets sort pairs by their total length
        return self.chosen.input_ids + self.rejected.input_ids

    @property
    def n_targets(self) -> int:
        return self.terms


def _split(ex: Example) -> tuple[list[int], list[int]]:
    """(prompt ids, response ids): the response starts at the first labelled token."""
    k = next((i for i, t in enumerate(ex.labels) if t != IGNORE), len(ex.labels))
    return ex.input_ids[:k], ex.input_ids[k:]


def mismatched(items: list[Example]) -> list[Example]:
    """KTO's KL sequences: item j's prompt with item j-1's response (cyclically)."""
    out = []
    for j, ex in enumerate(items):
        prompt, _ = _split(ex)
        _, response = _split(items[j - 1])
        out.append(Example(prompt + response, [IGNORE] * len(prompt) + response))
    return out


def sequence_logps(model, examples: list[Example], pad: int, device, batch_size: int = 32) -> torch.Tensor:
    """Summed response log-probabilities of each example under `model`, without gradient, float32 (N,)."""
    out = []
    with torch.no_grad():
        for s in range(0, len(examples), batch_size):
            batch = {k: v.to(device) for k, v in collate(examples[s:s + batch_size], pad).items()}
            nll = token_scores(model, batch["input_ids"], batch["labels"][:, 1:], batch["attention_mask"]).nll
            out.append(-nll.sum(1).float().cpu())
    return torch.cat(out) if out else torch.zeros(0)


class PreferenceLoss:
    """A preference objective for `train.loop.train`: pairs in, a step's mean loss out."""

    def __init__(self, algorithm: str, cfg: PreferenceConfig = PreferenceConfig()):
        if algorithm not in PREFERENCE:
            raise UserError(f"unknown preference objective '{algorithm}' (known: {', '.join(PREFERENCE)})")
        self.algorithm, self.cfg = algorithm, cfg
        self.ref: dict[str, torch.Tensor] = {}
        self.kl: dict[int, torch.Tensor] = {}  # step index -> its mismatched pairs' reference log-probs
        self._z = torch.zeros(())

    @property
    def uses_reference(self) -> bool:
        return self.algorithm != "simpo"

    @staticmethod
    def _step_items(pairs: list[Pair], step: Step) -> list[Example]:
        idx = [i for mb in step.micro_batches for i in mb]
        return [pairs[i].chosen for i in idx] + [pairs[i].rejected for i in idx]

    def setup(self, lm, pairs: list[Pair], steps: list[Step], pad: int, device, run, batch_size: int,
              is_main: bool) -> None:
        """The reference's log-probabilities of every pair (and KTO's KL sequences), read from the run if a
        previous session of it wrote them, else computed now from `lm` (the starting model) and written."""
        if not self.uses_reference:
            return
        path = run.file(REFERENCE_FILE)
        if path.exists():
            state = torch.load(path, map_location="cpu", weights_only=True)
        else:
            was_training = lm.training
            lm.eval()
            state = {"chosen": sequence_logps(lm, [p.chosen for p in pairs], pad, device, batch_size),
                     "rejected": sequence_logps(lm, [p.rejected for p in pairs], pad, device, batch_size)}
            if self.algorithm == "kto":
                state["kl"] = [sequence_logps(lm, mismatched(self._step_items(pairs, s)), pad, device, batch_size)
                               for s in steps]
            lm.train(was_training)
            if is_main:
                tmp = path.with_name(path.name + ".tmp")
                torch.save(state, tmp)
                tmp.replace(path)
        self.ref = {k: state[k] for k in ("chosen", "rejected")}
        self.kl = dict(enumerate(state.get("kl", [])))

    def begin_step(self, lm, pairs: list[Pair], step: Step, index: int, pad: int, device, batch_size: int) -> None:
        """KTO: the step's KL estimate z from the policy as the step starts (no gradient, as in TRL)."""
        if self.algorithm != "kto":
            return
        policy = sequence_logps(lm, mismatched(self._step_items(pairs, step)), pad, device, batch_size)
        self._z = (policy - self.kl[index]).mean().clamp(min=0)

    def micro(self, model, pairs: list[Pair], idx: list[int], pad: int, device):
        """(the sum of this micro-batch's loss terms, the same detached in float64, input tokens)."""
        n = len(idx)
        batch = {k: v.to(device) for k, v in collate([pairs[i].chosen for i in idx] +
                                                     [pairs[i].rejected for i in idx], pad).items()}
        nll = model(**batch)  # (2n, T-1): the wrapped objective's forward, so a data-parallel sync is armed
        logps = -nll.sum(1)
        lengths = (batch["labels"][:, 1:] != IGNORE).sum(1).clamp(min=1)
        c, r = logps[:n], logps[n:]
        terms = self.terms(c, r, lengths[:n], lengths[n:], idx)
        return terms.sum(), terms.detach().sum(dtype=torch.float64), int(batch["attention_mask"].sum())

    def terms(self, c, r, c_len, r_len, idx: list[int]) -> torch.Tensor:
        """The loss terms of these pairs from their policy log-probabilities."""
        beta, a = self.cfg.beta, self.algorithm
        if a == "simpo":
            return -F.logsigmoid(beta * (c / c_len - r / r_len) - self.cfg.gamma)
        c_ratio = c - self.ref["chosen"][idx].to(c.device)
        r_ratio = r - self.ref["rejected"][idx].to(r.device)
        if a == "dpo":
            return -F.logsigmoid(beta * (c_ratio - r_ratio))
        if a == "ipo":
            return (c_ratio / c_len - r_ratio / r_len - 1 / (2 * beta)) ** 2
        z = self._z.to(c.device)
        return torch.cat([self.cfg.desirable_weight * (1 - torch.sigmoid(beta * (c_ratio - z))),
                          self.cfg.undesirable_weight * (1 - torch.sigmoid(beta * (z - r_ratio)))])


def make_pairs(records: list[dict], tok, max_length: int, algorithm: str) -> list[Pair]:
    """Tokenise preference records (prompt, chosen, rejected) as pairs; KTO counts two terms per pair."""
    from elasticity.data.tokenize import encode_pair

    terms = 2 if algorithm == "kto" else 1
    return [Pair(encode_pair(tok, r["prompt"], r["chosen"], max_length),
                 encode_pair(tok, r["prompt"], r["rejected"], max_length), terms) for r in records]
