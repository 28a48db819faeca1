"""From a raw dataset to an experiment's inputs: read a split, rename fields, filter, adapt, template, de-duplicate
and hold evaluation prompts out, recording every count (`Prepared.record`).

Order of operations, each on the output of the one before:
1. read the training split (and the held-out split, if there is one) of `source` (`data.sources`);
2. rename raw fields (`fields`: `prompt=question` makes the raw `question` the adapter's `prompt`);
3. keep the rows where every filter holds (`filters`: `is_safe=true`, `label=1`, `category=violence`);
4. the dataset's adapter makes the pools (`data.adapters`);
5. the prompt template is applied to every prompt;
6. repeated records are dropped (same prompt and response; same text);
7. evaluation prompts: the first `prompts` distinct prompts of the held-out split in a seeded order, or, without
   a held-out split, held out of the training split: every record with one of those prompts leaves the pools;
8. each pool is shuffled with `seed`, so that an experiment's "last N records are held out" is a random N.
Documents (the `text` pool, e.g. IMDb's reviews whole) come from the held-out split only: they measure how far
alignment moved the model on text it was never trained on.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from elasticity.config import InputPath
from elasticity.data.adapters import PAPER_TEMPLATE, Pools, adapter
from elasticity.data.sources import read_rows, splits
from elasticity.errors import UserError

POOLS = ("positive", "negative", "pairs", "text")


@dataclass(frozen=True)
class DataConfig:
    """A raw dataset read as it comes (see `data.prepare`); `dataset` empty means the experiment's file fields are
    used as they are."""

    dataset: str = ""  # an adapter: imdb, beavertails, pku-saferlhf, alpaca, truthfulqa, hh-rlhf, pairs, preference, text
    source: InputPath = ""  # hf:NAME[:SUBSET], a dataset folder, or a .parquet/.jsonl/.json/.csv file; default the
    # adapter's hub dataset
    split: str = ""  # the split to train from; default the adapter's (BeaverTails: 30k_train)
    heldout_split: str = ""  # the split of the evaluation prompts; default the adapter's; "none": held out of `split`
    fields: tuple[str, ...] = ()  # NAME=RAW: the raw field that holds what the adapter calls NAME (prompt=question)
    filters: tuple[str, ...] = ()  # FIELD=VALUE: keep only the rows where every one holds (after fields)
    template: str = ""  # prompt template: plain, paper (safe-rlhf's), chat (the model tokenizer's), or a text with
    # {input}; default the adapter's
    cut_words: int = 16  # imdb: the prompt is a review's first N words, the response the rest, exactly as written
    dedup: bool = True  # drop records that repeat an earlier one (same prompt and response, or same text)
    prompts: int = 200  # evaluation prompts held out of every pool
    seed: int = 0  # the order of the held-out choice and of every pool


@dataclass
class Prepared:
    pools: Pools  # positive / negative / pairs / text, each shuffled with the seed
    prompts: list[str]  # the held-out evaluation prompts (templated)
    record: dict  # what was read, kept and dropped, by step: goes to the stage's split.json


def _pairs(items: tuple[str, ...], key: str) -> list[tuple[str, str]]:
    out = []
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise UserError(f"data.{key}: '{item}' is not NAME=VALUE")
        out.append((name.strip(), value.strip()))
    return out


def _canon(value) -> str:
    """A field's value as a filter compares it: booleans and whole numbers the same in every file type."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    text = str(value)
    return text.lower() if text.lower() in ("true", "false") else text


def template_function(template: str, tokenizer=None):
    """prompt -> templated prompt. `chat` uses the tokenizer's chat template (one user turn, the generation prompt
    added), without the BOS text the tokenizer adds again when it encodes.

    >>> template_function("paper")("Hi")
    'BEGINNING OF CONVERSATION: USER: Hi ASSISTANT:'
    """
    if template == "plain":
        return lambda p: p
    if template == "paper":
        template = PAPER_TEMPLATE
    if template == "chat":
        if tokenizer is None or not getattr(tokenizer, "chat_template", None):
            raise UserError("data.template chat: the model's tokenizer has no chat template (use plain, paper, "
                            "or a text with {input})")
        bos = tokenizer.bos_token or ""

        def chat(prompt: str) -> str:
            text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                                 add_generation_prompt=True)
            return text[len(bos):] if bos and text.startswith(bos) else text

        return chat
    if "{input}" not in template:
        raise UserError(f"data.template {template!r} has no {{input}} (where the prompt goes); use plain, paper, "
                        "chat, or a text with {input}")
    return lambda p: template.replace("{input}", p)


def _rows(cfg: DataConfig, source: str, split: str, what: str) -> list[dict]:
    rows, where = read_rows(source, split)
    renames = _pairs(cfg.fields, "fields")
    out = []
    for n, obj in rows:
        if not isinstance(obj, dict):
            raise UserError(f"{source}: {where} {n} is not a record (an object of fields)")
        row = dict(obj)
        for name, raw in renames:
            if raw in obj:
                row[name] = obj[raw]
        out.append(row)
    if not out:
        raise UserError(f"{source}: the {what} split '{split}' is empty")
    for name, value in _pairs(cfg.filters, "filters"):
        if name not in out[0]:
            raise UserError(f"data.filters: no field '{name}' in the records of {source} (fields: "
                            f"{', '.join(sorted(out[0]))})")
        out = [r for r in out if _canon(r.get(name)) == _canon(value)]
        if not out:
            raise UserError(f"data.filters: {name}={value} selects none of the records of {source} split '{split}'")
    need = adapter(cfg.dataset).needs
    missing = [k for k in need if k not in out[0]]
    if missing:
        raise UserError(f"{source}: the records have no field '{missing[0]}' that the {cfg.dataset} adapter reads "
                        f"(fields: {', '.join(sorted(out[0]))}); map one with data.fields {missing[0]}=RAW_NAME")
    return out


def _dedup(pool: list[dict]) -> list[dict]:
    seen, out = set(), []
    for r in pool:
        key = tuple(sorted(r.items()))
        if key not in seen:
            seen.add(key)
            out.append(r)
    return out


def defaults(cfg: DataConfig) -> tuple[str, str, str, str]:
    """(source, split, held-out split or "", template) with the adapter's defaults filled in."""
    a = adapter(cfg.dataset)
    held = cfg.heldout_split or a.heldout_split
    return cfg.source or a.hub, cfg.split or a.split, "" if held == "none" else held, cfg.template or a.template


def check_data(cfg: DataConfig) -> None:
    """What can be checked without reading a row: the adapter, the options, the source, the splits."""
    source, split, held, template = defaults(cfg)  # an unknown dataset stops here
    if not source:
        raise UserError(f"data.source: the {cfg.dataset} adapter has no default dataset; give a file, folder or hf:NAME")
    if cfg.prompts < 1 or cfg.cut_words < 1:
        raise UserError(f"data.prompts and data.cut_words must be >= 1, got {cfg.prompts}, {cfg.cut_words}")
    _pairs(cfg.fields, "fields")
    _pairs(cfg.filters, "filters")
    if template != "chat":
        template_function(template)
    known = splits(source)
    for key, name in (("split", split), ("heldout_split", held)):
        if name and known is not None and name not in known:
            raise UserError(f"data.{key}: {source} has no split '{name}' (it has: {', '.join(known)})")


def prepare(cfg: DataConfig, tokenizer=None) -> Prepared:
    """Read and shape a raw dataset (the module docstring gives the steps). `tokenizer`: for the chat template."""
    check_data(cfg)
    a = adapter(cfg.dataset)
    source, split, held, template = defaults(cfg)
    apply = template_function(template, tokenizer)
    record: dict = {"dataset": cfg.dataset, "source": source, "split": split, "heldout_split": held or None,
                    "template": template, "filters": list(cfg.filters), "fields": list(cfg.fields)}

    def shaped(rows: list[dict]) -> Pools:
        pools = a.build(rows, cfg.cut_words)
        for pool in pools.values():
            for r in pool:
                if "prompt" in r:
                    r["prompt"] = apply(str(r["prompt"]))
        return pools

    train_rows = _rows(cfg, source, split, "training")
    pools = shaped(train_rows)
    if cfg.dataset != "text":  # a training split's documents are trained on; held-out text comes from `held`
        pools.pop("text", None)
    record["rows"] = len(train_rows)
    record["adapted"] = {k: len(v) for k, v in pools.items()}
    if cfg.dedup:
        pools = {k: _dedup(v) for k, v in pools.items()}
    record["deduplicated"] = {k: len(v) for k, v in pools.items()}
    rng = random.Random(cfg.seed)
    if held:
        held_pools = shaped(_rows(cfg, source, held, "held-out"))
        candidates = sorted({r["prompt"] for k in ("positive", "negative") for r in held_pools.get(k, [])})
        if cfg.dataset != "text" and held_pools.get("text"):  # documents for alignment depth: never trained on
            pools["text"] = _dedup(held_pools["text"]) if cfg.dedup else held_pools["text"]
    else:
        candidates = sorted({r["prompt"] for k in ("positive", "negative") for r in pools.get(k, [])})
    rng.shuffle(candidates)
    prompts = candidates[: cfg.prompts]
    if len(prompts) < cfg.prompts:
        raise UserError(f"data.prompts asks for {cfg.prompts} evaluation prompts but {source} split "
                        f"'{held or split}' has {len(prompts)} distinct prompts: lower data.prompts")
    if not held:  # held out by prompt: no record with an evaluation prompt is trained on
        chosen = set(prompts)
        pools = {k: [r for r in v if r.get("prompt") not in chosen] for k, v in pools.items()}
    for k in sorted(pools):
        rng.shuffle(pools[k])
    record["pools"] = {k: len(v) for k, v in pools.items() if v}
    record["prompts"] = len(prompts)
    if not any(pools.values()):
        raise UserError(f"{source}: no records are left after filtering and holding out the evaluation prompts")
    return Prepared({k: v for k, v in pools.items() if v}, prompts, record)
