"""The bad-input corpus: each bad params value or data file makes the real stage print one `error:` line
(no traceback), exit with status 1 and write nothing; the handled quirks give the documented result."""

from __future__ import annotations

import copy
import importlib
import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from finetune import stage
from tests.bad_inputs import (BAD_CONVERSATION_FILES, BAD_DATA_FILES, HANDLED_DATA_FILES, MIXED_CONVERSATIONS,
                              MIXED_DROPPED)
from tests.conftest import ROOT

DVC = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}  # the stages run from a checkout elsewhere, as in a DVC experiment
DELETE = object()  # the key is taken out
TINY = {"tasks.instacart.split.max_train": 24, "tasks.instacart.split.max_validation": 4,
        "tasks.instacart.split.max_test": 8, "tasks.instacart.train.batch_size": 8, "base_model.name": "models/base/tiny"}

# (stage, params.yaml key, bad value, what the error line must contain)
BAD_PARAMS = [
    ("train_qlora", "lora.r", -4, "lora.r is -4; allowed: >= 1"),
    ("train_qlora", "lora.alpha", 0, "lora.alpha is 0; allowed: >= 1"),
    ("train_qlora", "lora.dropout", 1.5, "lora.dropout is 1.5; allowed: >= 0 and < 1"),
    ("train_qlora", "lora.target_modules", [], "lora.target_modules is []; allowed: 'all-linear' or a non-empty list"),
    ("train_qlora", "lora.target_modules", ["nope_proj"], "lora.target_modules names ['nope_proj'], not in this model"),
    ("train_qlora", "lora.rank", 8, "unknown key lora.rank; known keys: r, alpha, dropout, target_modules"),
    ("train_qlora", "lora.r", DELETE, "missing key lora.r"),
    ("train_qlora", "tasks.instacart.train.learning_rate", -0.001, "learning_rate is -0.001; allowed: > 0"),
    ("train_qlora", "tasks.instacart.train.learning_rate", "1e-3", "is '1e-3'; allowed: a number (YAML reads this as text"),
    ("train_qlora", "tasks.instacart.train.epochs", 0, "tasks.instacart.train.epochs is 0; allowed: > 0"),
    ("train_qlora", "tasks.instacart.train.batch_size", 0, "tasks.instacart.train.batch_size is 0; allowed: >= 1"),
    ("train_qlora", "tasks.instacart.train.batch_size", 2.5, "tasks.instacart.train.batch_size is 2.5; allowed: an integer"),
    ("train_qlora", "tasks.instacart.train.max_length", 4, "max_length is 4; the prompt template takes"),
    ("train_qlora", "train.gradient_accumulation", 0, "train.gradient_accumulation is 0; allowed: >= 1"),
    ("train_qlora", "train.warmup_ratio", 1.0, "train.warmup_ratio is 1.0; allowed: >= 0 and < 1"),
    ("train_qlora", "train.weight_decay", -0.1, "train.weight_decay is -0.1; allowed: >= 0"),
    ("train_qlora", "train.compile", "maybe", "train.compile is 'maybe'; allowed: true or false or 'auto'"),
    ("train_qlora", "train.logging_steps", 0, "train.logging_steps is 0; allowed: >= 1"),
    ("train_qlora", "train.checkpoint_minutes", -1, "train.checkpoint_minutes is -1; allowed: >= 0 or 'auto'"),
    ("train_qlora", "train.keep_checkpoint", "yes", "train.keep_checkpoint is 'yes'; allowed: true or false"),
    ("train_qlora", "quantization.quant_type", "int8", "quantization.quant_type is 'int8'; allowed: 'nf4' or 'fp4'"),
    ("train_qlora", "base_model.name", "", "base_model.name is ''; allowed: a non-empty string"),
    ("train_qlora", "tasks.instacart.train.learning_rate", 1.0e30, "training diverged at step "),
    ("prepare", "task", "nope", "task is 'nope'; choose one of the entries of tasks: instacart"),
    ("prepare", "tasks.instacart.kind", "regression", "tasks.instacart.kind is 'regression'; use one of classification"),
    ("prepare", "tasks.instacart.data.format", "guanaco", "a classification task reads a table"),
    ("prepare", "tasks.instacart.data.encoding", "utf9", "data.encoding is 'utf9'; it is not an encoding Python knows"),
    ("prepare", "tasks.instacart.data.roles", {"bot": "assistant"}, "a classification task reads a table: leave them {}"),
    ("prepare", "tasks.chitchat.data.roles", {"bot": "narrator"}, "tasks.chitchat.data.roles.bot is 'narrator'; allowed: "),
    ("prepare", "tasks.chitchat.data.format", "csv", "tasks.chitchat.data.format is 'csv'; allowed: "),
    ("prepare", "tasks.instacart.prompt.template", "Product:", "template is 'Product:'; it must contain {text}"),
    ("prepare", "tasks.chitchat.evaluate.probes", [""], "tasks.chitchat.evaluate.probes[0] is ''; allowed: a non-empty"),
    ("prepare", "base_model", None, "base_model is null; allowed: a mapping"),
    ("split", "tasks.instacart.split.test_fraction", 0.95, "validation_fraction + test_fraction is 1.05; it must be < 1"),
    ("split", "tasks.instacart.split.max_test", 0, "tasks.instacart.split.max_test is 0; allowed: >= 1 or 'all'"),
    ("split", "tasks.instacart.split.seed", -1, "tasks.instacart.split.seed is -1; allowed: >= 0"),
    ("evaluate", "evaluate.batch_size", 0, "evaluate.batch_size is 0; allowed: >= 1 or 'auto'"),
    ("evaluate", "evaluate.memory_gib", 0, "evaluate.memory_gib is 0; allowed: > 0"),
    ("evaluate", "tasks.instacart.evaluate.method", "vote", "method is 'vote'; allowed: 'label_scoring' or 'generation'"),
    ("export", "export.gguf", ["q4_k"], "export.gguf[0] is 'q4_k'; allowed: 'f32', 'f16', 'bf16' or 'q8_0'"),
]


def set_key(tree: dict, key: str, value) -> None:
    *parents, last = key.split(".")
    for part in parents:
        tree = tree[part]
    if value is DELETE:
        del tree[last]
    else:
        tree[last] = value


def run_stage(name: str, capsys) -> tuple[int, str]:
    """The stage's own command line from dvc.yaml, run in this process: its exit status and its stderr."""
    argv = shlex.split(DVC[name]["cmd"])[2:]  # python -m stages.<name> ...
    module = importlib.import_module(argv[0])
    saved, sys.argv = sys.argv, argv
    try:
        stage.run(module.main)
        code = 0
    except SystemExit as e:
        code = e.code
    finally:
        sys.argv = saved
    return code, capsys.readouterr().err


def files(folder: Path) -> dict[str, tuple[int, int] | str]:
    """Every file (size, time written) and folder under `folder`: an empty folder left behind counts too."""
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) if p.is_file() else "folder"
            for p in folder.rglob("*") if "__pycache__" not in p.parts}


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, tiny_llama_dir) -> Path:
    """A checkout with a tiny base model and the tiny default's examples and split, made by the real stages."""
    folder = tmp_path_factory.mktemp("workspace")
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    for key, value in TINY.items():
        set_key(params, key, value)
    (folder / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    shutil.copytree(tiny_llama_dir, folder / "models/base/tiny")
    for name in ("prepare", "split"):
        argv = shlex.split(DVC[name]["cmd"])[2:]
        subprocess.run([sys.executable, "-m", *argv], cwd=folder, env=ENV, check=True, capture_output=True)
    return folder


@pytest.fixture
def checkout(workspace, tmp_path, monkeypatch) -> Path:
    folder = tmp_path / "checkout"
    shutil.copytree(workspace, folder)
    monkeypatch.chdir(folder)
    return folder


def refused(checkout: Path, name: str, capsys, expected: str) -> None:
    """The stage exits 1 with `expected` in one `error:` line, the last it prints, and no file is written or changed."""
    before = files(checkout)
    code, err = run_stage(name, capsys)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 1, err
    assert "Traceback" not in err
    assert [line for line in lines if line.startswith("error: ")] == [lines[-1]]
    assert expected in lines[-1], lines[-1]
    assert files(checkout) == before


@pytest.mark.parametrize("name, key, value, expected", BAD_PARAMS, ids=[f"{c[0]}:{c[1]}={'(deleted)' if c[2] is DELETE else repr(c[2])}" for c in BAD_PARAMS])
def test_a_bad_param_is_one_error_line_and_nothing_written(checkout, capsys, name, key, value, expected):
    params = yaml.safe_load((checkout / "params.yaml").read_text())
    set_key(params, key, value if value is DELETE else copy.deepcopy(value))
    (checkout / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    refused(checkout, name, capsys, expected)


def use_file(checkout: Path, name: str, content: bytes) -> None:
    (checkout / "data/raw").mkdir(parents=True, exist_ok=True)
    (checkout / "data/raw" / name).write_bytes(content)
    params = yaml.safe_load((checkout / "params.yaml").read_text())
    params["tasks"]["instacart"]["data"].update(source=f"data/raw/{name}", drop_labels=[])
    (checkout / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


@pytest.mark.parametrize("name, content, expected", BAD_DATA_FILES, ids=[c[0] for c in BAD_DATA_FILES])
def test_a_bad_data_file_is_one_error_line_and_nothing_written(checkout, capsys, name, content, expected):
    use_file(checkout, name, content)
    refused(checkout, "prepare", capsys, expected)


def use_conversations(checkout: Path, name: str, content: bytes, data: dict) -> None:
    """The generation task `chitchat` reading `content` as data/raw/<name> with the given data params."""
    (checkout / "data/raw").mkdir(parents=True, exist_ok=True)
    (checkout / "data/raw" / name).write_bytes(content)
    params = yaml.safe_load((checkout / "params.yaml").read_text())
    params["task"] = "chitchat"
    params["tasks"]["chitchat"]["data"].update(source=f"data/raw/{name}", turns=0, **data)
    (checkout / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


@pytest.mark.parametrize("name, data, content, expected", BAD_CONVERSATION_FILES,
                         ids=[c[0] for c in BAD_CONVERSATION_FILES])
def test_a_malformed_conversation_file_is_one_error_line_and_nothing_written(checkout, capsys, name, data, content,
                                                                             expected):
    use_conversations(checkout, name, content, data)
    refused(checkout, "prepare", capsys, expected)


def test_rows_that_are_not_conversations_are_dropped_and_counted_in_the_data_metrics(checkout, capsys):
    use_conversations(checkout, "mixed.jsonl", MIXED_CONVERSATIONS, {"format": "messages"})
    code, err = run_stage("prepare", capsys)
    assert code == 0, err
    counts = json.loads((checkout / "metrics/data.json").read_text())
    assert counts["dropped_rows"] == MIXED_DROPPED and counts["rows"] == 6 and counts["examples"] == 1


@pytest.mark.parametrize("name, content, examples", HANDLED_DATA_FILES, ids=[c[0] for c in HANDLED_DATA_FILES])
def test_a_file_with_a_known_quirk_is_read_as_documented(checkout, capsys, name, content, examples):
    use_file(checkout, name, content)
    os.remove(checkout / "data/examples.jsonl")
    code, err = run_stage("prepare", capsys)
    assert code == 0, err
    rows = [json.loads(line) for line in (checkout / "data/examples.jsonl").read_text().splitlines()]
    assert [(row["text"], row["label"]) for row in rows] == examples


def test_the_real_command_line_prints_the_line_and_exits_1(checkout):
    """Once as a real process, as dvc runs it: stderr ends in the one line, the exit status is 1."""
    params = yaml.safe_load((checkout / "params.yaml").read_text())
    params["lora"]["r"] = -4
    (checkout / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    proc = subprocess.run([sys.executable, "-m", *shlex.split(DVC["train_qlora"]["cmd"])[2:]], cwd=checkout,
                          env=ENV, capture_output=True, text=True)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1] == "error: params.yaml: lora.r is -4; allowed: >= 1"
    assert "Traceback" not in proc.stderr
    assert not (checkout / "models/adapter").exists() and not (checkout / "metrics/train_live").exists()
