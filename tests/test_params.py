"""params.yaml and dvc.yaml agree with the code: no dead key, no undeclared param or code dependency."""

import ast
import importlib
import typing
from pathlib import Path

import pytest
import yaml

from finetune import params
from finetune.errors import PipelineError
from finetune.param_schemas import DataParams
from tests.conftest import ROOT

DVC = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
PARAMS = yaml.safe_load((ROOT / "params.yaml").read_text())
EFFECTIVE = params.validate(PARAMS).model_dump()  # with the defaults of the keys a task entry leaves out
# Modules that cannot change a stage's output: the error type and the exit-code wrapper.
# Modules every stage runs that decide nothing of its outputs: the notice filters, the error type, the error line, and
# the subpackages' __init__ files (a docstring each).
PLUMBING = {"finetune/__init__.py", "finetune/errors.py", "finetune/stage.py",
            *(f"finetune/{room}/__init__.py" for room in ("data", "text", "model", "train", "evaluate", "deliver",
                                                          "report"))}


# Params whose value is a mapping of the user's own names (data.keys, data.roles): one key each, not one per entry.
MAPPINGS = {name for name, field in DataParams.model_fields.items() if typing.get_origin(field.annotation) is dict}


def leaf_keys(tree: dict, prefix: str = "") -> set[str]:
    keys = set()
    for k, v in tree.items():
        keys |= leaf_keys(v, f"{prefix}{k}.") if isinstance(v, dict) and k not in MAPPINGS else {f"{prefix}{k}"}
    return keys


TASKS = list(PARAMS["tasks"])


def declared_keys(stage: str, task: str) -> set[str]:
    """The params.yaml keys a stage declares in dvc.yaml, with ${task} resolved to `task`."""
    keys = set()
    for entry in DVC[stage].get("params", []):
        entry = entry.replace("${task}", task)
        keys |= {k for k in leaf_keys(EFFECTIVE) if k == entry or k.startswith(entry + ".")}
    return keys


def read_keys(stage: str, task: str) -> set[str]:
    """The keys the stage's code actually reads: the task's kind and every field of every part and section it loads."""
    module = importlib.import_module(f"stages.{stage}")
    if not hasattr(module, "TASK_PARTS"):  # a stage that reads no params at all (base_model)
        return set()
    raw = params.load_yaml(ROOT / "params.yaml")
    chosen = params.read_task(raw=raw, name=task)
    keys = {"task", f"tasks.{task}.kind"}
    keys |= {f"tasks.{task}.{part}.{field}" for part in module.TASK_PARTS for field in params.as_dict(getattr(chosen, part))}
    keys |= {f"{name}.{field}" for name in module.PARAMS if "." not in name
             for field in params.as_dict(params.read(name, raw=raw))}
    keys |= {name for name in module.PARAMS if "." in name}  # a single key of a section, e.g. train.method
    return keys


@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("stage", list(DVC))
def test_each_stage_declares_exactly_the_params_it_reads(stage, task):
    assert read_keys(stage, task) == declared_keys(stage, task)


def test_every_key_in_params_yaml_and_every_default_is_read_by_some_stage():
    read = set().union(*(read_keys(stage, task) for stage in DVC for task in TASKS))
    assert leaf_keys(EFFECTIVE) == read and leaf_keys(PARAMS) <= read


def test_the_default_task_is_the_embedded_classifier_and_every_seed_task_is_there():
    assert PARAMS["task"] == "instacart"
    assert {"instacart", "bigbasket", "chitchat", "persona_chat", "guanaco", "chatbot"} <= set(TASKS)
    kinds = {task: params.read_task(ROOT / "params.yaml", name=task).kind for task in TASKS}
    assert kinds["instacart"] == kinds["bigbasket"] == "classification"
    assert {kinds[t] for t in ("chitchat", "persona_chat", "guanaco", "chatbot")} == {"generation"}


@pytest.mark.parametrize("stage", list(DVC))
def test_each_stage_declares_the_library_code_it_imports(stage):
    deps = set(DVC[stage]["deps"])
    assert f"stages/{stage}.py" in deps
    missing = stage_imports(stage) - PLUMBING - deps
    assert not missing, f"add {sorted(missing)} to the deps of stage {stage} in dvc.yaml"


@pytest.mark.parametrize("stage", list(DVC))
def test_cached_outputs_stay_out_of_git_and_uncached_metrics_are_in_it(stage):
    """DVC refuses to run a stage whose cached output git tracks (a file committed by mistake); a metrics file it does
    not cache (`cache: false`) is committed, so `dvc metrics show` and `dvc metrics diff` work in a fresh clone."""
    import subprocess

    entries = [(o, {}) if isinstance(o, str) else next(iter(o.items())) for key in ("outs", "metrics", "plots")
               for o in DVC[stage].get(key, [])]
    tracked = set(subprocess.run(["git", "ls-files", "--", *(path for path, _ in entries)], cwd=ROOT,
                                 capture_output=True, text=True, check=True).stdout.split())
    cached = [path for path, options in entries if options.get("cache", True)]
    uncached = [path for path, options in entries if not options.get("cache", True)]
    assert not tracked & set(cached), f"{sorted(tracked & set(cached))}: cached outputs of stage {stage}, tracked by " \
                                      "git: `git rm --cached` them"
    assert set(uncached) <= tracked, f"{sorted(set(uncached) - tracked)}: metrics of stage {stage} that DVC does not " \
                                     "cache: commit them (`dvc repro`, then `git add`)"


def module_file(name: str) -> Path | None:
    """The file of a finetune module or package, or None (a name imported from a module, not a module)."""
    base = ROOT / name.replace(".", "/")
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def top_level_imports(path: Path) -> set[Path]:
    """The finetune modules a module imports when it is imported: its statements outside functions (what a function
    imports when it is called is found by running the stages: tests/test_pipeline.py)."""
    found = set()
    for node in ast.parse(path.read_text()).body:
        for inner in ast.walk(node) if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) \
                else []:
            names = []
            if isinstance(inner, ast.ImportFrom) and inner.module and inner.module.startswith("finetune"):
                names = [inner.module] + [f"{inner.module}.{a.name}" for a in inner.names]
            elif isinstance(inner, ast.Import):
                names = [a.name for a in inner.names if a.name.startswith("finetune")]
            found |= {f for f in map(module_file, names) if f is not None}
    return found


def stage_imports(stage: str) -> set[str]:
    """finetune modules the stage imports as it starts, directly or through other finetune modules."""
    seen, todo = set(), [ROOT / "stages" / f"{stage}.py"]
    while todo:
        for path in top_level_imports(todo.pop()):
            rel = str(path.relative_to(ROOT))
            if rel not in seen:
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


def test_task_errors_name_the_task_and_the_key(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump({**PARAMS, "task": "nope"}))
    with pytest.raises(PipelineError, match="task is 'nope'; choose one of .*instacart"):
        params.read_task(path)
    chitchat = {**PARAMS["tasks"]["chitchat"], "prompt": {"template": "{text}", "answer_prefix": " "}}
    path.write_text(yaml.safe_dump({**PARAMS, "task": "chitchat", "tasks": {**PARAMS["tasks"], "chitchat": chitchat}}))
    with pytest.raises(PipelineError, match="unknown key tasks.chitchat.prompt.answer_prefix"):
        params.read_task(path)
    bad = {**PARAMS["tasks"]["instacart"], "data": {**PARAMS["tasks"]["instacart"]["data"], "format": "guanaco"}}
    path.write_text(yaml.safe_dump({**PARAMS, "tasks": {**PARAMS["tasks"], "instacart": bad}}))
    with pytest.raises(PipelineError, match="classification task reads a table"):
        params.read_task(path)


def test_evaluation_batch_size_auto_is_64_on_cpu_and_512_on_a_gpu():
    assert params.evaluation_batch_size("auto", on_gpu=False) == 64
    assert params.evaluation_batch_size("auto", on_gpu=True) == 512
    assert params.evaluation_batch_size(12, on_gpu=True) == 12


def test_a_bad_value_names_the_key_the_value_and_every_bound(tmp_path):
    bad = {**PARAMS, "lora": {**PARAMS["lora"], "dropout": 1.5}}
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(bad))
    with pytest.raises(PipelineError, match=r"lora.dropout is 1.5; allowed: >= 0 and < 1$"):
        params.read("lora", tmp_path / "p.yaml")
    bad = {**PARAMS, "tasks": {**PARAMS["tasks"], "instacart": {**PARAMS["tasks"]["instacart"], "split": {
        **PARAMS["tasks"]["instacart"]["split"], "max_train": 0}}}}
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(bad))
    with pytest.raises(PipelineError, match=r"tasks.instacart.split.max_train is 0; allowed: >= 1 or 'all'$"):
        params.read_task(tmp_path / "p.yaml")


def test_replace_checks_the_new_values():
    lora = params.read("lora")
    assert params.replace(lora, r=4).r == 4 and lora.r == PARAMS["lora"]["r"]
    with pytest.raises(PipelineError, match="r is 0; allowed: >= 1"):
        params.replace(lora, r=0)


def test_a_dvc_exp_run_set_leaves_params_yaml_readable_and_every_other_value_as_it_was(tmp_path):
    """`dvc exp run -S` rewrites params.yaml through ruamel, which drops quotes: a quoted string with a '?' or ': '
    inside a flow collection ({...} or [...]) then stops parsing. The file keeps to block style so that it cannot."""
    from dvc.utils.serialize import modify_yaml

    copy = tmp_path / "params.yaml"
    copy.write_text((ROOT / "params.yaml").read_text())
    with modify_yaml(copy) as data:
        data["lora"]["r"] = 32
        data["tasks"]["chitchat"]["data"]["source"] = "data/raw/chats.jsonl"
    expected = yaml.safe_load((ROOT / "params.yaml").read_text())
    expected["lora"]["r"] = 32
    expected["tasks"]["chitchat"]["data"]["source"] = "data/raw/chats.jsonl"
    assert params.load_yaml(copy) == expected


def test_a_task_entry_may_leave_out_every_key_with_a_default_as_the_configuration_page_shows():
    import re

    page = (ROOT / "docs/configuration.md").read_text(encoding="utf-8")
    example = yaml.safe_load(re.search(r"```yaml\n(.*?)```", page, re.S).group(1))
    checked = params.validate({**PARAMS, "task": "tickets", "tasks": {**PARAMS["tasks"], **example["tasks"]}})
    entry = checked.tasks["tickets"]
    assert entry.data.format == "table" and entry.data.encoding == "utf-8" and entry.split.max_train == "all"
    assert entry.train.objective == "label_scoring" and entry.prompt.answer_prefix == " "
    assert entry.evaluate.method == "label_scoring" and entry.card.limits == []


@pytest.mark.parametrize("task, data, said", [
    ("bigbasket", {"source": "data/raw/bigbasket.csv"}, "names the column the model reads: set data.input_field"),
    ("bigbasket", {"source": "data/raw/bigbasket.csv", "input_field": "product"}, "column of its labels"),
    ("chatbot", {"source": "data/raw/chatbot.csv", "input_field": "prompt"}, "column of its answers")])
def test_a_table_without_its_columns_is_refused_in_one_line(task, data, said):
    entry = {**PARAMS["tasks"][task], "data": data}
    with pytest.raises(PipelineError, match=said):
        params.validate({**PARAMS, "tasks": {**PARAMS["tasks"], task: entry}})
