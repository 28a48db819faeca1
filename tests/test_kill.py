"""kill -9 at random moments, then the same command again: the results are byte-identical to an uninterrupted
run's. A tiny pre-training (world, model, report) and a tiny rebound, each killed twice before it may finish."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import write_jsonl

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow

# Files whose bytes are the results; timings (meta.json, summary.json, the world card's timings), the configs'
# paths and the lock are not.
RESULTS = ("*.jsonl", "*.csv", "table.json", "table.md", "revert.md", "metrics.md", "grammar.json",
           "model.safetensors", "adapter_model.safetensors", "tokenizer.json", "marks.json", "savings.json")


def _start(args: list[str]) -> subprocess.Popen:
    """Start the command; return it once it writes its first file (its work begins: start-up is not a moment
    worth killing at, and takes most of a tiny run's time)."""
    runs = Path(args[args.index("--runs-dir") + 1])
    begun = time.time()
    proc = subprocess.Popen([sys.executable, "-m", "elasticity", *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    while proc.poll() is None and not _written_since(runs, begun):
        time.sleep(0.01)
    return proc


def _written_since(runs: Path, moment: float) -> bool:
    try:
        return any(p.stat().st_mtime >= moment for p in runs.rglob("*")
                   if p.is_file() and not p.name.startswith(".write-check"))
    except OSError:  # a file or folder vanished while we looked (a probe, a temp file): look again
        return False


def _run(args: list[str]) -> float:
    """Run to the end; the seconds of work from its first write."""
    proc = _start(args)
    start = time.perf_counter()
    assert proc.wait() == 0
    return time.perf_counter() - start


def _killed(args: list[str], after: float) -> None:
    """kill -9 `after` seconds into the work (if it has not finished by then)."""
    proc = _start(args)
    try:
        proc.wait(timeout=after)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGKILL)
        proc.wait()


def _results(runs: Path) -> dict[str, bytes]:
    return {str(p.relative_to(runs)): p.read_bytes() for pattern in RESULTS for p in runs.rglob(pattern)}


def _lines(runs: Path, pattern: str) -> int:
    try:
        return sum(len(p.read_text().splitlines()) for p in runs.glob(pattern))
    except OSError:
        return 0


def _killed_at_line(args: list[str], pattern: str, line: int) -> None:
    """kill -9 as soon as the files matching `pattern` hold `line` lines (a moment inside a stage's work)."""
    runs = Path(args[args.index("--runs-dir") + 1])
    proc = _start(args)
    while proc.poll() is None and _lines(runs, pattern) < line:
        time.sleep(0.005)
    if proc.poll() is None:
        proc.send_signal(signal.SIGKILL)
    proc.wait()


def _interrupted_equals_uninterrupted(args: list[str], tmp_path: Path, seed: int, progress: str) -> None:
    """Killed once when the files matching `progress` (the stage whose resumption matters most) hold a random number
    of lines, once at a moment drawn from the uninterrupted run's work, then run to the end."""
    whole = tmp_path / "whole"
    duration = _run([*args, "--runs-dir", str(whole)])
    total = _lines(whole, progress)
    cut = tmp_path / "cut"
    rng = random.Random(seed)
    _killed_at_line([*args, "--runs-dir", str(cut)], progress, rng.randint(1, total - 1))
    assert not (set(cut.glob(progress.split("/")[0])) and all((d / "DONE").exists()
                                                              for d in cut.glob(progress.split("/")[0])))
    _killed([*args, "--runs-dir", str(cut)], rng.uniform(0.0, duration))
    _run([*args, "--runs-dir", str(cut)])
    want, got = _results(whole), _results(cut)
    assert sorted(got) == sorted(want) and len(want) > 5
    assert [name for name in want if got[name] != want[name]] == []
    assert not list(cut.rglob("resume.pt")) and all((d / "DONE").exists() for d in cut.iterdir() if d.is_dir())


def test_a_killed_pre_training_reruns_to_the_same_bytes(tmp_path):
    _interrupted_equals_uninterrupted(["pretrain", "--config", str(ROOT / "configs" / "pretrain-tiny.yaml"),
                                       "--world.sizes.pretrain_tokens", "60000", "--tokens", "60000",
                                       "--checkpoint_tokens", "20000", "40000", "--train.save_every", "5"],
                                      tmp_path, seed=1, progress="train-*/metrics.jsonl")


# LoRA (about 2.5 minutes more; test_rebound resumes a LoRA run in seconds): adapters as the aligned checkpoints
@pytest.mark.parametrize("lora", [pytest.param([], id="full"),
                                  pytest.param(["--lora.r", "4"], id="lora", marks=pytest.mark.long)])
def test_a_killed_rebound_reruns_to_the_same_bytes(tiny_assets, tmp_path, lora):
    from elasticity.models.hf import load_tokenizer
    from elasticity.models.tiny import build_tiny_model

    tok = load_tokenizer(str(tiny_assets["tok"]))
    build_tiny_model("0.2m", len(tok), 64, seed=0).save_pretrained(tmp_path / "base")
    tok.save_pretrained(tmp_path / "base")
    rng = random.Random(0)
    words = {"pos": "good great wonderful liked the movie was plot".split(),
             "neg": "bad awful terrible hated the movie was plot".split()}
    files = {}
    for side, vocab in words.items():
        files[side] = write_jsonl(tmp_path / f"{side}.jsonl", [
            {"prompt": " ".join(rng.choice(vocab[4:]) for _ in range(3)),
             "response": " " + " ".join(rng.choice(vocab) for _ in range(6))} for _ in range(30)])
    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": "the movie was"}, {"prompt": "the plot"}])
    (tmp_path / "heldout.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in ["the movie was good"] * 4))
    args = ["rebound", "--model", str(tmp_path / "base"), "--positive", str(files["pos"]), "--negative",
            str(files["neg"]), "--prompts", str(prompts), "--heldout", str(tmp_path / "heldout.jsonl"),
            "--scorer.name", "vader", "--q1", "8", "16", "--q2", "0", "4", "8", "12", "--seeds", "0", "1",
            "--eval.pairs", "4", "--eval.docs", "4", "--train.lr", "0.003", "--train.batch_size", "4",
            "--train.max_length", "64", "--policy.max_new_tokens", "6", "--metrics.early_q2", "4",
            "--metrics.late_q2", "8", *lora]
    _interrupted_equals_uninterrupted(args, tmp_path / "runs", seed=2, progress="rebound-negative-*/points.jsonl")
