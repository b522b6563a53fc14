"""benchmarks/: every module imports here (most run only on a GPU machine, where a broken import would show late),
and their imports go one way: measure.py at the bottom, no script importing another, no cycle."""

from __future__ import annotations

import ast
import importlib
import pkgutil
from pathlib import Path

import pytest

import benchmarks

MODULES = sorted(m.name for m in pkgutil.iter_modules(benchmarks.__path__, prefix="benchmarks."))


def test_the_benchmarks_package_lists_its_modules():
    assert "benchmarks.qlora_throughput" in MODULES and len(MODULES) >= 10


@pytest.mark.parametrize("name", MODULES)
def test_each_benchmark_module_imports(name):
    module = importlib.import_module(name)
    assert module.__name__ == name


def parsed(name: str) -> ast.Module:
    path = Path(benchmarks.__path__[0]) / f"{name.rsplit('.', 1)[1]}.py"
    return ast.parse(path.read_text(encoding="utf-8"))


def benchmark_imports(tree: ast.Module) -> set[str]:
    """The benchmark modules a module imports, at module level or inside functions."""
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):  # `from benchmarks import measure` names a module too
            base = ".".join(filter(None, ["benchmarks" if node.level else "", node.module]))
            imported.update([base, *(f"{base}.{alias.name}" for alias in node.names)])
    return {name for name in imported if name in MODULES}


def is_script(tree: ast.Module) -> bool:
    return any(isinstance(node, ast.If) and "__main__" in ast.unparse(node.test) for node in tree.body)


def test_benchmark_modules_import_downwards_only():
    """measure.py is the bottom; no script imports another script; no import cycle."""
    trees = {name: parsed(name) for name in MODULES}
    graph = {name: benchmark_imports(tree) for name, tree in trees.items()}
    assert graph["benchmarks.measure"] == set(), "measure.py imports no other benchmark module"
    scripts = {name for name, tree in trees.items() if is_script(tree)}
    assert "benchmarks.predict_catalog" in scripts and "benchmarks.measure" not in scripts
    script_imports = {(name, other) for name in scripts for other in graph[name] & scripts}
    assert script_imports == set(), f"scripts importing scripts: {sorted(script_imports)}"
    done: set[str] = set()

    def visit(name: str, path: tuple[str, ...]) -> None:
        assert name not in path, f"import cycle: {' -> '.join(path + (name,))}"
        if name not in done:
            for other in graph[name]:
                visit(other, path + (name,))
            done.add(name)

    for name in graph:
        visit(name, ())
