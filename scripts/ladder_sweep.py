"""The sweep that chose the size ladder's learning rates (README, "The size ladder"); about 40 minutes here.

1. Every size of the ladder at 1M tokens (seed 0) at each learning rate: the rate with the lowest held-out
   bits/token (packed as in training, mean over the three components) is the size's recipe.
2. Every size at its rate on the whole corpus with two pre-training seeds: at the ladder's volume (scaling-world's
   `size_volume` checkpoint; the final models too, for the record) the ladder must improve strictly with size by
   more than the spread between the seeds.

Each run is an ordinary cached `elasticity pretrain` stage (seed 0 of step 2 is the training scaling-world
reuses). Writes runs/ladder-sweep.csv and runs/ladder-sweep.md and prints the markdown.

    python scripts/ladder_sweep.py [--runs-dir runs]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
from pathlib import Path

from elasticity.cli import main
from elasticity.config import read_yaml
from elasticity.files import csv_text

SIZES = ("0.1m", "0.2m", "0.5m", "1m")
LRS = (0.001, 0.002, 0.004, 0.008)
COMPONENTS = ("neutral", "positive", "negative")


def pretrain(runs: str, flags: list[str]) -> list[dict]:
    """Run `elasticity pretrain` (cached) and return its table rows."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        if main(["pretrain", "--runs-dir", runs, *flags]) != 0:
            sys.exit(f"pretrain {' '.join(flags)} failed")
    report = Path(out.getvalue().strip().splitlines()[-1])
    return json.loads((report / "table.json").read_text())


def mean_rate(row: dict) -> float:
    return sum(row[c]["packed_bits_per_token"] for c in COMPONENTS) / len(COMPONENTS)


def main_(runs: str) -> None:
    rows = []
    for lr in LRS:
        for r in pretrain(runs, ["--sizes", *SIZES, "--tokens", "1000000", "--checkpoint_tokens", "250000", "500000",
                                 "--train.lr", str(lr)]):
            if r["checkpoint"] == "model":
                rows.append({"step": "lr", "size": r["size"], "lr": lr, "seed": 0, "tokens": r["tokens"],
                             **{c: r[c]["packed_bits_per_token"] for c in COMPONENTS}, "mean": mean_rate(r)})
    best = {s: min((r for r in rows if r["size"] == s), key=lambda r: r["mean"])["lr"] for s in SIZES}
    preset = read_yaml("configs/scaling-world.yaml")
    world, at = preset["pretrain"], preset.get("size_volume", 0)
    chosen = dict(zip(world["sizes"], world["lrs"]))
    for seed in (0, 1):
        flags = ["--config", "configs/pretrain.yaml", "--sizes", *SIZES, "--lrs", *(str(chosen[s]) for s in SIZES),
                 "--train.seed", str(seed)]
        for r in pretrain(runs, flags):
            if r["checkpoint"] in ("model", f"tokens-{at}"):
                rows.append({"step": "ladder", "size": r["size"], "lr": r["lr"], "seed": seed, "tokens": r["tokens"],
                             "checkpoint": r["checkpoint"], **{c: r[c]["packed_bits_per_token"] for c in COMPONENTS},
                             "mean": mean_rate(r)})
    lines = ["| step | size | lr | seed | tokens | " + " | ".join(COMPONENTS) + " | mean |", "|---" * 9 + "|"]
    lines += [f"| {r['step']} | {r['size']} | {r['lr']:g} | {r['seed']} | {r['tokens']:,} | "
              + " | ".join(f"{r[c]:.4f}" for c in COMPONENTS) + f" | {r['mean']:.4f} |" for r in rows]
    lines += ["", "lowest mean at 1M tokens: " + ", ".join(f"{s} {lr:g}" for s, lr in best.items()),
              "scaling-world's rates: " + ", ".join(f"{s} {lr:g}" for s, lr in chosen.items())]
    for checkpoint in dict.fromkeys([f"tokens-{at}" if at else "model", "model"]):
        ladder = {(r["size"], r["seed"]): r["mean"] for r in rows if r["step"] == "ladder"
                  and r["checkpoint"] == checkpoint}
        spread = max(abs(ladder[(s, 0)] - ladder[(s, 1)]) for s in SIZES)
        gaps = [min(ladder[(a, k)] for k in (0, 1)) - max(ladder[(b, k)] for k in (0, 1))
                for a, b in zip(SIZES, SIZES[1:])]
        lines.append(f"ladder at {checkpoint}: largest seed spread {spread:.4f}; the worse seed of each size against "
                     "the better of the next larger: gaps " + ", ".join(f"{g:+.4f}" for g in gaps) + (
                         " (strictly better with size, beyond the seed spread)" if min(gaps) > spread else
                         " (NOT strictly better with size beyond the seed spread)"))
    Path(runs, "ladder-sweep.csv").write_text(csv_text(rows))
    Path(runs, "ladder-sweep.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs-dir", default="runs")
    main_(p.parse_args().runs_dir)
