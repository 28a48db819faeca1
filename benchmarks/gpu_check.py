"""One rebound chain on a GPU: training tokens/s, MFU, peak GPU memory, and `elasticity plan`'s estimate beside them.

For when an accelerator is lent (issue 16, item 7). A LLaMA of ~0.6B parameters (hidden 1024, 24 layers, 16 heads,
MLP 2816, Qwen's 151,936-token vocabulary, untied head: Qwen1.5-0.5B's shape) is built locally with random
weights in bfloat16, with a word-soup tokenizer and 512-token prompt/response pairs. Then, in this process:

1. one `elasticity rebound` chain on it (`--dtype bfloat16`, batch 8 x 512, one seed, Q1 = 32 / 64, Q2 = 16 / 32,
   VADER as the scorer, 16 held-out pairs a side and documents, 16 prompts x 2 samples of 64 tokens): the
   whole chain's peak GPU memory (`torch.cuda.max_memory_allocated` and `max_memory_reserved`);
2. a timed training run of the same model and batch alone (3 warm-up steps, then 30): tokens/s (non-pad input
   tokens / the loop's own seconds) and MFU = 6 N tokens/s / the GPU's peak dense bf16 FLOP/s, N = the weights
   that multiply (all but the input embedding; attention's own FLOPs are not counted);
3. `elasticity plan`'s estimate for the same rebound (`experiments.memory`), and the training part's estimate
   for the timed run, beside the measured peaks.

    .venv/bin/python benchmarks/gpu_check.py               # CUDA only; ~2 min on an H100 (most of it loading)
    .venv/bin/python benchmarks/gpu_check.py --set train.gradient_checkpointing=true
    .venv/bin/python benchmarks/gpu_check.py --cpu-smoke   # the same code path, a tiny model on the CPU (<1 min)

Prints one JSON object on stdout (the rebound's own lines go to stderr) and, on a GPU, writes
benchmarks/results/gpu_check.json. Without CUDA (and without --cpu-smoke) it exits 2 with one line.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import platform
import random
import resource
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORDS = ("the movie was good bad great awful plot actor scene film i liked hated it and but very story long "
         "short music score camera light dark end begin").split()
GPU = {"hidden": 1024, "layers": 24, "heads": 16, "intermediate": 2816, "vocab": 151_936, "length": 512, "batch": 8,
       "q1": [32, 64], "q2": [16, 32], "held_out": 16, "new_tokens": 64, "warmup": 3, "timed": 30}
SMOKE = {"hidden": 64, "layers": 2, "heads": 4, "intermediate": 176, "vocab": 4096, "length": 64, "batch": 4,
         "q1": [4, 8], "q2": [4], "held_out": 4, "new_tokens": 8, "warmup": 1, "timed": 2}
PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "H800": 989e12, "GH200": 989e12, "A100": 312e12, "A800": 312e12}


def peak_flops(name: str) -> float | None:
    """Dense bf16 FLOP/s of a GPU by its device name (a small table); None for one not in it."""
    return next((v for k, v in PEAK_BF16.items() if k in name.upper()), None)


def build(folder: Path, size: dict, device: str) -> dict[str, Path]:
    """The model (random weights, bfloat16), its tokenizer and the rebound's data files, all local."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from elasticity.models.tiny import train_tokenizer

    rng = random.Random(0)

    def words(n: int) -> str:
        return " ".join(rng.choice(WORDS) for _ in range(n))

    tok = train_tokenizer([words(50) for _ in range(300)], 300)
    config = LlamaConfig(vocab_size=size["vocab"], hidden_size=size["hidden"], intermediate_size=size["intermediate"],
                         num_hidden_layers=size["layers"], num_attention_heads=size["heads"],
                         num_key_value_heads=size["heads"], max_position_embeddings=2 * size["length"],
                         tie_word_embeddings=False, rms_norm_eps=1e-5, bos_token_id=tok.bos_token_id,
                         eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    with torch.device(device):  # initialised where it will run: seconds on a GPU instead of a minute on the CPU
        model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(folder / "model")
    tok.save_pretrained(folder / "model")
    del model
    n = size["length"]
    pairs = lambda k: [{"prompt": words(8), "response": " " + words(n)} for _ in range(k)]  # noqa: E731 - cut at n
    files = {"positive": pairs(max(size["q1"]) + size["held_out"]), "negative": pairs(max(size["q2"]) +
                                                                                      size["held_out"]),
             "prompts": [{"prompt": words(8)} for _ in range(size["held_out"])],
             "heldout": [{"text": words(n)} for _ in range(size["held_out"])]}
    paths = {"model": folder / "model"}
    for name, records in files.items():
        paths[name] = folder / f"{name}.jsonl"
        paths[name].write_text("".join(json.dumps(r) + "\n" for r in records))
    return paths


def rebound_flags(paths: dict[str, Path], size: dict, device: str, extra: list[str]) -> list[str]:
    flags = ["--model", str(paths["model"]), "--positive", str(paths["positive"]), "--negative",
             str(paths["negative"]), "--prompts", str(paths["prompts"]), "--heldout", str(paths["heldout"]),
             "--q1", *map(str, size["q1"]), "--q2", *map(str, size["q2"]), "--seeds", "0", "--scorer.name", "vader",
             "--dtype", "bfloat16", "--device", device, "--train.batch_size", str(size["batch"]),
             "--train.max_length", str(size["length"]), "--eval.pairs", str(size["held_out"]),
             "--eval.docs", str(size["held_out"]), "--eval.prompts", str(size["held_out"]),
             "--policy.max_new_tokens", str(size["new_tokens"]), "--policy.samples_per_prompt", "2"]
    for item in extra:
        key, _, value = item.partition("=")
        flags += [f"--{key}", value]
    return flags


class Memory:
    """Peak memory of a block: CUDA's allocator statistics, or the process's peak resident set on the CPU."""

    def __init__(self, cuda: bool):
        self.cuda = cuda

    def reset(self) -> None:
        if self.cuda:
            import gc

            import torch

            gc.collect()  # the previous block's models, in reference cycles
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()

    def peak(self) -> dict:
        gib = lambda x: round(x / 2**30, 3)  # noqa: E731
        if not self.cuda:  # the whole process so far, the Python runtime included: not comparable to a GPU's
            return {"peak_rss_gib": gib(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)}
        import torch

        torch.cuda.synchronize()
        return {"max_memory_allocated_gib": gib(torch.cuda.max_memory_allocated()),
                "max_memory_reserved_gib": gib(torch.cuda.max_memory_reserved())}


def timed_training(paths: dict[str, Path], size: dict, device: str, extra: list[str]) -> dict:
    """Training alone on the built model at the rebound's batch: warm-up steps, then the timed ones."""
    import dataclasses

    from elasticity.data.records import load_records
    from elasticity.data.tokenize import tokenize_records
    from elasticity.models.hf import load_causal_lm
    from elasticity.runs import Run
    from elasticity.train.loop import TrainConfig, train

    overrides = {k.split(".", 1)[1]: json.loads(v) if v in ("true", "false") or v.isdigit() else v
                 for k, _, v in (s.partition("=") for s in extra) if k.startswith("train.")}
    cfg = dataclasses.replace(TrainConfig(lr=1e-5, batch_size=size["batch"], max_length=size["length"]), **overrides)
    model, tok = load_causal_lm(str(paths["model"]), dtype="bfloat16", device=device)
    model.train()
    records = load_records(str(paths["positive"]), ("prompt", "response"))
    examples = tokenize_records(records, tok, size["length"], report=False)
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, steps in (("warmup", size["warmup"]), ("timed", size["timed"])):
            cfg_n = dataclasses.replace(cfg, max_steps=steps, epochs=-(-steps * cfg.batch_size // len(examples)))
            out[name] = train(model, tok, examples, cfg_n, Run(Path(tmp) / name), progress_bar=False,
                              save_final=False)
    return {"config": cfg, "model": model, "summary": out["timed"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu-smoke", action="store_true", help="a tiny model on the CPU: tests the script here")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="an extra rebound flag, e.g. train.gradient_checkpointing=true (also used when timing)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "gpu_check.json"))
    args = parser.parse_args()
    import torch

    if not args.cpu_smoke and not torch.cuda.is_available():
        print("gpu_check: no CUDA device here (torch.cuda.is_available() is False); run it where a GPU is lent, or "
              "use --cpu-smoke", file=sys.stderr)
        sys.exit(2)
    from elasticity.cli import main as cli
    from elasticity.experiments import memory

    size, device = (SMOKE, "cpu") if args.cpu_smoke else (GPU, "cuda")
    cuda = device == "cuda"
    mem = Memory(cuda)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        # stdout is this script's JSON alone; saving a model imports DeepSpeed where it is installed, whose log
        # writes to the stdout of its import
        with contextlib.redirect_stdout(sys.stderr):
            paths = build(folder, size, device)
        flags = rebound_flags(paths, size, device, args.set)
        mem.reset()
        t0 = time.perf_counter()
        with contextlib.redirect_stdout(sys.stderr):
            code = cli(["rebound", "--runs-dir", str(folder / "runs"), *flags])
        if code != 0:
            sys.exit(f"gpu_check: the rebound failed (exit {code}); its lines are above")
        rebound = {"seconds": round(time.perf_counter() - t0, 1), **mem.peak()}
        plan_out = io.StringIO()
        with contextlib.redirect_stdout(plan_out):
            cli(["plan", "--experiment", "rebound", "--json", "true", *flags])
        plan = json.loads(plan_out.getvalue())["models"][0]
        mem.reset()
        timed = timed_training(paths, size, device, args.set)
        training_peak = mem.peak()
    s, lm = timed["summary"], timed.pop("model")
    tokens_per_s = s["tokens"] / s["train_seconds_this_session"]
    config = lm.config
    n = lm.num_parameters()
    multiplying = n - config.vocab_size * config.hidden_size  # the input embedding is a look-up, not a product
    name = torch.cuda.get_device_name() if cuda else platform.processor() or platform.machine()
    peak = peak_flops(name) if cuda else None
    estimate = memory.training_memory(n, memory.Shape.of(config), "bfloat16", timed["config"])
    measured = lambda part: part.get("max_memory_allocated_gib")  # noqa: E731 - None on the CPU
    ratio = lambda est, got: round(est / got, 3) if got else None  # noqa: E731
    result = {
        "benchmark": "gpu_check", "date": time.strftime("%Y-%m-%d"), "device": name, "cpu_smoke": args.cpu_smoke,
        "torch": torch.__version__, "parameters": n, "size": size, "flags": args.set,
        "training": {"steps": s["steps"], "tokens": s["tokens"], "seconds": s["train_seconds_this_session"],
                     "tokens_per_s": round(tokens_per_s, 1),
                     "mfu": round(6 * multiplying * tokens_per_s / peak, 4) if peak else "unknown",
                     "peak_bf16_flops": peak or "unknown", **training_peak,
                     "estimate_gib": {k: round(v / 2**30, 3) for k, v in estimate.items()},
                     "estimate_over_allocated": ratio(estimate["training"] / 2**30, measured(training_peak))},
        "rebound": {**rebound, "plan_gpu_memory_gib": plan["resources"].get("gpu_memory_gib"),
                    "plan_gpu_memory": plan["resources"].get("gpu_memory"), "plan_peak": plan["resources"].get("peak"),
                    "estimate_over_allocated": ratio(plan["resources"].get("gpu_memory_gib", 0), measured(rebound))},
        "seconds": round(time.perf_counter() - start, 1),
    }
    if not args.cpu_smoke:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
