"""Raw datasets as they come: every source layout, every adapter on its real schema, and the preparation steps
(fields, filters, template, de-duplication, the held-out split) checked by hand."""

from __future__ import annotations

import json

import pytest

from elasticity.data.adapters import ADAPTERS, PAPER_TEMPLATE, hh_split
from elasticity.data.prepare import DataConfig, prepare, template_function
from elasticity.data.records import load_records
from elasticity.data.sources import read_rows, splits
from elasticity.errors import UserError


@pytest.fixture(scope="module")
def raw(paper_assets):
    return paper_assets


ROWS = [{"prompt": "p1", "response": "r1"}, {"prompt": "p2", "response": "r2"}]


def test_every_file_type_and_folder_layout_reads_the_same_rows(tmp_path):
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "a.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    (tmp_path / "a.json").write_text(json.dumps(ROWS))
    (tmp_path / "a.csv").write_text("prompt,response\np1,r1\np2,r2\n")
    pq.write_table(pa.Table.from_pylist(ROWS), tmp_path / "a.parquet")
    hub = tmp_path / "hub" / "data"
    hub.mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(ROWS[:1]), hub / "train-00000-of-00002.parquet")
    pq.write_table(pa.Table.from_pylist(ROWS[1:]), hub / "train-00001-of-00002.parquet")
    pq.write_table(pa.Table.from_pylist(ROWS), hub / "test-00000-of-00001.parquet")
    by_folder = tmp_path / "by-folder" / "30k_train"
    by_folder.mkdir(parents=True)
    (by_folder / "part.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    datasets.DatasetDict({"train": datasets.Dataset.from_list(ROWS)}).save_to_disk(str(tmp_path / "saved"))
    datasets.Dataset.from_list(ROWS).save_to_disk(str(tmp_path / "one"))
    for source, split in [("a.jsonl", "train"), ("a.json", "x"), ("a.csv", "train"), ("a.parquet", "train"),
                          ("hub", "train"), ("hub", "test"), ("by-folder", "30k_train"), ("saved", "train"),
                          ("one", "train")]:
        assert load_records(tmp_path / source, ("prompt", "response"), split=split) == ROWS, source
    assert splits(tmp_path / "hub") == ["test", "train"] and splits(tmp_path / "saved") == ["train"]
    assert splits(tmp_path / "a.parquet") is None
    assert read_rows(tmp_path / "a.jsonl")[1] == "line" and read_rows(tmp_path / "a.csv")[1] == "record"
    with pytest.raises(UserError, match=r"no split 'validation' \(it has: train\)"):
        read_rows(tmp_path / "saved", "validation")
    with pytest.raises(UserError, match=r"no split 'dev' \(its files hold: test, train\)"):
        read_rows(tmp_path / "hub", "dev")


def test_adapters_on_the_real_schemas_by_hand():
    imdb = ADAPTERS["imdb"].build([{"text": "one two<br />three four five", "label": 1},
                                   {"text": "six seven eight", "label": 0}, {"text": "short", "label": 0}], 2)
    assert imdb["positive"] == [{"prompt": "one two", "response": "\nthree four five"}]
    assert imdb["negative"] == [{"prompt": "six seven", "response": " eight"}]  # "short" has no continuation
    beaver = ADAPTERS["beavertails"].build([{"prompt": "q", "response": "a", "is_safe": True},
                                            {"prompt": "q", "response": "b", "is_safe": "False"}], 0)
    assert beaver == {"positive": [{"prompt": "q", "response": "a"}], "negative": [{"prompt": "q", "response": "b"}]}
    pku = ADAPTERS["pku-saferlhf"].build([{"prompt": "q", "response_0": "x", "response_1": "y",
                                           "safer_response_id": 1}], 0)
    assert pku["positive"] == [{"prompt": "q", "response": "y"}] and pku["pairs"] == [
        {"prompt": "q", "chosen": "y", "rejected": "x"}]
    alpaca = ADAPTERS["alpaca"].build([{"instruction": "Sum.", "input": "", "output": "2"}], 0)
    assert alpaca == {"positive": [{"prompt": "Sum.", "response": "2"}]}
    tqa = ADAPTERS["truthfulqa"].build([{"question": "q?", "best_answer": "yes", "incorrect_answers": ["no", "never"]},
                                        {"question": "r?", "best_answer": "a", "incorrect_answers": "b; c"}], 0)
    assert [r["response"] for r in tqa["negative"]] == ["no", "never", "b", "c"] and len(tqa["positive"]) == 2
    talk = "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: how?\n\nAssistant:"
    hh = ADAPTERS["hh-rlhf"].build([{"chosen": talk + " well", "rejected": talk + " badly"}], 0)
    assert hh["pairs"] == [{"prompt": talk, "chosen": " well", "rejected": " badly"}]
    with pytest.raises(UserError, match="no 'Assistant:' turn"):
        hh_split("\n\nHuman: hi")


def test_templates():
    assert template_function("paper")("Hi") == PAPER_TEMPLATE.replace("{input}", "Hi")
    assert template_function("Q: {input}\nA:")("Hi") == "Q: Hi\nA:"
    assert template_function("plain")("Hi") == "Hi"
    with pytest.raises(UserError, match="has no {input}"):
        template_function("Q: A:")

    class Chat:  # the tokenizer interface the chat template uses
        bos_token, chat_template = "<s>", "x"

        def apply_chat_template(self, messages, tokenize, add_generation_prompt):
            assert not tokenize and add_generation_prompt
            return f"<s>[USER] {messages[0]['content']} [ASSISTANT]"

    assert template_function("chat", Chat())("Hi") == "[USER] Hi [ASSISTANT]"  # BOS is the encoder's to add


def test_beavertails_from_a_saved_dataset_with_the_paper_template(raw):
    cfg = DataConfig(dataset="beavertails", source=str(raw["beavertails"]), prompts=5)
    p = prepare(cfg)
    assert p.record["split"] == "30k_train" and p.record["heldout_split"] == "30k_test"
    assert p.record["pools"] == {"positive": 32, "negative": 16} and len(p.prompts) == 5
    for r in p.pools["positive"] + p.pools["negative"] + [{"prompt": q} for q in p.prompts]:
        assert r["prompt"].startswith("BEGINNING OF CONVERSATION: USER: how do i ") and r["prompt"].endswith(
            "? ASSISTANT:")
    safe_only = prepare(DataConfig(dataset="beavertails", source=str(raw["beavertails"]), prompts=5,
                                   filters=("is_safe=true",)))
    assert safe_only.record["pools"] == {"positive": 32}
    assert prepare(cfg).pools == p.pools  # the seed fixes every order
    other = prepare(DataConfig(dataset="beavertails", source=str(raw["beavertails"]), prompts=5, seed=1))
    assert other.pools["positive"] != p.pools["positive"] and sorted(map(str, other.pools["positive"])) == sorted(
        map(str, p.pools["positive"]))


def test_held_out_by_prompt_never_trains_on_an_evaluation_prompt(raw):
    p = prepare(DataConfig(dataset="truthfulqa", source=str(raw["truthfulqa"]), prompts=6))
    assert p.record["split"] == "validation" and p.record["heldout_split"] is None
    trained = {r["prompt"] for pool in p.pools.values() for r in pool}
    assert len(p.prompts) == 6 and not trained & set(p.prompts)
    assert p.record["pools"] == {"positive": 24, "negative": 48, "pairs": 48}


def test_imdb_keeps_the_review_exactly_and_holds_out_test_reviews(raw):
    p = prepare(DataConfig(dataset="imdb", source=str(raw["imdb"]), prompts=4, cut_words=16))
    assert p.record["pools"] == {"positive": 20, "negative": 20, "text": 16}
    rows = [r for _, r in read_rows(raw["imdb"], "train")[0]]
    texts = {r["text"].replace("<br />", "\n") for r in rows}
    assert all(r["prompt"] + r["response"] in texts for r in p.pools["positive"])
    assert all(len(r["prompt"].split()) == 16 for r in p.pools["positive"])
    test_texts = {r["text"].replace("<br />", "\n") for _, r in read_rows(raw["imdb"], "test")[0]}
    assert {r["text"] for r in p.pools["text"]} <= test_texts


def test_fields_rename_and_dedup(tmp_path):
    rows = [{"q": "a", "a": "x"}, {"q": "a", "a": "x"}, {"q": "b", "a": "y"}, {"q": "c", "a": "z"}]
    (tmp_path / "d.csv").write_text("q,a\n" + "".join(f"{r['q']},{r['a']}\n" for r in rows))
    cfg = DataConfig(dataset="pairs", source=str(tmp_path / "d.csv"), fields=("prompt=q", "response=a"), prompts=1)
    p = prepare(cfg)
    assert p.record["adapted"] == {"positive": 4} and p.record["deduplicated"] == {"positive": 3}
    assert p.record["pools"] == {"positive": 2} and len(p.prompts) == 1
    kept = prepare(DataConfig(dataset="pairs", source=str(tmp_path / "d.csv"), fields=("prompt=q", "response=a"),
                              prompts=1, dedup=False))
    assert kept.record["deduplicated"] == {"positive": 4}


@pytest.mark.parametrize("cfg, message", [
    (dict(dataset="beavertails", split="train"), "has no split 'train' (it has: 30k_train, 30k_test)"),
    (dict(dataset="beavertails", filters=("is_safe=maybe",)), "is_safe=maybe selects none of the records"),
    (dict(dataset="beavertails", filters=("colour=red",)), "no field 'colour'"),
    (dict(dataset="beavertails", template="USER: ASSISTANT:"), "has no {input}"),
    (dict(dataset="alpaca", split="30k_train"), "no field 'instruction' that the alpaca adapter reads"),
    (dict(dataset="nope"), "unknown dataset 'nope'"),
    (dict(dataset="beavertails", prompts=100), "asks for 100 evaluation prompts"),
    (dict(dataset="beavertails", filters=("is_safe",)), "'is_safe' is not NAME=VALUE"),
])
def test_bad_data_is_one_clear_error(raw, cfg, message):
    with pytest.raises(UserError) as e:
        prepare(DataConfig(source=str(raw["beavertails"]), **{"prompts": 5, **cfg}))
    assert message in str(e.value) and "\n" not in str(e.value)


def test_preference_datasets_from_folders_of_jsonl_files(raw):
    """PKU-SafeRLHF (data/train.jsonl, data/test.jsonl) and HH-RLHF (train.jsonl, test.jsonl): pools and pairs,
    evaluation prompts from the test split."""
    pku = prepare(DataConfig(dataset="pku-saferlhf", source=str(raw["pku-saferlhf"]), prompts=4))
    assert pku.record["split"] == "train" and pku.record["heldout_split"] == "test"
    assert pku.record["pools"] == {"positive": 24, "negative": 24, "pairs": 24}
    rows = {r["prompt"]: r for _, r in read_rows(raw["pku-saferlhf"], "train")[0]}
    for pair in pku.pools["pairs"]:
        raw_row = rows[pair["prompt"].removeprefix("BEGINNING OF CONVERSATION: USER: ").removesuffix(" ASSISTANT:")]
        assert pair["chosen"] == raw_row[f"response_{raw_row['safer_response_id']}"]
    hh = prepare(DataConfig(dataset="hh-rlhf", source=str(raw["hh-rlhf"]), prompts=3))
    assert hh.record["template"] == "plain" and hh.record["pools"] == {"positive": 20, "negative": 20, "pairs": 20}
    assert all(p.endswith("\n\nAssistant:") for p in hh.prompts)
