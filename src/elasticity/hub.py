"""The Hugging Face hub, asked once: can it be reached, and what of it is in the local cache.

Offline (no answer, or HF_HUB_OFFLINE set) a hub model or dataset is read from the local cache alone: one clear
line if it is not there, instead of five retries and a traceback.
"""

from __future__ import annotations

import os
from functools import cache


@cache
def hub_reachable() -> bool:
    """Whether the Hugging Face hub answers one quick request (no retries); never when HF_HUB_OFFLINE is set."""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        return False
    try:
        from huggingface_hub import constants, get_session

        get_session().head(constants.ENDPOINT, timeout=3)
        return True
    except Exception:  # noqa: BLE001 - no answer of any kind: offline
        return False


def hub_cached(repo: str) -> bool:
    """Whether a hub model's config is in the local Hugging Face cache."""
    from huggingface_hub import try_to_load_from_cache

    try:
        return isinstance(try_to_load_from_cache(repo, "config.json"), str)
    except Exception:  # noqa: BLE001 - an id the cache cannot parse is not cached
        return False
