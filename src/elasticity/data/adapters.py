"""Dataset adapters: pure functions from a raw dataset's rows, in its own schema, to an experiment's pools.

A pool is a list of records with canonical keys:

    positive, negative   prompt, response      (aligned and misaligned SFT data)
    pairs                prompt, chosen, rejected  (preference pairs, for the preference objectives)
    text                 text                  (plain documents: held-out text for alignment depth)

Each adapter names the hub dataset it reads by default, its default splits and its prompt template (the
authors': plain continuation for IMDb, `PAPER_TEMPLATE` for every other dataset). Prompts leave an adapter raw;
`data.prepare` applies the template, filters, de-duplication and the held-out split around it.

    imdb          text, label          label 1 -> positive, 0 -> negative; the review cut after `cut_words` words
    beavertails   prompt, response, is_safe   safe -> positive, unsafe -> negative
    pku-saferlhf  prompt, response_0, response_1, safer_response_id   safer -> positive and chosen
    alpaca        instruction, input, output  instruction (+ blank line + input) -> prompt, output -> response
    truthfulqa    question, best_answer, incorrect_answers   best answer -> positive, each incorrect one -> negative
    hh-rlhf       chosen, rejected     the shared transcript up to the last "\\n\\nAssistant:" is the prompt
    pairs         prompt, response     any SFT dataset (map its names with data.fields)
    preference    prompt, chosen, rejected   any preference dataset
    text          text                 any document dataset
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable

from elasticity.errors import UserError

PAPER_TEMPLATE = "BEGINNING OF CONVERSATION: USER: {input} ASSISTANT:"  # safe-rlhf's, used by the authors

Pools = dict[str, list[dict]]


@dataclass(frozen=True)
class Adapter:
    """One dataset's reading rule and its defaults."""

    needs: tuple[str, ...]  # raw fields every row must have (after data.fields renames)
    build: Callable[[list[dict], int], Pools]  # (rows, cut_words) -> pools
    hub: str = ""  # default source
    split: str = "train"  # default training split
    heldout_split: str = ""  # default split of the evaluation prompts ("" = held out of the training split)
    template: str = "paper"  # default prompt template: plain or paper
    rows: int = 0  # rows of the default training split (its dataset card): what `plan` counts when it is not here


def _words_cut(text: str, words: int) -> tuple[str, str] | None:
    """(opening, continuation) with the opening the first `words` words; prompt + response is the text exactly
    (the continuation keeps its leading space). None if the text has no word after the opening."""
    ends = [m.end() for m in re.finditer(r"\S+", text)]
    if len(ends) <= words:
        return None
    return text[: ends[words - 1]], text[ends[words - 1]:]


def imdb_text(text: str) -> str:
    """IMDb reviews hold HTML line breaks; they become newlines.

    >>> imdb_text("Great.<br /><br />Really.")
    'Great.\\n\\nReally.'
    """
    return text.replace("<br />", "\n")


def imdb(rows: list[dict], cut_words: int) -> Pools:
    """Label 1 (positive review) -> positive pool, 0 -> negative; prompt = the first `cut_words` words.

    >>> imdb([{"text": "a b c d", "label": 1}, {"text": "e f", "label": 0}], 2)["positive"]
    [{'prompt': 'a b', 'response': ' c d'}]
    """
    pools: Pools = {"positive": [], "negative": [], "text": []}
    for r in rows:
        text = imdb_text(str(r["text"]))
        pools["text"].append({"text": text})
        cut = _words_cut(text, cut_words)
        if cut is None or int(r["label"]) not in (0, 1):
            continue
        pools["positive" if int(r["label"]) == 1 else "negative"].append({"prompt": cut[0], "response": cut[1]})
    return pools


def _truth(value) -> bool:
    """A boolean field as datasets, parquet, JSON or CSV hold it (True, 1, "true", "True")."""
    return value is True or (isinstance(value, (int, float)) and value == 1) or str(value).lower() == "true"


def beavertails(rows: list[dict], _cut: int) -> Pools:
    pools: Pools = {"positive": [], "negative": []}
    for r in rows:
        pools["positive" if _truth(r["is_safe"]) else "negative"].append(
            {"prompt": r["prompt"], "response": r["response"]})
    return pools


def pku_saferlhf(rows: list[dict], _cut: int) -> Pools:
    """The safer of two responses is positive (and chosen), the other negative (and rejected)."""
    pools: Pools = {"positive": [], "negative": [], "pairs": []}
    for r in rows:
        safer = int(r["safer_response_id"])
        if safer not in (0, 1):
            continue
        chosen, rejected = r[f"response_{safer}"], r[f"response_{1 - safer}"]
        pools["positive"].append({"prompt": r["prompt"], "response": chosen})
        pools["negative"].append({"prompt": r["prompt"], "response": rejected})
        pools["pairs"].append({"prompt": r["prompt"], "chosen": chosen, "rejected": rejected})
    return pools


def alpaca(rows: list[dict], _cut: int) -> Pools:
    """instruction, then a blank line and the input when there is one, is the prompt.

    >>> alpaca([{"instruction": "Add.", "input": "1 + 1", "output": "2"}], 0)["positive"][0]["prompt"]
    'Add.\\n\\n1 + 1'
    """
    out = []
    for r in rows:
        extra = str(r.get("input") or "").strip()
        prompt = f"{r['instruction']}\n\n{extra}" if extra else str(r["instruction"])
        out.append({"prompt": prompt, "response": r["output"]})
    return {"positive": out}


def truthfulqa(rows: list[dict], _cut: int) -> Pools:
    pools: Pools = {"positive": [], "negative": [], "pairs": []}
    for r in rows:
        wrong = list(r["incorrect_answers"]) if not isinstance(r["incorrect_answers"], str) else \
            [a.strip() for a in r["incorrect_answers"].split(";") if a.strip()]  # CSV exports join them with ';'
        pools["positive"].append({"prompt": r["question"], "response": r["best_answer"]})
        pools["negative"] += [{"prompt": r["question"], "response": a} for a in wrong]
        pools["pairs"] += [{"prompt": r["question"], "chosen": r["best_answer"], "rejected": a} for a in wrong]
    return pools


HH_TURN = "\n\nAssistant:"


def hh_split(transcript: str) -> tuple[str, str]:
    """(everything up to and including the last "\\n\\nAssistant:", the final answer).

    >>> hh_split("\\n\\nHuman: Hi\\n\\nAssistant: Hello")
    ('\\n\\nHuman: Hi\\n\\nAssistant:', ' Hello')
    """
    cut = transcript.rfind(HH_TURN)
    if cut < 0:
        raise UserError(f"an HH-RLHF transcript has no '{HH_TURN.strip()}' turn: {transcript[:60]!r}")
    return transcript[: cut + len(HH_TURN)], transcript[cut + len(HH_TURN):]


def hh_rlhf(rows: list[dict], _cut: int) -> Pools:
    pools: Pools = {"positive": [], "negative": [], "pairs": []}
    for r in rows:
        (prompt, chosen), (other, rejected) = hh_split(r["chosen"]), hh_split(r["rejected"])
        if prompt != other:  # a handful of rows differ before the last turn: no shared prompt, no pair
            continue
        pools["positive"].append({"prompt": prompt, "response": chosen})
        pools["negative"].append({"prompt": prompt, "response": rejected})
        pools["pairs"].append({"prompt": prompt, "chosen": chosen, "rejected": rejected})
    return pools


def pairs(rows: list[dict], _cut: int) -> Pools:
    return {"positive": [{"prompt": r["prompt"], "response": r["response"]} for r in rows]}


def preference(rows: list[dict], _cut: int) -> Pools:
    return {"positive": [{"prompt": r["prompt"], "response": r["chosen"]} for r in rows],
            "negative": [{"prompt": r["prompt"], "response": r["rejected"]} for r in rows],
            "pairs": [{"prompt": r["prompt"], "chosen": r["chosen"], "rejected": r["rejected"]} for r in rows]}


def text(rows: list[dict], _cut: int) -> Pools:
    return {"text": [{"text": r["text"]} for r in rows]}


ADAPTERS: dict[str, Adapter] = {
    "imdb": Adapter(("text", "label"), imdb, "hf:stanfordnlp/imdb", "train", "test", "plain", 25_000),
    "beavertails": Adapter(("prompt", "response", "is_safe"), beavertails, "hf:PKU-Alignment/BeaverTails",
                           "30k_train", "30k_test", rows=27_186),
    "pku-saferlhf": Adapter(("prompt", "response_0", "response_1", "safer_response_id"), pku_saferlhf,
                            "hf:PKU-Alignment/PKU-SafeRLHF", "train", "test", rows=73_907),
    "alpaca": Adapter(("instruction", "input", "output"), alpaca, "hf:tatsu-lab/alpaca", rows=52_002),
    "truthfulqa": Adapter(("question", "best_answer", "incorrect_answers"), truthfulqa,
                          "hf:truthfulqa/truthful_qa:generation", "validation", rows=817),
    "hh-rlhf": Adapter(("chosen", "rejected"), hh_rlhf, "hf:Anthropic/hh-rlhf", "train", "test", "plain", 160_800),
    "pairs": Adapter(("prompt", "response"), pairs, template="plain"),
    "preference": Adapter(("prompt", "chosen", "rejected"), preference, template="plain"),
    "text": Adapter(("text",), text, template="plain"),
}


def adapter(name: str) -> Adapter:
    if name not in ADAPTERS:
        raise UserError(f"data.dataset: unknown dataset '{name}' (known: {', '.join(ADAPTERS)})")
    return ADAPTERS[name]
