"""Result files, written one way: atomically (temp file + rename, so a crash never leaves half a file).

JSON, JSONL (one record a line, UTF-8 kept readable), CSV (lists joined with ';', None as an empty cell) and
PNG figures. The bottom floor: it imports nothing of the package, so every layer above can use it.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterable


def atomic_write(path: Path, data: str | bytes) -> None:
    """Write `data` to `path` through a temp file in the same directory and an atomic rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
        os.chmod(tmp, 0o644)  # mkstemp makes 0600 files; results are meant to be read by others
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


_HASHES: dict[tuple, str] = {}  # (path, size, mtime, inode) -> content hash: each file is read once a process


def file_sha256(path: Path) -> str:
    """sha256 of a file's whole content, streamed (a 14 GB checkpoint takes seconds, once per process)."""
    st = Path(path).stat()
    key = (str(Path(path).resolve()), st.st_size, st.st_mtime_ns, st.st_ino)
    if key not in _HASHES:
        with open(path, "rb") as f:
            _HASHES[key] = hashlib.file_digest(f, "sha256").hexdigest()
    return _HASHES[key]


def write_json(path: Path, obj: Any) -> None:
    atomic_write(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def json_line(record: dict) -> str:
    """One JSONL line (non-ASCII text stays readable)."""
    return json.dumps(record, ensure_ascii=False) + "\n"


def jsonl_text(records: Iterable[dict]) -> str:
    return "".join(json_line(r) for r in records)


def write_jsonl(path: str | Path, records: Iterable[dict]) -> None:
    """Write records as JSONL atomically."""
    atomic_write(Path(path), jsonl_text(records))


def append_jsonl(path: Path, record: dict) -> None:
    """Append one record; a line goes out in one write call, so a crash never leaves half a record."""
    with open(path, "a", encoding="utf-8") as f:
        f.write(json_line(record))


def read_jsonl(path: Path) -> list[dict]:
    """The records of a JSONL file we wrote; [] if it does not exist.

    Lines end at "\\n" only (model text may hold U+2028, which `splitlines` would cut at), and a last line without
    its newline is dropped: a process killed in the middle of appending it never finished that record.

    >>> import tempfile; p = Path(tempfile.mkdtemp()) / "r.jsonl"
    >>> _ = p.write_text('{"a": 1}\\n{"b": "x\u2028y"}\\n{"c": ')
    >>> read_jsonl(p)
    [{'a': 1}, {'b': 'x\u2028y'}]
    """
    path = Path(path)
    if not path.exists():
        return []
    lines = path.read_text(encoding="utf-8").split("\n")
    return [json.loads(line) for line in lines[:-1] if line.strip()]  # the last piece has no newline after it


def csv_text(rows: list[dict], columns: list[str] | None = None) -> str:
    """Rows as CSV: the columns of all rows in first-seen order, lists joined with ';', None as an empty cell.

    >>> print(csv_text([{"a": 1, "b": [0.5, 2.0]}, {"a": None, "c": "x"}]), end="")
    a,b,c
    1,0.5;2,
    ,,x
    """
    columns = columns or list(dict.fromkeys(k for r in rows for k in r))
    buf = io.StringIO()
    w = csv.DictWriter(buf, columns, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: ";".join("" if x is None else f"{x:g}" for x in v) if isinstance(v, list) else
                    ("" if v is None else v) for k, v in r.items()})
    return buf.getvalue()


def save_png(fig, path: Path, dpi: int = 110) -> Path:
    """Write a matplotlib figure as a PNG, atomically, and close it."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    atomic_write(Path(path), buf.getvalue())
    return Path(path)
