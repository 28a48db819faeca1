"""Load records: `prompt`/`response` pairs (SFT) or `text` documents (language modelling).

Sources are those of `data.sources`: a `.jsonl`, `.json`, `.csv` or `.parquet` file, a local dataset folder, or a
Hugging Face dataset named `hf:NAME` (optionally `hf:NAME:SUBSET`), loaded only when asked that way. Field names
are configurable (`Fields`), so `{"review": ...}` maps onto `text` without rewriting files. Every problem a user
can cause is a `UserError` naming the file and, where there is one, the line. Raw datasets in their own schemas
(IMDb, BeaverTails, ...) go through `data.adapters` first.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from elasticity.data.sources import read_rows
from elasticity.errors import UserError


@dataclass(frozen=True)
class Fields:
    """Which keys of a record hold the prompt, the response, a preference pair's sides and a plain-text document."""

    prompt: str = "prompt"  # the field that holds a pair's prompt
    response: str = "response"  # the field that holds a pair's response
    text: str = "text"  # the field that holds a document
    chosen: str = "chosen"  # the field that holds a preference pair's preferred response
    rejected: str = "rejected"  # the field that holds its dispreferred response


def load_records(
    source: str | Path, need: tuple[str, ...], fields: Fields = Fields(), split: str = "train"
) -> list[dict[str, str]]:
    """Read records and return them with canonical keys.

    Args:
        source: a data file, a dataset folder, or `hf:NAME[:SUBSET]` for a Hugging Face dataset.
        need: canonical keys every record must have: ("text",) or ("prompt", "response").
        fields: the source's names for the canonical keys.
        split: dataset split (folders and hub datasets; a single file is its own split).

    Returns:
        A list of dicts with exactly the keys in `need`, all strings.
    """
    source = str(source)
    rows, where = read_rows(source, split)
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

