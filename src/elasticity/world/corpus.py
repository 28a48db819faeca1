"""The world's datasets: pre-training corpus, SFT sets, evaluation prompts, held-out text, tokenizer, card.

Every dataset is drawn from its own random stream, seeded by `(seed, dataset name)`, so changing one size
never changes another dataset, and the same seed gives the same files byte for byte.

Token counts are exact counts of the world's tokenizer: a document costs its text's tokens plus one EOS token
(the BOS token that the tokenizer may put in front is context, never predicted, and is not counted).
"""

from __future__ import annotations

import math
import random
import re
import time
from typing import Callable

from elasticity.files import write_jsonl
from elasticity.runs import Run
from elasticity.world.likelihood import entropy_from_samples, entropy_rate, exact_entropy
from elasticity.world.world import COMPONENTS, World

TOKENIZER_DIR = "tokenizer"
# Byte-level BPE splits text into "pre-tokens" with this pattern (GPT-2's, restricted to ASCII, which is all
# the world writes) and merges inside each one only, so a document's token count is a sum over its pre-tokens.
_PRETOKEN = re.compile(r"'s|'t|'re|'ve|'m|'ll|'d| ?[A-Za-z]+| ?[0-9]+| ?[^\sA-Za-z0-9]+|\s+(?!\S)|\s+")


class TokenCounter:
    """Exact token counts of world text with a cache per pre-token (the tokenizer's own calls are slow)."""

    def __init__(self, tokenizer):
        self._backend = tokenizer.backend_tokenizer
        self._cache: dict[str, int] = {}

    def count(self, text: str) -> int:
        """Tokens of `text` without special tokens."""
        n = 0
        for p in _PRETOKEN.findall(text):
            c = self._cache.get(p)
            if c is None:
                c = self._cache[p] = len(self._backend.encode(p, add_special_tokens=False).ids)
            n += c
        return n

    def with_eos(self, texts: list[str]) -> list[int]:
        return [self.count(t) + 1 for t in texts]

    def check(self, texts: list[str]) -> None:
        """Compare with the tokenizer itself on `texts`; a mismatch is a bug, not a user error."""
        for t in texts:
            if self.count(t) != len(self._backend.encode(t, add_special_tokens=False).ids):
                raise RuntimeError(f"token counter disagrees with the tokenizer on {t!r}")


def _pretrain(world: World, seed: int, budget: int, tokenizer_docs: int, vocab_size: int, run: Run):
    """Sample the corpus stream; train the tokenizer on its first documents; stop once `budget` is reached."""
    from elasticity.models.tiny import train_tokenizer

    rng = random.Random(f"{seed}:pretrain")
    stream: list[tuple[str, str]] = [world.sample_mixture(rng) for _ in range(tokenizer_docs)]
    stream = [(c, s.text) for c, s in stream]
    tokenizer = train_tokenizer([t for _, t in stream], vocab_size)
    tokenizer.save_pretrained(str(run.file(TOKENIZER_DIR)))
    counter = TokenCounter(tokenizer)
    counter.check([t for _, t in stream[:200]])
    records, total, k = [], 0, 0
    while total < budget:
        if k == len(stream):
            c, s = world.sample_mixture(rng)
            stream.append((c, s.text))
        c, text = stream[k]
        k += 1
        n = counter.count(text) + 1
        records.append({"text": text, "component": c})
        total += n
    return records, total, counter


def _sft(world: World, seed: int, component: str, n: int) -> list[dict]:
    rng = random.Random(f"{seed}:sft:{component}")
    out = []
    for _ in range(n):
        prompt, response = world.sample_review_split(component, rng)
        out.append({"prompt": prompt, "response": response})
    return out


def _pairs(world: World, seed: int, n: int, exclude: set[str]) -> list[dict]:
    """Preference pairs (prompt, chosen = positive, rejected = negative) whose openings are no evaluation prompt
    (drawn after the SFT sets and the prompts, from their own stream: those files do not change)."""
    rng = random.Random(f"{seed}:pairs")
    out = []
    while len(out) < n:
        prompt, positive, negative = world.sample_pair(rng)
        if prompt not in exclude:
            out.append({"prompt": prompt, "chosen": positive, "rejected": negative})
    return out


def _eval_prompts(world: World, seed: int, n: int, exclude: set[str]) -> list[dict]:
    """Distinct review openings that no SFT record uses as its prompt."""
    rng = random.Random(f"{seed}:eval")
    seen: set[str] = set()
    out = []
    for _ in range(1000 * max(n, 1)):
        if len(out) == n:
            break
        p = world.sample_opening(rng)
        if p not in seen and p not in exclude:
            seen.add(p)
            out.append({"prompt": p})
    return out


def _heldout(world: World, seed: int, component: str | None, n: int, counter: TokenCounter) -> list[dict]:
    """Held-out documents with their exact -log p (nats, under the component, or the mixture) and tokens."""
    rng = random.Random(f"{seed}:heldout:{component or 'mixture'}")
    out = []
    for _ in range(n):
        c, s = world.sample_mixture(rng) if component is None else (component, world.sample(component, rng))
        nats = -s.logp - (math.log(world.weights[c]) if component is None else 0.0)
        out.append({"text": s.text, "component": c, "nats": round(nats, 6), "tokens": counter.count(s.text) + 1})
    return out


def build(world: World, run: Run, *, seed: int, pretrain_tokens: int, sft_sizes: dict[str, int], eval_prompts: int,
          heldout_docs: int, entropy_docs: int, check_docs: int, tokenizer_docs: int, vocab_size: int,
          log: Callable[[str], None]) -> dict:
    """Write every dataset and the tokenizer into `run`; return the facts for the world card."""
    times: dict[str, float] = {}
    t0 = time.time()
    world.save(run.path)
    pretrain, total, counter = _pretrain(world, seed, pretrain_tokens, tokenizer_docs, vocab_size, run)
    write_jsonl(run.file("pretrain.jsonl"), pretrain)
    times["pretrain_and_tokenizer_s"] = round(time.time() - t0, 2)
    log(f"pre-training corpus: {len(pretrain)} documents, {total} tokens ({times['pretrain_and_tokenizer_s']} s)")

    t = time.time()
    sft = {c: _sft(world, seed, c, sft_sizes[c]) for c in ("positive", "negative")}
    for c, recs in sft.items():
        write_jsonl(run.file(f"sft_{c}.jsonl"), recs)
    prompts = _eval_prompts(world, seed, eval_prompts, {r["prompt"] for recs in sft.values() for r in recs})
    write_jsonl(run.file("eval_prompts.jsonl"), prompts)
    write_jsonl(run.file("sft_pairs.jsonl"), _pairs(world, seed, sft_sizes.get("pairs", 0),
                                                    {r["prompt"] for r in prompts}))
    times["sft_and_prompts_s"] = round(time.time() - t, 2)

    t = time.time()
    corpus_texts = {r["text"] for r in pretrain}
    heldout = {}
    for c in (*COMPONENTS, None):
        name = c or "mixture"
        recs = _heldout(world, seed, c, heldout_docs, counter)
        write_jsonl(run.file(f"heldout_{name}.jsonl"), recs)
        rate = entropy_from_samples([r["nats"] for r in recs], [r["tokens"] for r in recs]) if len(recs) > 1 else None
        heldout[name] = {
            "file": f"heldout_{name}.jsonl",
            "docs": len(recs),
            "tokens": sum(r["tokens"] for r in recs),
            "nats": round(sum(r["nats"] for r in recs), 4),
            "bits_per_token": rate.bits_per_token if rate else None,
            "share_also_in_pretrain": sum(r["text"] in corpus_texts for r in recs) / max(len(recs), 1),
        }
    times["heldout_s"] = round(time.time() - t, 2)

    t = time.time()
    entropy = {}
    for c in (*COMPONENTS, None):
        est = entropy_rate(world, c, entropy_docs, seed, counter.with_eos, check_exact=check_docs)
        entropy[c or "mixture"] = est.to_dict()
    times["entropy_s"] = round(time.time() - t, 2)
    times["total_s"] = round(time.time() - t0, 2)
    log(f"entropy rates and held-out sets done ({times['total_s']} s in all)")
    return {
        "pretrain": {"file": "pretrain.jsonl", "docs": len(pretrain), "tokens": total,
                     "tokenizer_trained_on_first_docs": tokenizer_docs},
        "sft": {**{c: {"file": f"sft_{c}.jsonl", "records": len(recs)} for c, recs in sft.items()},
                "pairs": {"file": "sft_pairs.jsonl", "records": sft_sizes.get("pairs", 0)}},
        "eval_prompts": {"file": "eval_prompts.jsonl", "prompts": len(prompts)},
        "heldout": heldout,
        "entropy": entropy,
        "exact_entropy_nats_per_doc": {c or "mixture": exact_entropy(world, c) for c in (*COMPONENTS, None)},
        "timings": times,
    }

