"""Peak resident memory of a rebound on a model with Qwen's 151,936-token vocabulary at the paper's batch 8 x 512.

A tiny LLaMA (hidden 64, 2 layers, untied 151,936-row embedding and head: 19.6M parameters, most of them in the
vocabulary) is built locally with random weights, with 512-token prompt/response pairs from a word soup. One
`elasticity rebound` runs in a child process (one seed, Q1 = 16, Q2 = 8 / 16, VADER as the scorer, 8 held-out
pairs a side, 8 held-out documents, 4 prompts x 2 samples), and its peak resident set size is read from the
kernel (`getrusage(RUSAGE_CHILDREN).ru_maxrss`): everything the process ever held at once, the Python runtime
and torch included. `elasticity plan`'s estimate for the same run is printed beside it.

    .venv/bin/python benchmarks/memory_rebound.py            # about 3 min on 2 cores
    .venv/bin/python benchmarks/memory_rebound.py --set train.gradient_checkpointing=true

The goal (issue 16): at most 2 GiB. Writes benchmarks/results/memory_rebound.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VOCAB = 151_936  # Qwen2's vocabulary
WORDS = ("the movie was good bad great awful plot actor scene film i liked hated it and but very story long "
         "short music score camera light dark end begin").split()


def build(folder: Path, length: int) -> dict[str, Path]:
    """The model, its tokenizer and the data files, all local."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from elasticity.models.tiny import train_tokenizer

    rng = random.Random(0)

    def words(n: int) -> str:
        return " ".join(rng.choice(WORDS) for _ in range(n))

    tok = train_tokenizer([words(50) for _ in range(300)], 300)
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=192, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=length,
                         tie_word_embeddings=False, rms_norm_eps=1e-5,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(folder / "model")
    tok.save_pretrained(folder / "model")

    def pairs(n: int) -> list[dict]:  # responses long enough that every example is cut at `length` tokens
        return [{"prompt": words(8), "response": " " + words(length)} for _ in range(n)]

    files = {"positive": pairs(32), "negative": pairs(32), "prompts": [{"prompt": words(8)} for _ in range(4)],
             "heldout": [{"text": words(length)} for _ in range(8)]}
    paths = {}
    for name, records in files.items():
        paths[name] = folder / f"{name}.jsonl"
        paths[name].write_text("".join(json.dumps(r) + "\n" for r in records))
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--length", type=int, default=512, help="tokens per training example")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="an extra rebound flag, e.g. train.gradient_checkpointing=true")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "memory_rebound.json"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        paths = build(folder, args.length)
        flags = ["--model", str(folder / "model"), "--positive", str(paths["positive"]),
                 "--negative", str(paths["negative"]), "--prompts", str(paths["prompts"]),
                 "--heldout", str(paths["heldout"]), "--q1", "16", "--q2", "8", "16", "--seeds", "0",
                 "--scorer.name", "vader", "--train.batch_size", "8", "--train.max_length", str(args.length),
                 "--eval.pairs", "8", "--eval.docs", "8", "--eval.prompts", "4",
                 "--policy.max_new_tokens", "16", "--policy.samples_per_prompt", "2"]
        for item in args.set:
            key, _, value = item.partition("=")
            flags += [f"--{key}", value]
        command = [sys.executable, "-m", "elasticity", "rebound", "--runs-dir", str(folder / "runs"), *flags]
        start = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True)
        seconds = time.perf_counter() - start
        if done.returncode != 0:
            sys.exit(f"rebound failed ({done.returncode}):\n{done.stderr[-3000:]}")
        peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024  # Linux reports KiB
        plan = subprocess.run([sys.executable, "-m", "elasticity", "plan", "--experiment", "rebound", "--json", "true", *flags],
                              capture_output=True, text=True)
        estimate = json.loads(plan.stdout) if plan.returncode == 0 else {"error": plan.stderr.strip()[-500:]}
    result = {"benchmark": "memory_rebound", "date": time.strftime("%Y-%m-%d"), "machine": platform.processor()
              or platform.machine(), "vocab": VOCAB, "batch": [8, args.length], "flags": args.set,
              "peak_rss_bytes": peak, "peak_rss_gib": round(peak / 2**30, 3), "goal_gib": 2.0,
              "seconds": round(seconds, 1), "plan": estimate}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "plan"}, indent=2))


if __name__ == "__main__":
    main()
