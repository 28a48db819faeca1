"""Scorers: each real-model scorer on a tiny model built and saved here, checked against the raw model's
own forward pass or against hand-set weights whose outputs are known exactly."""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import math
import random
from pathlib import Path

import pytest
import torch

from elasticity.errors import UserError
from elasticity.scorers import SCORERS, ScorerConfig, build_scorer

WORDS = "the movie was good bad great awful plot actor scene film i liked hated it and but very".split()
LABELS = {0: "NEGATIVE", 1: "NEUTRAL", 2: "POSITIVE"}
# Texts of clearly different lengths, so batches need padding.
TEXTS = [
    "good",
    "the movie was good",
    "i hated it and the plot was awful but the actor was very good",
    "film",
    "the scene was great and i liked it",
    "bad bad bad",
    "very good film",
]


@pytest.fixture(scope="module")
def assets(tmp_path_factory) -> dict:
    """A 300-token BPE tokenizer and tiny classifier / score models saved as safetensors folders."""
    from transformers import (
        GPT2Config,
        GPT2ForSequenceClassification,
        LlamaConfig,
        LlamaForCausalLM,
        LlamaForSequenceClassification,
        RobertaConfig,
        RobertaForSequenceClassification,
    )

    from elasticity.models.tiny import train_tokenizer

    root = tmp_path_factory.mktemp("scorers")
    rng = random.Random(0)
    corpus = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 20))) for _ in range(200)]
    tok = train_tokenizer(corpus, 300)
    ids = {"pad_token_id": tok.pad_token_id, "bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id}
    out = {"root": root, "tok": tok}

    def save(model, name: str) -> Path:
        model.save_pretrained(root / name)
        tok.save_pretrained(root / name)
        return root / name

    torch.manual_seed(0)
    roberta = RobertaForSequenceClassification(
        RobertaConfig(
            vocab_size=len(tok), hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
            max_position_embeddings=64, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
            initializer_range=0.5, num_labels=3, id2label=LABELS, **ids,
        )
    ).eval()
    out["roberta"], out["roberta_dir"] = roberta, save(roberta, "roberta")

    fixed = copy.deepcopy(roberta)
    with torch.no_grad():  # hand-set head: logits (0, ln 3, ln 4) for every text, softmax (1/8, 3/8, 4/8)
        fixed.classifier.out_proj.weight.zero_()
        fixed.classifier.out_proj.bias.copy_(torch.tensor([0.0, math.log(3.0), math.log(4.0)]))
    out["roberta_fixed_dir"] = save(fixed, "roberta_fixed")

    llama_cfg = dict(
        vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=2, max_position_embeddings=64, initializer_range=0.5, **ids,
    )
    torch.manual_seed(1)
    llama = LlamaForSequenceClassification(LlamaConfig(num_labels=1, **llama_cfg)).eval()
    out["llama"], out["llama_dir"] = llama, save(llama, "llama")

    torch.manual_seed(2)
    gpt2 = GPT2ForSequenceClassification(
        GPT2Config(
            vocab_size=len(tok), n_embd=16, n_layer=2, n_head=2, n_positions=64, resid_pdrop=0.0, embd_pdrop=0.0,
            attn_pdrop=0.0, initializer_range=0.5, num_labels=1, **ids,
        )
    ).eval()
    out["gpt2"], out["gpt2_dir"] = gpt2, save(gpt2, "gpt2")

    torch.manual_seed(3)
    out["causal_dir"] = save(LlamaForCausalLM(LlamaConfig(**llama_cfg)), "causal")
    torch.manual_seed(4)
    out["three_dir"] = save(LlamaForSequenceClassification(LlamaConfig(num_labels=3, **llama_cfg)), "three")
    return out


def raw_ids(tok, text: str) -> list[int]:
    return tok(text, add_special_tokens=True)["input_ids"]


# --- classifier ---------------------------------------------------------------------------------------


def test_classifier_label_mapping_by_name_and_index(assets):
    """The docstring's example: softmax (1/8, 3/8, 4/8) for labels (NEGATIVE, NEUTRAL, POSITIVE)."""
    cases = [
        ({"labels": ("POSITIVE",)}, 0.5),
        ({"labels": ("positive",)}, 0.5),  # case-insensitive when unique
        ({"label_indices": (1, 2)}, 0.875),
        ({"labels": ("NEUTRAL",), "label_indices": (2,)}, 0.875),
        ({"label_indices": (0,)}, 0.125),
    ]
    for kwargs, expected in cases:
        scorer = build_scorer(ScorerConfig(name="classifier", model=str(assets["roberta_fixed_dir"]), **kwargs))
        assert scorer.describe()["aligned_labels"] == {str(i): n for i, n in enumerate(("NEGATIVE", "NEUTRAL",
                                                                                           "POSITIVE")) if i in
                                                       scorer.aligned}
        assert scorer.score(TEXTS) == pytest.approx([expected] * len(TEXTS), abs=1e-6), kwargs


def test_classifier_equals_raw_forward_softmax(assets):
    tok, model = assets["tok"], assets["roberta"]
    torch.manual_seed(0)
    scorer = build_scorer(
        ScorerConfig(name="classifier", model=str(assets["roberta_dir"]), labels=("POSITIVE",), batch_size=3)
    )
    got = scorer.score(TEXTS)
    with torch.no_grad():
        want = [model(torch.tensor([raw_ids(tok, t)])).logits.softmax(-1)[0, 2].item() for t in TEXTS]
    assert got == pytest.approx(want, abs=1e-5)
    assert max(want) - min(want) > 0.05  # the texts really score differently
    assert scorer.truncated == 0 and scorer.scored == len(TEXTS)


def test_classifier_counts_truncation(assets, caplog):
    tok, model = assets["tok"], assets["roberta"]
    scorer = build_scorer(
        ScorerConfig(name="classifier", model=str(assets["roberta_dir"]), labels=("POSITIVE",), max_length=4)
    )
    with caplog.at_level(logging.WARNING, logger="elasticity.scorers"):
        got = scorer.score(TEXTS)
    long = sum(len(raw_ids(tok, t)) > 4 for t in TEXTS)
    assert long >= 3 and scorer.truncated == long
    assert f"{long} of {len(TEXTS)} texts truncated to 4 tokens" in caplog.text
    with torch.no_grad():
        want = [model(torch.tensor([raw_ids(tok, t)[:4]])).logits.softmax(-1)[0, 2].item() for t in TEXTS]
    assert got == pytest.approx(want, abs=1e-5)


def test_classifier_label_errors(assets):
    model = str(assets["roberta_dir"])
    bad = [
        ({"labels": ("HAPPY",)}, "no label 'HAPPY'"),
        ({"label_indices": (3,)}, "no label index 3"),
        ({}, "say which label is aligned"),
        ({"label_indices": (0, 1, 2)}, "every label"),
    ]
    for kwargs, message in bad:
        with pytest.raises(UserError, match=message) as err:
            build_scorer(ScorerConfig(name="classifier", model=model, **kwargs))
        assert "0=NEGATIVE, 1=NEUTRAL, 2=POSITIVE" in str(err.value)


def test_classifier_refuses_a_checkpoint_without_a_head(assets):
    with pytest.raises(UserError, match="would be random"):
        build_scorer(ScorerConfig(name="classifier", model=str(assets["causal_dir"]), labels=("LABEL_1",)))


# --- score model ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
@pytest.mark.parametrize("side", ["right", "left"])
def test_score_model_batched_equals_unbatched_and_raw(assets, arch, side):
    """Padding on either side gives the unpadded values; GPT-2's absolute positions make left padding bite."""
    tok, model, folder = assets["tok"], assets[arch], str(assets[f"{arch}_dir"])
    cfg = ScorerConfig(name="score-model", model=folder, padding_side=side, batch_size=4)
    batched = build_scorer(cfg).score(TEXTS)
    single = build_scorer(dataclasses.replace(cfg, batch_size=1)).score(TEXTS)
    with torch.no_grad():  # transformers' own pooling, on one unpadded text at a time
        raw = [model(torch.tensor([raw_ids(tok, t)])).logits[0, 0].item() for t in TEXTS]
    assert single == pytest.approx(raw, abs=1e-5)
    assert batched == pytest.approx(raw, abs=1e-5)
    assert max(raw) - min(raw) > 1e-3


def test_score_model_sign_and_sigmoid_on_a_hand_set_head(assets, tmp_path):
    """GPT-2 with ln_f = (weight 0, bias e_0) and head weight 2 e_0: the end value is exactly 2 for every text."""
    model = assets["gpt2"]
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        model.transformer.ln_f.weight.zero_()
        model.transformer.ln_f.bias.zero_()
        model.transformer.ln_f.bias[0] = 1.0
        model.score.weight.zero_()
        model.score.weight[0, 0] = 2.0
    model.save_pretrained(tmp_path)
    assets["tok"].save_pretrained(tmp_path)
    model.load_state_dict(state)  # the shared fixture stays as it was
    expected = {(1, False): 2.0, (-1, False): -2.0, (-1, True): 1 / (1 + math.exp(2.0)), (1, True): 0.8807971}
    for (sign, squash), value in expected.items():
        scorer = build_scorer(ScorerConfig(name="score-model", model=str(tmp_path), sign=sign, sigmoid=squash))
        assert scorer.score(TEXTS[:3]) == pytest.approx([value] * 3, abs=1e-6)
    assert expected[(-1, True)] == pytest.approx(0.1192, abs=1e-4)  # the docstring's example


def test_score_model_reads_appended_eos_even_when_pad_is_eos(assets, tmp_path):
    """With pad id = EOS id, the last token (an appended EOS) is still the one read."""
    tok, model = assets["tok"], assets["llama"]
    tok_pe = type(tok).from_pretrained(assets["llama_dir"])
    tok_pe.pad_token = tok_pe.eos_token
    model.save_pretrained(tmp_path)
    tok_pe.save_pretrained(tmp_path)
    scorer = build_scorer(ScorerConfig(name="score-model", model=str(tmp_path), append_eos=True, batch_size=4))
    got = scorer.score(TEXTS)
    with torch.no_grad():
        want = []
        for t in TEXTS:
            hidden = model.model(torch.tensor([raw_ids(tok, t) + [tok.eos_token_id]])).last_hidden_state
            want.append(model.score(hidden[0, -1]).item())
    assert got == pytest.approx(want, abs=1e-5)


def test_score_model_empty_text_is_scored_as_a_lone_eos(assets, caplog):
    from elasticity.scorers.score_model import ScoreModelScorer

    tok, model = copy.deepcopy(assets["tok"]), assets["llama"]
    tok.add_bos_token = False  # so that "" encodes to no token at all
    assert tok([""])["input_ids"] == [[]]
    scorer = ScoreModelScorer(model, tok, device="cpu")
    with caplog.at_level(logging.WARNING, logger="elasticity.scorers"):
        got = scorer.score(["", "good"])
    with torch.no_grad():
        want = model(torch.tensor([[tok.eos_token_id]])).logits[0, 0].item()
    assert got[0] == pytest.approx(want, abs=1e-5) and scorer.empty == 1
    assert "1 of 2 texts were empty" in caplog.text


def _beaver_layout(src: Path, dst: Path, extra: dict | None = None) -> Path:
    """Copy a checkpoint, renaming its head to safe-rlhf's `score_head` and naming the LlamaForScore class."""
    from safetensors.torch import load_file, save_file

    dst.mkdir()
    state = load_file(src / "model.safetensors")
    state["score_head.weight"] = state.pop("score.weight")
    state.update(extra or {})
    save_file(state, dst / "model.safetensors", metadata={"format": "pt"})
    config = json.loads((src / "config.json").read_text())
    config["architectures"] = ["LlamaForScore"]
    for key in ("id2label", "label2id"):
        config.pop(key, None)
    (dst / "config.json").write_text(json.dumps(config))
    for f in src.iterdir():
        if f.name.startswith(("tokenizer", "special_tokens")):
            (dst / f.name).write_bytes(f.read_bytes())
    return dst


def test_score_model_safe_rlhf_head_key(assets, tmp_path):
    beaver = _beaver_layout(assets["llama_dir"], tmp_path / "beaver")
    with pytest.raises(UserError, match="scorer.head_key score_head"):
        build_scorer(ScorerConfig(name="score-model", model=str(beaver), sign=-1))
    cost = build_scorer(ScorerConfig(name="score-model", model=str(beaver), sign=-1, head_key="score_head"))
    reward = build_scorer(ScorerConfig(name="score-model", model=str(assets["llama_dir"])))
    assert cost.score(TEXTS) == pytest.approx([-v for v in reward.score(TEXTS)], abs=1e-6)

    biased = _beaver_layout(assets["llama_dir"], tmp_path / "biased", {"score_head.bias": torch.ones(1)})
    with pytest.raises(UserError, match="score.bias"):
        build_scorer(ScorerConfig(name="score-model", model=str(biased), head_key="score_head"))


def test_score_model_refusals(assets):
    with pytest.raises(UserError, match="1-output head"):
        build_scorer(ScorerConfig(name="score-model", model=str(assets["three_dir"])))
    with pytest.raises(UserError, match="would be random"):
        build_scorer(ScorerConfig(name="score-model", model=str(assets["causal_dir"])))


# --- lexicon ----------------------------------------------------------------------------------------------


def test_vader_polarity_and_worked_example():
    import vaderSentiment.vaderSentiment as vs

    scorer = build_scorer(ScorerConfig(name="vader"))
    pos, neg, neutral = scorer.score(
        ["I love this wonderful movie, it is great!", "This is a terrible, awful, boring film. I hate it.", "a film"]
    )
    assert pos > 0.9 and neg < 0.1 and neutral == 0.5
    lexicon = Path(vs.__file__).with_name("vader_lexicon.txt").read_text(encoding="utf-8")
    valence = next(float(line.split("\t")[1]) for line in lexicon.splitlines() if line.split("\t")[0] == "good")
    expected = (valence / math.sqrt(valence**2 + 15) + 1) / 2  # VADER's squash with alpha = 15
    assert scorer.score(["good"])[0] == pytest.approx(expected, abs=1e-4)  # VADER rounds compound to 4 places
    assert expected == pytest.approx(0.7202, abs=1e-4)


# --- registry ---------------------------------------------------------------------------------------------


def test_registry_keys_and_user_errors(tmp_path):
    assert list(SCORERS) == ["oracle", "classifier", "score-model", "vader"]
    with pytest.raises(UserError, match="unknown scorer 'roberta'.*oracle, classifier, score-model, vader"):
        build_scorer(ScorerConfig(name="roberta"))
    with pytest.raises(UserError, match="needs a model"):
        build_scorer(ScorerConfig(name="classifier", labels=("POSITIVE",)))
    with pytest.raises(UserError, match="does not exist"):
        build_scorer(ScorerConfig(name="score-model", model=str(tmp_path / "nowhere")))
    with pytest.raises(UserError, match="scorer.world"):
        build_scorer(ScorerConfig(name="oracle"))
    with pytest.raises(UserError, match="no world directory"):
        build_scorer(ScorerConfig(name="oracle", world=str(tmp_path / "nowhere")))
    with pytest.raises(UserError, match="scorer.sign does not apply to the 'classifier'"):
        build_scorer(ScorerConfig(name="classifier", model="x", labels=("POSITIVE",), sign=-1))
    with pytest.raises(UserError, match="sign must be 1 or -1"):
        build_scorer(ScorerConfig(name="score-model", model="x", sign=2))
