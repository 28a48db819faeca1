"""The house rules, checked on the source: imports run one way, one NLL/KL kernel, short modules, a true README.

Imports are read from every module by `fingerprint.import_graph`, function-local ones included (a local import
that hides a cycle is still a cycle), the graph that stage fingerprints follow.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from elasticity.fingerprint import import_graph, modules

ROOT = Path(__file__).resolve().parents[1]
MAX_LINES = 400


MODULES = modules()
GRAPH = {name: set(targets) for name, targets in import_graph().items()}  # what fingerprints follow, too


def _unit(module: str) -> str:
    """A subpackage (elasticity.world) or a top-level module (elasticity.stats): the floors' rooms."""
    parts = module.split(".")
    return ".".join(parts[:2]) if len(parts) > 1 else module


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state, stack = {}, []

    def visit(n):
        state[n] = 1
        stack.append(n)
        for m in sorted(graph.get(n, ())):
            if state.get(m) == 1:
                return stack[stack.index(m):] + [m]
            if m not in state and (found := visit(m)):
                return found
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(graph):
        if n not in state and (found := visit(n)):
            return found
    return None


def test_no_import_cycle_between_modules():
    assert _cycle(GRAPH) is None


def test_no_import_cycle_between_packages():
    units: dict[str, set[str]] = {}
    for a, targets in GRAPH.items():
        units.setdefault(_unit(a), set()).update(_unit(b) for b in targets if _unit(b) != _unit(a))
    assert _cycle(units) is None


def test_the_cycle_finder_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_layers_run_one_way():
    """The bottom floor imports nothing of the package; reports and analyses never import an experiment."""
    for bottom in ("elasticity.errors", "elasticity.files", "elasticity.stats"):
        assert GRAPH[bottom] == set(), bottom
    for name, targets in GRAPH.items():
        if name.startswith(("elasticity.report", "elasticity.analysis", "elasticity.results")):
            assert not {t for t in targets if t.startswith(("elasticity.experiments", "elasticity.demo"))}, name
        if name.startswith("elasticity.world"):  # the domain knows nothing of training or experiments
            assert not {t for t in targets if t.startswith(("elasticity.train", "elasticity.experiments"))}, name
    assert not any("elasticity.demo" in t for t in GRAPH.values())  # the composition root is on top


def test_one_nll_kl_kernel():
    """cross_entropy and log_softmax appear in the kernel only; the theory (numpy on token trees, no model and
    no torch) has cross-entropies of its own."""
    for name, path in MODULES.items():
        text = path.read_text()
        if name.startswith("elasticity.theory"):
            assert not re.search(r"^\s*(import|from) torch", text, re.M), name
        elif name != "elasticity.likelihood":
            assert not re.search(r"\b(cross_entropy|log_softmax)\b", text), name


@pytest.mark.parametrize("name", sorted(MODULES))
def test_no_module_over_400_lines(name):
    assert len(MODULES[name].read_text().splitlines()) <= MAX_LINES


def _tree_paths(readme: str) -> set[str]:
    """The paths the README's file tree lists (the fenced block under '## Repository')."""
    block = readme.split("## Repository", 1)[1].split("```", 2)[1]
    paths, stack = set(), []
    for line in block.splitlines():
        if not line.strip():
            continue
        indent = (len(line) - len(line.lstrip(" "))) // 2
        entry = line.strip().split()[0]
        stack = stack[:indent] + [entry]
        paths.add("".join(stack))
    return paths


def test_the_readme_file_tree_is_true():
    listed = _tree_paths((ROOT / "README.md").read_text())
    tracked = {str(p.relative_to(ROOT)) for folder in ("src", "configs", "tests", "benchmarks")
               for p in (ROOT / folder).rglob("*") if p.is_file() and "__pycache__" not in p.parts
               and ".egg-info" not in str(p) and "results" not in p.parts}
    folders = [p for p in listed if p.endswith("/") and not any(q != p and q.startswith(p) for q in listed)]
    missing = sorted(t for t in tracked if t not in listed and not any(t.startswith(f) for f in folders))
    assert not missing, f"files the README's tree does not list: {missing}"
    gone = sorted(p for p in listed if not p.endswith("/") and not (ROOT / p).exists())
    assert not gone, f"the README's tree lists files that do not exist: {gone}"
