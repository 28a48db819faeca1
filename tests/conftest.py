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
