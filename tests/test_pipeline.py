"""End to end: the real `dvc` commands on the real stages, in clones of the tiny pipeline (tests/tiny_pipeline.py).

Each test keeps what only DVC can show (which stages rerun, queued copies, the run cache, artifacts); what a stage
computes is proven in process by the tests of the package. Interrupted training and two processes have files of
their own (test_interrupted_training.py, test_two_processes.py)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import yaml

from finetune import outputs

from tests.test_params import PLUMBING
from tests.tiny_pipeline import clone, dvc, ran_stages, redone_stages, restored_stages

STAGES = {"base_model", "prepare", "split", "train_qlora", "evaluate", "report", "export"}
FROM_TRAINING = {"train_qlora", "evaluate", "report", "export"}


@pytest.fixture
def repo(tiny_pipeline, tmp_path) -> Path:
    """A clone of the tiny pipeline after its first `dvc repro`, its outputs checked out."""
    return clone(tiny_pipeline, tmp_path / "repo")


def test_the_first_repro_builds_everything_and_a_clone_then_nothing(tiny_pipeline, repo):
    first = tiny_pipeline.first_repro
    assert redone_stages(first) == STAGES
    if tiny_pipeline.seeded:  # this checkout's export, from the run cache: no test repository exports it again
        assert restored_stages(first) == {"base_model"}
    for notice in ("kernels-community", "is_gradient_checkpointing", "`gradient_checkpointing` is deprecated"):
        assert notice not in first  # library notices that ask nothing of the user (finetune/__init__.py)
    evaluation = json.loads((repo / "metrics/eval.json").read_text())
    assert set(evaluation) == {"base", "finetuned", "classic"}
    for metrics in evaluation.values():
        assert {"accuracy", "macro_f1", "weighted_f1"} <= set(metrics)
        assert metrics["no_label_rate"] == 0.0  # label scoring never predicts an invalid label
    assert (repo / "models/adapter/adapter_config.json").is_file()
    for path in outputs.FILES:  # every output a reader may look up is described in docs/reference/outputs.md
        outputs.check(path, json.loads((tiny_pipeline.path / path).read_text()), "classification")
    report = (repo / "metrics/report.md").read_text()
    assert "| Fine-tuned (QLoRA) |" in report and (repo / "metrics/report/confusion_finetuned.png").is_file()

    html = repo.parent / "plots_html"
    dvc(repo, "plots", "show", "-o", str(html))
    page = (html / "index.html").read_text()
    assert '"finetuned"' in page and '"base"' in page  # both confusion matrices
    assert "learning_rate" in page and '"loss"' in page

    second = dvc(repo, "repro")
    assert redone_stages(second) == set()
    assert "up to date" in second


def test_every_finetune_module_a_stage_runs_is_one_of_its_dependencies(tiny_pipeline):
    """What each stage of the first `dvc repro` imported, at its start or in a function it called (tests/import_tracer),
    is declared in its deps, so that changing it reruns the stage (tests/test_params.py checks what is imported at
    the start, for every stage, without running it)."""
    stages = yaml.safe_load((tiny_pipeline.path / "dvc.yaml").read_text())["stages"]
    ran = set()
    for trace in sorted(tiny_pipeline.imports.glob("*.json")):
        stage = trace.stem.rsplit("-", 1)[0]
        ran.add(stage)
        missing = set(json.loads(trace.read_text())) - PLUMBING - set(stages[stage]["deps"])
        assert not missing, f"add {sorted(missing)} to the deps of stage {stage} in dvc.yaml"
    assert ran == ran_stages(tiny_pipeline.first_repro)


def test_export_on_reruns_export_and_report_only_and_its_artifacts_can_be_fetched(repo):
    output = dvc(repo, "exp", "run", "-S", "export.enabled=true", "-S", "export.gguf=[q8_0]")  # f16: tests/deliver
    assert redone_stages(output) == {"report", "export"}  # the report lists every param
    export = json.loads((repo / "metrics/export.json").read_text())
    assert set(export["merge"]) == {"original", "dequantized"}
    assert export["merge"]["dequantized"]["agreement_with_adapter"] == 1.0  # the very model the adapter-on-4-bit is
    assert set(export["gguf"]) == {"q8_0"}
    outputs.check("metrics/export.json", export)
    outputs.check("models/adapter/run.json", json.loads((repo / "models/release/merged/run.json").read_text()))
    release = repo / "models/release"
    for artifact in ("adapter", "merged", "gguf"):
        assert (release / artifact / "README.md").read_text().startswith("---\n")  # a card with metadata
    assert (release / "merged/model.safetensors").is_file() and (release / "gguf/model-q8_0.gguf").is_file()
    dvc(repo, "git", "add", "-A")
    dvc(repo, "git", "commit", "-qm", "export on")
    dvc(repo, "git", "tag", "-a", "adapter@v0.1.0", "-m", "a version of the adapter artifact")  # as `gto register` tags
    fetched = repo.parent / "fetched_adapter"
    dvc(repo, "artifacts", "get", str(repo), "adapter", "-o", str(fetched))
    assert (fetched / "adapter_config.json").is_file() and (fetched / "README.md").is_file()


def test_exp_run_reruns_only_training_onwards_and_metrics_compare(repo):
    output = dvc(repo, "exp", "run", "-S", "lora.r=32")  # the README's experiment: later tests get it from the run cache
    assert redone_stages(output) == FROM_TRAINING
    adapter = json.loads((repo / "models/adapter/adapter_config.json").read_text())
    assert adapter["r"] == 32

    diff = json.loads(dvc(repo, "metrics", "diff", "--all", "--json"))
    assert {"finetuned.accuracy", "base.accuracy", "classic.macro_f1"} <= set(diff["metrics/eval.json"])
    assert diff["metrics/train.json"]["trainable_parameters"]["new"] > diff["metrics/train.json"]["trainable_parameters"]["old"]
    table = json.loads(dvc(repo, "exp", "show", "--json"))
    text = json.dumps(table)
    assert '"r": 32' in text and '"r": 16' in text and "finetuned" in text


QUEUE_STATES = ("Queued", "Running", "Success", "Failed")


def queue_status(repo: Path) -> dict[str, str]:
    """`dvc queue status` as {experiment name: Queued, Running, Success or Failed}."""
    rows = [line.split() for line in dvc(repo, "queue", "status").splitlines()]
    return {row[1]: row[-1] for row in rows if len(row) >= 4 and row[0] != "Task" and row[-1] in QUEUE_STATES}


def queue_logs(repo: Path, names) -> str:
    return "\n".join(f"--- dvc queue logs {name}:\n{dvc(repo, 'queue', 'logs', name, check=False)}" for name in names)


def experiments(repo: Path) -> dict[str, dict]:
    """`dvc exp show --json` as {experiment name: its data (params, metrics)}."""
    found = {}
    for baseline in json.loads(dvc(repo, "exp", "show", "--json")):
        for experiment in baseline.get("experiments") or []:
            for rev in experiment["revs"]:
                found[rev["name"]] = rev["data"]
    return found


def test_a_queued_experiment_runs_in_a_temporary_copy_that_sees_the_base_model(repo):
    """A queued run sees only what git or DVC track: the base_model stage's output and the dvc-added tiny model. It
    fine-tunes every weight, so evaluate takes a whole model where the workspace has an adapter."""
    dvc(repo, "exp", "run", "--queue", "-n", "every-weight", "-S", "train.method=full")
    assert queue_status(repo) == {"every-weight": "Queued"}
    dvc(repo, "queue", "start")
    try:
        deadline = time.monotonic() + 900
        while (status := queue_status(repo)) and {"Queued", "Running"} & set(status.values()):
            assert time.monotonic() < deadline, f"the queue did not finish: {status}\n{queue_logs(repo, status)}"
            time.sleep(2)
    finally:
        dvc(repo, "queue", "stop", check=False)
    assert status == {"every-weight": "Success"}, f"{status}\n{queue_logs(repo, status)}"
    log = dvc(repo, "queue", "logs", "every-weight")  # the base models came from DVC's cache, not exported again
    assert redone_stages(log) == FROM_TRAINING, log

    data = experiments(repo)["every-weight"]
    assert data["params"]["params.yaml"]["data"]["train"]["method"] == "full"
    train = data["metrics"]["metrics/train.json"]["data"]
    assert train["method"] == "full" and train["trainable_parameters"] == train["total_parameters"]
    assert "runtime_s" not in train and train["steps"] > 0  # the timings stay in the run's own copy (not results)
    assert 0.0 <= data["metrics"]["metrics/eval.json"]["data"]["finetuned"]["accuracy"] <= 1.0
