"""Raw rows from wherever a dataset lies, split by split, before any field is interpreted.

A source is one of:
- `hf:NAME` or `hf:NAME:SUBSET`: a Hugging Face hub dataset (read from the local cache alone when the hub
  cannot be reached);
- a local dataset folder: one written by `datasets.save_to_disk` (a DatasetDict or a single Dataset), or a
  folder of data files in the hub's layout (`train-00000-of-00001.parquet`, `data/test.jsonl`,
  `30k_train/part.parquet`, ...), whose files are matched to a split by name;
- one `.jsonl`, `.json` (a list of objects), `.csv` or `.parquet` file: it is the split.

Rows come back as (number, object): a file's line number for `.jsonl`, else the row's index + 1, so that an
error can point at the row. Every problem a user can cause is a `UserError` naming the source.
"""

from __future__ import annotations

import csv
import io
import json
import re
from pathlib import Path

from elasticity.errors import UserError

HUB_PREFIX = "hf:"
FILE_TYPES = (".jsonl", ".json", ".csv", ".parquet")
KINDS = "a .jsonl, .json, .csv or .parquet file, a dataset folder, or hf:NAME"


def _read_text(path: Path) -> str:
    try:
        return path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"{path} is not UTF-8 text (byte {e.start} is not): data files are UTF-8") from None


def _read_jsonl(path: Path) -> list[tuple[int, object]]:
    rows = []
    for lineno, line in enumerate(_read_text(path).split("\n"), start=1):  # not splitlines: strings may hold U+2028
        if not line.strip():
            continue
        try:
            rows.append((lineno, json.loads(line)))
        except json.JSONDecodeError as e:
            raise UserError(f"{path}:{lineno}: not a JSON line ({e.msg}); each line must be one JSON object") from None
    return rows


def _read_json(path: Path) -> list[tuple[int, object]]:
    try:
        data = json.loads(_read_text(path))
    except json.JSONDecodeError as e:
        raise UserError(f"{path}: not valid JSON ({e.msg} at line {e.lineno})") from None
    if not isinstance(data, list):
        raise UserError(f"{path}: a .json data file must hold a list of records")
    return list(enumerate(data, start=1))


def _read_csv(path: Path) -> list[tuple[int, object]]:
    try:
        rows = list(csv.DictReader(io.StringIO(_read_text(path), newline="")))
    except csv.Error as e:
        raise UserError(f"{path}: not valid CSV ({e})") from None
    return list(enumerate(rows, start=1))


def _read_parquet(path: Path) -> list[tuple[int, object]]:
    import pyarrow.parquet as pq  # installed with datasets

    try:
        rows = pq.read_table(path).to_pylist()
    except Exception as e:  # noqa: BLE001 - pyarrow raises several types for a file that is not parquet
        raise UserError(f"{path}: not a readable parquet file ({str(e).splitlines()[0]})") from None
    return list(enumerate(rows, start=1))


READERS = {".jsonl": _read_jsonl, ".json": _read_json, ".csv": _read_csv, ".parquet": _read_parquet}


def read_file(path: Path) -> list[tuple[int, object]]:
    """Every row of one data file."""
    if not path.is_file():
        raise UserError(f"data file not found: {path}")
    reader = READERS.get(path.suffix.lower())
    if reader is None:
        raise UserError(f"{path}: unsupported data file type '{path.suffix}' (give {KINDS})")
    return reader(path)


def _stem(path: Path) -> str:
    """A data file's name without its type and shard suffix: `train-00000-of-00002.parquet` -> train."""
    return re.sub(r"-\d+-of-\d+$", "", path.name[: -len(path.suffix)])


CHUNK = re.compile(r"(part|shard|chunk|data)?[-_]?\d*")  # a file name that says nothing of its split


def _folder_splits(folder: Path) -> dict[str, list[Path]]:
    """Split name -> its files, in a folder of data files: a file's name is its split (the hub's
    `train-00000-of-00001.parquet`, `test.jsonl`), unless it is a chunk's name (`part-0.parquet`): then its
    folder's name is (`30k_train/part-0.parquet`)."""
    found: dict[str, list[Path]] = {}
    for p in sorted(folder.rglob("*")):
        if p.is_file() and p.suffix.lower() in FILE_TYPES and not p.name.startswith((".", "dataset_", "state")):
            name = _stem(p)
            split = p.parent.name if CHUNK.fullmatch(name) and p.parent != folder else name
            found.setdefault(split, []).append(p)
    return found


def _saved_dataset(folder: Path, split: str) -> list[tuple[int, object]]:
    import datasets

    ds = datasets.load_from_disk(str(folder))
    if isinstance(ds, datasets.DatasetDict):
        if split not in ds:
            raise UserError(f"{folder}: no split '{split}' (it has: {', '.join(ds)}); set the split")
        ds = ds[split]
    return [(i, dict(r)) for i, r in enumerate(ds, start=1)]


def splits(source: str | Path) -> list[str] | None:
    """The splits a local source offers (None: a single file, or a hub dataset, which is only asked when read)."""
    path = Path(source).expanduser()
    if str(source).startswith(HUB_PREFIX) or not path.is_dir():
        return None
    if (path / "dataset_dict.json").is_file():
        return json.loads((path / "dataset_dict.json").read_text())["splits"]
    if (path / "state.json").is_file():
        return None
    return sorted(_folder_splits(path))


def read_folder(folder: Path, split: str) -> list[tuple[int, object]]:
    """The rows of one split of a local dataset folder (see the module docstring)."""
    if (folder / "dataset_dict.json").is_file() or (folder / "state.json").is_file():
        return _saved_dataset(folder, split)
    found = _folder_splits(folder)
    if not found:
        raise UserError(f"{folder} holds no data files (give {KINDS})")
    files = found.get(split)
    if files is None:
        raise UserError(f"{folder}: no split '{split}' (its files hold: {', '.join(sorted(found))}); set the split")
    rows: list[tuple[int, object]] = []
    for p in files:
        rows += [(len(rows) + i, r) for i, (_, r) in enumerate(read_file(p), start=1)]
    return rows


def read_hub(name: str, split: str) -> list[tuple[int, object]]:
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


def read_rows(source: str | Path, split: str = "train") -> tuple[list[tuple[int, object]], str]:
    """(rows, what a row is called in messages: "line" for .jsonl files, else "record") of one split of a source.
    A single file is its own split: `split` is not asked of it."""
    source = str(source)
    if source.startswith(HUB_PREFIX):
        return read_hub(source[len(HUB_PREFIX):], split), "record"
    path = Path(source).expanduser()
    if path.is_dir():
        return read_folder(path, split), "record"
    return read_file(path), "line" if path.suffix.lower() == ".jsonl" else "record"


def first_row(source: str | Path, split: str = "train") -> object | None:
    """The first row of a source, or None if it cannot be read (the caller's own load then says why)."""
    try:
        rows, _ = read_rows(source, split)
    except UserError:
        return None
    return rows[0][1] if rows else None
