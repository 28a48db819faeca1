"""Which code a stage's results depend on: the package's import graph, and a fingerprint of a stage's code.

A stage's run name hashes its code with its config and inputs (see `runs.stage_path`), so that a finished stage
is never reused after a change to code that could have altered it. The code of a stage is the source of the
module that defines its work and of every package module that module imports, directly or through others
(function-local imports included), together with the major.minor versions of the libraries that compute:
torch, transformers, accelerate and peft. The report writers and analyses (`report/`, `analysis/`) only turn
finished stages into tables; they count for the stages that write reports and for no other, so a change to a
table's layout never retrains a model.
"""

from __future__ import annotations

import ast
import hashlib
from functools import cache
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent
REPORTING = ("elasticity.report", "elasticity.analysis")  # read finished stages only
LIBRARIES = ("torch", "transformers", "accelerate", "peft")  # their major.minor is part of every fingerprint


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@cache
def modules() -> dict[str, Path]:
    """Every module of the package by its dotted name."""
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _imports(path: Path, known: dict[str, Path]) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from elasticity.experiments import rebound` imports a module; `from x import f` imports x
            names = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in known else node.module
                     for a in node.names]
        else:
            continue
        out |= {n for n in names if n in known}
    return out


@cache
def import_graph() -> dict[str, frozenset[str]]:
    """module -> the package modules it imports anywhere in its source (function-local imports included)."""
    known = modules()
    return {name: frozenset(_imports(path, known) - {name}) for name, path in known.items()}


def closure(module: str, reports: bool = False) -> list[str]:
    """`module` and every package module it reaches through imports (without the reporting floors, unless
    `reports`), sorted."""
    graph, seen, todo = import_graph(), set(), [module]
    while todo:
        m = todo.pop()
        if m in seen or m not in graph or (not reports and m != module and m.startswith(REPORTING)):
            continue
        seen.add(m)
        todo.extend(graph[m])
    return sorted(seen)


def _major_minor(library: str) -> str | None:
    try:
        return ".".join(version(library).split(".")[:2])
    except PackageNotFoundError:
        return None


@cache
def code_fingerprint(module: str, reports: bool = False) -> dict:
    """The fingerprint of the code behind a stage defined in `module`: a hash of its modules' sources and of the
    libraries' major.minor versions, with what went into it (recorded in the stage's meta.json)."""
    h = hashlib.sha256()
    names = closure(module, reports)
    for name in names:
        h.update(f"{name}:{hashlib.sha256(modules()[name].read_bytes()).hexdigest()}\n".encode())
    libraries = {lib: _major_minor(lib) for lib in LIBRARIES}
    h.update(repr(sorted(libraries.items())).encode())
    return {"hash": h.hexdigest()[:16], "modules": names, "libraries": libraries}
