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


GOLDEN = Path(__file__).parent / "golden"


def assert_matches_golden(run_dir: Path, names: list[str], folder: str) -> None:
    """The result files equal the ones recorded in tests/golden/<folder>: every cell of every CSV, floats to
    1e-6 relative (a CPU with other vector units may round differently), everything else exactly.

    Set ELASTICITY_WRITE_GOLDEN=1 to record them anew after an intended change (and say why in the commit).
    """
    import csv
    import math
    import os

    dest = GOLDEN / folder
    if os.environ.get("ELASTICITY_WRITE_GOLDEN"):
        dest.mkdir(parents=True, exist_ok=True)
        for name in names:
            (dest / name).write_bytes((run_dir / name).read_bytes())
        return
    for name in names:
        want = list(csv.reader(open(dest / name)))
        got = list(csv.reader(open(run_dir / name)))
        assert want[0] == got[0], f"{name}: columns changed"
        assert len(want) == len(got), f"{name}: {len(got)} rows instead of {len(want)}"
        for i, (a, b) in enumerate(zip(want, got)):
            for column, x, y in zip(want[0], a, b):
                try:
                    fx, fy = float(x), float(y)
                except ValueError:
                    assert x == y, f"{name} row {i} {column}: {y!r} instead of {x!r}"
                    continue
                same = fx == fy or (math.isnan(fx) and math.isnan(fy)) or abs(fx - fy) <= 1e-6 * max(abs(fx), abs(fy))
                assert same, f"{name} row {i} {column}: {y} instead of {x}"
