"""The import graph of the packages flows one way and has no cycles (docs/ARCHITECTURE.md).

Every import is counted, including those inside functions (a lazy import hides a cycle from
Python, not from this test). Layers, bottom first; a module may import its own layer and
those below, never above:

    trainers -> search_spaces -> sweeps.settings -> sweeps.decisions -> sweeps.tracking
             -> sweeps.config -> sweeps.results -> sweeps.execution -> sweeps.reproduce -> sweeps.cli
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.conftest import REPO

LAYERS = ["trainers", "search_spaces", "sweeps.settings", "sweeps.decisions", "sweeps.tracking", "sweeps.config",
          "sweeps.results", "sweeps.execution", "sweeps.reproduce", "sweeps.cli"]
PACKAGES = ("trainers", "search_spaces", "sweeps")
# Parts that must work without Ray (rewarm best/analyze/report, the pure rules, the spec).
RAY_FREE = ("search_spaces", "sweeps.settings", "sweeps.decisions", "sweeps.tracking", "sweeps.config",
            "sweeps.results")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """Every module this file imports (absolute names), at any depth of the file."""
    found = set()
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            found.add(base)
            found |= {f"{base}.{alias.name}" for alias in node.names}  # `from pkg import module`
    return found


def project_graph() -> dict[str, set[str]]:
    files = [p for pkg in PACKAGES for p in (REPO / pkg).rglob("*.py")]
    modules = {module_name(p): p for p in files}
    return {name: {m for m in imports_of(path) if m in modules and m != name} for name, path in modules.items()}


def layer_of(module: str) -> int:
    matches = [i for i, layer in enumerate(LAYERS) if module == layer or module.startswith(layer + ".")]
    if not matches:
        if module == "sweeps":  # the package's own __init__: documentation only
            return len(LAYERS)
        raise AssertionError(f"{module} belongs to no layer; add it to LAYERS in {__file__}")
    return matches[-1]


def test_every_module_has_a_layer():
    for module in project_graph():
        layer_of(module)


def test_no_module_imports_a_layer_above_its_own():
    upward = [f"{m} ({LAYERS[layer_of(m)] if layer_of(m) < len(LAYERS) else 'sweeps'}) imports {d} ({LAYERS[layer_of(d)]})"
              for m, deps in project_graph().items() for d in sorted(deps) if layer_of(d) > layer_of(m)]
    assert not upward, "upward imports:\n" + "\n".join(upward)


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1 on the stack, 2 done
    stack: list[str] = []

    def visit(node):
        state[node] = 1
        stack.append(node)
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == 1:
                return stack[stack.index(dep):] + [dep]
            if dep not in state:
                cycle = visit(dep)
                if cycle:
                    return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def test_the_import_graph_has_no_cycle():
    cycle = find_cycle(project_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_cycle_finder_finds_a_planted_cycle():
    # The checks above can fail: a graph with a cycle (as progress.py <-> tune_driver.py once were).
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


@pytest.mark.parametrize("part", RAY_FREE)
def test_parts_that_read_mlflow_or_specs_never_import_ray(part):
    files = [p for p in (REPO / part.replace(".", "/")).rglob("*.py")] if (REPO / part.replace(".", "/")).is_dir() \
        else [REPO / (part.replace(".", "/") + ".py")]
    offenders = [module_name(p) for p in files if any(m == "ray" or m.startswith("ray.") for m in imports_of(p))]
    assert not offenders, f"{part} must work without Ray; these import it: {offenders}"


def test_every_sub_package_says_what_it_owns_and_may_import():
    for init in (REPO / "sweeps").glob("*/__init__.py"):
        doc = ast.get_docstring(ast.parse(init.read_text())) or ""
        assert "Owns:" in doc and "May import:" in doc, f"{init.relative_to(REPO)} lacks its Owns/May import docstring"


def test_a_sweep_drivers_imports_leave_out_what_only_some_sweeps_need(resolved_small):
    """What a `rewarm sweep` does before its first trial (imports, resolving a spec) imports no
    torch, transformers or scipy: the driver builds no model (trainers' configs and checkpoint
    checks live apart from their torch code; the seq-len check reads config.json) and computes
    no forecast. Each would cost every command ~0.7-1.3 s on 2 cores. (`resolved_small` has
    prepared the spec's data and measured its base reference, as a sweep finds them cached.)"""
    import subprocess
    import sys

    probe = ("import sys, sweeps.cli, sweeps.execution.driver, sweeps.execution.callback; "
             "from tests.conftest import small_spec; from sweeps.config.resolve import resolve; "
             "resolve(small_spec(), log=lambda *a: None); "
             "print(sorted(m for m in ('scipy', 'torch', 'transformers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=REPO, check=True).stdout
    assert out.strip() == "[]", out
