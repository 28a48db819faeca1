"""Load records: `prompt`/`response` pairs (SFT) or `text` documents (language modelling).

Sources: a `.jsonl` file (one JSON object a line), a `.json` file (a list of objects), or a Hugging Face
dataset named `hf:NAME` (optionally `hf:NAME:SUBSET`), loaded only when asked that way. Field names are
configurable (`Fields`), so `{"review": ...}` maps onto `text` without rewriting files. Every problem a
user can cause is a `UserError` naming the file and, where there is one, the line.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from elasticity.errors import UserError

HUB_PREFIX = "hf:"


@dataclass(frozen=True)
class Fields:
    """Which keys of a record hold the prompt, the response and a plain-text document."""

    prompt: str = "prompt"  # the field that holds a pair's prompt
    response: str = "response"  # the field that holds a pair's response
    text: str = "text"  # the field that holds a document


SUFFIXES = (".jsonl", ".json")


def _read_text(path: Path) -> str:
    try:
        return path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"{path} is not UTF-8 text (byte {e.start} is not): data files are UTF-8 JSON") from None


def _read_file(path: Path) -> list[tuple[int, object]]:
    """(line number, parsed object) pairs; for a .json file the line number is the item's index + 1."""
    if path.is_dir():
        raise UserError(f"{path} is a folder, not a data file (give a .jsonl or .json file, or hf:NAME)")
    if not path.is_file():
        raise UserError(f"data file not found: {path}")
    if path.suffix.lower() not in SUFFIXES:
        raise UserError(f"{path}: unsupported data file type '{path.suffix}' (give a .jsonl or .json file, or hf:NAME)")
    text = _read_text(path)
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise UserError(f"{path}: not valid JSON ({e.msg} at line {e.lineno})") from None
        if not isinstance(data, list):
            raise UserError(f"{path}: a .json data file must hold a list of records")
        return list(enumerate(data, start=1))
    rows = []
    for lineno, line in enumerate(text.split("\n"), start=1):  # not splitlines: JSON strings may hold U+2028
        if not line.strip():
            continue
        try:
            rows.append((lineno, json.loads(line)))
        except json.JSONDecodeError as e:
            raise UserError(f"{path}:{lineno}: not a JSON line ({e.msg}); each line must be one JSON object") from None
    return rows


def _read_hub(name: str, split: str) -> list[tuple[int, object]]:
    import datasets  # imported only when a hub dataset is asked for

    from elasticity.hub import hub_reachable

    if not hub_reachable():  # read the local cache alone: no retries, one clear line if it is not there
        datasets.config.HF_HUB_OFFLINE = datasets.config.HF_DATASETS_OFFLINE = True
    repo, _, subset = name.partition(":")
    try:
        ds = datasets.load_dataset(repo, subset or None, split=split)
    except Exception as e:  # noqa: BLE001 - any loading failure is the user's to fix (name, split, network)
        raise UserError(f"cannot load Hugging Face dataset '{name}' split '{split}': {e}".splitlines()[0]) from None
    return [(i, dict(r)) for i, r in enumerate(ds, start=1)]


def load_records(
    source: str | Path, need: tuple[str, ...], fields: Fields = Fields(), split: str = "train"
) -> list[dict[str, str]]:
    """Read records and return them with canonical keys.

    Args:
        source: file path, or `hf:NAME[:SUBSET]` for a Hugging Face dataset.
        need: canonical keys every record must have: ("text",) or ("prompt", "response").
        fields: the source's names for the canonical keys.
        split: dataset split (hub sources only).

    Returns:
        A list of dicts with exactly the keys in `need`, all strings.
    """
    source = str(source)
    hub = source.startswith(HUB_PREFIX)
    rows = _read_hub(source[len(HUB_PREFIX):], split) if hub else _read_file(Path(source))
    where = "record" if hub else "line"
    records = []
    for lineno, obj in rows:
        if not isinstance(obj, dict):
            raise UserError(f"{source}: {where} {lineno} is not a JSON object")
        rec = {}
        for key in need:
            name = getattr(fields, key)
            value = obj.get(name)
            if not isinstance(value, str):
                problem = "has no" if value is None else "has a non-string"
                raise UserError(
                    f"{source}: {where} {lineno} {problem} field '{name}' (needed as '{key}'; "
                    f"rename it or set the field name in the data config)"
                )
            rec[key] = value
        records.append(rec)
    if not records:
        raise UserError(f"{source}: the dataset is empty")
    return records

