"""Records, tokenisation and batching: hand-checked masks, clear errors, low padding."""

from __future__ import annotations

import pytest

from elasticity.data.batching import collate, plan_steps
from elasticity.data.records import Fields, load_records
from elasticity.data.tokenize import IGNORE, Example, encode_pair, encode_text, pack_blocks, tokenize_records
from elasticity.errors import UserError


@pytest.fixture(scope="module")
def word_tok():
    """A word-level tokenizer (one token per word, BOS in front) so token counts can be checked by hand."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(["<bos>", "<eos>", "<pad>", "<unk>", "a", "b", "c", "d", "e"])}
    t = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    t.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    t.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 0)])
    return PreTrainedTokenizerFast(tokenizer_object=t, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>")


def test_response_only_masking_hand_checked(word_tok):
    ex = encode_pair(word_tok, "a b c", "d e", max_length=32)
    assert ex.input_ids == [0, 4, 5, 6, 7, 8, 1]  # <bos> a b c | d e <eos>
    assert ex.labels == [IGNORE] * 4 + [7, 8, 1]
    assert ex.n_targets == 3 and not ex.truncated
    cut = encode_pair(word_tok, "a b c", "d e", max_length=5)
    assert cut.truncated and cut.n_targets == 1
    doc = encode_text(word_tok, "a b")
    assert doc.input_ids == [0, 4, 5, 1] and doc.n_targets == 3  # BOS is context only


def test_truncation_is_counted_and_logged(word_tok, capsys):
    records = [{"prompt": "a", "response": "b c d e"}, {"prompt": "a", "response": "b"}]
    examples = tokenize_records(records, word_tok, max_length=4, name="toy")
    assert [e.truncated for e in examples] == [True, False]
    assert "toy: 1 of 2 examples truncated to 4 tokens" in capsys.readouterr().err


def test_packing_wastes_nothing_and_batches_respect_boundaries():
    docs = [Example(list(range(n)), list(range(n))) for n in (5, 7, 3, 9)]
    blocks = pack_blocks(docs, 4)
    assert len(blocks) == 6 and all(len(b.input_ids) == 4 for b in blocks)
    steps = plan_steps(docs * 5, list(range(20)), micro_batch=2, grad_accum=2, boundaries=(6,))
    sizes = [sum(len(m) for m in s.micro_batches) for s in steps]
    assert sizes == [4, 2, 4, 4, 4, 2]  # the step before example 6 is cut short
    batch = collate(docs[:2], pad_id=99)
    assert batch["input_ids"].shape == (2, 7) and int(batch["attention_mask"].sum()) == 12
    assert (batch["labels"][0, 5:] == IGNORE).all()


def test_bucketing_groups_similar_lengths():
    docs = [Example([1] * n, [1] * n) for n in [2, 30, 3, 29, 4, 31, 5, 28]]
    plain = plan_steps(docs, list(range(8)), micro_batch=2, grad_accum=1)
    bucketed = plan_steps(docs, list(range(8)), micro_batch=2, grad_accum=1, bucket=4)

    def padding(steps):
        return sum(max(len(docs[i].input_ids) for i in mb) * len(mb) - sum(len(docs[i].input_ids) for i in mb)
                   for s in steps for mb in s.micro_batches)

    assert padding(bucketed) < padding(plain) / 10


def test_records_errors_name_the_problem(tmp_path):
    with pytest.raises(UserError, match="data file not found"):
        load_records(tmp_path / "nope.jsonl", ("text",))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n{"text": oops}\n')
    with pytest.raises(UserError, match=r"bad.jsonl:2: not a JSON line"):
        load_records(bad, ("text",))
    missing = tmp_path / "missing.jsonl"
    missing.write_text('{"text": "ok"}\n{"body": "x"}\n')
    with pytest.raises(UserError, match="line 2 has no field 'text'"):
        load_records(missing, ("text",))
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(UserError, match="empty"):
        load_records(empty, ("text",))


def test_field_mapping_and_json_lists(tmp_path):
    f = tmp_path / "reviews.json"
    f.write_text('[{"q": "a", "a": "b", "extra": 1}]')
    assert load_records(f, ("prompt", "response"), Fields(prompt="q", response="a")) == [
        {"prompt": "a", "response": "b"}
    ]
