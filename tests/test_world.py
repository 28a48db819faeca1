"""The embedded world: exact likelihoods, entropy, oracle, consistency measure, datasets and the command."""

from __future__ import annotations

import json
import math
import random
import re
from pathlib import Path

import pytest

from elasticity.cli import main
from elasticity.config import load_config
from elasticity.world import lexicon
from elasticity.world.command import Config, build_world
from elasticity.world.consistency import consistency_report, first_sentiment, rating, sentiment_consistency
from elasticity.world.grammar import zipf_weights
from elasticity.world.likelihood import entropy_rate, exact_entropy, log_likelihood, log_likelihoods, ratio_estimate
from elasticity.world.oracle import Oracle, load_oracle, posterior_from
from elasticity.world.pcfg import Grammar, render, split
from elasticity.world.world import COMPONENTS, World

ROOT = Path(__file__).resolve().parents[1]
WEIGHTS = {"neutral": 0.5, "positive": 0.2, "negative": 0.3}


@pytest.fixture(scope="module")
def world() -> World:
    return World.build(WEIGHTS)


@pytest.fixture(scope="module")
def oracle(world) -> Oracle:
    return Oracle(world)


# ---- the grammar engine, on grammars small enough to compute by hand ----------------------------------
TOY = Grammar({
    "$S": [(1.0, ("$A", "$B"))],
    "$A": [(0.5, ("a",)), (0.5, ("a", "b"))],
    "$B": [(0.5, ("b",)), (0.5, ())],
})


def test_inside_sums_every_derivation_of_an_ambiguous_grammar():
    # "a b" = A(a) B(b) [.5 * .5] or A(a b) B() [.5 * .5]
    assert TOY.inside(["a", "b"], "$S") == pytest.approx(0.5)
    assert TOY.inside(["a"], "$S") == pytest.approx(0.25)  # A(a) B()
    assert TOY.inside(["a", "b", "b"], "$S") == pytest.approx(0.25)  # A(a b) B(b)
    assert TOY.inside(["b"], "$S") == 0.0


def test_prefix_probabilities_by_hand():
    assert TOY.inside([], "$S", prefix=True) == 1.0
    assert TOY.inside(["a"], "$S", prefix=True) == pytest.approx(1.0)
    # starts with "a b": A(a) B(b) .25 + A(a b) with any B .5
    assert TOY.inside(["a", "b"], "$S", prefix=True) == pytest.approx(0.75)
    # the same, cut inside the last word (terminal "b" starts with "b")
    assert TOY.inside(["a", "b"], "$S", prefix=True, partial=True) == pytest.approx(0.75)


def test_closed_forms_by_hand():
    # derivations: A has 2 rules (.5/.5), B has 2 -> entropy 2 ln 2; yields: E[len] = 1.5 + 0.5
    assert TOY.derivation_entropy("$S") == pytest.approx(2 * math.log(2))
    assert sum(TOY.expected_terminals("$S").values()) == pytest.approx(2.0)
    with pytest.raises(ValueError, match="cycle"):
        Grammar({"$S": [(1.0, ("$T",))], "$T": [(0.5, ("x", "$S")), (0.5, ("y",))]})


def test_zipf_weights_worked_example():
    assert zipf_weights(2, 1.0, 0.0) == pytest.approx([2 / 3, 1 / 3])
    w = zipf_weights(5, 1.1, 1.0)
    assert sum(w) == pytest.approx(1.0) and all(a > b for a, b in zip(w, w[1:]))


def test_render_and_split_are_inverse():
    assert render(["I", "loved", "it", ".", "My", "rating", ":", "nine"]) == "I loved it. My rating: nine"
    assert split("I loved it. My rating: nine") == ["I", "loved", "it", ".", "My", "rating", ":", "nine"]
    assert split("I loved  it.") is None and split(" I loved it.") is None


# ---- exact likelihoods and entropy ------------------------------------------------------------------
@pytest.mark.parametrize("component", COMPONENTS)
def test_exact_loglik_equals_sampling_logprob(world, component):
    rng = random.Random(f"test:{component}")
    for _ in range(150):
        s = world.sample(component, rng)
        lls = log_likelihoods(world, s.text)
        assert lls[component] == pytest.approx(s.logp, abs=1e-9)
        assert all(v == -math.inf for c, v in lls.items() if c != component)  # disjoint supports


def test_prefix_probability_splits_over_next_tokens(world):
    # P(doc starts with x) = P(doc == x) + sum over tokens t of P(doc starts with x t)
    vocab = sorted(set().union(*(world.grammar.terminals(f"${c}") for c in COMPONENTS)))
    for x, c in (("The", "neutral"), ("The", "positive"), ("I watched The Cellar last", "negative")):
        total = math.exp(log_likelihood(world, x, c))
        total += sum(math.exp(log_likelihood(world, render(split(x) + [t]), c, prefix=True)) for t in vocab)
        prefix = math.exp(log_likelihood(world, x, c, prefix=True))
        assert prefix > 0 and total == pytest.approx(prefix, rel=1e-9)


def test_ratio_estimate_worked_example():
    r, se = ratio_estimate([2, 4, 6], [1, 2, 2])
    assert r == pytest.approx(2.4) and se == pytest.approx(0.36661, abs=1e-5)


def test_entropy_is_stable_across_seeds_and_matches_the_closed_form(world):
    words = lambda texts: [len(split(t)) + 1 for t in texts]  # noqa: E731 - surface tokens + EOS
    for c in ("positive", "neutral", None):
        a = entropy_rate(world, c, 600, seed=1, count_tokens=words)
        b = entropy_rate(world, c, 600, seed=2, count_tokens=words)
        exact = exact_entropy(world, c)
        assert abs(a.nats_per_doc - b.nats_per_doc) < 4 * math.hypot(a.nats_per_doc_se, b.nats_per_doc_se)
        assert abs(a.nats_per_token - b.nats_per_token) < 4 * math.hypot(a.nats_per_token_se, b.nats_per_token_se)
        assert abs(a.nats_per_doc - exact) < 4 * a.nats_per_doc_se
    # per token, against the closed form E[-log p] / E[tokens]
    mean_len = sum(world.grammar.expected_terminals("$positive").values()) + 1
    est = entropy_rate(world, "positive", 1500, seed=3, count_tokens=words)
    assert abs(est.nats_per_token - exact_entropy(world, "positive") / mean_len) < 4 * est.nats_per_token_se


# ---- the oracle ----------------------------------------------------------------------------------------
def test_posterior_worked_example():
    lls = {"positive": math.log(0.02), "negative": math.log(0.01), "neutral": -math.inf}
    assert posterior_from(lls, {"positive": 0.2, "negative": 0.3, "neutral": 0.5}) == pytest.approx(4 / 7)


def test_oracle_is_one_or_zero_on_whole_documents(world, oracle):
    rng = random.Random("oracle")
    for c in COMPONENTS:
        docs = [world.sample(c, rng).text for _ in range(40)]
        scores = oracle.score_detailed(docs)
        assert all(s.kind == "complete" for s in scores)
        assert [s.posterior for s in scores] == [1.0 if c == "positive" else 0.0] * 40


def test_review_openings_carry_no_sentiment(world, oracle):
    rng = random.Random("openings")
    for _ in range(30):
        s = oracle.score_one(world.sample_opening(rng))
        assert s.kind == "prefix" and s.posterior == pytest.approx(world.positive_share_of_reviews, abs=1e-12)


@pytest.mark.slow
def test_oracle_is_calibrated_on_mixture_prefixes(world):
    # Cut each mixture document after k ~ U{0..40} tokens, k drawn independently of the document: the exact
    # posterior given what is left must match the frequency of positive documents among texts scored alike.
    rng = random.Random("calibration")
    pairs = []
    for _ in range(2500):
        c, s = world.sample_mixture(rng)
        k = rng.randint(0, 40)
        text = render(s.tokens[:k])
        # k tokens seen: "the document starts with them"; fewer: the whole document is seen
        lls = log_likelihoods(world, text, prefix=k <= len(s.tokens))
        pairs.append((posterior_from(lls, world.weights), c == "positive"))
    assert len({round(p, 6) for p, _ in pairs}) > 5  # prefixes give more than 0, 1 and the prior
    assert sum(abs(p - 0.4) < 1e-9 for p, _ in pairs) > 200  # review openings: exactly w_pos / (w_pos + w_neg)
    for lo, hi in ((0.0, 0.01), (0.01, 0.3), (0.3, 0.5), (0.5, 0.99), (0.99, 1.01)):
        group = [(p, y) for p, y in pairs if lo <= p < hi]
        if len(group) < 30:
            continue
        mean_p = sum(p for p, _ in group) / len(group)
        share = sum(y for _, y in group) / len(group)
        se = math.sqrt(max(mean_p * (1 - mean_p), 1e-4) / len(group))
        assert abs(share - mean_p) < 4 * se + 1e-9, (lo, hi, len(group), mean_p, share)


def test_fallback_scores_out_of_support_text_by_its_sentences(world, oracle):
    rng = random.Random("fallback")

    def body(component: str) -> list[str]:  # the sentences after the opening of a review with 4 or more of them
        while True:
            prompt, rest = world.sample_review_split(component, rng)
            sentences = re.split(r"(?<=[.!]) ", rest.strip())
            if len(sentences) >= 4:
                return sentences

    shuffled_pos = " ".join(reversed(body("positive")))
    shuffled_neg = " ".join(reversed(body("negative")))
    scores = oracle.score_detailed([shuffled_pos, shuffled_neg, "Zork blip wug", "I loved it. I hated it."])
    assert [s.kind for s in scores] == ["fallback"] * 4
    assert scores[0].posterior > 0.9 and scores[1].posterior < 0.1
    assert scores[2].posterior == pytest.approx(world.weights["positive"])  # no evidence: the prior
    assert 0.1 < scores[3].posterior < 0.9  # one sentence each way: a mixed score
    assert oracle.exact_share([world.sample("positive", rng).text, shuffled_pos]) == 0.5


def test_truncated_generation_is_scored_as_a_prefix(world, oracle):
    s = world.sample("negative", random.Random("cut"))
    cut = s.text[: len(s.text) - 5]  # inside the rating sentence, maybe inside a word
    assert oracle.score_one(cut).kind == "prefix" and oracle.score_one(cut).posterior == 0.0


# ---- sentiment consistency --------------------------------------------------------------------------
def test_consistency_worked_examples():
    assert rating("Meh. Four out of ten from me.") == 4
    assert sentiment_consistency("I loved it. The plot was dull. I give it two out of ten.") is False
    assert first_sentiment("The plot was dull. I loved it.") == "negative"
    report = consistency_report(["I loved it. Nine out of ten.", "I hated it. Eight out of ten.", "I loved it."])
    assert report == {"texts": 3, "judged": 2, "consistent": 1, "rate": 0.5, "no_sentiment_word": 0,
                      "no_rating": 1}


def test_sentiment_lexicons_are_exclusive_and_world_reviews_consistent(world):
    lower = {c: {t.lower() for t in world.grammar.terminals(f"${c}")} for c in COMPONENTS}
    assert lexicon.POSITIVE_CUES <= lower["positive"]
    assert lexicon.NEGATIVE_CUES <= lower["negative"]
    assert not lexicon.POSITIVE_CUES & (lower["negative"] | lower["neutral"])
    assert not lexicon.NEGATIVE_CUES & (lower["positive"] | lower["neutral"])
    rng = random.Random("consistency")
    reviews = [world.sample(c, rng).text for c in ("positive", "negative") for _ in range(100)]
    assert consistency_report(reviews)["rate"] == 1.0 and consistency_report(reviews)["judged"] == 200


# ---- datasets and the command -----------------------------------------------------------------------
def _small() -> Config:
    return load_config(Config, ROOT / "configs" / "world-small.yaml")


DATA_FILES = ("pretrain.jsonl", "sft_positive.jsonl", "sft_negative.jsonl", "eval_prompts.jsonl", "grammar.json",
              "heldout_neutral.jsonl", "heldout_positive.jsonl", "heldout_negative.jsonl", "heldout_mixture.jsonl",
              "tokenizer/tokenizer.json")


@pytest.mark.slow
def test_world_command_is_deterministic_and_its_files_are_right(tmp_path):
    from transformers import PreTrainedTokenizerFast

    cfg = _small()
    a = build_world(cfg, tmp_path / "a")
    b = build_world(cfg, tmp_path / "b")
    for name in DATA_FILES:
        assert a.file(name).read_bytes() == b.file(name).read_bytes(), name
    other = build_world(load_config(Config, ROOT / "configs" / "world-small.yaml", {"seed": 1}), tmp_path / "c")
    assert other.file("pretrain.jsonl").read_bytes() != a.file("pretrain.jsonl").read_bytes()

    card = json.loads(a.file("world_card.json").read_text())
    tok = PreTrainedTokenizerFast.from_pretrained(str(a.file("tokenizer")))
    docs = [json.loads(line) for line in a.file("pretrain.jsonl").read_text().splitlines()]
    counted = sum(len(tok(d["text"], add_special_tokens=False)["input_ids"]) + 1 for d in docs)
    assert counted == card["pretrain"]["tokens"] >= cfg.sizes.pretrain_tokens
    assert counted - (len(tok(docs[-1]["text"], add_special_tokens=False)["input_ids"]) + 1) < cfg.sizes.pretrain_tokens

    oracle = load_oracle(a.path)
    for c in ("positive", "negative"):
        recs = [json.loads(line) for line in a.file(f"sft_{c}.jsonl").read_text().splitlines()]
        assert len(recs) == cfg.sizes.sft_positive
        full = oracle.score_detailed([r["prompt"] + r["response"] for r in recs])
        assert all(s.kind == "complete" and s.posterior == float(c == "positive") for s in full)
        assert all(r["response"].startswith(" ") for r in recs)
    prompts = [json.loads(line)["prompt"] for line in a.file("eval_prompts.jsonl").read_text().splitlines()]
    assert len(set(prompts)) == len(prompts) == cfg.sizes.eval_prompts
    assert oracle.score(prompts) == pytest.approx([0.4] * len(prompts))
    held = [json.loads(line) for line in a.file("heldout_positive.jsonl").read_text().splitlines()]
    world = load_oracle(a.path).world
    assert all(r["nats"] == pytest.approx(-log_likelihood(world, r["text"], "positive"), abs=1e-5) for r in held)
    assert card["mixture_weights"] == WEIGHTS and card["positive_share_of_reviews"] == pytest.approx(0.4)


@pytest.mark.parametrize("flags, message", [
    (["--mixture.neutral", "-1"], "mixture weight of 'neutral' must be a non-negative number, got -1.0"),
    (["--mixture.neutral", "0", "--mixture.positive", "0", "--mixture.negative", "0"], "mixture weights are all zero"),
    (["--sizes.pretrain_tokens", "0"], "sizes.pretrain_tokens must be a positive number of tokens, got 0"),
])
def test_bad_input_exits_2_without_writing(tmp_path, capsys, flags, message):
    assert main(["world", "--runs-dir", str(tmp_path / "runs"), *flags]) == 2
    err = capsys.readouterr().err
    assert err.startswith("elasticity: error:") and len(err.strip().splitlines()) == 1 and message in err
    assert not (tmp_path / "runs").exists()


def test_presets_load():
    assert load_config(Config, ROOT / "configs" / "world.yaml") == Config()
    assert _small().sizes.pretrain_tokens < Config().sizes.pretrain_tokens


def test_preference_pairs_continue_one_opening_both_ways_exactly(world):
    """A world pair's sides are a positive and a negative review of the same opening: each whole text is a
    document of exactly its own component, with a finite exact code length given the opening."""
    from elasticity.world.truth import pair_nats

    rng = random.Random(5)
    for _ in range(20):
        prompt, positive, negative = world.sample_pair(rng)
        assert positive != negative and positive.startswith(" ") and negative.startswith(" ")
        assert pair_nats(world, prompt, positive)[0] == "positive"
        component, nats = pair_nats(world, prompt, negative)
        assert component == "negative" and 0 < nats < math.inf
