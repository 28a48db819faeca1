"""Rolling bits/byte: `elasticity`'s batched computation against lm-evaluation-harness, side by side.

Both score the same documents with the same local tiny LLaMA (the "5m" preset, saved with
`save_pretrained`) at the same context length and batch size: ours with `elasticity.codelength.rolling_nll`,
lm-eval with `HFLM.loglikelihood_rolling` (`add_bos_token=False`, so both read `[BOS] + text tokens`).
The two must agree to 1e-6 relative in bits/byte. Each context length is timed with interleaved repeats;
tokens/s are scored tokens over the median wall time and over the median CPU time of the process (the
latter is steadier on a machine shared with other jobs). It also counts the input positions each side's
forward passes read (lm-eval's padded batches against no padding): their ratio bounds what batching can
gain. Results go to benchmarks/results/compress_vs_lm_eval.json.

    .venv/bin/pip install 'lm-eval>=0.4.9,<0.5'        # the `bench` extra
    .venv/bin/python benchmarks/compress_vs_lm_eval.py

Everything runs offline: HF_HUB_OFFLINE / HF_DATASETS_OFFLINE are set before lm-eval is imported.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

OUT = Path(__file__).resolve().parent / "results" / "compress_vs_lm_eval.json"


def corpus(n_docs: int, seed: int) -> list[str]:
    """Pseudo-English documents with log-normal lengths (median 60 words, sigma 1), like reviews or posts."""
    rng = random.Random(seed)
    syllables = ["ka", "lo", "mi", "ne", "ra", "to", "su", "vi", "de", "ba", "or", "en", "st", "th", "qu", "é"]
    words = ["".join(rng.choice(syllables) for _ in range(rng.randint(1, 4))) for _ in range(3000)]
    weights = [1 / (i + 1) for i in range(len(words))]  # Zipf-like word frequencies
    docs = []
    for _ in range(n_docs):
        n = min(2000, max(3, int(rng.lognormvariate(math.log(60), 1.0))))
        docs.append(" ".join(rng.choices(words, weights, k=n)).capitalize() + ".")
    return docs


def timed(fn) -> tuple[object, float, float]:
    """(result, wall seconds, CPU seconds of this process over all its threads)."""
    w, c = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - w, time.process_time() - c


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--docs", type=int, default=200)
    ap.add_argument("--max-length", type=int, nargs="+", default=[256, 1024])
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch CPU threads for both (1 is steadiest on a machine shared with other jobs)")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()

    import lm_eval
    import torch
    from lm_eval.api.instance import Instance
    from lm_eval.api.metrics import bits_per_byte
    from lm_eval.models.huggingface import HFLM

    from elasticity.codelength import document_nats, rolling_nll, rolling_windows
    from elasticity.models.hf import load_causal_lm
    from elasticity.models.tiny import build_tiny_model, count_parameters, train_tokenizer

    torch.set_num_threads(args.threads)
    texts = corpus(args.docs, args.seed)
    n_bytes = [len(t.encode("utf-8")) for t in texts]
    requests = [Instance("loglikelihood_rolling", {}, (t,), i) for i, t in enumerate(texts)]
    runs, ll_by_length = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "tiny-5m"
        tok = train_tokenizer(texts, vocab_size=1024)
        built = build_tiny_model("5m", len(tok), max(args.max_length), seed=0)
        built.save_pretrained(folder)
        tok.save_pretrained(folder)
        model, tok = load_causal_lm(str(folder))
        for L in args.max_length:
            lm = HFLM(pretrained=str(folder), device="cpu", batch_size=args.batch_size, max_length=L,
                      dtype="float32", add_bos_token=False)

            def ours(L=L):
                return rolling_nll(model, tok, texts, L, args.batch_size)

            def theirs(lm=lm):
                return lm.loglikelihood_rolling(requests, disable_tqdm=True)

            rolling_nll(model, tok, texts[:8], L, args.batch_size)  # warm-up: allocator, kernels, lazy imports
            lm.loglikelihood_rolling(requests[:8], disable_tqdm=True)
            wall, cpu = {"elasticity": [], "lm_eval": []}, {"elasticity": [], "lm_eval": []}
            for _ in range(args.repeats):  # interleaved, so load from other processes hits both alike
                totals, w, c = timed(ours)
                wall["elasticity"].append(w)
                cpu["elasticity"].append(c)
                ll, w, c = timed(theirs)
                wall["lm_eval"].append(w)
                cpu["lm_eval"].append(c)
            per_doc, _ = document_nats(model, tok, texts, L, args.batch_size)
            ll_by_length[L] = ll
            bpb_theirs = bits_per_byte(list(zip(ll, n_bytes)))  # lm-eval's aggregation: -sum ll / (bytes ln 2)
            rel = abs(totals.bits_per_byte - bpb_theirs) / abs(bpb_theirs)
            med_w = {k: statistics.median(v) for k, v in wall.items()}
            med_c = {k: statistics.median(v) for k, v in cpu.items()}
            reads = _positions_read(_lengths(tok, texts), L, args.batch_size, rolling_windows)
            run = {
                "max_length": L,
                "scored_tokens": totals.tokens,
                "windows": sum(-(-n // L) for n in _lengths(tok, texts)),
                "bits_per_byte": {"elasticity": totals.bits_per_byte, "lm_eval": bpb_theirs,
                                  "relative_difference": rel},
                "max_abs_doc_nats_difference": max(abs(a + b) for a, b in zip(per_doc, ll)),
                "positions_read": reads,
                "wall_seconds": wall,
                "cpu_seconds": cpu,
                "tokens_per_s_wall": {k: totals.tokens / v for k, v in med_w.items()},
                "tokens_per_s_cpu": {k: totals.tokens / v for k, v in med_c.items()},
                "speedup_wall": med_w["lm_eval"] / med_w["elasticity"],
                "speedup_cpu": med_c["lm_eval"] / med_c["elasticity"],
            }
            runs.append(run)
            print(f"context {L}: {totals.tokens} tokens in {len(texts)} documents, batch {args.batch_size}")
            print(f"  bits/byte  elasticity {totals.bits_per_byte:.9f}  lm-eval {bpb_theirs:.9f}  "
                  f"relative difference {rel:.2e}")
            print(f"  positions read  lm-eval {reads['lm_eval']:,}  without padding {reads['unpadded']:,}  "
                  f"(ceiling of the speedup from padding alone {reads['padding_ceiling']:.2f}x)")
            for clock in ("wall", "cpu"):
                tps = run[f"tokens_per_s_{clock}"]
                print(f"  tokens/s ({clock:4s})  elasticity {tps['elasticity']:8,.0f}  lm-eval {tps['lm_eval']:8,.0f}"
                      f"  speedup {run[f'speedup_{clock}']:.2f}x  (median of {args.repeats})")
        n_params = count_parameters(model)
        # lm-eval 0.4.13's default (add_bos_token=None) lets this tokenizer add its BOS to the text, so a
        # document is read as [BOS, BOS, tokens...] and P(BOS | BOS) is scored as well: values only, not timed
        k, L = min(50, len(texts)), args.max_length[0]
        default = HFLM(pretrained=str(folder), device="cpu", batch_size=args.batch_size, max_length=L,
                       dtype="float32").loglikelihood_rolling(requests[:k], disable_tqdm=True)
        default_check = {
            "documents": k, "max_length": L,
            "elasticity": rolling_nll(model, tok, texts[:k], L, args.batch_size).bits_per_byte,
            "lm_eval_add_bos_token_false": bits_per_byte(list(zip(ll_by_length[L][:k], n_bytes[:k]))),
            "lm_eval_default_add_bos_token": bits_per_byte(list(zip(default, n_bytes[:k]))),
        }
    result = {
        "what": "rolling bits/byte, elasticity.codelength.rolling_nll vs lm_eval HFLM.loglikelihood_rolling",
        "command": "python benchmarks/compress_vs_lm_eval.py " + " ".join(sys.argv[1:]),
        "model": {"preset": "5m", "parameters": n_params, "vocab": len(tok), "dtype": "float32",
                  "weights": "random init, seed 0"},
        "corpus": {"documents": len(texts), "bytes": sum(n_bytes), "seed": args.seed,
                   "lengths": "log-normal words, median 60, sigma 1, capped at 2000"},
        "batch_size": args.batch_size,
        "threads": args.threads,
        "repeats": args.repeats,
        "runs": runs,
        "lm_eval_default_tokenization": default_check,
        "machine": {
            "device": "cpu", "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "load_average_1min": os.getloadavg()[0], "processor": platform.processor() or platform.machine(),
            "python": sys.version.split()[0], "torch": torch.__version__, "lm_eval": lm_eval.__version__,
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"lm-eval's default add_bos_token on {k} documents: bits/byte {default_check['lm_eval_default_add_bos_token']:.6f}"
          f" (with add_bos_token=False {default_check['lm_eval_add_bos_token_false']:.6f}, ours "
          f"{default_check['elasticity']:.6f})")
    print(f"wrote {args.out}")
    worst = max(r["bits_per_byte"]["relative_difference"] for r in runs)
    if worst > 1e-6:
        raise SystemExit(f"values disagree: relative difference {worst:.2e} > 1e-6")


def _positions_read(lengths: list[int], L: int, batch_size: int, rolling_windows) -> dict:
    """Input positions each side runs the model over (the same windows on both sides).

    lm-eval batches `batch_size` consecutive windows in document order and pads each batch to its longest;
    without padding, a forward pass reads each window's own length (our batches add a little padding to
    this). Both run the same model forward per position, so their ratio bounds what batching can gain.
    """
    widths = [end - 1 - lo for n in lengths for lo, _, end in rolling_windows(n + 1, 1, L)]
    lm = sum(len(widths[i:i + batch_size]) * max(widths[i:i + batch_size]) for i in range(0, len(widths), batch_size))
    return {"lm_eval": lm, "unpadded": sum(widths), "padding_ceiling": lm / sum(widths)}


def _lengths(tok, texts: list[str]) -> list[int]:
    return [len(ids) for ids in tok(texts, add_special_tokens=False)["input_ids"]]


if __name__ == "__main__":
    main()
