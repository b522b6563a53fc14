"""End to end: the real `dvc` commands on the real stages, in a temporary git repo, on a tiny budget."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT, tiny_llama

COPIED = ["dvc.yaml", "params.yaml", "stages", "finetune", ".gitignore", ".dvcignore", "data/raw"]
TINY = {
    "tasks.instacart.split": {"max_train": 48, "max_validation": 8, "max_test": 24},
    "tasks.instacart.train": {"batch_size": 8},
    "tasks.chitchat.split": {"max_train": 16, "max_validation": 4, "max_test": 8},
    "tasks.chitchat.train": {"batch_size": 8, "max_length": 64},
    "tasks.chitchat.evaluate": {"max_new_tokens": 4},
    "base_model": {"name": "models/base/tiny"},
    "train": {"logging_steps": 2},
    "evaluate": {"batch_size": 12},
    "export": {"enabled": True},
}


def dvc(repo: Path, *args: str) -> str:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "GIT_AUTHOR_NAME": "test", "GIT_AUTHOR_EMAIL": "test@example.com",
           "GIT_COMMITTER_NAME": "test", "GIT_COMMITTER_EMAIL": "test@example.com", "DVC_NO_ANALYTICS": "1"}
    cmd = ["dvc", *args] if args[0] != "git" else list(args)
    proc = subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def repo(tmp_path_factory, tokenizer) -> Path:
    """A git + DVC repo holding this project's pipeline, a tiny Llama as base model and tiny split sizes."""
    repo = tmp_path_factory.mktemp("pipeline")
    for name in COPIED:
        src, dst = ROOT / name, repo / name
        if src.is_dir():
            shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(src, dst)
    params = yaml.safe_load((repo / "params.yaml").read_text())
    for key, values in TINY.items():
        section = params
        for part in key.split("."):
            section = section[part]
        section.update(values)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    model = tiny_llama(len(tokenizer))
    model.save_pretrained(repo / "models/base/tiny")
    tokenizer.save_pretrained(repo / "models/base/tiny")
    dvc(repo, "git", "init", "-q")
    dvc(repo, "init", "-q")
    dvc(repo, "git", "add", "-A")
    dvc(repo, "git", "commit", "-qm", "pipeline")
    return repo


def ran_stages(output: str) -> set[str]:
    return {line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage '")}


def test_repro_builds_everything_then_nothing(repo):
    first = dvc(repo, "repro")
    assert ran_stages(first) == {"prepare", "split", "train_qlora", "evaluate", "report", "export"}
    evaluation = json.loads((repo / "metrics/eval.json").read_text())
    assert set(evaluation) == {"base", "finetuned", "classic"}
    for metrics in evaluation.values():
        assert {"accuracy", "macro_f1", "weighted_f1"} <= set(metrics)
        assert metrics["no_label_rate"] == 0.0  # label scoring never predicts an invalid label
    assert (repo / "models/adapter/adapter_config.json").is_file()
    report = (repo / "metrics/report.md").read_text()
    assert "| QLoRA fine-tuned |" in report and (repo / "metrics/report/confusion_finetuned.png").is_file()
    export = json.loads((repo / "metrics/export.json").read_text())
    assert set(export["merge"]) == {"original", "dequantized"}
    assert export["merge"]["dequantized"]["agreement_with_adapter"] == 1.0  # the very model the adapter-on-4-bit is
    assert set(export["gguf"]) == {"f16", "q8_0"}
    release = repo / "models/release"
    for artifact in ("adapter", "merged", "gguf"):
        assert (release / artifact / "README.md").read_text().startswith("---\n")  # a card with metadata
    assert (release / "merged/model.safetensors").is_file() and (release / "gguf/model-q8_0.gguf").is_file()
    dvc(repo, "git", "add", "-A")
    dvc(repo, "git", "commit", "-qm", "first run")
    dvc(repo, "git", "tag", "-a", "adapter@v0.1.0", "-m", "a version of the adapter artifact")  # as `gto register` tags
    fetched = repo.parent / "fetched_adapter"
    dvc(repo, "artifacts", "get", str(repo), "adapter", "-o", str(fetched))
    assert (fetched / "adapter_config.json").is_file() and (fetched / "README.md").is_file()

    html = repo.parent / "plots_html"
    dvc(repo, "plots", "show", "-o", str(html))
    page = (html / "index.html").read_text()
    assert '"finetuned"' in page and '"base"' in page  # both confusion matrices
    assert "learning_rate" in page and '"loss"' in page

    second = dvc(repo, "repro")
    assert ran_stages(second) == set()
    assert "up to date" in second


def test_same_params_give_identical_metrics(repo):
    before = (repo / "metrics/eval.json").read_bytes()
    output = dvc(repo, "repro", "--force", "--downstream", "train_qlora")
    assert ran_stages(output) == {"train_qlora", "evaluate", "report", "export"}
    assert (repo / "metrics/eval.json").read_bytes() == before


def test_exp_run_reruns_only_training_onwards_and_metrics_compare(repo):
    output = dvc(repo, "exp", "run", "-S", "lora.r=4")
    assert ran_stages(output) == {"train_qlora", "evaluate", "report", "export"}
    adapter = json.loads((repo / "models/adapter/adapter_config.json").read_text())
    assert adapter["r"] == 4

    diff = json.loads(dvc(repo, "metrics", "diff", "--all", "--json"))
    assert {"finetuned.accuracy", "base.accuracy", "classic.macro_f1"} <= set(diff["metrics/eval.json"])
    assert diff["metrics/train.json"]["trainable_parameters"]["new"] < diff["metrics/train.json"]["trainable_parameters"]["old"]
    table = json.loads(dvc(repo, "exp", "show", "--json"))
    text = json.dumps(table)
    assert '"r": 4' in text and '"r": 16' in text and "finetuned" in text


def test_switching_task_reruns_everything_and_switching_back_gives_the_same_metrics(repo):
    classification = (repo / "metrics/eval.json").read_bytes()
    output = dvc(repo, "exp", "run", "-S", "task=chitchat")
    assert ran_stages(output) == {"prepare", "split", "train_qlora", "evaluate", "report", "export"}
    generation = json.loads((repo / "metrics/eval.json").read_text())
    assert set(generation) == {"base", "finetuned"}
    assert {"bleu", "rouge_l", "perplexity"} <= set(generation["finetuned"])
    report = (repo / "metrics/report.md").read_text()
    assert "## Probe prompts" in report and "ROUGE-L" in report

    dvc(repo, "exp", "run", "-S", "task=instacart")
    assert (repo / "metrics/eval.json").read_bytes() == classification
