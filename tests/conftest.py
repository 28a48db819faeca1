"""Shared fixtures: a tiny tokenizer and small JSONL datasets, built locally (no hub)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

WORDS = "the movie was good bad great awful plot actor scene film i liked hated it and but very".split()


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


@pytest.fixture(scope="module")
def one_thread():
    """Models this small gain nothing from a second thread, and on a shared 2-core machine two threads that
    wait for each other run many times slower (2-3x for the rebound runs). Modules that train or score tiny
    models use it (`pytestmark = pytest.mark.usefixtures("one_thread")`); restored afterwards."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_assets(tmp_path_factory) -> dict[str, Path]:
    """A 300-token BPE tokenizer and text / prompt-response JSONL files from a toy word soup."""
    from elasticity.models.tiny import train_tokenizer

    root = tmp_path_factory.mktemp("tiny")
    rng = random.Random(0)
    texts = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(8, 30))) for _ in range(400)]
    tok = train_tokenizer(texts, 300)
    tok.save_pretrained(root / "tok")
    pairs = [{"prompt": " ".join(t.split()[:3]), "response": " " + " ".join(t.split()[3:])} for t in texts]
    return {
        "tok": root / "tok",
        "text": write_jsonl(root / "text.jsonl", [{"text": t} for t in texts]),
        "sft": write_jsonl(root / "sft.jsonl", pairs),
        "root": root,
    }


@pytest.fixture(scope="session")
def scaling_tiny(tmp_path_factory) -> tuple[Path, Path]:
    """(runs directory, scaling run) of configs/scaling-tiny.yaml through the CLI (about 35 s), shared by the
    scaling and the rates tests; tests that add runs use their own runs directory or only add stages."""
    import contextlib
    import io

    import torch

    from elasticity.cli import main

    runs, out, before = tmp_path_factory.mktemp("scaling-tiny"), io.StringIO(), torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with contextlib.redirect_stdout(out):
            assert main(["scaling", "--runs-dir", str(runs), "--config",
                         str(Path(__file__).resolve().parents[1] / "configs" / "scaling-tiny.yaml")]) == 0
    finally:
        torch.set_num_threads(before)
    return runs, Path(out.getvalue().strip().splitlines()[-1])


GOLDEN = Path(__file__).parent / "golden"
OTHER_CPU_RTOL, OTHER_CPU_ATOL = 1e-3, 1e-6  # against a recording from another kind of CPU


def cpu_kind() -> str:
    """The vector units torch's kernels use here and the CPU's maker ("avx2-amd", "avx512-intel", ...): float
    rounding follows both (MKL picks its code path by vendor as well as by instruction set: an AMD and an Intel CPU
    with AVX-512 round differently), and a short training chain carries a rounding difference into the 5th digit of
    a difference of losses."""
    import platform

    import torch

    vendor = platform.processor() or "unknown"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("vendor_id"):
                vendor = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    maker = {"GenuineIntel": "intel", "AuthenticAMD": "amd"}.get(vendor, vendor.lower().replace(" ", "_"))
    return f"{torch.backends.cpu.get_cpu_capability().lower()}-{maker}"


def _cells(text: str) -> list[str]:
    return text.split(";")  # a per-seed cell holds several numbers


def assert_matches_golden(run_dir: Path, names: list[str], folder: str) -> None:
    """The result files equal the ones recorded in tests/golden/<cpu kind>/<folder>: every cell of every CSV,
    floats to 1e-6 relative, everything else exactly. Where this kind of CPU has no recording, the floats are
    compared with another kind's to 1e-3 relative (plus 1e-6 absolute): rounding, never a changed metric.

    Set ELASTICITY_WRITE_GOLDEN=1 to record them anew for this kind of CPU after an intended change (and say why in
    the commit; record every kind the project runs on).
    """
    import csv
    import math
    import os

    dest = GOLDEN / cpu_kind() / folder
    if os.environ.get("ELASTICITY_WRITE_GOLDEN"):
        dest.mkdir(parents=True, exist_ok=True)
        for name in names:
            (dest / name).write_bytes((run_dir / name).read_bytes())
        return
    rtol, atol = 1e-6, 0.0
    if not dest.exists():
        recorded = sorted(p for p in GOLDEN.glob(f"*/{folder}") if p.is_dir())
        assert recorded, f"no recording of {folder} in {GOLDEN}"
        dest, rtol, atol = recorded[0], OTHER_CPU_RTOL, OTHER_CPU_ATOL
    wrong = []
    for name in names:
        want = list(csv.reader(open(dest / name)))
        got = list(csv.reader(open(run_dir / name)))
        assert want[0] == got[0], f"{name}: columns changed"
        assert len(want) == len(got), f"{name}: {len(got)} rows instead of {len(want)}"
        for i, (a, b) in enumerate(zip(want, got)):
            for column, x, y in zip(want[0], a, b):
                xs, ys = _cells(x), _cells(y)
                try:
                    pairs = [(float(u), float(v)) for u, v in zip(xs, ys, strict=True)]
                except ValueError:
                    assert x == y, f"{name} row {i} {column}: {y!r} instead of {x!r}"
                    continue
                for fx, fy in pairs:
                    if fx == fy or (math.isnan(fx) and math.isnan(fy)):
                        continue
                    if abs(fx - fy) > rtol * max(abs(fx), abs(fy)) + atol:
                        wrong.append(f"{name} row {i} {column}: {y} instead of {x} (abs {abs(fx - fy):.2e})")
    assert not wrong, f"{len(wrong)} cells differ from {dest}; " + "; ".join(wrong[:20])


# ---- the paper's datasets in their real schemas, tiny, in the layouts they come in ----------------------------

GOOD_WORDS = "good great wonderful liked loved excellent".split()
BAD_WORDS = "bad awful terrible hated boring weak".split()


def _sentence(rng: random.Random, words: list[str], n: int) -> str:
    return " ".join(rng.choice(words + WORDS) for _ in range(n))


def _save_parquet(path: Path, rows: list[dict]) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def build_paper_datasets(root: Path) -> dict[str, Path]:
    """IMDb (a hub-layout parquet folder), BeaverTails (a `save_to_disk` DatasetDict), PKU-SafeRLHF (a folder of
    JSONL files), Alpaca (one .parquet file), TruthfulQA generation (a hub-layout parquet folder with list
    fields) and HH-RLHF (a folder of JSONL files), with the fields and split names of the real datasets."""
    import datasets

    rng = random.Random(7)
    out = {}

    def review(label: int) -> str:
        words = GOOD_WORDS if label else BAD_WORDS
        return _sentence(rng, words, 10) + " <br /><br /> " + _sentence(rng, words, rng.randint(12, 20))

    imdb = root / "imdb"
    for split, n in (("train", 40), ("test", 16), ("unsupervised", 4)):
        rows = [{"text": review(i % 2), "label": i % 2 if split != "unsupervised" else -1} for i in range(n)]
        _save_parquet(imdb / "plain_text" / f"{split}-00000-of-00001.parquet", rows)
    out["imdb"] = imdb

    def qa(safe: bool) -> dict:
        return {"prompt": "how do i " + _sentence(rng, [], 4) + "?",
                "response": _sentence(rng, GOOD_WORDS if safe else BAD_WORDS, rng.randint(5, 12)),
                "category": {"violence,aiding_and_abetting,incitement": not safe, "privacy_violation": False},
                "is_safe": safe}

    beaver = datasets.DatasetDict({
        "30k_train": datasets.Dataset.from_list([qa(i % 3 != 0) for i in range(48)]),
        "30k_test": datasets.Dataset.from_list([qa(i % 2 == 0) for i in range(12)]),
    })
    beaver.save_to_disk(str(root / "beavertails"))
    out["beavertails"] = root / "beavertails"

    pku = root / "pku-saferlhf" / "data"
    pku.mkdir(parents=True)
    for split, n in (("train", 24), ("test", 8)):
        rows = []
        for i in range(n):
            safer = i % 2
            r = {"prompt": "tell me " + _sentence(rng, [], 4), "response_0": _sentence(rng, [], 6),
                 "response_1": _sentence(rng, [], 6), "is_response_0_safe": safer == 0,
                 "is_response_1_safe": safer == 1, "better_response_id": 1 - safer, "safer_response_id": safer}
            rows.append(r)
        write_jsonl(pku / f"{split}.jsonl", rows)
    out["pku-saferlhf"] = root / "pku-saferlhf"

    alpaca_rows = []
    for i in range(40):
        extra = _sentence(rng, [], 3) if i % 3 == 0 else ""
        instruction, output = "describe the " + _sentence(rng, [], 3), _sentence(rng, GOOD_WORDS, 8)
        alpaca_rows.append({"instruction": instruction, "input": extra, "output": output,
                            "text": f"Below is an instruction.\n\n### Instruction:\n{instruction}\n\n### Response:\n"
                                    f"{output}"})
    out["alpaca"] = _save_parquet(root / "alpaca" / "alpaca.parquet", alpaca_rows)

    tqa = []
    for i in range(30):
        tqa.append({"type": "Adversarial", "category": "Misconceptions", "question": f"what is {i} " +
                    _sentence(rng, [], 3) + "?", "best_answer": _sentence(rng, GOOD_WORDS, 5),
                    "correct_answers": [_sentence(rng, GOOD_WORDS, 5)],
                    "incorrect_answers": [_sentence(rng, BAD_WORDS, 5), _sentence(rng, BAD_WORDS, 4)],
                    "source": "https://example.org"})
    _save_parquet(root / "truthfulqa" / "generation" / "validation-00000-of-00001.parquet", tqa)
    out["truthfulqa"] = root / "truthfulqa"

    hh = root / "hh-rlhf"
    hh.mkdir()
    for split, n in (("train", 20), ("test", 6)):
        rows = []
        for _ in range(n):
            talk = f"\n\nHuman: {_sentence(rng, [], 5)}\n\nAssistant: {_sentence(rng, [], 4)}\n\nHuman: " \
                   f"{_sentence(rng, [], 4)}\n\nAssistant:"
            rows.append({"chosen": talk + " " + _sentence(rng, GOOD_WORDS, 5),
                         "rejected": talk + " " + _sentence(rng, BAD_WORDS, 5)})
        write_jsonl(hh / f"{split}.jsonl", rows)
    out["hh-rlhf"] = hh
    return out


@pytest.fixture(scope="session")
def paper_assets(tiny_assets, tmp_path_factory) -> dict[str, Path]:
    """The real-schema datasets, two tiny base models (the second a byte copy of the first: the same weights), a
    sentiment classifier with NEGATIVE / POSITIVE labels and a cost model laid out as safe-rlhf's (score_head)."""
    import shutil

    import torch
    from safetensors.torch import load_file, save_file
    from transformers import (
        LlamaConfig,
        LlamaForSequenceClassification,
        RobertaConfig,
        RobertaForSequenceClassification,
    )

    from elasticity.models.hf import load_tokenizer
    from elasticity.models.tiny import build_tiny_model

    root = tmp_path_factory.mktemp("paper")
    out = build_paper_datasets(root)
    tok = load_tokenizer(str(tiny_assets["tok"]))
    ids = {"pad_token_id": tok.pad_token_id, "bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id}
    base = build_tiny_model("0.2m", len(tok), 160, seed=0)
    base.save_pretrained(root / "base")
    tok.save_pretrained(root / "base")
    shutil.copytree(root / "base", root / "base-copy")
    torch.manual_seed(0)
    RobertaForSequenceClassification(RobertaConfig(
        vocab_size=len(tok), hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
        max_position_embeddings=520, num_labels=2, id2label={0: "NEGATIVE", 1: "POSITIVE"},
        label2id={"NEGATIVE": 0, "POSITIVE": 1}, **ids)).save_pretrained(root / "sentiment")
    tok.save_pretrained(root / "sentiment")
    torch.manual_seed(1)
    LlamaForSequenceClassification(LlamaConfig(
        vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=2, max_position_embeddings=512, num_labels=1, **ids)).save_pretrained(root / "cost")
    tok.save_pretrained(root / "cost")
    weights = root / "cost" / "model.safetensors"
    state = load_file(str(weights))
    save_file({k.replace("score.", "score_head."): v for k, v in state.items()}, str(weights),
              metadata={"format": "pt"})
    return {**out, "root": root, "base": root / "base", "base_copy": root / "base-copy",
            "sentiment": root / "sentiment", "cost": root / "cost"}
