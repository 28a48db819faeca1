"""Pre-training on the embedded world: checkpoints by token count, the held-out table, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from elasticity.cli import main

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["--config", str(ROOT / "configs" / "pretrain-tiny.yaml")]


@pytest.mark.slow
def test_pretrain_report_on_a_small_world(tmp_path):
    assert main(["pretrain", "--runs-dir", str(tmp_path), *SMALL]) == 0
    (report,) = tmp_path.glob("pretrain-report-*")
    rows = json.loads((report / "table.json").read_text())
    assert [r["checkpoint"] for r in rows] == ["tokens-4000", "tokens-8000", "model"]
    assert [r["tokens"] for r in rows] == sorted(r["tokens"] for r in rows)
    for r in rows:  # a model cannot beat the true entropy on average by more than noise
        for c in ("neutral", "positive", "negative"):
            assert r[c]["bits_per_token"] > r[c]["true_bits_per_token"] - 0.1
    first, last = rows[0], rows[-1]
    assert last["neutral"]["bits_per_token"] < first["neutral"]["bits_per_token"]  # it learns
    samples = json.loads((report / "samples_report.json").read_text())
    drawn = [json.loads(line) for line in (report / "samples.jsonl").read_text().splitlines()]
    assert samples["samples"] == len(drawn) == 20  # one sample per held-out opening
    p = [d["p_positive"] for d in drawn]  # the rate is the mean oracle posterior of exactly these samples
    assert samples["positive_rate"] == pytest.approx(sum(p) / 20, abs=1e-12)
    assert samples["positive_rate_se"] == pytest.approx(
        (sum((x - sum(p) / 20) ** 2 for x in p) / 19 / 20) ** 0.5, abs=1e-12)
    assert abs(samples["positive_rate_implied_by_mixture"] - 0.4) < 1e-9  # 0.2 / (0.2 + 0.3)
    # a second call reuses every stage
    stamp = (report / "DONE").stat().st_mtime_ns
    assert main(["pretrain", "--runs-dir", str(tmp_path), *SMALL]) == 0
    assert (report / "DONE").stat().st_mtime_ns == stamp


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--sizes", "7b"], "unknown model size preset '7b'"),
        (["--tokens", "100"], "smaller than one batch"),
        (["--world.mixture.positive", "-1"], "negative"),
    ],
)
def test_bad_input_exits_2(tmp_path, capsys, flags, message):
    assert main(["pretrain", "--runs-dir", str(tmp_path), *SMALL, *flags]) == 2
    assert message in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_the_default_sampling_policy_suits_the_default_model(tiny_assets):
    """The report samples 160 new tokens from a model built with a 128-token context (rotary positions, so
    allowed): the policy of the default pre-training must pass generation's checks on such a model."""
    from elasticity.experiments.pretrain import Config
    from elasticity.generate import generate
    from elasticity.models.hf import load_tokenizer
    from elasticity.models.tiny import build_tiny_model

    cfg = Config()
    tok = load_tokenizer(str(tiny_assets["tok"]))
    model = build_tiny_model(cfg.sizes[0], len(tok), cfg.train.max_length, seed=0)
    assert cfg.samples.max_new_tokens > cfg.train.max_length
    samples = generate(model, tok, ["I watched The Long Winter last Friday with my sister."], cfg.samples)
    assert len(samples) == 1 and samples[0]["new_tokens"] > 0
