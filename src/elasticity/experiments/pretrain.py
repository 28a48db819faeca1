"""`elasticity pretrain`: pre-train tiny models on the embedded world, cached, and report how well they learned it.

For each size preset the model is trained from scratch on the world's corpus with the one training loop
(a `train` run directory, reused when it exists), with checkpoints at several pre-training token counts
(the paper's pre-training-volume axis). The learning rate is constant after a short warm-up, so the
checkpoint at N tokens *is* a model pre-trained on N tokens, not a snapshot of a longer cosine schedule.

The report (a `pretrain-report` run) holds, per model and checkpoint, held-out bits/token on every
component beside the component's true entropy rate (the gap is what the model has not learned), and for the
largest-volume model of the first size: oracle-scored samples from the held-out review openings (the positive
rate against the rate the mixture implies) and the sentiment consistency of its reviews.
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path

from elasticity.data.tokenize import IGNORE, Example, encode_text, pack_blocks
from elasticity.errors import UserError
from elasticity.files import write_jsonl
from elasticity.generate import DecodingPolicy, generate
from elasticity.likelihood import teacher_forced
from elasticity.models.hf import load_causal_lm
from elasticity.models.spec import ModelConfig
from elasticity.models.tiny import check_size
from elasticity.runs import Run, run_stage
from elasticity.stats import LN2
from elasticity.train.command import Config as TrainCommand
from elasticity.train.command import train_stage
from elasticity.train.loop import TrainConfig
from elasticity.world.command import Config as WorldConfig
from elasticity.world.command import build_world
from elasticity.world.consistency import consistency_report
from elasticity.world.oracle import load_oracle
from elasticity.world.world import CARD_FILE, COMPONENTS

PRETRAIN = TrainConfig(
    lr=2e-3, schedule="constant", warmup_steps=50, batch_size=32, max_length=128, weight_decay=0.0,
    max_grad_norm=1.0, seed=0, log_every=10,
)


@dataclass(frozen=True)
class Config:
    world: WorldConfig = field(default_factory=WorldConfig)
    sizes: tuple[str, ...] = ("1m",)  # model size presets; the first is the default model
    lrs: tuple[float, ...] = ()  # learning rate per size, in the order of sizes (the ladder's recipes); empty: train.lr
    tokens: int = 0  # training tokens per model; 0 = the whole corpus once
    checkpoint_tokens: tuple[int, ...] = (250_000, 500_000, 1_000_000, 2_000_000)  # keep these pre-training volumes
    train: TrainConfig = field(default_factory=lambda: PRETRAIN)
    heldout_docs: int = 300  # documents per component scored for the table
    samples: DecodingPolicy = field(default_factory=lambda: DecodingPolicy(temperature=1.0, max_new_tokens=160))


def check(cfg: Config) -> None:
    """Reject a pre-training no run can do, naming the key."""
    for size in cfg.sizes:
        check_size(size)
    if not cfg.sizes:
        raise UserError("sizes must name at least one model size preset")
    if len(set(cfg.sizes)) < len(cfg.sizes):
        raise UserError(f"sizes repeats {next(s for s in cfg.sizes if cfg.sizes.count(s) > 1)}; give each size once")
    if cfg.lrs and (len(cfg.lrs) != len(cfg.sizes) or min(cfg.lrs) <= 0):
        raise UserError(f"lrs must give one positive learning rate per size ({len(cfg.sizes)}: "
                        f"{', '.join(cfg.sizes)}), got {list(cfg.lrs)}")
    cfg.train.check("train")
    if cfg.tokens < 0 or cfg.heldout_docs < 1:
        raise UserError(f"tokens must be >= 0 (0 = the whole corpus) and heldout_docs must be >= 1, got "
                        f"{cfg.tokens} and {cfg.heldout_docs}")
    cfg.samples.check()
    per_step = cfg.train.batch_size * cfg.train.grad_accum * cfg.train.max_length
    budget = cfg.tokens or cfg.world.sizes.pretrain_tokens
    if budget < per_step:
        raise UserError(f"a token budget of {budget} is smaller than one batch ({per_step} tokens = batch_size "
                        f"x grad_accum x max_length); raise tokens or lower the batch")
    marks = cfg.checkpoint_tokens
    if any(t < 1 for t in marks):
        raise UserError(f"checkpoint_tokens must be positive token counts, got {list(marks)}")
    if len(set(marks)) < len(marks):
        raise UserError(f"checkpoint_tokens repeats {sorted(t for t in marks if marks.count(t) > 1)[0]}; give each "
                        "checkpoint once")
    late = [t for t in marks if t > budget]
    if late:
        raise UserError(f"checkpoint_tokens {late[0]} is past the pre-training budget of {budget} tokens; lower it "
                        "or raise tokens")


def lr_of(cfg: Config, size: str) -> float:
    """The learning rate `size` pre-trains at: its entry of `lrs`, else train.lr."""
    return cfg.lrs[cfg.sizes.index(size)] if cfg.lrs and size in cfg.sizes else cfg.train.lr


def pretrain_model(cfg: Config, size: str, runs_root: Path, world: Run | None = None) -> tuple[Run, Run]:
    """Build (or reuse) the world and pre-train (or reuse) one model of `size`; returns (world, train) runs."""
    check(cfg)
    world = world or build_world(cfg.world, runs_root)
    per_step = cfg.train.batch_size * cfg.train.grad_accum * cfg.train.max_length
    max_steps = cfg.tokens // per_step if cfg.tokens else None
    train_cfg = TrainCommand(
        model=ModelConfig(size=size, tokenizer=str(world.file("tokenizer")), init_seed=cfg.train.seed),
        data=str(world.file("pretrain.jsonl")),
        kind="text",
        pack=True,
        train=TrainConfig(**{**cfg.train.__dict__, "lr": lr_of(cfg, size), "max_steps": max_steps,
                             "checkpoint_tokens": tuple(t for t in cfg.checkpoint_tokens)}),
    )
    print(f"[pretrain] {size} model on {world.path.name}", file=sys.stderr)
    return world, train_stage(train_cfg, runs_root)


def _models(train: Run) -> list[tuple[str, int, Path]]:
    """(name, tokens seen, folder) for every checkpoint and the final model, by tokens."""
    out = []
    for folder in [*sorted(train.file("checkpoints").glob("*")), train.file("model")]:
        if (folder / "progress.json").exists():
            tokens = json.loads((folder / "progress.json").read_text())["tokens"]
            out.append((folder.name, tokens, folder))
    return sorted(out, key=lambda m: m[1])


def _heldout(world: Run, component: str, n: int) -> list[dict]:
    lines = world.file(f"heldout_{component}.jsonl").read_text().splitlines()[:n]
    return [json.loads(line) for line in lines]


def packed(examples: list[Example], block: int, bos: int) -> list[Example]:
    """Documents packed into blocks as in pre-training, with the BOS tokens masked as targets (they are not
    text, and the truth does not count them): what the model is trained to predict, read on held-out text."""
    return [Example(b.input_ids, [IGNORE if t == bos else t for t in b.labels]) for b in pack_blocks(examples, block)]


def evaluate_model(folder: Path, world: Run, n_docs: int, block: int = 128) -> dict:
    """Held-out bits/token of one model on every component, beside the truth on exactly those documents.

    Each document is scored whole (BOS + text + EOS; the world's documents fit the context), so the model pays
    for ending the document just as the world's exact -log p(doc) does; both count text tokens + EOS.
    The true rate is the paired one, sum of exact nats / sum of tokens of the same documents, with the
    card's sampled entropy rate (and its SE) beside it. `packed_bits_per_token` reads the same documents packed
    into `block`-token blocks as in training: a document scored whole starts with BOS at position 0, which packed
    training never shows (the prediction of its first token is never trained and can drift: README).
    """
    card = json.loads(world.file(CARD_FILE).read_text())
    model, tok = load_causal_lm(str(folder))
    row = {}
    for c in COMPONENTS:
        docs = _heldout(world, c, n_docs)
        examples = [encode_text(tok, d["text"]) for d in docs]
        scored = teacher_forced(model, examples, tok.pad_token_id, batch_size=64)
        n = scored.tokens
        assert n == sum(d["tokens"] for d in docs), "model and world count tokens differently"
        true = sum(d["nats"] for d in docs) / n / LN2
        sampled = card["components"][c]["entropy"]
        blocks = teacher_forced(model, packed(examples, block, tok.bos_token_id), tok.pad_token_id, batch_size=64)
        row[c] = {"bits_per_token": scored.bits_per_token, "packed_bits_per_token": blocks.bits_per_token,
                  "true_bits_per_token": true,
                  "gap": scored.bits_per_token - true,
                  "entropy_rate": sampled["bits_per_token"], "entropy_rate_se": sampled["bits_per_token_se"]}
    return row


def sample_report(folder: Path, world: Run, policy: DecodingPolicy) -> tuple[dict, list[dict]]:
    """Oracle-scored samples from the held-out review openings: positive rate and sentiment consistency."""
    card = json.loads(world.file(CARD_FILE).read_text())
    prompts = [json.loads(x)["prompt"] for x in world.file("eval_prompts.jsonl").read_text().splitlines()]
    model, tok = load_causal_lm(str(folder))
    samples = generate(model, tok, prompts, policy)
    oracle = load_oracle(world.path)
    texts = [s["prompt"] + s["response"] for s in samples]
    scores = oracle.score_detailed(texts)
    for s, sc in zip(samples, scores):
        s["p_positive"], s["oracle_reading"] = sc.posterior, sc.kind
    n = len(scores)
    mean = sum(sc.posterior for sc in scores) / n
    se = math.sqrt(sum((sc.posterior - mean) ** 2 for sc in scores) / (n - 1) / n) if n > 1 else float("nan")
    report = {
        "samples": n,
        "positive_rate": mean,
        "positive_rate_se": se,
        "positive_rate_implied_by_mixture": card["positive_share_of_reviews"],
        "exact_share": sum(sc.kind != "fallback" for sc in scores) / n,
        "finished_share": sum(s["finished"] for s in samples) / n,
        "consistency": consistency_report(texts),
    }
    return report, samples


def _table(rows: list[dict]) -> str:
    """Whole documents / packed blocks (the truth on the same documents)."""
    head = "| size | checkpoint | tokens | " + " | ".join(f"{c}: whole / packed (true)" for c in COMPONENTS) + " |"
    lines = [head, "|" + "---|" * (3 + len(COMPONENTS))]
    for r in rows:
        cells = [f"{r[c]['bits_per_token']:.3f} / {r[c]['packed_bits_per_token']:.3f} "
                 f"({r[c]['true_bits_per_token']:.3f})"
                 for c in COMPONENTS]
        lines.append(f"| {r['size']} | {r['checkpoint']} | {r['tokens']:,} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def report_stage(cfg: Config, runs_root: Path) -> Run:
    """Pre-train every size (cached), then write the held-out table and the sample report."""
    check(cfg)
    world = build_world(cfg.world, runs_root)
    trains = {size: pretrain_model(cfg, size, runs_root, world)[1] for size in cfg.sizes}

    def work(run: Run) -> None:
        rows = []
        for size, train in trains.items():
            for name, tokens, folder in _models(train):
                print(f"[pretrain] scoring {size} {name}", file=sys.stderr)
                rows.append({"size": size, "checkpoint": name, "tokens": tokens, "lr": lr_of(cfg, size),
                             **evaluate_model(folder, world, cfg.heldout_docs, cfg.train.max_length)})
        run.write_json("table.json", rows)
        run.write_text("table.md", _table(rows))
        report, samples = sample_report(trains[cfg.sizes[0]].file("model"), world, cfg.samples)
        write_jsonl(run.file("samples.jsonl"), samples)
        run.write_json("samples_report.json", {"model": trains[cfg.sizes[0]].name, **report})

    inputs = {"world": world, **{f"model:{s}": t for s, t in trains.items()}}
    return run_stage(runs_root, "pretrain-report", cfg, inputs, work, seed=cfg.train.seed)


def run(cfg: Config, runs_root: Path) -> None:
    report = report_stage(cfg, runs_root)
    print(report.file("table.md").read_text(), file=sys.stderr)
    s = json.loads(report.file("samples_report.json").read_text())
    print(f"[pretrain] samples: positive rate {s['positive_rate']:.3f} +- {s['positive_rate_se']:.3f} "
          f"(mixture implies {s['positive_rate_implied_by_mixture']:.3f}); sentiment consistent in "
          f"{s['consistency']['consistent']}/{s['consistency']['judged']} reviews", file=sys.stderr)
    print(report.path)
