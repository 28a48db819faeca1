"""The Hugging Face hub, asked once: can it be reached, what of it is in the local cache, which commit a
revision is, and what a model's weights are (by content).

A hub model is `org/name` or `org/name@revision` (a branch, a tag such as Pythia's `step3000`, or a commit). Offline
(no answer, or HF_HUB_OFFLINE set) a hub model or dataset is read from the local cache alone: one clear line if it
is not there, instead of five retries and a traceback.
"""

from __future__ import annotations

import hashlib
import os
import re
from functools import cache
from pathlib import Path

from elasticity.files import file_sha256

WEIGHT_PATTERNS = ("*.safetensors", "*.bin", "*.pt", "*.pth")  # what a model's weights are stored in


@cache
def hub_reachable() -> bool:
    """Whether the Hugging Face hub answers one quick request (no retries); never when HF_HUB_OFFLINE is set.

    When it does not answer, the process goes offline for every library that asks huggingface_hub (transformers
    included): a cached model then loads from the cache at once, instead of retrying the hub for each file it
    might have (five retries of an adapter_config.json cost 23 s a model load).
    """
    import huggingface_hub.constants

    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        reachable = False
    else:
        try:
            from huggingface_hub import get_session

            get_session().head(huggingface_hub.constants.ENDPOINT, timeout=3)
            reachable = True
        except Exception:  # noqa: BLE001 - no answer of any kind: offline
            reachable = False
    if not reachable:
        huggingface_hub.constants.HF_HUB_OFFLINE = True
    return reachable


def split_revision(source: str) -> tuple[str, str | None]:
    """`org/name@rev` -> ("org/name", "rev"); a hub id without one, or any existing local path, -> (source, None).

    >>> split_revision("EleutherAI/pythia-160m@step3000"), split_revision("gpt2")
    (('EleutherAI/pythia-160m', 'step3000'), ('gpt2', None))
    """
    if "@" not in source or Path(source).expanduser().exists():
        return source, None
    repo, _, revision = source.partition("@")
    return repo, revision or None


def _cached_config(source: str) -> str | None:
    from huggingface_hub import try_to_load_from_cache

    repo, revision = split_revision(source)
    try:
        found = try_to_load_from_cache(repo, "config.json", revision=revision)
    except Exception:  # noqa: BLE001 - an id the cache cannot even parse is not cached
        return None
    return found if isinstance(found, str) else None


def hub_cached(source: str) -> bool:
    """Whether a hub model's config (at its revision) is in the local Hugging Face cache."""
    return _cached_config(source) is not None


def cached_commit(source: str) -> str | None:
    """The commit the local cache holds for a hub id at its revision (None: not cached)."""
    found = _cached_config(source)
    return found.split("/snapshots/")[1].split("/")[0] if found and "/snapshots/" in found else None


def resolved_commit(source: str) -> str | None:
    """The commit a hub id at its revision is: from the local cache, else asked of the hub when it answers."""
    if commit := cached_commit(source):
        return commit
    if not hub_reachable():
        return None
    from huggingface_hub import HfApi

    repo, revision = split_revision(source)
    try:
        return HfApi().model_info(repo, revision=revision).sha
    except Exception:  # noqa: BLE001 - a wrong id or revision is reported when the model is loaded
        return None


def model_folder(source: str) -> Path | None:
    """Where a model's files lie on this machine: the folder itself, or the cached snapshot of a hub id."""
    path = Path(source).expanduser()
    if path.is_dir():
        return path
    found = _cached_config(source)
    return Path(found).parent if found else None


def weights_hash(source: str) -> str | None:
    """sha256 over a model's weight files (names and contents), where they are on this machine; None if not.

    Two revisions with the same weights hash are the same model (Pythia has shipped duplicated checkpoints).
    """
    folder = model_folder(source)
    if folder is None:
        return None
    if (folder / "model" / "config.json").is_file():  # a training run of ours keeps its model in model/
        folder = folder / "model"
    files = sorted({p for pattern in WEIGHT_PATTERNS for p in folder.glob(pattern) if p.is_file()})
    if not files:
        return None
    h = hashlib.sha256()
    for p in files:
        h.update(f"{p.name}:{_content_sha256(p)}\n".encode())
    return h.hexdigest()


def _content_sha256(path: Path) -> str:
    """A file's sha256; for a file of the hub cache, the name of the blob it links to, which is that sha256 (the
    hub stores large files by content), so a cached 7B model is not read to be named."""
    target = path.resolve()
    if path.is_symlink() and target.parent.name == "blobs" and re.fullmatch(r"[0-9a-f]{64}", target.name):
        return target.name
    return file_sha256(path)


def model_identity(source: str) -> dict:
    """What a model input is, for meta.json: its hub revision and resolved commit (hub ids), and the hash of its
    weights where they are on this machine."""
    repo, revision = split_revision(source)
    local = Path(source).expanduser().is_dir()
    out: dict = {"source": source}
    if not local:
        out.update(repo=repo, revision=revision or "main", commit=resolved_commit(source))
    out["weights_sha256"] = weights_hash(source)
    return out
