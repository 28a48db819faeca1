"""Benchmark: tokens/s of elasticity's training loop against TRL's `SFTTrainer`, side by side, equal losses.

Both trainers get one tiny LLaMA-style model (same preset, same init seed: two identical copies), one
tokenizer, and one synthetic prompt/completion dataset, and train one epoch with the same effective batch,
lr, constant schedule, AdamW betas (0.9, 0.95), weight decay 0, gradient clipping at 1.0, fp32 and seed.

Fairness, step by step:
- Same tokens. TRL gets the records in its prompt/completion format (it tokenises prompt+completion itself,
  appends EOS, masks the prompt: completion-only loss); ours encodes with `encode_pair`. The script asserts
  that TRL's prepared `input_ids`/`labels` equal ours example by example before anything is timed.
- Same order and micro-batches. Our loop shuffles with its seed; TRL gets the records already in that order
  and `train_sampling_strategy="sequential"`, so both see the same micro-batches in the same steps.
- Same loss. Both normalise a step's summed token NLL by the number of target tokens in the whole step
  (TRL/Trainer: `num_items_in_batch`, counted over `labels[..., 1:]` of all micro-batches of the step; ours:
  `Step.n_targets`). So the per-step losses and gradient norms must agree up to float rounding; the script
  reports the largest differences.
- Same token count. tokens/s counts non-pad input tokens (the sum of attention masks) for both; the script
  checks that each trainer's own counter equals the dataset's total.

TRL settings changed from its defaults (everything else is TRL's default):
  bf16=False (fp32, as asked; TRL defaults to bf16 autocast), gradient_checkpointing=False (our loop does not
  recompute activations; TRL defaults to True: `--trl-defaults` times that variant too), lr / betas /
  lr_scheduler_type="constant" / batch sizes / seed (the shared recipe), logging_steps=1 (per-step losses
  to compare; ours logs every step too), save_strategy="no" and report_to="none" (no checkpoints, no
  trackers), train_sampling_strategy="sequential" (same order as ours), max_length=512 (ours; no example
  comes near it). TRL's default optimizer is `adamw_torch_fused`; ours is `torch.optim.AdamW(fused=True)` too.

Variants timed in every round, in this order: `trl`; `ours` (our loop with `bucket=0`: micro-batches in
the data order, as TRL forms them); `ours_bucket1` (our loop at its defaults, `bucket=1`: examples sorted by
length inside each optimizer step, so every step holds the same examples and has the same loss as TRL's, with
less padding); `ours_packed` (bucket=1 and padding-free micro-batches, `pack_tokens` = batch_size x the longest
example: each step's same examples end to end in rows no larger than TRL's largest padded micro-batch, so in
fewer forward passes); with `--trl-defaults` also `trl_grad_ckpt`; with `--trl-padding-free` also
`trl_padding_free` (TRL's `padding_free=True`: each micro-batch's batch_size examples flattened into one row).

Timing: one short warm-up run of each trainer (excluded), then `--repeats` rounds in one process (round 1
in the order above, TRL first; every other round reversed, against drifts in the machine's load). Reported
per variant: wall and process-CPU time of the whole `trainer.train()` / `train()` call (set-up included and,
for ours, writing the final model, which our loop always does), tokens/s over each, a steady-state
tokens/s that leaves out the first `--skip` steps, and the median step time. On a shared machine the
CPU-time ratio is the steadier number (one torch thread: CPU time is compute time).

Run:  .venv/bin/python benchmarks/train_vs_trl.py            (about 8 minutes on 2 busy CPU cores)
      .venv/bin/python benchmarks/train_vs_trl.py --pairs 512 --repeats 1   (a quick check)
Writes benchmarks/results/train_vs_trl.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent
DEFAULT_OUT = ROOT / "results" / "train_vs_trl.json"

# A small deterministic world: a prompt names a topic and a length; the response draws words mostly from
# that topic's list, so the model has something learnable and the loss falls.
TOPICS = {
    "weather": "rain sun cloud wind storm cold warm snow fog bright grey humid dry breeze thunder".split(),
    "food": "bread soup rice apple cheese salt sweet bitter spicy fresh baked roasted pepper honey milk".split(),
    "travel": "train road map ticket station bridge harbour city village river mountain coast north south".split(),
    "music": "song drum guitar melody rhythm chorus piano loud quiet verse tempo note band singer".split(),
    "work": "meeting report email desk deadline project team office plan budget call schedule task review".split(),
}
FILLER = "the a and of to in is it was very quite then so but with on for".split()
ASKS = ["Write about {t} in {n} words:", "Describe {t}, about {n} words:", "Tell me of {t} ({n} words):",
        "Topic {t}. Length {n}. Answer:"]


def make_pairs(n: int, seed: int) -> list[dict[str, str]]:
    """`n` deterministic prompt/response records. Prompts end on ':' and responses start with a space, so a
    byte-level BPE never merges across the boundary (TRL's joint tokenisation equals ours)."""
    rng = random.Random(seed)
    topics = sorted(TOPICS)
    out = []
    for _ in range(n):
        t = rng.choice(topics)
        k = rng.randint(4, 40)
        words = [rng.choice(TOPICS[t]) if rng.random() < 0.7 else rng.choice(FILLER) for _ in range(k)]
        out.append({"prompt": rng.choice(ASKS).format(t=t, n=k), "response": " " + " ".join(words) + "."})
    return out


def versions() -> dict[str, str]:
    from importlib.metadata import version

    libs = {lib: version(lib) for lib in ("torch", "transformers", "trl", "accelerate", "datasets", "tokenizers")}
    return {"python": platform.python_version(), **libs, "elasticity": version("elasticity")}


class _StepClock:
    """perf_counter after every optimizer step."""

    def __init__(self) -> None:
        self.times: list[float] = []

    def tick(self) -> None:
        self.times.append(time.perf_counter())


def _timed(call) -> tuple[object, float, float, float]:
    """Run `call()`; return its result, wall seconds, process CPU seconds and the wall start."""
    t0, c0 = time.perf_counter(), time.process_time()
    out = call()
    return out, time.perf_counter() - t0, time.process_time() - c0, t0


def run_trl(model, tok, records: list[dict], args, max_steps: int, workdir: Path, grad_ckpt: bool = False,
            padding_free: bool = False) -> dict:
    """Train with TRL's SFTTrainer; return times, per-step clock, losses, grad norms and token count."""
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import SFTConfig, SFTTrainer

    clock = _StepClock()

    class Clock(TrainerCallback):
        def on_step_end(self, *_, **__):
            clock.tick()

    config = SFTConfig(
        output_dir=str(workdir),
        per_device_train_batch_size=args.batch_size,
        gradient_accumulation_steps=args.grad_accum,
        learning_rate=args.lr,
        lr_scheduler_type="constant",
        warmup_steps=0,
        weight_decay=0.0,
        adam_beta1=0.9,
        adam_beta2=0.95,
        adam_epsilon=1e-8,
        max_grad_norm=1.0,
        num_train_epochs=1,
        max_steps=max_steps if max_steps > 0 else -1,
        seed=args.seed,
        bf16=False,
        gradient_checkpointing=grad_ckpt,
        padding_free=padding_free,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        train_sampling_strategy="sequential",
        max_length=None if padding_free else args.max_length,  # TRL asks so; no example comes near it
        use_cpu=True,
    )
    dataset = Dataset.from_list([{"prompt": r["prompt"], "completion": r["response"]} for r in records])
    trainer = SFTTrainer(model=model, args=config, train_dataset=dataset, processing_class=tok, callbacks=[Clock()])
    _, wall, cpu, t0 = _timed(trainer.train)
    logs = [e for e in trainer.state.log_history if "loss" in e and "step" in e]
    opt = getattr(trainer.optimizer, "optimizer", trainer.optimizer)
    return {
        "wall_s": wall, "cpu_s": cpu, "t0": t0, "step_times": clock.times,
        "losses": [e["loss"] for e in logs],
        "grad_norms": [e["grad_norm"] for e in logs],
        "tokens": int(trainer._total_train_tokens),
        "prepared": trainer.train_dataset,
        "optimizer": f"{type(opt).__module__}.{type(opt).__name__}(fused={opt.defaults.get('fused')})",
    }


def run_ours(model, tok, examples, args, max_steps: int, workdir: Path, bucket: int = 0, pack_tokens: int = 0) -> dict:
    """Train with elasticity's loop (its defaults, but for `bucket` and `pack_tokens`); return the same fields as
    `run_trl`."""
    from elasticity.runs import Run
    from elasticity.train.loop import TrainConfig, train

    clock = _StepClock()
    # a packed row must hold the longest allowed example: allow the longest there is (none is cut)
    max_length = max(len(ex.input_ids) for ex in examples) if pack_tokens else args.max_length
    cfg = TrainConfig(lr=args.lr, betas=(0.9, 0.95), weight_decay=0.0, schedule="constant", warmup_steps=0,
                      batch_size=args.batch_size, grad_accum=args.grad_accum, epochs=1,
                      max_steps=max_steps if max_steps > 0 else None, max_grad_norm=1.0, bf16=False,
                      seed=args.seed, max_length=max_length, shuffle=True, bucket=bucket, log_every=1,
                      pack_tokens=pack_tokens)
    workdir.mkdir(parents=True, exist_ok=True)
    run = Run(workdir)
    summary, wall, cpu, t0 = _timed(lambda: train(model, tok, examples, cfg, run, on_step=lambda *_: clock.tick()))
    records = [r for r in run.metrics() if "train/loss" in r]
    return {
        "wall_s": wall, "cpu_s": cpu, "t0": t0, "step_times": clock.times,
        "losses": [r["train/loss"] for r in records],
        "grad_norms": [r["train/grad_norm"] for r in records],
        "tokens": int(summary["tokens"]),
    }


def step_tokens(examples, args, max_steps: int, bucket: int = 0) -> tuple[list[int], int]:
    """Non-pad input tokens of every optimizer step in our loop's plan (TRL gets the same grouping), and the
    padded token slots the model computes (micro-batch rows x longest row)."""
    from elasticity.train.loop import TrainConfig, plan

    cfg = TrainConfig(batch_size=args.batch_size, grad_accum=args.grad_accum, seed=args.seed, shuffle=True,
                      bucket=bucket, max_steps=max_steps if max_steps > 0 else None)
    steps = plan(examples, cfg)
    real = [sum(len(examples[i].input_ids) for mb in s.micro_batches for i in mb) for s in steps]
    slots = sum(len(mb) * max(len(examples[i].input_ids) for i in mb) for s in steps for mb in s.micro_batches)
    return real, slots


def rates(result: dict, per_step: list[int], skip: int) -> dict:
    """Tokens/s over the whole call (wall and process CPU time), steady state after `skip` steps, median step."""
    total = sum(per_step)
    times = [result["t0"]] + result["step_times"]
    skip = min(skip, len(per_step) - 1)
    steady_s = times[-1] - times[skip]
    return {
        "wall_s": round(result["wall_s"], 3),
        "cpu_s": round(result["cpu_s"], 3),
        "tokens_per_s": round(total / result["wall_s"], 1),
        "tokens_per_cpu_s": round(total / result["cpu_s"], 1),
        "steady_tokens_per_s": round(sum(per_step[skip:]) / steady_s, 1),
        "median_step_ms": round(1000 * statistics.median(b - a for a, b in zip(times, times[1:])), 2),
    }


def check_same_tokens(prepared, examples, order: list[int]) -> None:
    """TRL's prepared dataset must hold exactly our tokens and labels, in our shuffled order."""
    if len(prepared) != len(order):
        sys.exit(f"TRL kept {len(prepared)} examples, ours has {len(order)}")
    for row, i in zip(prepared, order):
        if row["input_ids"] != examples[i].input_ids or row["labels"] != examples[i].labels:
            sys.exit(f"TRL tokenised example {i} differently from encode_pair: the comparison would be unfair")


def profile_both(args, fresh, tok, trl_records, examples, tmp: Path) -> None:
    """cProfile one run of each trainer; `python -m pstats FILE` or snakeviz reads the .prof files."""
    import cProfile
    import pstats

    args.profile.mkdir(parents=True, exist_ok=True)
    for name, call in (("trl", lambda: run_trl(fresh(), tok, trl_records, args, args.max_steps, tmp / "prof-trl")),
                       ("ours", lambda: run_ours(fresh(), tok, examples, args, args.max_steps, tmp / "prof-ours"))):
        prof = cProfile.Profile()
        prof.runcall(call)
        prof.dump_stats(args.profile / f"{name}.prof")
        with open(args.profile / f"{name}.txt", "w") as f:
            pstats.Stats(prof, stream=f).sort_stats("cumulative").print_stats(60)
        print(f"[bench] profile of {name}: {args.profile / (name + '.prof')}", file=sys.stderr)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pairs", type=int, default=4096, help="synthetic prompt/response pairs (one epoch)")
    p.add_argument("--size", default="1m", help="tiny model preset")
    p.add_argument("--vocab", type=int, default=1024)
    p.add_argument("--batch-size", type=int, default=4, help="micro-batch (per device)")
    p.add_argument("--grad-accum", type=int, default=8, help="micro-batches per optimizer step")
    p.add_argument("--lr", type=float, default=3e-4,
                   help="a tiny model from scratch needs more than the paper's 1e-5; at 1e-3 this run turns unstable "
                        "after ~70 steps and the two trainers' rounding differences grow to ~1e-3 in the loss")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-length", type=int, default=512)
    p.add_argument("--max-steps", type=int, default=0, help="0 = one full epoch")
    p.add_argument("--warmup-steps", type=int, default=3, help="untimed warm-up run length per trainer")
    p.add_argument("--repeats", type=int, default=3, help="timed rounds of [TRL, ours, ours bucket=1]")
    p.add_argument("--skip", type=int, default=5, help="steps left out of the steady-state rate")
    p.add_argument("--trl-defaults", action="store_true",
                   help="also time TRL with its default gradient checkpointing (fp32 still)")
    p.add_argument("--trl-padding-free", action="store_true",
                   help="also time TRL's own padding-free micro-batches (padding_free=True: batch_size examples "
                        "flattened into one row)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads for every trainer (1: on a shared 2-core machine, 2 threads that wait "
                        "for each other's core run several times slower than 1)")
    p.add_argument("--profile", type=Path, default=None,
                   help="also write cProfile stats of one more run of each trainer into this folder (not timed)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)

    import transformers

    from elasticity.data.batching import ordered_indices
    from elasticity.data.tokenize import encode_pair
    from elasticity.models.tiny import build_tiny_model, count_parameters, train_tokenizer

    transformers.logging.set_verbosity_error()  # TRL's per-step log dicts still print (its default logging)
    records = make_pairs(args.pairs, args.seed)
    tok = train_tokenizer([r["prompt"] + r["response"] for r in records], args.vocab)
    examples = [encode_pair(tok, r["prompt"], r["response"], args.max_length) for r in records]
    assert not any(ex.truncated for ex in examples)
    order = ordered_indices(len(examples), args.seed, shuffle=True)  # our loop's epoch-0 order
    trl_records = [records[i] for i in order]
    per_step, slots = step_tokens(examples, args, args.max_steps)
    _, slots_bucket = step_tokens(examples, args, args.max_steps, bucket=1)
    n_steps, total = len(per_step), sum(per_step)

    def fresh():
        return build_tiny_model(args.size, len(tok), args.max_length, seed=args.seed)

    n_params = count_parameters(fresh())
    print(f"[bench] {args.pairs} pairs, {total} tokens, {n_steps} steps of {args.batch_size}x{args.grad_accum}; "
          f"model {args.size} ({n_params} params, vocab {len(tok)}); torch threads {torch.get_num_threads()}",
          file=sys.stderr)

    # Padding-free rows hold at most what TRL's largest padded micro-batch holds (batch_size x the longest
    # example), so no micro-batch of ours takes more activation memory than TRL's largest.
    pack_tokens = args.batch_size * max(len(ex.input_ids) for ex in examples)
    variants = {
        "trl": lambda d: run_trl(fresh(), tok, trl_records, args, args.max_steps, d),
        "ours": lambda d: run_ours(fresh(), tok, examples, args, args.max_steps, d),
        "ours_bucket1": lambda d: run_ours(fresh(), tok, examples, args, args.max_steps, d, bucket=1),
        "ours_packed": lambda d: run_ours(fresh(), tok, examples, args, args.max_steps, d, bucket=1,
                                          pack_tokens=pack_tokens),
    }
    if args.trl_padding_free:
        variants["trl_padding_free"] = lambda d: run_trl(fresh(), tok, trl_records, args, args.max_steps, d,
                                                         padding_free=True)
    if args.trl_defaults:
        variants["trl_grad_ckpt"] = lambda d: run_trl(fresh(), tok, trl_records, args, args.max_steps, d, True)
    rounds, losses = [], {}
    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        tmp = Path(tmp)
        # Warm-up: first calls pay one-time costs (lazy imports, kernel selection, allocator growth).
        warm = run_trl(fresh(), tok, trl_records, args, args.warmup_steps, tmp / "warm-trl")
        check_same_tokens(warm["prepared"], examples, order)
        trl_optimizer = warm["optimizer"]
        run_ours(fresh(), tok, examples, args, args.warmup_steps, tmp / "warm-ours")

        for r in range(args.repeats):
            entry: dict = {"loadavg_1min_at_start": round(os.getloadavg()[0], 2)}
            results = {}
            # Odd rounds run the variants in reverse order, so a drift in the machine's load does not always
            # favour the same trainer.
            for name in list(variants)[:: -1 if r % 2 else 1]:
                res = results[name] = variants[name](tmp / f"{name}-{r}")
                if len(res["losses"]) != n_steps or res["tokens"] != total:
                    sys.exit(f"{name}: {len(res['losses'])} steps / {res['tokens']} tokens, "
                             f"expected {n_steps} / {total}")
                entry[name] = rates(res, per_step, args.skip)
                losses.setdefault(name, res["losses"])
            for name in variants:
                if name == "trl":
                    continue
                a, b = results["trl"], results[name]
                entry[name]["max_abs_loss_diff_vs_trl"] = max(abs(x - y) for x, y in zip(a["losses"], b["losses"]))
                entry[name]["max_rel_grad_norm_diff_vs_trl"] = max(
                    abs(x - y) / max(abs(x), 1e-12) for x, y in zip(a["grad_norms"], b["grad_norms"]))
                if name.startswith("ours"):
                    for ref in (n for n in variants if n.startswith("trl")):
                        entry[name][f"ratio_vs_{ref}"] = round(
                            entry[name]["tokens_per_s"] / entry[ref]["tokens_per_s"], 3)
                        entry[name][f"ratio_vs_{ref}_cpu"] = round(
                            entry[name]["tokens_per_cpu_s"] / entry[ref]["tokens_per_cpu_s"], 3)
            rounds.append(entry)
            ours_names = [n for n in variants if n.startswith("ours")]
            line = ", ".join(f"{n} {entry[n]['tokens_per_s']:.0f} tok/s ({entry[n]['wall_s']:.1f} s)" for n in variants)
            entry["order"] = list(results)
            ratios = ", ".join(f"{n}/trl {entry[n]['ratio_vs_trl']:.2f} (cpu {entry[n]['ratio_vs_trl_cpu']:.2f}, "
                               f"max |dloss| {entry[n]['max_abs_loss_diff_vs_trl']:.1e})" for n in ours_names)
            print(f"[bench] round {r + 1}: {line}; {ratios}", file=sys.stderr)
        if args.profile:
            profile_both(args, fresh, tok, trl_records, examples, tmp)

    def median(name: str, key: str) -> float:
        return statistics.median(e[name][key] for e in rounds)

    result = {
        "benchmark": "train_vs_trl",
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "command": "python benchmarks/train_vs_trl.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                    "note": "shared machine: other jobs ran on the same cores (see loadavg per round)"},
        "versions": versions(),
        "setup": {
            "model": {"preset": args.size, "parameters": n_params, "vocab": len(tok)},
            "data": {"pairs": args.pairs, "seed": args.seed, "tokens_per_epoch": total,
                     "target_tokens": sum(ex.n_targets for ex in examples),
                     "padded_token_slots": {"unsorted": slots, "sorted_within_step": slots_bucket}},
            "steps": n_steps, "micro_batch": args.batch_size, "grad_accum": args.grad_accum,
            "effective_batch": args.batch_size * args.grad_accum, "lr": args.lr, "schedule": "constant",
            "betas": [0.9, 0.95], "weight_decay": 0.0, "max_grad_norm": 1.0, "precision": "fp32",
            "warmup_run_steps": args.warmup_steps, "steady_state_skips_steps": args.skip,
            "trl_changed_from_defaults": {"bf16": False, "gradient_checkpointing": False, "logging_steps": 1,
                                          "save_strategy": "no", "report_to": "none",
                                          "train_sampling_strategy": "sequential", "max_length": args.max_length},
            "ours": "TrainConfig defaults but for the shared recipe; ours_bucket1 adds bucket=1 (sort by length "
                    "inside each optimizer step: same examples per step, same step loss, less padding); "
                    f"ours_packed adds pack_tokens={pack_tokens} (padding-free rows of at most batch_size x the "
                    "longest example: a step's same examples in fewer micro-batches, no row larger than TRL's "
                    "largest padded micro-batch)",
            "optimizers": {"trl": trl_optimizer, "ours": "torch.optim.adamw.AdamW(fused=True)"},
            "tokens_counted": "non-pad input tokens (sum of attention masks), identical for all",
        },
        "rounds": rounds,
        "per_step_loss_round1": {k: [round(x, 6) for x in v] for k, v in losses.items()},
        "summary": {
            **{f"ratio_{n}_vs_{ref}{cpu}_median": median(n, f"ratio_vs_{ref}{cpu}")
               for n in variants if n.startswith("ours") for ref in variants if ref.startswith("trl")
               for cpu in ("", "_cpu")},
            "max_abs_loss_diff": max(e[n]["max_abs_loss_diff_vs_trl"] for e in rounds for n in variants if n != "trl"),
            "goal_ratio": 1.5,
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result["summary"]), file=sys.stderr)
    print(f"[bench] wrote {args.out}", file=sys.stderr)
    return result


if __name__ == "__main__":
    main()
