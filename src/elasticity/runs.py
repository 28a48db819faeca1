"""The run-directory contract: every stage writes one directory named by what determines its result.

    runs/<stage>-<hash>/   hash = sha256(stage, config, input hashes, code fingerprint)[:12]
        config.yaml        the resolved config, plus the inputs it was computed from
        meta.json          versions, git commit, code fingerprint, seed, device, wall time
        metrics.jsonl      one JSON record per line (training curves, evaluations)
        ...                the stage's results
        DONE               written last: its presence is the only "finished" signal
        .lock              held by the one process computing the stage

What determines a result names it, and nothing else does:
- the config, with every input path (a field typed `config.InputPath`) replaced by what identifies the input:
  a run's name, a file's or a folder's content hash, a hub model's commit. Moving or renaming a runs directory
  or a dataset file reuses finished stages;
- the code: `fingerprint.code_fingerprint` of the module that defines the stage's work. A change to code that
  can alter a stage's outputs renames the stage; old run directories are simply not reused.

Asking for a finished stage returns it without recomputation. One process computes a stage; an identical
command started meanwhile waits for it and then reuses the result; a lock left by a process that died is free
again, and the stage resumes. An unfinished stage is handed back to the stage's work function, which resumes
from what it finds there (training resume states) or redoes it. Every file is written atomically (temp file +
rename), so a crash never leaves half a file; a user error in a stage leaves nothing behind.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import platform
import re
import shutil
import subprocess
import sys
import time
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Union, get_args, get_origin, get_type_hints

from elasticity import ranks
from elasticity.config import config_hash, dump_yaml, is_input_path
from elasticity.errors import UserError
from elasticity.files import append_jsonl, atomic_write, file_sha256, jsonl_text, read_jsonl, write_json
from elasticity.fingerprint import code_fingerprint
from elasticity.hub import model_identity

DONE = "DONE"
LOCK = ".lock"
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


def _hub_hash(source: str) -> str:
    """A hub id by the commit its files come from: the one in the local cache, else "hub:<id>" (a model that is
    neither a local folder nor cached cannot be loaded offline anyway, and says so when it is loaded)."""
    from elasticity.hub import cached_commit, split_revision

    repo, _ = split_revision(source)
    commit = cached_commit(source)
    return f"hub:{repo}@{commit}" if commit else f"hub:{source}"


def input_hash(source: str | Path | Run) -> str:
    """What identifies an input: a run's directory name, a file's content, a folder's files (names and content),
    or a hub model's commit. Never its location."""
    if isinstance(source, Run):
        return source.name
    path = Path(source).expanduser()
    if path.is_dir():
        if (path / DONE).exists():
            return path.name
        h = hashlib.sha256()
        for p in sorted(q for q in path.rglob("*") if q.is_file() and q.name != LOCK):
            h.update(f"{p.relative_to(path)}:{file_sha256(p)}\n".encode())
        return h.hexdigest()[:16]
    if path.is_file():
        return file_sha256(path)[:16]
    return _hub_hash(str(source))


def _is_optional(tp: Any) -> bool:
    return get_origin(tp) in (Union, types.UnionType) and type(None) in get_args(tp)


def portable(obj: Any) -> Any:
    """A config in the plain form `config.to_dict` gives, but with every input path (a field typed InputPath,
    or a tuple of them) replaced by its `input_hash`, and a Run by its name: what the hash of a stage covers."""
    if isinstance(obj, Run):
        return obj.name
    if dataclasses.is_dataclass(obj):
        hints, out = get_type_hints(type(obj)), {}
        for f in dataclasses.fields(obj):
            tp, value = hints[f.name], getattr(obj, f.name)
            tp = next(a for a in get_args(tp) if a is not type(None)) if _is_optional(tp) else tp
            if is_input_path(tp):
                out[f.name] = input_hash(value) if value else value
            elif get_origin(tp) is tuple and get_args(tp) and is_input_path(get_args(tp)[0]):
                out[f.name] = [input_hash(v) for v in value]
            else:
                out[f.name] = portable(value)
        return out
    if isinstance(obj, dict):
        return {k: portable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [portable(v) for v in obj]
    return obj


HUB_ID = re.compile(r"[\w.-]+(/[\w.-]+)?(@[\w./-]+)?")  # gpt2, org/name, org/name@revision


def _is_model(source: Any) -> bool:
    """A model input (a model folder, a run directory with a model, a hub id), as opposed to data or a run."""
    if not isinstance(source, str) or not source or source.startswith("hf:"):
        return False
    path = Path(source).expanduser()
    if path.is_dir():
        return any((path / sub / "config.json").is_file() for sub in ("", "model"))
    return not path.exists() and HUB_ID.fullmatch(source) is not None


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


def stage_path(runs_root: Path, stage: str, config: Any, inputs: dict[str, Any], code: str = "") -> Path:
    """The run directory of a stage: its name hashes the portable config, the inputs' hashes and the code."""
    hashes = {k: input_hash(v) for k, v in sorted(inputs.items())}
    payload = {"stage": stage, "config": portable(config), "inputs": hashes, "code": code}
    return Path(runs_root) / f"{stage}-{config_hash(payload)}"


def planned_run(runs_root: Path, stage: str, config: Any, inputs: dict[str, Any], module: str,
                reports: bool = False) -> Run:
    """The run directory a stage whose work is defined in `module` has, finished or not."""
    return Run(stage_path(runs_root, stage, config, inputs, code_fingerprint(module, reports)["hash"]))


def check_runs_root(path: Path) -> None:
    """A runs directory that is a file, lies under a file or cannot be written is one clear line, before any work.

    The check makes no folder of the runs path: it tries to make a folder of its own (named after this process) in
    the nearest one that exists, and removes it. Two commands started together on a new runs directory would
    otherwise make and remove the same folders under each other.
    """
    path = Path(path)
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise UserError(f"runs directory {path}: a file stands where a folder must be ({existing}); choose another "
                        "--runs-dir")
    probe = existing / f".write-check-{os.getpid()}"
    try:
        probe.mkdir()
        probe.rmdir()
    except OSError as e:
        raise UserError(f"runs directory {path} cannot be written ({e.strerror}); choose another --runs-dir") from None


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
    reports: bool = False,
    shared: bool = False,
) -> Run:
    """Return the finished run for (stage, config, inputs, code), computing it with `work(run)` only if needed.

    The code is that of the module defining `work` (`reports`: the stage writes tables, so the report writers
    count too). `work` may return a dict that is merged into meta.json (e.g. the device actually used).
    Under several processes (`ranks`) only the main one computes, unless the stage is `shared` (it trains: every
    rank runs `work`, which writes only on the main one); the main process alone writes the run's own files, and
    every rank leaves when it is done.
    """
    from filelock import FileLock

    fingerprint = code_fingerprint(work.__module__, reports)
    runs_root = Path(runs_root)
    run = planned_run(runs_root, stage, config, inputs, work.__module__, reports)
    if run.done:
        if not quiet:
            print(f"[{stage}] finished run found, reusing {run.path}", file=sys.stderr)
        return run
    new_root, fresh = not runs_root.exists(), not run.path.exists()
    check_runs_root(runs_root)
    run.path.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(run.file(LOCK)))
    if ranks.is_main():
        try:
            lock.acquire(timeout=0.5)
        except TimeoutError:
            print(f"[{stage}] another process is computing {run.path}; waiting for it", file=sys.stderr)
            lock.acquire()
    try:
        if run.done:  # the other process finished it
            return run
        if ranks.is_main():
            _compute(run, stage, config, inputs, work, seed, device, fingerprint)
        elif shared:
            work(run)
        ranks.barrier()  # the main process has written the whole stage before any rank goes on (no barrier after
        # an error: the launcher ends every rank when one fails)
        return run
    except UserError:
        if fresh:  # a user error leaves nothing behind; an interrupted run keeps its files to resume from
            shutil.rmtree(run.path, ignore_errors=True)
            if new_root and not any(runs_root.iterdir()):
                runs_root.rmdir()
        raise
    finally:
        if lock.is_locked:
            lock.release()


def _compute(run: Run, stage: str, config: Any, inputs: dict, work, seed, device, fingerprint) -> Run:
    inputs_text = "\n".join(f"#   {k}: {v} ({input_hash(v)})" for k, v in sorted(inputs.items()))
    run.write_text("config.yaml", f"# stage: {stage}\n# inputs:\n{inputs_text}\n" + dump_yaml(config))
    started = time.time()
    extra = work(run) or {}
    meta = {
        "stage": stage,
        **provenance(),
        "code": fingerprint,
        "seed": seed,
        "device": device,
        "inputs": {k: str(v.path if isinstance(v, Run) else v) for k, v in inputs.items()},
        "models": {k: model_identity(v) for k, v in inputs.items() if _is_model(v)},
        "started": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(started)),
        "wall_time_s": round(time.time() - started, 3),
        **extra,
    }
    run.write_json("meta.json", meta)
    run.write_text(DONE, "")
    return run
