"""benchmarks/: every module imports here (most run only on a GPU machine, where a broken import would show late)."""

from __future__ import annotations

import importlib
import pkgutil

import pytest

import benchmarks

MODULES = sorted(m.name for m in pkgutil.iter_modules(benchmarks.__path__, prefix="benchmarks."))


def test_the_benchmarks_package_lists_its_modules():
    assert "benchmarks.qlora_throughput" in MODULES and len(MODULES) >= 10


@pytest.mark.parametrize("name", MODULES)
def test_each_benchmark_module_imports(name):
    module = importlib.import_module(name)
    assert module.__name__ == name
