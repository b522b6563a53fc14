"""The package's layout: imports run one way between its subpackages, with no cycle; and finetune/__init__.py: the
library notices it silences are filtered before any stage imports the library."""

import ast
import subprocess
import sys

import pytest
import yaml

from tests.conftest import ROOT

# Records, when bitsandbytes is first imported, whether the filter on its CPU-ops logger is already there: the notice
# is logged once, at that import (on CPUs with AVX512-BF16, as CI's), so a filter added later misses it.
SPY = """
import importlib, logging, sys
seen = []
class Spy:
    def find_spec(self, name, path=None, target=None):
        if name == "bitsandbytes":
            seen.append(bool(logging.getLogger("bitsandbytes.backends.cpu.ops").filters))
sys.meta_path.insert(0, Spy())
importlib.import_module(sys.argv[1])
print(seen)
"""


def test_the_bitsandbytes_notice_filter_is_in_place_before_a_stage_imports_it():
    """Shown for one stage: every stage is a module of `stages`, whose __init__ imports `finetune` (the filter) first."""
    proc = subprocess.run([sys.executable, "-c", SPY, "stages.train_qlora"], cwd=ROOT, capture_output=True, text=True,
                          check=True)
    assert proc.stdout.strip() == "[True]"


def test_every_stage_runs_as_a_module_of_the_stages_package():
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    assert all(stage["cmd"].startswith(f"python -m stages.{name} ") for name, stage in stages.items())


# The package's rooms, lowest first (STYLE.md, "Where the package goes as it grows"): a module imports from its own
# room and from rooms of a lower rank only. `finetune` is the top level's modules (params, errors, files, provenance,
# stage); cli.py, the command line, sits above every room.
RANKS = [["finetune"], ["finetune.data", "finetune.text", "finetune.model"], ["finetune.train"], ["finetune.evaluate"],
         ["finetune.kinds"], ["finetune.deliver", "finetune.report"], ["finetune.serve"], ["finetune.cli"]]
RANK = {room: rank for rank, rooms in enumerate(RANKS) for room in rooms}
PACKAGE = ROOT / "finetune"


def module_name(path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_module(name: str) -> bool:
    return (ROOT / (name.replace(".", "/") + ".py")).is_file()


def room(module: str) -> str:
    parts = module.split(".")
    if len(parts) > 2 or (ROOT / "finetune" / parts[-1]).is_dir():
        return ".".join(parts[:2])
    return "finetune.cli" if module == "finetune.cli" else "finetune"


def imported_modules(path) -> set[str]:
    """The finetune modules (not packages) a module imports, at the top or inside a function."""
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1] + ([base] if base else []))
            found |= {base} | {f"{base}.{a.name}" for a in node.names}
    return {name for name in found if name.split(".")[0] == "finetune" and is_module(name)}


GRAPH = {module_name(path): imported_modules(path) for path in sorted(PACKAGE.rglob("*.py"))}


def test_every_module_of_the_package_is_in_a_room_of_known_rank():
    assert {room(m) for m in GRAPH} <= set(RANK), "a new subpackage: give it its rank in RANKS"


@pytest.mark.parametrize("module", sorted(GRAPH))
def test_imports_run_one_way_from_the_commands_down_to_params_files_and_errors(module):
    upward = sorted(i for i in GRAPH[module] if room(i) != room(module) and RANK[room(i)] >= RANK[room(module)])
    assert not upward, f"{module} ({room(module)}) imports {upward}: from a room at its rank or above"


def test_no_module_imports_itself_back_through_others():
    done, path = set(), []

    def visit(module):
        if module in path:
            raise AssertionError("import cycle: " + " -> ".join(path[path.index(module):] + [module]))
        if module in done:
            return
        path.append(module)
        for target in sorted(GRAPH[module]):
            visit(target)
        path.pop()
        done.add(module)

    for module in sorted(GRAPH):
        visit(module)
