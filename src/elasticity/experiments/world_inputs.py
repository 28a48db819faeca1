"""The embedded world's files as an experiment's inputs, shared by `elasticity demo` and `elasticity scaling`.

Rebound aligns on the world's positive reviews, perturbs with its negative ones, answers its evaluation openings
and measures held-out neutral and mixture text; resistance aligns on the positive reviews and answers the same
openings; both score with the world's oracle.
"""

from __future__ import annotations

from pathlib import Path

from elasticity.config import load_config
from elasticity.errors import UserError
from elasticity.runs import Run


def rebound_files(world: Run, pairs: bool = False) -> dict:
    """Rebound's file fields (dotted keys) filled with the world's files; `pairs` adds its preference pairs."""
    return {"positive": str(world.file("sft_positive.jsonl")), "negative": str(world.file("sft_negative.jsonl")),
            "prompts": str(world.file("eval_prompts.jsonl")),
            "heldout": (str(world.file("heldout_neutral.jsonl")), str(world.file("heldout_mixture.jsonl"))),
            "scorer.world": str(world.path), **({"pairs": str(world.file("sft_pairs.jsonl"))} if pairs else {})}


def resistance_files(world: Run) -> dict:
    """Resistance's file fields (dotted keys) filled with the world's files."""
    return {"alignment": str(world.file("sft_positive.jsonl")), "prompts": str(world.file("eval_prompts.jsonl")),
            "scorer.world": str(world.path)}


def preset_config(cls, preset: str, key: str, values: dict):
    """An experiment's config from a preset file and `values` (dotted keys); a missing preset is one line that
    names the flag (`key`) which sets it."""
    if not Path(preset).is_file():
        raise UserError(f"{key} not found: {preset} (run from the repository root, or set --{key})")
    return load_config(cls, preset, values)
