"""`elasticity world`: build the embedded world's datasets, tokenizer and world card in a run directory.

    runs/world-<hash>/
        grammar.json            every rule of the world (the oracle reads it)
        world_card.json         components, mixture weights, true entropy rates (with SE), sizes, timings
        tokenizer/              byte-level BPE trained on the corpus (`save_pretrained`)
        pretrain.jsonl          {"text", "component"}: documents of the mixture, N tokens in all (EOS counted)
        sft_positive.jsonl      {"prompt", "response"}: sentiment-free review opening / rest of a positive review
        sft_negative.jsonl      the same for negative reviews
        eval_prompts.jsonl      {"prompt"}: distinct held-out review openings (no SFT record uses them)
        heldout_<c>.jsonl       {"text", "component", "nats", "tokens"} per component and for the mixture:
                                documents with their exact -log p and token count (EOS counted)
"""

from __future__ import annotations

import hashlib
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

from elasticity.config import to_dict
from elasticity.errors import UserError
from elasticity.runs import Run, run_stage
from elasticity.world import corpus
from elasticity.world.world import CARD_FILE, COMPONENTS, World, normalise_weights

DESCRIPTIONS = {
    "neutral": "factual pieces on everyday topics (a town, the weather, a recipe, a train line, a film's facts, "
               "a garden); no opinion words",
    "positive": "positive movie reviews: a sentiment-free opening (what was watched, with whom; optionally the "
                "plot), a verdict, aspect sentences in a fixed order, an optional recommendation, and a closing "
                "rating of six to ten out of ten",
    "negative": "negative movie reviews: the same openings and structure, negative words, and a closing rating "
                "of one to five out of ten",
}
STRUCTURE = (
    "word choice: Zipf-Mandelbrot masses (r + b)^-a over every rank-ordered word list; paired slots never repeat",
    "sentence templates: Zipf masses over each sentence type's templates",
    "document latents shown in every sentence they touch: sentiment, intensity (adjectives, verdict, rating "
    "number), genre (title, genre word, genre aspects, recommendation), aspect order; a neutral piece's topic, "
    "and a town's name repeated at its end",
)


@dataclass(frozen=True)
class Mixture:
    """Mixture weights of the pre-training corpus (scaled to sum to 1)."""

    neutral: float = 0.5  # factual pieces on everyday topics
    positive: float = 0.2  # positive movie reviews
    negative: float = 0.3  # negative movie reviews


@dataclass(frozen=True)
class Sizes:
    """How much of everything to write."""

    pretrain_tokens: int = 3_000_000  # pre-training corpus size in tokens of the world's tokenizer (EOS counted)
    sft_positive: int = 5000  # positive review (opening, rest) pairs
    sft_negative: int = 5000  # negative review pairs
    sft_pairs: int = 4000  # preference pairs: one opening (never an evaluation prompt), continued both ways
    eval_prompts: int = 200  # distinct held-out review openings that no SFT record uses
    heldout_docs: int = 500  # per component, and for the mixture
    entropy_docs: int = 2000  # sampled documents per entropy-rate estimate
    check_docs: int = 100  # of those, re-parsed to check that sampled log-probs are the exact ones
    tokenizer_docs: int = 10000  # the tokenizer is trained on the corpus stream's first documents


@dataclass(frozen=True)
class Config:
    """`elasticity world`: the world's grammar shape, mixture and sizes."""

    seed: int = 0  # every sample of the world; the same seed gives byte-identical files
    mixture: Mixture = field(default_factory=Mixture)
    sizes: Sizes = field(default_factory=Sizes)
    zipf_a: float = 1.1  # Zipf-Mandelbrot exponent of every rank-ordered list
    zipf_b: float = 1.0  # Zipf-Mandelbrot offset
    vocab_size: int = 1024  # BPE vocabulary of the world's tokenizer


def validate(cfg: Config) -> dict[str, float]:
    """Check what a user can get wrong; return the normalised mixture weights."""
    weights = normalise_weights(to_dict(cfg.mixture))
    s = cfg.sizes
    if s.pretrain_tokens <= 0:
        raise UserError(f"sizes.pretrain_tokens must be a positive number of tokens, got {s.pretrain_tokens}")
    for name in ("sft_positive", "sft_negative", "eval_prompts", "heldout_docs"):  # every file is read downstream
        if getattr(s, name) < 1:
            raise UserError(f"sizes.{name} must be >= 1, got {getattr(s, name)}")
    if s.check_docs < 0:
        raise UserError(f"sizes.check_docs must be zero or more, got {s.check_docs}")
    for name in ("entropy_docs", "tokenizer_docs"):
        if getattr(s, name) < 2:
            raise UserError(f"sizes.{name} must be at least 2, got {getattr(s, name)}")
    if cfg.zipf_a <= 0 or cfg.zipf_b <= -1:
        raise UserError(f"zipf_a must be > 0 and zipf_b > -1 (masses (r + b)^-a, r >= 1), got {cfg.zipf_a}, "
                        f"{cfg.zipf_b}")
    if not 300 <= cfg.vocab_size <= 65536:
        raise UserError(f"vocab_size must be between 300 and 65536 (256 bytes + merges), got {cfg.vocab_size}")
    return weights


def _fingerprint(world: World) -> str:
    return hashlib.sha256(json.dumps(world.grammar.to_json(), sort_keys=True).encode()).hexdigest()


def build_world(cfg: Config, runs_root: Path) -> Run:
    """Build (or reuse) the world run for `cfg`; returns the finished run."""
    weights = validate(cfg)
    world = World.build(weights, cfg.zipf_a, cfg.zipf_b)
    sha = _fingerprint(world)

    def work(run: Run) -> dict:
        facts = corpus.build(
            world, run, seed=cfg.seed, pretrain_tokens=cfg.sizes.pretrain_tokens,
            sft_sizes={"positive": cfg.sizes.sft_positive, "negative": cfg.sizes.sft_negative,
                       "pairs": cfg.sizes.sft_pairs},
            eval_prompts=cfg.sizes.eval_prompts, heldout_docs=cfg.sizes.heldout_docs,
            entropy_docs=cfg.sizes.entropy_docs, check_docs=cfg.sizes.check_docs,
            tokenizer_docs=cfg.sizes.tokenizer_docs, vocab_size=cfg.vocab_size,
            log=lambda m: print(f"[world] {m}", file=sys.stderr),
        )
        vocab = set().union(*(world.grammar.terminals(f"${c}") for c in COMPONENTS))
        card = {
            "components": {c: {"description": DESCRIPTIONS[c], "weight": weights[c],
                               "entropy": facts["entropy"][c],
                               "exact_nats_per_doc": facts["exact_entropy_nats_per_doc"][c]} for c in COMPONENTS},
            "mixture_weights": weights,
            "mixture_entropy": dict(facts["entropy"]["mixture"],
                                    exact_nats_per_doc=facts["exact_entropy_nats_per_doc"]["mixture"]),
            "positive_share_of_reviews": world.positive_share_of_reviews,
            "structure": list(STRUCTURE),
            "zipf": {"a": cfg.zipf_a, "b": cfg.zipf_b},
            "grammar": {"file": "grammar.json", "sha256": sha, "nonterminals": len(world.grammar.rules),
                        "rules": sum(len(a) for a in world.grammar.rules.values()),
                        "surface_tokens": len(vocab), "words": len({t.lower() for t in vocab if t.isalpha()})},
            "tokenizer": {"dir": corpus.TOKENIZER_DIR, "vocab_size": cfg.vocab_size,
                          "tokens_counted": "text tokens + 1 EOS per document (a leading BOS is not counted)"},
            "pretrain": facts["pretrain"],
            "sft": facts["sft"],
            "eval_prompts": facts["eval_prompts"],
            "heldout": facts["heldout"],
            "seed": cfg.seed,
            "timings": facts["timings"],
        }
        run.write_json(CARD_FILE, card)
        return {"timings": facts["timings"]}

    # The grammar's fingerprint is an input: a changed lexicon is a different world, never a reused run.
    return run_stage(runs_root, "world", cfg, {"grammar_sha256": f"sha256:{sha[:16]}"}, work, seed=cfg.seed)


def run(cfg: Config, runs_root: Path) -> None:
    """CLI entry: build the world and print its run directory."""
    world_run = build_world(cfg, runs_root)
    card = json.loads(world_run.file(CARD_FILE).read_text())
    for c in COMPONENTS:
        e = card["components"][c]["entropy"]
        print(f"[world] {c:8s} weight {card['components'][c]['weight']:.2f}  true entropy "
              f"{e['bits_per_token']:.4f} +- {e['bits_per_token_se']:.4f} bits/token, "
              f"{e['bits_per_doc']:.2f} bits/doc", file=sys.stderr)
    print(world_run.path)
