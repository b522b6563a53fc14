"""End to end: the real `dvc` commands on the real stages, in a temporary git repo, on a tiny budget."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT, tiny_llama

COPIED = ["dvc.yaml", "params.yaml", "stages", "finetune", "configs", ".gitignore", ".dvcignore", "data/raw"]
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


def dvc(repo: Path, *args: str, check: bool = True, env: dict | None = None) -> str:
    env = {**os.environ, **(env or {}), "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "GIT_AUTHOR_NAME": "test", "GIT_AUTHOR_EMAIL": "test@example.com",
           "GIT_COMMITTER_NAME": "test", "GIT_COMMITTER_EMAIL": "test@example.com", "DVC_NO_ANALYTICS": "1"}
    cmd = ["dvc", *args] if args[0] != "git" else list(args)
    proc = subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True)
    assert proc.returncode == 0 or not check, f"{' '.join(cmd)} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def repo(tmp_path_factory, tokenizer) -> Path:
    """A git + DVC repo holding this project's pipeline, a tiny Llama as base model and tiny split sizes."""
    return make_repo(tmp_path_factory.mktemp("pipeline"), tokenizer, TINY)


def make_repo(repo: Path, tokenizer, overrides: dict) -> Path:
    for name in COPIED:
        src, dst = ROOT / name, repo / name
        if src.is_dir():
            shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(src, dst)
    params = yaml.safe_load((repo / "params.yaml").read_text())
    for key, values in overrides.items():
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
    dvc(repo, "add", "models/base/tiny")  # as a user adds a model of their own: queued runs see only what git or DVC track
    dvc(repo, "git", "add", "-A")
    dvc(repo, "git", "commit", "-qm", "pipeline")
    return repo


def ran_stages(output: str) -> set[str]:
    return {line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage '")}


def test_repro_builds_everything_then_nothing(repo):
    first = dvc(repo, "repro")
    assert ran_stages(first) == {"base_model", "prepare", "split", "train_qlora", "evaluate", "report", "export"}
    for notice in ("kernels-community", "is_gradient_checkpointing", "`gradient_checkpointing` is deprecated"):
        assert notice not in first  # library notices that ask nothing of the user (finetune/__init__.py)
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


@pytest.fixture(scope="module")
def queue_repo(tmp_path_factory, tokenizer) -> Path:
    """A repo after its first `dvc repro`, committed, as `make repro` leaves a fresh clone (export on: a whole model's
    export is under test)."""
    repo = make_repo(tmp_path_factory.mktemp("queue"), tokenizer, TINY)
    dvc(repo, "repro")
    dvc(repo, "git", "add", "-A")
    dvc(repo, "git", "commit", "-qm", "first run")
    return repo


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


def test_a_queued_grid_of_methods_runs_in_temporary_copies_and_both_finish(queue_repo):
    """A queued run sees only what git or DVC track: the base_model stage's output and the dvc-added tiny model.
    The grid is two training methods (qlora is the workspace's own): LoRA, and full fine-tuning, whose whole model
    evaluate and export take as they take an adapter."""
    dvc(queue_repo, "exp", "run", "--queue", "-S", "train.method=lora,full")
    queued = queue_status(queue_repo)
    assert len(queued) == 2 and set(queued.values()) == {"Queued"}
    dvc(queue_repo, "queue", "start")
    try:
        deadline = time.monotonic() + 900
        while (status := queue_status(queue_repo)) and {"Queued", "Running"} & set(status.values()):
            assert time.monotonic() < deadline, f"the queue did not finish: {status}\n{queue_logs(queue_repo, status)}"
            time.sleep(5)
    finally:
        dvc(queue_repo, "queue", "stop", check=False)
    assert set(status) == set(queued) and set(status.values()) == {"Success"}, f"{status}\n{queue_logs(queue_repo, status)}"
    for name in status:  # the base model came from DVC's cache: checked out, not exported again
        log = dvc(queue_repo, "queue", "logs", name)
        assert ran_stages(log) == {"train_qlora", "evaluate", "report", "export"}, log
        assert "merged into none: agreement 1.0" in log or "merged into dequantized" in log, log

    found = experiments(queue_repo)
    assert set(status) <= set(found)
    runs = {}
    for name in status:
        data = found[name]
        method = data["params"]["params.yaml"]["data"]["train"]["method"]
        train = data["metrics"]["metrics/train.json"]["data"]
        accuracy = data["metrics"]["metrics/eval.json"]["data"]["finetuned"]["accuracy"]
        assert 0.0 <= accuracy <= 1.0 and train["method"] == method
        assert train["runtime_s"] > 0 and train["peak_memory_gib"] > 0
        runs[method] = train
    assert sorted(runs) == ["full", "lora"]
    assert runs["full"]["trainable_parameters"] == runs["full"]["total_parameters"]
    assert runs["lora"]["trainable_parameters"] < runs["lora"]["total_parameters"] // 10


# Long enough to be killed part-way (60 steps of the tiny model), a checkpoint at every logging step.
LONG = {**TINY, "tasks.instacart.split": {"max_train": 240, "max_validation": 8, "max_test": 24},
        "tasks.instacart.train": {"batch_size": 4},
        "train": {"logging_steps": 5, "checkpoint_minutes": 1e-6}, "export": {"enabled": False}}


def start_repro(repo: Path) -> subprocess.Popen:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", "DVC_NO_ANALYTICS": "1"}
    return subprocess.Popen(["dvc", "repro", "--force", "evaluate"], cwd=repo, env=env, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def wait_for_checkpoint(repo: Path, proc: subprocess.Popen, timeout_s: float = 300) -> None:
    deadline = time.monotonic() + timeout_s
    while not list((repo / "models/checkpoints").glob("checkpoint-*/checkpoint.json")):
        assert proc.poll() is None, f"dvc repro ended before any checkpoint:\n{proc.stdout.read()}"
        assert time.monotonic() < deadline, "no checkpoint was written"
        time.sleep(0.02)


def wait_for_group(proc: subprocess.Popen, timeout_s: float = 60) -> None:
    """Until every process of the run (dvc, and the stage it started) has exited."""
    proc.wait(timeout_s)
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            return
        assert time.monotonic() < deadline, "the stage outlived dvc"
        time.sleep(0.05)


@pytest.fixture(scope="module")
def long_repo(tmp_path_factory, tokenizer) -> Path:
    return make_repo(tmp_path_factory.mktemp("long"), tokenizer, LONG)


def interrupted_run(repo: Path, sig: signal.Signals, *repro: str) -> tuple[bytes, list[str], str]:
    """`dvc repro` killed by `sig` once its first checkpoint is written, then `dvc repro` again: eval.json and the curve."""
    proc = start_repro(repo)
    wait_for_checkpoint(repo, proc)
    os.killpg(proc.pid, sig)  # to every process of the run, as a machine going down sends it
    wait_for_group(proc)
    assert proc.returncode != 0
    log = proc.stdout.read()
    resumed = dvc(repo, "repro", *repro, "evaluate")
    assert "train_qlora: resuming from step" in resumed
    train = json.loads((repo / "metrics/train.json").read_text())
    assert train["resumed_from_step"] > 0 and train["steps"] == 60
    assert not (repo / "models/checkpoints").exists()  # finished: its checkpoints removed
    return (repo / "metrics/eval.json").read_bytes(), loss_curve(repo), log


def loss_curve(repo: Path) -> list[str]:
    """The DVCLive loss curve, a `step<TAB>loss` line per point."""
    lines = (repo / "metrics/train_live/plots/metrics/loss.tsv").read_text().splitlines()
    assert lines[0] == "step\tloss" and len(lines) > 10
    return lines


def test_a_killed_training_resumes_from_its_checkpoint_to_the_same_metrics(long_repo):
    """SIGKILL (power loss) or SIGTERM (a pre-emption notice) during train_qlora; the next dvc repro resumes
    from the last checkpoint, and eval.json and the loss curve are those of a run never interrupted."""
    after_kill, kill_curve, _ = interrupted_run(long_repo, signal.SIGKILL)
    # --force: the result of the first case is in DVC's cache now, which a plain dvc repro would check out
    after_term, term_curve, log = interrupted_run(long_repo, signal.SIGTERM, "--force")
    assert "error: stopped by SIGTERM at step" in log and "Traceback" not in log

    whole = dvc(long_repo, "repro", "--force", "evaluate")
    assert "resuming" not in whole and json.loads((long_repo / "metrics/train.json").read_text())["resumed_from_step"] is None
    assert after_kill == after_term == (long_repo / "metrics/eval.json").read_bytes()
    assert kill_curve == term_curve == loss_curve(long_repo)


@pytest.fixture(scope="module")
def two_process_repo(tmp_path_factory, tokenizer) -> Path:
    """The tiny pipeline with distributed.processes 2: each of train_qlora and evaluate runs under accelerate launch."""
    return make_repo(tmp_path_factory.mktemp("two_processes"), tokenizer,
                     {**TINY, "distributed": {"processes": 2}, "export": {"enabled": False}})


def written(trace: Path, repo: Path) -> dict[int, set[str]]:
    """What each rank wrote inside `repo` (tests/write_tracer): {rank: paths relative to the repo}."""
    found: dict[int, set[str]] = {}
    for log in trace.glob("rank-*.jsonl"):
        paths = {Path(json.loads(line)["path"]) for line in log.read_text().splitlines()}
        found[int(log.stem.split("-")[1])] = {str(p.relative_to(repo)) for p in paths
                                             if p.is_relative_to(repo) and "__pycache__" not in p.parts}
    return found


def test_repro_on_two_processes_runs_every_stage_and_only_rank_0_writes(two_process_repo, tmp_path):
    repo, trace = two_process_repo, tmp_path / "trace"
    trace.mkdir()
    output = dvc(repo, "repro", env={"PYTHONPATH": str(ROOT / "tests/write_tracer"), "WRITE_TRACE_DIR": str(trace)})
    assert ran_stages(output) == {"base_model", "prepare", "split", "train_qlora", "evaluate", "report", "export"}
    train = json.loads((repo / "metrics/train.json").read_text())
    assert train["processes"] == 2 and train["batch_size"] == TINY["tasks.instacart.train"]["batch_size"] // 2
    assert set(json.loads((repo / "metrics/eval.json").read_text())) == {"base", "finetuned", "classic"}
    by_rank = written(trace, repo)
    assert set(by_rank) == {0, 1}  # both stages ran two processes, and the tracer saw both
    assert by_rank[1] == set(), f"rank 1 wrote {sorted(by_rank[1])[:10]}"
    assert {"models/adapter", "metrics/train.json", "metrics/train_live", "metrics/eval.json",
            "metrics/predictions.csv"} <= by_rank[0]
    assert any(p.startswith("models/checkpoints/live/") for p in by_rank[0])  # DVCLive's curve, from rank 0


def test_evaluate_on_two_processes_writes_what_one_process_writes(two_process_repo):
    repo = two_process_repo
    outputs = ["metrics/eval.json", "metrics/details.json", "metrics/predictions.csv", "metrics/confusion.csv"]
    two = {name: (repo / name).read_bytes() for name in outputs}
    params_file = repo / "params.yaml"
    original = params_file.read_text()
    params = yaml.safe_load(original)
    params["distributed"]["processes"] = 1
    params_file.write_text(yaml.safe_dump(params, sort_keys=False))
    try:
        env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
        proc = subprocess.run([sys.executable, "-m", "stages.evaluate", "data/split", "models/adapter", *outputs],
                              cwd=repo, env=env, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr[-3000:]
    finally:
        params_file.write_text(original)
    for name in outputs:
        assert (repo / name).read_bytes() == two[name], f"{name} differs between 2 processes and 1"


def test_an_error_on_one_process_ends_them_all_with_one_line(two_process_repo):
    """Rank 1 refuses to train (tests/fail_on_rank.py): the stage exits 1 with that one line, and no traceback of the
    launcher's; nothing is written."""
    repo = two_process_repo
    before = (repo / "models/adapter/adapter_model.safetensors").read_bytes()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}  # the module comes from this checkout, the stage from the repo
    proc = subprocess.run([sys.executable, "-m", "tests.fail_on_rank", "data/split", "models/adapter",
                           "metrics/train.json", "metrics/train_live", "models/checkpoints"],
                          cwd=repo, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1] == "error: rank 1 cannot train (process 1 of 2)"
    assert "Traceback" not in proc.stderr and "ChildFailedError" not in proc.stderr
    assert (repo / "models/adapter/adapter_model.safetensors").read_bytes() == before
