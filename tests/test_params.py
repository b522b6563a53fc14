"""params.yaml and dvc.yaml agree with the code: no dead key, no undeclared param or code dependency."""

import ast
import importlib

import pytest
import yaml

from finetune import params
from finetune.errors import PipelineError
from tests.conftest import ROOT

DVC = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
PARAMS = yaml.safe_load((ROOT / "params.yaml").read_text())
# Modules that cannot change a stage's output: the error type and the exit-code wrapper.
PLUMBING = {"finetune/__init__.py", "finetune/errors.py", "finetune/stage.py"}


def leaf_keys(tree: dict, prefix: str = "") -> set[str]:
    keys = set()
    for k, v in tree.items():
        keys |= leaf_keys(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}"}
    return keys


def declared_keys(stage: str) -> set[str]:
    keys = set()
    for entry in DVC[stage].get("params", []):
        keys |= {k for k in leaf_keys(PARAMS) if k == entry or k.startswith(entry + ".")}
    return keys


def read_keys(stage: str) -> set[str]:
    """The keys the stage's code actually reads: every field of every section it loads."""
    module = importlib.import_module(f"stages.{stage}")
    sections = params.read_all(module.PARAMS, ROOT / "params.yaml")
    return {f"{name}.{field}" for name, section in sections.items() for field in params.as_dict(section)}


@pytest.mark.parametrize("stage", list(DVC))
def test_each_stage_declares_exactly_the_params_it_reads(stage):
    assert read_keys(stage) == declared_keys(stage)


def test_every_key_in_params_yaml_is_read_by_some_stage():
    read = set().union(*(read_keys(stage) for stage in DVC))
    assert leaf_keys(PARAMS) == read


@pytest.mark.parametrize("stage", list(DVC))
def test_each_stage_declares_the_library_code_it_imports(stage):
    deps = set(DVC[stage]["deps"])
    assert f"stages/{stage}.py" in deps
    missing = stage_imports(stage) - PLUMBING - deps
    assert not missing, f"add {sorted(missing)} to the deps of stage {stage} in dvc.yaml"


def stage_imports(stage: str) -> set[str]:
    """finetune modules the stage imports, directly or through other finetune modules."""
    seen, todo = set(), [ROOT / "stages" / f"{stage}.py"]
    while todo:
        tree = ast.parse(todo.pop().read_text())
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("finetune"):
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names if a.name.startswith("finetune")]
            for name in names:
                path = ROOT / (name.replace(".", "/") + ".py")
                rel = str(path.relative_to(ROOT))
                if path.is_file() and rel not in seen:
                    seen.add(rel)
                    todo.append(path)
    return seen


def test_unknown_and_mistyped_keys_are_clear_errors(tmp_path):
    bad = {**PARAMS, "lora": {**PARAMS["lora"], "rank": 8}}
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(bad))
    with pytest.raises(PipelineError, match="unknown key lora.rank"):
        params.read("lora", tmp_path / "p.yaml")
    bad = {**PARAMS, "lora": {**PARAMS["lora"], "r": "sixteen"}}
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(bad))
    with pytest.raises(PipelineError, match="lora.r is 'sixteen'"):
        params.read("lora", tmp_path / "p.yaml")
