"""`experiments.memory`: the plan's GPU-memory and disk estimates, by hand, against autograd's own count of saved
tensors, and against the peak resident memory of real CPU training runs (within 25%)."""

from __future__ import annotations

import gc
import json
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace

import pytest

from elasticity.config import read_yaml
from elasticity.experiments import memory
from elasticity.models.spec import LoraSettings
from elasticity.train.loop import TrainConfig

ROOT = Path(__file__).resolve().parents[1]
MIB = 2**20


def _llama(hidden: int, layers: int, vocab: int, kv_heads: int | None = None, intermediate: int | None = None):
    from transformers import LlamaConfig

    heads = max(1, hidden // 64)
    return LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=intermediate or hidden * 11 // 4,
                       num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads or heads,
                       max_position_embeddings=512, tie_word_embeddings=False)


@pytest.mark.slow
def test_known_architectures_have_their_presets_parameter_counts():
    """Each architecture in the table builds (meta device) to the parameter count its preset states."""
    checked = 0
    for preset in sorted((ROOT / "configs" / "paper").glob("*.yaml")):
        for entry in read_yaml(preset).get("models", []):
            if entry.get("parameters") and memory.known_config(entry["model"]) is not None:
                assert memory.known_parameters(entry["model"]) == pytest.approx(entry["parameters"], rel=0.005)
                checked += 1
    assert checked >= 10
    assert memory.known_parameters("meta-llama/Llama-2-7b-hf") == 6_738_415_616  # its model card's count
    assert memory.known_config("nobody/unknown-model") is None


def test_bytes_a_parameter_of_the_model_state():
    """weights + gradients + optimizer: 16 bytes a parameter in float32, 2 + 2 + 4 = 8 in bfloat16, 6 with the
    8-bit AdamW; LoRA: the frozen weights in dtype, the adapters 4 + 4 + 8 (float32)."""
    n, t = 1e9, TrainConfig(batch_size=1, max_length=64)
    state = lambda p: (p["weights"] + p["gradients"] + p["optimizer"]) / n  # noqa: E731
    assert state(memory.training_memory(n, None, "float32", t)) == 16
    assert state(memory.training_memory(n, None, "bfloat16", t)) == 8
    assert state(memory.training_memory(n, None, "bfloat16", TrainConfig(optimizer="adamw8bit"))) == 6
    lora = memory.training_memory(n, None, "bfloat16", t, lora_trainable=10**7)
    assert lora["weights"] == 2 * n + 4e7 and lora["gradients"] == 4e7 and lora["optimizer"] == 8e7
    # autocast on float32 weights: a bfloat16 copy of every linear weight, not of the input embedding
    shape = memory.Shape.of(_llama(64, 2, 1000))
    amp = memory.training_memory(n, shape, "float32", TrainConfig(bf16=True))
    assert amp["autocast_copies"] == 2 * (n - 1000 * 64)


def test_lora_count_is_peft_s_own():
    """r (in + out) per adapted linear: Llama-2-7B, r 16, all-linear: 32 layers x 16 x (4 x 8192 + 3 x 15104)."""
    config = memory.known_config("meta-llama/Llama-2-7b-hf")
    assert memory.lora_parameters(config, LoraSettings(r=16)) == 32 * 16 * (4 * 8192 + 3 * 15104) == 39_976_960
    assert memory.lora_parameters(config, LoraSettings(r=8, targets=".*(q|v)_proj")) == 32 * 8 * 2 * 8192


def _saved_bytes(config, dtype: str, autocast: bool, lora: bool, rows: int, length: int) -> int:
    """Bytes of distinct storages autograd saves for the backward pass (parameters excluded), the kernel's way."""
    import torch
    from transformers import AutoModelForCausalLM

    from elasticity.likelihood import token_scores
    from elasticity.models.spec import with_lora

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=getattr(torch, dtype))
    if lora:
        model = with_lora(model, LoraSettings(r=8))
    model.train()
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(t):
        if t.untyped_storage().data_ptr() not in params:
            seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    ids = torch.randint(0, config.vocab_size, (rows, length))
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), \
            torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        token_scores(model, ids, ids[:, 1:], torch.ones_like(ids))
    return sum(seen.values())


@pytest.mark.slow
@pytest.mark.parametrize("dtype,autocast,lora", [("float32", False, False), ("bfloat16", False, False),
                                                 ("float32", True, False), ("float32", False, True),
                                                 ("bfloat16", False, True), ("float32", True, True)])
def test_activation_coefficients_match_autograd_s_saved_tensors(dtype, autocast, lora):
    """SAVED, fitted at other shapes, predicts a new one (grouped-query attention, another MLP width) to 2%: the
    per-layer bytes, from the difference of a 3-layer and a 1-layer model (the head and embedding cancel)."""
    rows, length = 2, 96
    config = {n: _llama(192, n, 300, kv_heads=1, intermediate=448) for n in (1, 3)}
    per_layer = (_saved_bytes(config[3], dtype, autocast, lora, rows, length)
                 - _saved_bytes(config[1], dtype, autocast, lora, rows, length)) / 2
    if autocast:  # autocast's bfloat16 weight copies are saved too: counted apart, as autocast_copies
        per_layer -= 2 * (2 * 192 * 192 + 2 * 192 * 64 + 3 * 192 * 448)
    shape = memory.Shape.of(config[1])
    one = memory.activation_bytes(shape, rows * length, dtype, autocast, lora, False)
    three = memory.activation_bytes(memory.Shape.of(config[3]), rows * length, dtype, autocast, lora, False)
    lora_rank_bytes = 28 * 8 if lora else 0  # the adapters' rank-8 intermediates, not in SAVED
    assert per_layer == pytest.approx((three - one) / 2 + rows * length * lora_rank_bytes, rel=0.02)


def test_a_padding_free_micro_batch_is_sized_by_its_tokens():
    shape = memory.Shape.of(_llama(256, 4, 32000))
    n = 10**7
    padded = memory.training_memory(n, shape, "float32", TrainConfig(batch_size=4, max_length=512))
    same = memory.training_memory(n, shape, "float32", TrainConfig(batch_size=4, max_length=512, pack_tokens=2048))
    quarter = memory.training_memory(n, shape, "float32", TrainConfig(batch_size=4, max_length=512, pack_tokens=512))
    assert same["activations"] == padded["activations"]  # 2048 tokens either way
    assert quarter["activations"] == pytest.approx(padded["activations"] / 4)
    assert quarter["training"] < padded["training"]


def test_an_rl_step_counts_trl_s_reference_copy_and_its_logits(capsys):
    from elasticity.cli import main

    flags = ["plan", "--config", str(ROOT / "configs" / "paper" / "rebound-imdb.yaml"), "--models",
             "meta-llama/Llama-2-7b-hf", "--dtype", "bfloat16", "--perturb", "rloo", "--json"]

    def memory_of(*more):
        assert main([*flags, *more]) == 0
        return json.loads(capsys.readouterr().out)["models"][0]["resources"]["gpu_memory"]

    g = memory_of()
    assert g["rl_reference"] == g["weights"]  # TRL's copy of the starting model, in the same dtype
    rows, completion = 8 * 4, 128 + 1  # rl.prompts_per_step x rl.num_generations; the preset's max_new_tokens + 1
    assert g["rl_logits"] == pytest.approx(memory.TRL_LOGIT_COPIES * 4 * rows * completion * 32000 / 2**30, abs=0.01)
    assert g["training"] == pytest.approx(max(g["rl_training"], g["weights"] + g["optimizer"] + g["gradients"]),
                                          abs=0.01)
    assert not memory_of("--rl.beta", "0").get("rl_reference")  # no KL penalty: TRL keeps no reference
    assert not memory_of("--lora.r", "8").get("rl_reference")  # LoRA: TRL disables the adapters instead
    assert "rl_training" not in memory_of("--perturb", "sft")


@pytest.mark.slow
def test_llama2_7b_rebound_plan(capsys):
    """The issue's benchmark: the IMDb rebound on Llama2-7B, bf16 weights, gradient checkpointing, batch 1 x 8:
    one 80 GB GPU. With LoRA training is ~14 GiB, but generating 32 rows at once with prompts bounded by
    max_length (the data is not here) adds a 12 GiB KV cache: 40 GB; 8 rows at a time (the same samples): 24 GB."""
    from elasticity.cli import main

    flags = ["plan", "--config", str(ROOT / "configs" / "paper" / "rebound-imdb.yaml"), "--models",
             "meta-llama/Llama-2-7b-hf", "--dtype", "bfloat16", "--train.gradient_checkpointing", "true",
             "--train.batch_size", "1", "--train.grad_accum", "8"]
    assert main([*flags, "--json"]) == 0
    (full,) = json.loads(capsys.readouterr().out)["models"]
    r = full["resources"]
    assert r["architecture_from"] == "known" and full["parameters"] == 6_738_415_616
    assert r["gpu_memory"]["weights"] == r["gpu_memory"]["gradients"] == pytest.approx(12.55, abs=0.01)
    assert r["gpu_memory"]["optimizer"] == pytest.approx(25.1, abs=0.01)
    assert r["fits"] == {"24GB": False, "40GB": False, "80GB": True} and 48 < r["gpu_memory_gib"] < 60
    assert main([*flags, "--lora.r", "16", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)["models"][0]["resources"]
    g = r["gpu_memory"]
    assert r["lora_parameters"] == 39_976_960 and g["training"] < 16 and r["peak"] == "measuring"
    assert g["measuring"] == pytest.approx(g["weights"] + g["optimizer"] + g["generation"], abs=0.02)
    assert r["fits"] == {"24GB": False, "40GB": True, "80GB": True}
    assert r["disk"]["kept_checkpoints"] == pytest.approx(12 * 39_976_960 * 4 / 2**30, abs=0.01)  # 3 seeds x 4 Q1
    assert main([*flags, "--lora.r", "16", "--policy.batch_size", "8"]) == 0
    text = capsys.readouterr().out
    assert "GPU memory per process: 16.1 GiB at the measuring peak" in text
    assert "fits one GPU (with 1.5 GiB for the CUDA runtime): 24GB yes, 40GB yes, 80GB yes" in text


def test_a_sharded_llama2_7b_rebound_plan(capsys):
    """--fsdp 4: each process holds a quarter of the model state (9.4 GiB of 50.2) and, while computing, two whole
    layers and the root unit; the main process measures on a whole copy of the model beside its shard, so measuring
    is the peak. By hand: Llama2-7B's root is 2 x 32000 x 4096 + 4096 parameters, a layer 202.4M."""
    from elasticity.cli import main

    flags = ["plan", "--config", str(ROOT / "configs" / "paper" / "rebound-imdb.yaml"), "--models",
             "meta-llama/Llama-2-7b-hf", "--dtype", "bfloat16", "--train.gradient_checkpointing", "true",
             "--train.batch_size", "1", "--train.grad_accum", "8", "--fsdp", "4"]
    assert main([*flags, "--json"]) == 0
    r = json.loads(capsys.readouterr().out)["models"][0]["resources"]
    g, gib = r["gpu_memory"], 2**30
    assert r["shards"] == 4 and r["sharding"] == "fsdp2" and r["peak"] == "measuring"
    assert g["shard_weights"] == pytest.approx(g["weights"] / 4, abs=0.01)
    assert g["shard_optimizer"] == pytest.approx(g["optimizer"] / 4, abs=0.01)
    root, n = 2 * 32000 * 4096 + 4096, 6_738_415_616
    layer = (n - root) / 32
    assert g["fsdp_whole_weights"] == pytest.approx(2 * (2 * layer + root) / gib, abs=0.01)
    assert g["fsdp_whole_gradients"] == pytest.approx(2 * (layer + root) / gib, abs=0.01)
    assert g["fsdp_logits"] == pytest.approx(2 * 512 * 32000 * 2 / gib, abs=0.01)  # one row of 512, and its grad
    assert g["measuring_other"] == pytest.approx(g["shard_weights"] + g["shard_optimizer"], abs=0.02)
    assert g["measuring"] == pytest.approx(g["measuring_other"] + g["weights"] + g["generation"], abs=0.03)
    assert g["training"] < 16 and r["fits"] == {"24GB": False, "40GB": True, "80GB": True}
    assert main(flags) == 0
    text = capsys.readouterr().out
    assert "sharded over 4 GPUs (FSDP2; the main process, which measures)" in text
    assert "a whole copy of the model 12.55" in text


def test_a_zero3_llama2_7b_rebound_plan(capsys):
    """--zero3 4 in bfloat16 weights: DeepSpeed keeps each shard's float32 master weights and moments (8 bytes a
    parameter for AdamW's two), and casts the step's gradient shard to float32; its resume state is its checkpoint
    of them, 12 bytes a parameter. By hand, with Llama2-7B's 6,738,415,616 parameters over 4 processes."""
    from elasticity.cli import main

    flags = ["plan", "--config", str(ROOT / "configs" / "paper" / "rebound-imdb.yaml"), "--models",
             "meta-llama/Llama-2-7b-hf", "--dtype", "bfloat16", "--train.gradient_checkpointing", "true",
             "--train.batch_size", "1", "--train.grad_accum", "8", "--zero3", "4"]
    assert main([*flags, "--json"]) == 0
    r = json.loads(capsys.readouterr().out)["models"][0]["resources"]
    g, d, gib, n = r["gpu_memory"], r["disk"], 2**30, 6_738_415_616
    assert r["shards"] == 4 and r["sharding"] == "zero3"
    assert g["shard_weights"] == pytest.approx(2 * n / 4 / gib, abs=0.01)
    assert g["shard_optimizer"] == pytest.approx(8 * n / 4 / gib, abs=0.01)
    assert g["zero3_master_weights"] == g["zero3_master_gradients"] == pytest.approx(4 * n / 4 / gib, abs=0.01)
    assert g["zero3_buckets"] == pytest.approx(1.9 * 4096**2 * 2 / gib, abs=0.01)
    assert g["measuring_other"] == pytest.approx(g["shard_weights"] + g["shard_optimizer"]
                                                 + g["zero3_master_weights"], abs=0.02)
    assert d["resume_state"] == pytest.approx(12 * n / gib, abs=0.01)
    assert 30 < g["training"] < 35 and r["fits"] == {"24GB": False, "40GB": False, "80GB": True}
    assert main(flags) == 0
    assert "sharded over 4 GPUs (ZeRO-3; the main process, which measures)" in capsys.readouterr().out


def _rss() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def _child(dtype: str, checkpointing: bool, hidden: int, layers: int, vocab: int, rows: int, length: int,
           pack_tokens: int = 0) -> None:
    """Build the model (random weights, in dtype), then train two optimizer steps (the second's backward pass has
    AdamW's state); print the resident memory before training and the peak (one JSON line)."""
    import torch
    from transformers import AutoModelForCausalLM

    from elasticity.data.tokenize import Example
    from elasticity.runs import Run
    from elasticity.train.loop import train

    torch.set_num_threads(1)  # the machine is shared; memory does not depend on threads
    AutoModelForCausalLM.from_config(_llama(64, 1, 16))  # transformers imports the model's modules on first use
    gc.collect()
    imported = _rss()
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(_llama(hidden, layers, vocab), dtype=getattr(torch, dtype))
    g = torch.Generator().manual_seed(0)
    examples = [Example(*(torch.randint(0, vocab, (length,), generator=g).tolist() for _ in range(2)))
                for _ in range(2 * rows)]
    cfg = TrainConfig(lr=1e-4, batch_size=rows, max_length=length, gradient_checkpointing=checkpointing,
                      pack_tokens=pack_tokens)
    gc.collect()
    loaded = _rss()
    with tempfile.TemporaryDirectory() as tmp:
        train(model, SimpleNamespace(pad_token_id=0, eos_token_id=0), examples, cfg, Run(Path(tmp)),
              progress_bar=False, save_final=False)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
    # one write(2) of a short line: the two processes of a launch share the pipe, and print may write in pieces
    os.write(1, (json.dumps({"imported": imported, "loaded": loaded, "peak": peak}) + "\n").encode())


MEASURED = [  # (dtype, gradient checkpointing, hidden, layers, vocab, rows, length[, pack_tokens])
    ("float32", False, 128, 2, 151_936, 8, 128),  # Qwen's vocabulary: the model state and the head dominate
    ("float32", True, 256, 8, 32_000, 8, 256),  # checkpointing: without it the activations would be +60%
    ("float32", False, 256, 8, 32_000, 8, 256, 512),  # padding-free: rows of 512, four a step (gradients accumulate)
]


@pytest.mark.slow
@pytest.mark.parametrize("case", MEASURED, ids=lambda c: f"{c[0]}-{'checkpointing' if c[1] else 'full'}"
                         f"{'-packed' if c[7:] else ''}")
def test_estimate_matches_the_peak_resident_memory_of_cpu_training(case):
    """The training part of the estimate (everything but the weights) against the measured increase of the peak
    resident set over the same process after loading the model; the weights against what loading added.

    The baseline is taken in the child itself, after torch, transformers and the model are in: the Python runtime
    and its libraries are not GPU memory. glibc's malloc is told to map every block over 1 MiB on its own, so that
    freed tensors leave the resident set at once (by default a sliding threshold keeps blocks up to 32 MiB in the
    heap, a CPU allocator's slack of ~200 MiB here; a GPU's caching allocator has its own: RUNTIME_BYTES)."""
    dtype, checkpointing, hidden, layers, vocab, rows, length, *pack = case
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(MIB), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, __file__, json.dumps(case)], capture_output=True, text=True, env=env,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    measured = json.loads(done.stdout.strip().splitlines()[-1])
    config = _llama(hidden, layers, vocab)
    n = memory.meta_parameters(config)
    train = TrainConfig(batch_size=rows, max_length=length, gradient_checkpointing=checkpointing,
                        pack_tokens=pack[0] if pack else 0)
    parts = memory.training_memory(n, memory.Shape.of(config), dtype, train)
    estimate, increase = parts["training"] - parts["weights"], measured["peak"] - measured["loaded"]
    print(f"{case}: training part estimated {estimate / MIB:.0f} MiB, measured {increase / MIB:.0f} MiB; weights "
          f"{parts['weights'] / MIB:.0f} MiB, loading added {(measured['loaded'] - measured['imported']) / MIB:.0f}")
    assert abs(estimate / increase - 1) <= 0.25
    assert abs(parts["weights"] / (measured["loaded"] - measured["imported"]) - 1) <= 0.25



@pytest.mark.slow
@pytest.mark.parametrize("sharding", ["fsdp2", "zero3"])
def test_the_sharded_estimate_matches_the_peak_resident_memory_of_two_cpu_processes(sharding):
    """FSDP2 or ZeRO-3 over two CPU processes (gloo), Qwen's vocabulary: each process's peak resident set over its
    baseline (after the imports, before the model) against the sharded training estimate (`fsdp_memory`), within 25%.
    Here the whole logits of the sharded model's own forward dominate, then the root unit held whole."""
    from elasticity.experiments import fsdp_memory

    case = ("float32", False, 128, 2, 151_936, 8, 128)
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(MIB), "OMP_NUM_THREADS": "1"}
    launcher = Path(sys.executable).with_name("accelerate")
    done = subprocess.run([str(launcher), "launch", "--config_file", str(ROOT / f"configs/accelerate/{sharding}.yaml"),
                           "--num_processes", "2", __file__, json.dumps(case)], capture_output=True, text=True,
                          env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    measured = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert len(measured) == 2
    config = _llama(128, 2, 151_936)
    n, shape = memory.meta_parameters(config), memory.Shape.of(config)
    train = TrainConfig(batch_size=8, max_length=128)
    parts = fsdp_memory.sharded_training(memory.training_memory(n, shape, "float32", train), 2, n, shape, "float32",
                                         train, zero3=sharding == "zero3")
    for m in measured:
        increase = m["peak"] - m["imported"]
        print(f"{sharding}: estimated {parts['training'] / MIB:.0f} MiB, measured {increase / MIB:.0f} MiB")
        assert abs(parts["training"] / increase - 1) <= 0.25


GPU_CHECK = ROOT / "benchmarks" / "gpu_check.py"


def test_gpu_check_without_cuda_exits_2_in_one_line():
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is here: gpu_check would run")
    done = subprocess.run([sys.executable, str(GPU_CHECK)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and done.stdout == ""
    assert len(done.stderr.strip().splitlines()) == 1 and "no CUDA device" in done.stderr


def test_gpu_check_knows_the_peak_of_the_gpus_it_names():
    import importlib.util

    spec = importlib.util.spec_from_file_location("gpu_check", GPU_CHECK)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.peak_flops("NVIDIA H100 80GB HBM3") == module.peak_flops("NVIDIA H200") == 989e12
    assert module.peak_flops("NVIDIA A100-SXM4-80GB") == 312e12 and module.peak_flops("Tesla T4") is None


@pytest.mark.slow
def test_gpu_check_cpu_smoke_runs_the_whole_path():
    """--cpu-smoke: the rebound chain, the timed training and the plan's estimate on a tiny model; one JSON."""
    done = subprocess.run([sys.executable, str(GPU_CHECK), "--cpu-smoke"], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    (line,) = done.stdout.strip().splitlines()  # the rebound's own lines went to stderr
    result = json.loads(line)
    t, r = result["training"], result["rebound"]
    assert result["cpu_smoke"] and t["steps"] == 2 and t["tokens"] == 2 * 4 * 64 and t["tokens_per_s"] > 0
    assert t["mfu"] == "unknown" and t["estimate_gib"]["training"] > t["estimate_gib"]["weights"] > 0
    assert r["plan_peak"] in ("training", "measuring") and r["plan_gpu_memory"]["total"] > 0
    assert "peak_rss_gib" in r and r["estimate_over_allocated"] is None


if __name__ == "__main__":  # the measured training run, in a process of its own
    _child(*json.loads(sys.argv[1]))
