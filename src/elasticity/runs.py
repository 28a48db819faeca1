"""The run-directory contract: every stage writes one directory named by what determines its result.

    runs/<stage>-<hash>/   hash = sha256(stage, resolved config, input hashes)[:12]
        config.yaml        the resolved config, plus the inputs it was computed from
        meta.json          versions, git commit, seed, device, wall time
        metrics.jsonl      one JSON record per line (training curves, evaluations)
        ...                the stage's results
        DONE               written last: its presence is the only "finished" signal

Asking for a finished stage returns it without recomputation. An unfinished one is handed back to the
stage's work function, which resumes from what it finds there (training checkpoints) or redoes it.
Every file is written atomically (temp file + rename), so a crash never leaves half a file.
"""

from __future__ import annotations

import hashlib
import platform
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from elasticity.config import config_hash, dump_yaml, to_dict
from elasticity.errors import UserError
from elasticity.files import append_jsonl, atomic_write, jsonl_text, read_jsonl, write_json

DONE = "DONE"
_LIBRARIES = ("torch", "transformers", "accelerate", "peft", "tokenizers", "datasets", "numpy")


@dataclass(frozen=True)
class Run:
    """One stage's output directory."""

    path: Path

    @property
    def done(self) -> bool:
        return (self.path / DONE).exists()

    @property
    def name(self) -> str:
        return self.path.name

    def file(self, name: str) -> Path:
        return self.path / name

    def write_json(self, name: str, obj: Any) -> Path:
        write_json(self.path / name, obj)
        return self.path / name

    def write_text(self, name: str, text: str) -> Path:
        atomic_write(self.path / name, text)
        return self.path / name

    def log(self, record: dict) -> None:
        """Append one record to metrics.jsonl (a line is written whole by a single write call)."""
        append_jsonl(self.path / "metrics.jsonl", record)

    def metrics(self) -> list[dict]:
        return read_jsonl(self.path / "metrics.jsonl")

    def lines(self, name: str) -> list[str]:
        """A text file's lines (e.g. an experiment's `summary.txt`)."""
        return (self.path / name).read_text().splitlines()

    def truncate_metrics(self, keep: Callable[[dict], bool]) -> None:
        """Keep only the records that `keep` accepts (a resumed run drops what it will log again)."""
        kept = [r for r in self.metrics() if keep(r)]
        atomic_write(self.path / "metrics.jsonl", jsonl_text(kept))


def _sha256_file(path: Path, limit: int | None = None) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        if limit is None:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        else:  # large weight files: size + head + tail, so hashing a 14 GB checkpoint stays instant
            h.update(str(path.stat().st_size).encode())
            h.update(f.read(limit))
            f.seek(max(0, path.stat().st_size - limit))
            h.update(f.read(limit))
    return h.hexdigest()


def input_hash(source: str | Path | Run) -> str:
    """What identifies an input: a run's directory name, a file's content, a model folder's files, a hub id."""
    if isinstance(source, Run):
        return source.name
    path = Path(source)
    if path.is_dir():
        if (path / DONE).exists():
            return path.name
        h = hashlib.sha256()
        for p in sorted(q for q in path.rglob("*") if q.is_file()):
            small = p.stat().st_size < (16 << 20)
            h.update(f"{p.relative_to(path)}:{_sha256_file(p, None if small else 1 << 20)}".encode())
        return h.hexdigest()[:16]
    if path.is_file():
        return _sha256_file(path)[:16]
    return f"hub:{source}"


def _git_commit() -> str | None:
    try:
        here = Path(__file__).resolve().parent
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5, check=False
        )
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def provenance() -> dict:
    """Versions of this package, Python and the wrapped libraries, and the git commit of the source."""
    from importlib.metadata import PackageNotFoundError, version

    libs = {}
    for lib in _LIBRARIES:
        try:
            libs[lib] = version(lib)
        except PackageNotFoundError:
            libs[lib] = None
    from elasticity import __version__

    return {
        "elasticity": __version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "libraries": libs,
        "git_commit": _git_commit(),
        "argv": sys.argv,
    }


def stage_path(runs_root: Path, stage: str, config: Any, inputs: dict[str, Any]) -> Path:
    hashes = {k: input_hash(v) for k, v in sorted(inputs.items())}
    return Path(runs_root) / f"{stage}-{config_hash({'stage': stage, 'config': to_dict(config), 'inputs': hashes})}"


def run_stage(
    runs_root: Path,
    stage: str,
    config: Any,
    inputs: dict[str, Any],
    work: Callable[[Run], dict | None],
    *,
    seed: int | None = None,
    device: str = "cpu",
    quiet: bool = False,
) -> Run:
    """Return the finished run for (stage, config, inputs), computing it with `work(run)` only if needed.

    `work` may return a dict that is merged into meta.json (e.g. the device actually used).
    """
    run = Run(stage_path(runs_root, stage, config, inputs))
    if run.done:
        if not quiet:
            print(f"[{stage}] finished run found, reusing {run.path}", file=sys.stderr)
        return run
    fresh = not run.path.exists()
    run.path.mkdir(parents=True, exist_ok=True)
    inputs_text = "\n".join(f"#   {k}: {v} ({input_hash(v)})" for k, v in sorted(inputs.items()))
    run.write_text("config.yaml", f"# stage: {stage}\n# inputs:\n{inputs_text}\n" + dump_yaml(config))
    started = time.time()
    try:
        extra = work(run) or {}
    except UserError:
        if fresh:  # a user error leaves nothing behind; an interrupted run keeps its files to resume from
            shutil.rmtree(run.path, ignore_errors=True)
        raise
    meta = {
        "stage": stage,
        **provenance(),
        "seed": seed,
        "device": device,
        "inputs": {k: str(v.path if isinstance(v, Run) else v) for k, v in inputs.items()},
        "started": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(started)),
        "wall_time_s": round(time.time() - started, 3),
        **extra,
    }
    run.write_json("meta.json", meta)
    run.write_text(DONE, "")
    return run
